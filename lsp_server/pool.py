"""The loaded models, shared by the workspace folders that name the same one.

A served model is keyed by the settings that change what is loaded (model, device,
dtype, quantization, compile). Loading runs in a background thread so the
server keeps answering; a failed load is remembered (and reported once) until
the settings change; a model no folder uses any more is dropped.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from engine.completion import DocumentState
from engine.errors import EngineError
from engine.loaded_model import LoadedModel
from engine.session import SessionStore
from lsp_server import backends
from lsp_server.settings import Settings

log = logging.getLogger(__name__)

ModelKey = tuple  # Settings.engine_key()
T = TypeVar("T")
# A load that takes longer is reported as failed: a checkpoint on a hung network
# drive must not leave the user waiting without a word. Quantizing a 15B model
# on a laptop CPU takes minutes, hence the generous bound.
LOAD_TIMEOUT_S = 900.0


@dataclass
class ServedModel:
    """One loaded model, the KV-cache sessions of the documents it serves and what the
    completion layer keeps of each document (cut points, last suggestion)."""

    key: ModelKey
    lm: LoadedModel  # a remote backend: its TokenizerModel (lsp_server/backends/remote.py)
    sessions: SessionStore
    documents: dict[str, DocumentState] = field(default_factory=dict)
    close: Callable[[], None] = lambda: None  # the backend's (a remote client's connections and thread)

    @property
    def name(self) -> str:
        return self.key[0] or "the demo model"

    def document_state(self, uri: str) -> DocumentState:
        return self.documents.setdefault(uri, DocumentState())


def describe(settings: Settings) -> str:
    return settings.model or "the demo model"


class ModelPool:
    def __init__(self, load_timeout_s: float = LOAD_TIMEOUT_S) -> None:
        self.load_timeout_s = load_timeout_s
        self.served: dict[ModelKey, ServedModel] = {}
        self.loading: dict[ModelKey, asyncio.Future] = {}
        self.failed: dict[ModelKey, str] = {}

    def ready(self, settings: Settings) -> ServedModel | None:
        return self.served.get(settings.engine_key())

    def needs_loading(self, settings: Settings) -> bool:
        key = settings.engine_key()
        return key not in self.served and key not in self.loading and key not in self.failed

    async def load(self, settings: Settings, progress: Callable[[int], None] = lambda percent: None) -> ServedModel:
        """Load in a background thread (which calls progress with the percentage done); raises
        EngineError (remembered, with the setting's source)."""
        key = settings.engine_key()
        future = in_daemon_thread(self._load_blocking, settings, progress)
        self.loading[key] = future
        try:
            served = await within(future, self.load_timeout_s, f"loading took more than {self.load_timeout_s:.0f} s")
        except EngineError as exc:
            source = settings.sources.get("model", "default settings")
            message = f"cannot load {describe(settings)} ({source}: model): {exc}"
            self.failed[key] = message
            raise EngineError(message) from None
        finally:
            self.loading.pop(key, None)
        self.served[key] = served
        return served

    @staticmethod
    def _load_blocking(settings: Settings, progress: Callable[[int], None] = lambda percent: None) -> ServedModel:
        backend = backends.load(settings, progress)  # the local engine, or a remote server's client (lsp_server/backends/)
        return ServedModel(settings.engine_key(), backend.lm, backend.sessions, close=backend.close)

    def retain(self, keys: set[ModelKey]) -> list[ServedModel]:
        """Drop the models not in keys (and forget failures, so a changed setting retries); returns
        them, for their close() to be called where no generation uses them (the worker)."""
        self.failed = {k: v for k, v in self.failed.items() if k in keys}
        dropped = [self.served.pop(key) for key in list(self.served) if key not in keys]
        for served in dropped:
            log.info("unloading %s: no workspace folder uses it", served.name)
        if dropped:
            gc.collect()
        return dropped

    def forget_failures(self) -> None:
        self.failed.clear()

    def names(self) -> list[str]:
        return sorted(served.name for served in self.served.values())

    def drop_document(self, uri: str) -> None:
        """Free the document's caches (call it on the generation worker: sessions are its alone)."""
        for served in list(self.served.values()):
            served.sessions.drop(uri)
            served.documents.pop(uri, None)


def in_daemon_thread(work: Callable[..., T], *args) -> asyncio.Future:
    """work(*args) in a new daemon thread, as a future of the running loop.

    A daemon thread, not the loop's default executor: the interpreter (and
    asyncio.run) wait for executor threads at exit, so a load stuck on a slow
    disk would keep a server whose editor has gone alive.
    """
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(outcome: str, value) -> None:
        if not future.done():  # it may have been cancelled by a timeout
            getattr(future, outcome)(value)

    def run() -> None:
        try:
            outcome, value = "set_result", work(*args)
        except BaseException as exc:  # delivered to the awaiting coroutine
            outcome, value = "set_exception", exc
        try:
            loop.call_soon_threadsafe(settle, outcome, value)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass

    threading.Thread(target=run, name=f"codegen-lsp-{getattr(work, '__name__', 'work')}", daemon=True).start()
    return future


async def within(future: asyncio.Future, timeout_s: float, message: str):
    """The future's result, or EngineError(message) once timeout_s has passed."""
    try:
        return await asyncio.wait_for(future, timeout_s)
    except asyncio.TimeoutError:
        raise EngineError(message) from None
