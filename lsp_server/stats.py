"""The figures `codegen/stats` answers with: totals since start and the latest completion's."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from lsp_server.suggest import Suggestion

STAT_FIELDS = ("prompt_tokens", "reused_tokens", "prefilled_tokens", "generated_tokens")


@dataclass
class Stats:
    requests: int = 0
    running: bool = False  # a generation is in the worker now
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAT_FIELDS, 0))
    last: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def measure(self, model: str, suggestion: Callable[[threading.Event], Suggestion], cancel: threading.Event) -> Suggestion:
        """suggestion(cancel), with `running` set meanwhile and its figures recorded."""
        self.running = True
        try:
            result = suggestion(cancel)
        finally:
            self.running = False
        self.record(result, model)
        return result

    def record(self, suggestion: Suggestion, model: str) -> None:
        figures = suggestion.stats.to_dict()
        with self.lock:
            self.requests += 1
            for name in STAT_FIELDS:
                self.totals[name] += figures[name]
            self.last = {"backend": "local", **figures, "finish_reason": suggestion.finish_reason, "model": model}

    def to_dict(self) -> dict[str, Any]:
        with self.lock:
            return {"requests": self.requests, **self.totals, "last": dict(self.last), "running": self.running}
