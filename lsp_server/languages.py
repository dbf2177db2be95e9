"""Which languages a model is offered for (the `languages` setting).

A model trained on one language (the demo model, CodeGen-mono: Python) writes
noise in others. With `languages = "auto"` (the default) the server reads what
the checkpoint says of itself: `"languages": [...]` in its tokenizer_config.json
or config.json, else a CodeGen `-mono` name (Python only); a checkpoint that says
nothing is offered for every language. `"all"` offers every language, and a
comma-separated list (`"python, lua"`) exactly those. Elsewhere the server
answers nothing and says once why.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from engine.errors import EngineError
from engine.files import read_text
from lsp_server.syntax import canonical, family

METADATA_LIMIT = 16 * 1024 * 1024


class LanguageOff(EngineError):
    """No suggestions in this language with this model (the message says why, and how to change it)."""


def checkpoint_languages(path: str) -> tuple[str, ...] | None:
    """What the checkpoint at path says it was trained on, None when it says nothing."""
    stamp = []
    for name in ("tokenizer_config.json", "config.json"):
        try:
            st = (Path(path) / name).stat()
            stamp.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stamp.append(None)
    return _checkpoint_languages(path, tuple(stamp))


@lru_cache(maxsize=64)
def _checkpoint_languages(path: str, stamp: tuple) -> tuple[str, ...] | None:
    directory = Path(path)
    for name in ("tokenizer_config.json", "config.json"):
        try:
            data = json.loads(read_text(directory / name, limit=METADATA_LIMIT))
        except (EngineError, OSError, ValueError):
            continue
        found = data.get("languages") if isinstance(data, dict) else None
        if isinstance(found, list) and found and all(isinstance(x, str) for x in found):
            return tuple(family(x) for x in found)
    # The Hugging Face cache keeps the repository's name in the path: .../models--Org--name/snapshots/...
    names = [directory.name, *(p.removeprefix("models--") for p in directory.parts if p.startswith("models--"))]
    if any(re.search(r"codegen.*-mono\b", n, re.IGNORECASE) for n in names):
        return ("python",)
    return None


def languages_for(served, settings) -> list[str] | None:
    """The languages suggestions are offered for, None for all."""
    wanted = getattr(settings, "languages", "auto")
    if wanted == "all":
        return None
    if wanted == "auto":
        found = checkpoint_languages(str(served.lm.path))
        return list(found) if found else None
    return [family(x.strip()) for x in wanted.split(",") if x.strip()]


def check_language(served, settings, language: str) -> None:
    """Raise LanguageOff when the model is not offered for this document's language."""
    offered = languages_for(served, settings)
    if offered is None or family(canonical(language or "")) in offered:
        return
    source = "the checkpoint's metadata" if getattr(settings, "languages", "auto") == "auto" else "the languages setting"
    raise LanguageOff(
        f"{served.name} is for {', '.join(offered)} only ({source}): no suggestions in "
        f"{language or 'files of unknown language'}; set languages = \"all\" to have them anyway"
    )
