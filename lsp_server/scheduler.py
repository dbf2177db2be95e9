"""When generations run: off the event loop, one at a time, newest first.

Each request waits `debounce_ms`, then runs in the single worker thread (the
engine's sessions are not shared between threads, and one generation at a
time is what a CPU or one GPU serves best). A newer request for the same
document sets the older one's cancel flag; so does `$/cancelRequest`, which
pygls delivers by cancelling the awaiting coroutine. The engine checks the
flag between decode steps, so stale work stops within one step.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")


class Superseded(Exception):
    """A newer request for the same document replaced this one before it ran."""


class Scheduler:
    def __init__(self) -> None:
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codegen-lsp-generate")
        self.latest: dict[str, threading.Event] = {}  # document -> cancel flag of its newest request

    async def run(self, document: str, debounce_ms: int, work: Callable[[threading.Event], T]) -> T:
        """work(cancel) in the worker thread, unless superseded first (raises Superseded)."""
        cancel = threading.Event()
        previous = self.latest.get(document)
        if previous is not None:
            previous.set()
        self.latest[document] = cancel
        try:
            if debounce_ms > 0:
                await asyncio.sleep(debounce_ms / 1000)
            if cancel.is_set():
                raise Superseded()
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.worker, self._unless_cancelled, work, cancel)
        except asyncio.CancelledError:
            cancel.set()  # $/cancelRequest: the worker stops at its next check
            raise
        finally:
            if self.latest.get(document) is cancel:
                del self.latest[document]

    def cancel(self, document: str) -> None:
        """Stop the document's running or waiting request (it answers empty)."""
        if (cancel := self.latest.get(document)) is not None:
            cancel.set()

    def on_worker(self, work: Callable[[], object]) -> None:
        """Run work in the worker after what is queued: the one place where sessions change hands,
        so a session is never freed while a generation reads it."""
        try:
            self.worker.submit(work)
        except RuntimeError:  # shut down: the process is ending and frees everything
            pass

    @staticmethod
    def _unless_cancelled(work: Callable[[threading.Event], T], cancel: threading.Event) -> T:
        # A request may be superseded while it waits for the worker: skip it.
        if cancel.is_set():
            raise Superseded()
        return work(cancel)

    def shutdown(self, wait_s: float = 0.0) -> bool:
        """Cancel everything and stop the worker; wait up to wait_s for the running generation
        to see its flag. True if the worker has stopped."""
        for cancel in list(self.latest.values()):
            cancel.set()
        stopper = threading.Thread(target=self.worker.shutdown, kwargs={"cancel_futures": True}, daemon=True)
        stopper.start()
        stopper.join(wait_s)
        return not stopper.is_alive()
