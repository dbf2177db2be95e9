"""The project as a user installs it: a wheel in a fresh venv, no test extra, run from outside the repo.

Only what the wheel ships and pyproject.toml declares is there, so a file left
out of the package data or an undeclared import fails here (an editable install
into the test venv hides both).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from importlib.metadata import distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCE = shutil.ignore_patterns(".*", "node_modules", "build", "dist", "*.egg-info", "__pycache__")  # .git, .venv, caches


def requirement_closure(name: str) -> set[str]:
    """name and everything it requires, extras left out, as installed in this interpreter."""
    seen, todo = set(), [name]
    while todo:
        name = canonicalize_name(todo.pop())
        if name not in seen:
            seen.add(name)
            requires = [Requirement(r) for r in distribution(name).requires or []]
            todo += [r.name for r in requires if r.marker is None or r.marker.evaluate({"extra": ""})]
    return seen


def expose_torch(site_packages: Path, links: Path) -> None:
    """torch and its own dependencies, linked from this interpreter: pip sees them installed.

    Installing the 190 MB torch wheel takes ~35 s on 2 cores, links take none.
    Nothing else is exposed (numpy above all), so the venv has only what the
    project declares. Links live outside the venv, so pip never uninstalls through them.
    """
    links.mkdir()
    for name in requirement_closure("torch"):
        dist = distribution(name)
        for top in {f.parts[0] for f in dist.files} - {"..", "__pycache__"}:
            if not (links / top).exists():
                (links / top).symlink_to(dist.locate_file(top))
    (site_packages / "test-runner-torch.pth").write_text(f"{links}\n")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """A fresh venv with the project's wheel installed, plus a cwd and a cache outside the repo."""
    tmp = tmp_path_factory.mktemp("packaging")
    shutil.copytree(ROOT, tmp / "source", ignore=NOT_SOURCE)  # no stale build/ from an earlier build
    pip = [sys.executable, "-m", "pip", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", tmp / "dist", tmp / "source"], check=True, timeout=300)
    venv.create(tmp / "venv", symlinks=True)  # without pip: the running pip installs into it
    python = tmp / "venv" / "bin" / "python"
    expose_torch(next((tmp / "venv" / "lib").glob("python*/site-packages")), tmp / "torch-links")
    numpy = subprocess.run([python, "-c", "import numpy"], capture_output=True)
    assert numpy.returncode != 0, "numpy must come from the project's dependencies, not the test runner"
    wheel = next((tmp / "dist").glob("codegen_lsp-*.whl"))
    subprocess.run([*pip, "--python", python, "install", wheel], check=True, timeout=600)
    (tmp / "cwd").mkdir()
    return {"venv": tmp / "venv", "cwd": tmp / "cwd", "cache": tmp / "cache"}


def run_ok(command: list, cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def user_run(installed: dict[str, Path], *args) -> str:
    """A command of the fresh venv, run as a user would: from outside the repo, nothing of ours on the path."""
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    command = [installed["venv"] / "bin" / args[0], *args[1:]]
    return run_ok(command, installed["cwd"], dict(clean, CODEGEN_LSP_CACHE=str(installed["cache"])))


def installed_demo_model(installed: dict[str, Path]) -> Path:
    found = user_run(installed, "python", "-c", "import engine, lsp_server.cli; from engine.paths import DEMO_MODEL_DIR as d; "
                     "print(engine.__file__, lsp_server.cli.__file__, d, sep='\\n')").split("\n")
    for path in found[:3]:
        assert Path(path).is_relative_to(installed["venv"]), found  # not the repo checkout
    return Path(found[2])


def test_the_demo_model_ships_in_the_wheel(installed):
    demo = installed_demo_model(installed)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (demo / name).is_file(), name


def test_generate_with_int8_caches_the_quantized_demo_model(installed):
    # generate requires --model; the installed package's own demo directory is what model = "" means.
    args = ["--quantization", "int8", "--max-new-tokens", "8", "--prompt", "def add(a, b):"]
    text = user_run(installed, "codegen-lsp", "generate", "--model", installed_demo_model(installed), *args)
    assert text.strip()
    assert list((installed["cache"] / "quantized").glob("*.safetensors"))  # written with numpy


def test_complete_with_no_model_set_gives_what_the_repo_gives(installed, tmp_path):
    source = tmp_path / "demo.py"
    shutil.copy(ROOT / "examples" / "demo.py", source)
    position = [source, "--line", "3", "--character", "8"]
    from_wheel = user_run(installed, "codegen-lsp", "complete", *position)
    in_repo = run_ok([sys.executable, "-m", "lsp_server", "complete", *position], ROOT)
    assert from_wheel.strip() and from_wheel == in_repo
