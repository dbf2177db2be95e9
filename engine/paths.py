"""Where things are kept on disk: our cache, the Hugging Face hub cache, the demo model.

No torch here: the language server's settings and command line import it.
"""

from __future__ import annotations

import os
from pathlib import Path

# The small model shipped with the project (package data), used when no model is configured.
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"


def _from_environment(*names: str) -> Path | None:
    for name in names:
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    return None


def user_cache_dir(*parts: str) -> Path:
    """$XDG_CACHE_HOME (else ~/.cache) joined with parts."""
    return (_from_environment("XDG_CACHE_HOME") or Path.home() / ".cache").joinpath(*parts)


def cache_dir() -> Path:
    """Our cache: quantized weights, CPU kernels and their choice ($CODEGEN_LSP_CACHE overrides)."""
    return _from_environment("CODEGEN_LSP_CACHE") or user_cache_dir("codegen-lsp")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it."""
    home = _from_environment("HF_HOME")
    return (_from_environment("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")
            or (home / "hub" if home else user_cache_dir("huggingface", "hub")))  # fmt: skip
