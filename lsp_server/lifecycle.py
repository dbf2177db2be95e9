"""When models load and unload, and how the editor hears of it.

A load starts when a folder's settings name a model that is not loaded (at
start, on a settings change, when a document opens or asks for a suggestion).
It is shown as work-done progress where the client supports it, and its
outcome is sent as the notification `codegen/modelStatus` (lsp_server/methods.py),
which editors read instead of the progress message's text. A failure is also
shown once (window/showMessage).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from engine.errors import EngineError
from lsp_server.methods import FAILED, MODEL_STATUS, READY
from lsp_server.pool import ModelPool, ServedModel, describe
from lsp_server.settings import Settings

log = logging.getLogger(__name__)

PROGRESS_CREATE_TIMEOUT_S = 10.0


def loaded_message(served: ServedModel, settings: Settings) -> str:
    """What a finished load says; a remote backend's names where its suggestions come from."""
    if settings.backend == "local":
        return f"loaded {served.name} in {served.lm.load_seconds:.1f}s"
    return (f"loaded the tokenizer of {served.name} in {served.lm.load_seconds:.1f}s; suggestions from "
            f"{settings.endpoint.rstrip('/')} (backend {settings.backend})")  # fmt: skip


class ModelLifecycle:
    def __init__(self, server: LanguageServer, pool: ModelPool, report: Callable[[str], None]) -> None:
        self.server = server
        self.pool = pool
        self.report = report  # tells the user once
        self.tasks: set[asyncio.Task] = set()
        self.starting: set[tuple] = set()  # keys whose load task is setting up progress
        self.progress_count = 0

    def ready(self, settings: Settings) -> ServedModel | None:
        """The loaded model these settings name; None (and its load started) if there is none yet."""
        served = self.pool.ready(settings)
        if served is None:
            self.ensure(settings)
        return served

    def ensure(self, settings: Settings) -> None:
        key = settings.engine_key()
        if key not in self.starting and self.pool.needs_loading(settings):
            self.starting.add(key)  # until pool.load takes over, after the progress set-up
            task = asyncio.get_running_loop().create_task(self.load(settings))
            self.tasks.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self.tasks.discard)

    def state(self, settings: Settings) -> tuple[str, str | None]:
        """Where the model these settings name stands: ready, failed (with why), loading or not loaded."""
        key = settings.engine_key()
        if key in self.pool.served:
            return READY, None
        if key in self.pool.failed:
            return FAILED, self.pool.failed[key]
        if key in self.pool.loading or key in self.starting:
            return "loading", None
        return "not loaded", None

    def settings_changed(self, wanted: list[Settings]) -> list[ServedModel]:
        """Unload what no folder names any more, retry failures, load what is new; returns what
        was unloaded, to be closed once no generation uses it."""
        self.pool.forget_failures()
        dropped = self.pool.retain({s.engine_key() for s in wanted})
        for settings in wanted:
            self.ensure(settings)
        return dropped

    async def load(self, settings: Settings) -> None:
        token = await self._begin_progress(settings)
        status, message = FAILED, ""
        try:
            loading = self.pool.load(settings, self._reporter(token, settings))
            self.starting.discard(settings.engine_key())
            served = await loading
            status, message = READY, loaded_message(served, settings)
            log.info("%s", message)
        except EngineError as exc:
            message = str(exc)
        except Exception as exc:  # a bug while loading must not take the server down
            log.exception("loading %s failed", describe(settings))
            message = f"cannot load {describe(settings)}: {exc}"
        if status == FAILED:
            self.report(message)
        if token is not None:
            self.server.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))
        self.server.protocol.notify(MODEL_STATUS, {"model": describe(settings), "status": status, "message": message})

    def _reporter(self, token: str | None, settings: Settings) -> Callable[[int], None]:
        """progress(percent) for the loading thread: a work-done report sent from the event loop."""
        if token is None:
            return lambda percent: None
        loop = asyncio.get_running_loop()
        message = f"loading {describe(settings)}"

        def report(percent: int) -> None:
            progress = types.WorkDoneProgressReport(message=message, percentage=percent)
            loop.call_soon_threadsafe(self.server.work_done_progress.report, token, progress)

        return report

    async def _begin_progress(self, settings: Settings) -> str | None:
        window = self.server.client_capabilities.window
        if not (window and window.work_done_progress):
            return None
        self.progress_count += 1
        token = f"codegen-lsp/load/{self.progress_count}"
        try:
            await asyncio.wait_for(self.server.work_done_progress.create_async(token), PROGRESS_CREATE_TIMEOUT_S)
            begin = types.WorkDoneProgressBegin(title="codegen-lsp", message=f"loading {describe(settings)}", percentage=0)
            self.server.work_done_progress.begin(token, begin)
        except Exception as exc:
            log.warning("no progress reporting: %s", exc)
            return None
        return token
