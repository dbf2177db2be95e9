"""Loaded models, shared by the workspace folders that name the same one.

An engine is keyed by the settings that change what is loaded (model, device,
dtype, quantization, compile). Loading runs in a background thread so the
server keeps answering; a failed load is remembered (and reported once) until
the settings change; an engine no folder uses any more is dropped.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass

from engine import EngineError, LoadedModel, load_model
from engine.session import SessionStore
from lsp_server.settings import Settings

log = logging.getLogger(__name__)

EngineKey = tuple[str, str, str, str, str]


@dataclass
class Engine:
    """One loaded model and the KV-cache sessions of the documents it serves."""

    key: EngineKey
    lm: LoadedModel
    sessions: SessionStore

    @property
    def name(self) -> str:
        return self.key[0] or "the demo model"


def describe(settings: Settings) -> str:
    return settings.model or "the demo model"


class Models:
    def __init__(self) -> None:
        self.engines: dict[EngineKey, Engine] = {}
        self.loading: dict[EngineKey, asyncio.Future] = {}
        self.failed: dict[EngineKey, str] = {}

    def ready(self, settings: Settings) -> Engine | None:
        return self.engines.get(settings.engine_key())

    def needs_loading(self, settings: Settings) -> bool:
        key = settings.engine_key()
        return key not in self.engines and key not in self.loading and key not in self.failed

    async def load(self, settings: Settings) -> Engine:
        """Load in a background thread; raises EngineError (remembered, with the setting's source)."""
        key = settings.engine_key()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self._load_blocking, settings)
        self.loading[key] = future
        try:
            engine = await future
        except EngineError as exc:
            source = settings.sources.get("model", "default settings")
            message = f"cannot load {describe(settings)} ({source}: model): {exc}"
            self.failed[key] = message
            raise EngineError(message) from None
        finally:
            self.loading.pop(key, None)
        self.engines[key] = engine
        return engine

    @staticmethod
    def _load_blocking(settings: Settings) -> Engine:
        lm = load_model(
            settings.model or None,
            device=settings.device,
            dtype=settings.dtype,
            quantization=settings.quantization,
            compile=settings.compile,
        )
        return Engine(settings.engine_key(), lm, SessionStore(lm, settings.cache_memory_mb))

    def retain(self, keys: set[EngineKey]) -> list[EngineKey]:
        """Drop engines not in keys (and forget failures, so a changed setting retries)."""
        self.failed = {k: v for k, v in self.failed.items() if k in keys}
        dropped = [key for key in self.engines if key not in keys]
        for key in dropped:
            log.info("unloading %s: no workspace folder uses it", key[0] or "the demo model")
            del self.engines[key]
        if dropped:
            gc.collect()
        return dropped

    def forget_failures(self) -> None:
        self.failed.clear()

    def drop_document(self, uri: str) -> None:
        for engine in self.engines.values():
            engine.sessions.drop(uri)
