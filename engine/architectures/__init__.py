"""The architectures the engine runs: one module here per Hugging Face `model_type`.

Each module declares an `ARCHITECTURE` (below) with everything the rest of the
engine needs to know about it: how its config.json is read and checked, its
nn.Module (whose `embedding` property names the token embedding a tied
`lm_head` shares, engine/decoder.py), the dtype of its KV cache, and the FIM token spellings of the checkpoints published
for it. Adding an architecture is adding a module (and its tests): the registry
finds every module of this package.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass

import torch

from engine.errors import EngineError


@dataclass(frozen=True)
class FimSpelling:
    """The special tokens of one fill-in-the-middle vocabulary (engine/tokenizer.py finds whichever one a
    tokenizer has, engine/prompt.py lays them out)."""

    prefix: str
    suffix: str
    middle: str
    pad: str | None = None
    end: str | None = None  # ends an infill where it is not eos (CodeLlama's ▁<EOT>); generation stops at it
    file_separator: str | None = None  # between files of a repository-level prompt
    repo_name: str | None = None  # before the repository's name
    # The suffix is tokenized as text that goes on from the cursor, without the space a sentencepiece
    # tokenizer puts before a text (CodeLlama's "▁<SUF>{suffix}"). The prefix keeps that space. Byte-level
    # vocabularies add no space, so for them this changes nothing.
    suffix_without_leading_space: bool = False


@dataclass(frozen=True)
class Architecture:
    model_type: str  # config.json's "model_type"
    config_class: type  # an engine.config.ModelConfig subclass: reads and checks config.json (read_fields)
    model_class: type  # an engine.decoder.DecoderLM subclass, built from that config
    cache_dtype: torch.dtype | None = None  # the KV cache's dtype; None: the model's
    fim: tuple[FimSpelling, ...] = ()  # FIM vocabularies of its published checkpoints


@functools.cache
def registry() -> dict[str, Architecture]:
    """model_type -> Architecture, from every module of this package."""
    found = {}
    for module in pkgutil.iter_modules(__path__):
        architecture = getattr(importlib.import_module(f"{__name__}.{module.name}"), "ARCHITECTURE", None)
        if architecture is not None:
            found[architecture.model_type] = architecture
    return dict(sorted(found.items()))


def architecture(model_type: str, source: str = "config.json") -> Architecture:
    try:
        return registry()[model_type]
    except (KeyError, TypeError):
        raise EngineError(f"{source}: unsupported model_type {model_type!r} (supported: {', '.join(registry())})") from None


def fim_spellings() -> list[FimSpelling]:
    """Every FIM vocabulary of every architecture, each once, in registry order."""
    return list(dict.fromkeys(s for a in registry().values() for s in a.fim))
