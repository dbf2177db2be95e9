"""Every module of engine/ and lsp_server/ imports alone, no import cycle joins them, the
command line (which the VS Code extension runs at start to probe an interpreter) imports no torch,
and loading a model imports no torch._dynamo."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "lsp_server")
MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for package in PACKAGES for path in (ROOT / package).glob("*.py") if path.name != "__main__.py"
)  # fmt: skip


def imported_modules(module: str) -> set[str]:
    """The project modules `module` imports, at the top level or inside functions."""
    path = ROOT / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in MODULES)
    return found - {module}


def test_no_import_cycles():
    graph = {module: imported_modules(module) for module in MODULES}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import cycle: " + " -> ".join(path[path.index(module) :] + [module]))
        if module in done:
            return
        for other in sorted(graph[module]):
            visit(other, path + [module])
        done.add(module)

    for module in MODULES:
        visit(module, [])


def test_each_module_imports_alone():
    """Each module in a fresh process of its own: an import that works only after another module
    has been imported (a hidden order dependence, often a cycle) fails here. The processes are
    forked from one that has imported torch alone (~2 s an interpreter otherwise, 54 s for all on 2
    cores), so a module that uses torch without importing it still fails: the name is not bound."""
    script = """
import importlib, os, sys, traceback
import torch
for name in sys.argv[1:]:
    child = os.fork()
    if child == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            print(f"import {name}:", file=sys.stderr)
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
        os._exit(0)
    if os.waitpid(child, 0)[1]:
        sys.exit(1)
"""
    done = subprocess.run([sys.executable, "-c", script, *MODULES], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(MODULES) > 40


@pytest.mark.parametrize("module", ["lsp_server.cli", "lsp_server.settings", "lsp_server.methods", "engine.paths"])
def test_command_line_and_settings_import_no_torch(module):
    script = f"import sys, time\nstart = time.perf_counter()\nimport {module}\nprint(time.perf_counter() - start)\nprint('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seconds, torch_loaded = done.stdout.split()
    assert torch_loaded == "False", f"importing {module} imports torch"
    assert float(seconds) < 1.0, f"importing {module} took {seconds} s"


def test_loading_a_model_and_decoding_never_import_the_compiler():
    """Nothing compiles on the CPU by default, so a process that loads a model and decodes (the
    server's) must not import torch._dynamo: ~1 s of every start, which PyTorch's initializers cost
    on the meta device, where engine/build.py builds an empty model."""
    script = """import sys
from engine.loading import load_model
from engine.session import Session
lm = load_model(None, device="cpu")
session = Session(lm)
session.prefill(lm.tokenizer.encode("def fibonacci(n):"))
session.step(int(session.step(lm.tokenizer.encode(" ")[0]).argmax()))
print("torch._dynamo" in sys.modules)"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "False", "loading and decoding imported torch._dynamo"
