"""What `codegen/stats` says about each workspace folder: the model it uses, where that
setting came from, whether it is loading, loaded or failed, and which languages it
completes. Editors show it (`:CodegenLspStatus`, VS Code's status item) so that what
they say is what the server does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lsp_server.languages import languages_for
from lsp_server.models import describe


def origin(source: str | None) -> str:
    """A setting's source as a user reads it: default, editor, or the project file's path."""
    if not source:
        return "default"
    if source in ("initializationOptions", "workspace/configuration"):
        return "editor"
    return f"project file {source}"


def folder_status(server) -> list[dict[str, Any]]:
    """One entry per folder (or documents outside any) whose settings the server has resolved."""
    entries = []
    for root, (_, _, settings) in list(server.folder_settings.items()):
        key = settings.engine_key()
        engine = server.models.engines.get(key)
        if engine is not None:
            state, error = "ready", None
        elif key in server.models.failed:
            state, error = "failed", server.models.failed[key]
        elif key in server.models.loading or key in server.starting:
            state, error = "loading", None
        else:
            state, error = "not loaded", None
        entry = {
            "root": str(root) if isinstance(root, Path) else None,
            "model": describe(settings),
            "model_source": origin(settings.sources.get("model")),
            "state": state,
            "error": error,
        }
        if engine is not None:
            entry["languages"] = languages_for(engine, settings)
        entries.append(entry)
    return entries
