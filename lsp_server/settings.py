"""Settings: one typed structure, parsed and validated here only.

Sources, later wins: built-in defaults < editor settings (initializationOptions,
then workspace/configuration section `codegen-lsp`) < the project file of the
workspace folder (`[tool.codegen-lsp]` in pyproject.toml, then
`.codegen-lsp.toml`). A bad key or value is reported with the file and key
and skipped; the other keys still apply.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from engine.files import read_text
from engine.options import COMPILE, DEVICES, DTYPES, FIM_MODES, QUANTIZATIONS, SPECULATIVE
from lsp_server.methods import SECTION

PROJECT_FILE = ".codegen-lsp.toml"
# A settings file holds a dozen short keys: anything near this size is not one.
SETTINGS_FILE_LIMIT = 256 * 1024
MAX_MODEL_SPEC = 4096  # PATH_MAX on Linux: no path or hub id is longer
MAX_PROBLEMS_SHOWN = 3
BACKENDS = ("local", "openai", "llama.cpp")
MAX_URL = 2048
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# A repository's project file names the environment variable whose value goes to its endpoint:
# only variables made for this (not, say, AWS_SECRET_ACCESS_KEY) may be named there.
PROJECT_KEY_PREFIX = "CODEGEN_LSP_"


def _setting(default: Any, description: str, *, choices: tuple[str, ...] = (), bounds: tuple[int, int] | None = None,
             values: str = "") -> Any:
    """A field of Settings with what the schema says of it (see SettingSpec)."""
    metadata = {"description": description, "choices": choices, "bounds": bounds, "values": values}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    """The settings of one workspace folder. Each field is one key of the schema (SCHEMA below),
    from which the server validates, the command line builds its flags and the VS Code
    extension's settings and the README's table are checked (tests/test_settings_schema.py)."""

    model: str = _setting(
        "", "Checkpoint directory or hub id in the local Hugging Face cache (never downloaded); "
        "a relative path is taken from the project folder.", values='directory or hub id (`""`: the shipped demo model)',
    )  # fmt: skip
    device: str = _setting("auto", "Where the model runs.", choices=DEVICES)
    dtype: str = _setting("auto", "auto: bfloat16 or float16 on CUDA, float32 on the CPU.", choices=DTYPES)
    quantization: str = _setting("none", "Weight-only quantization of the linear layers.", choices=QUANTIZATIONS)
    compile: str = _setting("auto", "Compile the decode step (auto: on CUDA only).", choices=COMPILE)
    max_new_tokens: int = _setting(64, "Most tokens generated for one suggestion.", bounds=(1, 4096))
    max_prompt_tokens: int = _setting(1536, "Most tokens of context around the cursor given to the model.",
                                      bounds=(16, 32768))
    fim: str = _setting(
        "auto", "Fill-in-the-middle layout when the model has FIM tokens (auto: PSM, or the layout a checkpoint "
        'names as "fim_layout" in its tokenizer_config.json).', choices=FIM_MODES,
    )  # fmt: skip
    debounce_ms: int = _setting(50, "Wait before generating; a newer request for the document replaces the older.",
                                bounds=(0, 10_000))
    cache_memory_mb: int = _setting(512, "Memory for the KV caches of one model's documents.", bounds=(1, 1_048_576))
    multiline: str = _setting("auto", "auto: a block after a line that opens one or on an empty line.",
                              choices=("auto", "always", "never"))
    # Remote backends (lsp_server/backends/): another server generates, this one does the rest.
    backend: str = _setting(
        "local", "Where suggestions are generated: this process, or a shared server's /v1/completions (openai: "
        "vLLM, llama.cpp server, Ollama, TGI) or llama.cpp's /infill; with a remote one only the tokenizer of "
        "`model` is loaded.", choices=BACKENDS,
    )  # fmt: skip
    endpoint: str = _setting("", "Base URL of the inference server (backend openai or llama.cpp).",
                             values='URL, e.g. `"http://127.0.0.1:8080"`')
    remote_model: str = _setting("", 'The "model" field sent to the server (the name it serves the model under).',
                                 values="name (`\"\"`: none sent)")
    api_key_env: str = _setting(
        "", "Name of an environment variable holding the bearer token sent to the endpoint (a key itself is never "
        "read from settings; a project file may only name variables starting with CODEGEN_LSP_).",
        values="variable name",
    )  # fmt: skip
    request_timeout_ms: int = _setting(10_000, "Longest wait for the server to connect or to send the next token.",
                                       bounds=(100, 600_000))
    languages: str = _setting(
        "auto", "Languages to suggest in: auto (what the checkpoint says it was trained on), all, or a "
        'comma-separated list such as "python, lua".', values='`auto` \\| `all` \\| a list such as `"python, lua"`',
    )  # fmt: skip
    ramble_stop: str = _setting("on", "End a suggestion at a repeated chunk or where the model is unsure (engine/stops.py).",
                                choices=("on", "off"))
    speculative: str = _setting(
        "auto", "Draft tokens from the text around the cursor and check several per forward pass; "
        "output is the same (auto: on where a verify was measured at load to pay for itself, and the decode step "
        "is not compiled).", choices=SPECULATIVE,
    )  # fmt: skip
    sources: dict[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)
    """Where each key that is not a default came from (a file path or the editor's message)."""

    def engine_key(self) -> tuple:
        """Folders whose settings give the same key share one loaded model (or remote client)."""
        if self.backend != "local":
            return (self.model, self.backend, self.endpoint, self.remote_model, self.api_key_env, self.request_timeout_ms)
        return (self.model, self.device, self.dtype, self.quantization, self.compile)


@dataclass(frozen=True)
class SettingSpec:
    """One key of the schema."""

    name: str
    type: type  # str or int
    default: Any
    description: str
    choices: tuple[str, ...]  # the allowed values of a str key ((): any string)
    bounds: tuple[int, int] | None  # the allowed range of an int key
    values: str  # how the README describes the values of a free-form key


SCHEMA: tuple[SettingSpec, ...] = tuple(
    SettingSpec(f.name, {"str": str, "int": int}[f.type], f.default, **f.metadata)
    for f in dataclasses.fields(Settings) if f.name != "sources"
)  # fmt: skip
SPECS = {spec.name: spec for spec in SCHEMA}
KEYS = tuple(SPECS)


def _check(key: str, value: Any) -> tuple[Any, str | None]:
    """The value to store for key, or an error message."""
    spec = SPECS[key]
    if key == "model":
        if value is None:
            return "", None
        if not isinstance(value, str):
            return None, f"expected a string (a directory or hub id), got {_short(value)}"
        if len(value) > MAX_MODEL_SPEC or any(c in value for c in "\0\n\r"):
            return None, f"not a directory or hub id (at most {MAX_MODEL_SPEC} characters on one line): {_short(value)}"
        return value.strip(), None
    if key in TEXT_CHECKS:
        if not isinstance(value, str) or len(value) > MAX_URL:
            return None, f"expected a string, got {_short(value)}"
        value = value.strip()
        return (value, None) if not value or TEXT_CHECKS[key][0](value) else (None, f"{TEXT_CHECKS[key][1]}, got {_short(value)}")
    if key == "languages":
        if not isinstance(value, str) or not re.fullmatch(r"\s*[\w+#.-]+(\s*,\s*[\w+#.-]+)*\s*", value):
            return None, f'expected "auto", "all" or a comma-separated list of languages, got {_short(value)}'
        return value.strip().lower(), None
    if spec.choices:
        if key == "compile" and isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, str) or value.lower() not in spec.choices:
            return None, f"expected one of {', '.join(spec.choices)}, got {_short(value)}"
        return value.lower(), None
    low, high = spec.bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None, f"expected a whole number from {low} to {high}, got {_short(value)}"
    return value, None


TEXT_CHECKS = {
    "endpoint": (lambda v: re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", v) is not None,
                 "expected an http:// or https:// base URL (e.g. http://127.0.0.1:8080)"),
    "remote_model": (lambda v: v.isprintable(), "expected a model name on one line"),
    "api_key_env": (lambda v: ENV_NAME.fullmatch(v) is not None, "expected the name of an environment variable"),
}  # fmt: skip


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def apply(base: Settings, raw: Any, source: str, root: Path | None = None) -> tuple[Settings, list[str]]:
    """base updated with the keys of raw; bad keys are skipped, and described in one message.

    A relative model path in a project file is taken relative to its folder.
    """
    if raw is None:
        return base, []
    if not isinstance(raw, dict):
        return base, [f"{source}: expected a table of settings, got {type(raw).__name__}"]
    updates, problems, unknown = {}, [], 0
    for key, value in raw.items():
        if key == "api_key":
            problems.append("api_key: a key is never read from settings; put it in an environment variable and "
                            "name that in api_key_env")
            continue
        if key not in KEYS:
            unknown += 1
            problems.append(f"unknown setting {_short(key)}")
            continue
        checked, problem = _check(key, value)
        if problem:
            problems.append(f"{key}: {problem}")
            continue
        if key == "api_key_env" and root is not None and checked and not checked.startswith(PROJECT_KEY_PREFIX):
            problems.append(f"api_key_env: a project file may only name a variable starting with {PROJECT_KEY_PREFIX} "
                            f"(its value is sent to the endpoint), got {_short(checked)}")
            continue
        if key == "model" and checked and root is not None and (root / checked).exists():
            checked = str((root / checked).resolve())
        updates[key] = checked
    sources = {**base.sources, **{key: source for key in updates}}
    return dataclasses.replace(base, **updates, sources=sources), [_summary(source, problems, unknown)] if problems else []


def _summary(source: str, problems: list[str], unknown: int) -> str:
    """One message for all the problems of one source: however many there are, the user sees one."""
    shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
    more = f" (and {len(problems) - MAX_PROBLEMS_SHOWN} more)" if len(problems) > MAX_PROBLEMS_SHOWN else ""
    known = f"; known settings: {', '.join(KEYS)}" if unknown else ""
    return f"{source}: {shown}{more}{known}"


def editor_section(options: Any) -> Any:
    """Editor settings may come as {"codegen-lsp": {...}} or as the section itself."""
    if isinstance(options, dict) and isinstance(options.get(SECTION), dict):
        return options[SECTION]
    return options


def read_project_file(root: Path) -> list[tuple[str, Any]]:
    """(source, table) for each project settings file in root, lowest precedence first.

    An unreadable file gives (source, error message as str).
    """
    found = []
    pyproject = root / "pyproject.toml"
    if pyproject.exists():
        data = _read_toml(pyproject)
        if isinstance(data, str):
            found.append((str(pyproject), data))
        elif isinstance(data.get("tool"), dict) and SECTION in data["tool"]:
            found.append((str(pyproject), data["tool"][SECTION]))
    project = root / PROJECT_FILE
    if project.exists():
        found.append((str(project), _read_toml(project)))
    return found


def _read_toml(path: Path) -> dict | str:
    try:
        return tomllib.loads(read_text(path, limit=SETTINGS_FILE_LIMIT))
    except EngineError as exc:
        return f"cannot read settings: {exc}"
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        return f"{path}: cannot read settings: {exc}"


def resolve(editor: list[tuple[str, Any]], root: Path | None) -> tuple[Settings, list[str]]:
    """The settings of one workspace folder (root None: documents outside any folder).

    editor: (source, settings) pairs from the editor, lowest precedence first.
    """
    settings, problems = Settings(), []
    for source, raw in editor:
        settings, more = apply(settings, editor_section(raw), source)
        problems += more
    for source, table in read_project_file(root) if root is not None else []:
        if isinstance(table, str):
            problems.append(table)
            continue
        settings, more = apply(settings, table, source, root)
        problems += more
    return settings, problems


def project_files_stamp(root: Path | None) -> tuple:
    """Changes when a project settings file is created, edited or removed."""
    if root is None:
        return ()
    stamp = []
    for name in ("pyproject.toml", PROJECT_FILE):
        try:
            st = (root / name).stat()
            stamp.append((name, st.st_mtime_ns, st.st_size))
        except OSError:
            stamp.append((name, None))
    return tuple(stamp)
