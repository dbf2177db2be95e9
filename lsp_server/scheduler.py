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

    @staticmethod
    def _unless_cancelled(work: Callable[[threading.Event], T], cancel: threading.Event) -> T:
        # A request may be superseded while it waits for the worker: skip it.
        if cancel.is_set():
            raise Superseded()
        return work(cancel)

    def shutdown(self) -> None:
        for cancel in self.latest.values():
            cancel.set()
        self.worker.shutdown(wait=False, cancel_futures=True)
