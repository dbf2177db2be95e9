"""The figures `codegen/stats` answers with: totals since start, the latest completion's, and
each workspace folder's model (folder_status), which editors show (`:CodegenLspStatus`, VS Code's
status item) so that what they say is what the server does."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from lsp_server.folders import origin
from lsp_server.languages import languages_for
from lsp_server.pool import describe
from lsp_server.suggest import Suggestion

if TYPE_CHECKING:
    from lsp_server.folders import FolderSettings
    from lsp_server.lifecycle import ModelLifecycle

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


def folder_status(folders: FolderSettings, models: ModelLifecycle) -> list[dict[str, Any]]:
    """One entry per folder (or documents outside any) whose settings the server has resolved:
    the model it uses, where that setting came from, whether it is loading, ready or failed,
    and which languages it completes."""
    entries = []
    for root, settings in folders.resolved():
        state, error = models.state(settings)
        entry = {
            "root": str(root) if isinstance(root, Path) else None,
            "model": describe(settings),
            "model_source": origin(settings.sources.get("model")),
            "state": state,
            "error": error,
        }
        served = models.pool.ready(settings)
        if served is not None:
            entry["languages"] = languages_for(served, settings)
        entries.append(entry)
    return entries
