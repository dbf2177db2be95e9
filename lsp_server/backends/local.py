"""The in-process engine: the checkpoint's weights loaded here, a KV cache per document."""

from __future__ import annotations

from typing import Callable

from engine.loading import load_model
from engine.session import SessionStore
from lsp_server.backends import Backend
from lsp_server.settings import Settings


def load(settings: Settings, progress: Callable[[int], None]) -> Backend:
    lm = load_model(
        settings.model or None,
        device=settings.device,
        dtype=settings.dtype,
        quantization=settings.quantization,
        compile=settings.compile,
        progress=progress,
    )
    return Backend(lm, SessionStore(lm, settings.cache_memory_mb), "local")
