"""The settings of each workspace folder: the editor's settings under the folder's project files.

Editor settings arrive as initializationOptions, as pushed didChangeConfiguration
settings and as answers to workspace/configuration pulls (per folder). A folder's
settings are cached until the editor's change or one of its project files does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from lsp_server.methods import SECTION
from lsp_server.settings import Settings, project_files_stamp, resolve

log = logging.getLogger(__name__)

EDITOR_SOURCES = ("initializationOptions", "workspace/configuration")


def origin(source: str | None) -> str:
    """A setting's source as a user reads it: default, editor, or the project file's path."""
    if not source:
        return "default"
    if source in EDITOR_SOURCES:
        return "editor"
    return f"project file {source}"


class FolderSettings:
    def __init__(self, server: LanguageServer, warn: Callable[[str], None]) -> None:
        self.server = server
        self.warn = warn  # tells the user about a bad settings key or file
        self.init_options: Any = None
        self.configuration: dict[str, Any] = {}  # scope uri ("" = global) -> section `codegen-lsp`
        self.editor_version = 0  # bumped when editor settings change
        self.cache: dict[Path | None, tuple[tuple, int, Settings]] = {}

    def roots(self) -> list[Path]:
        workspace = self.server.workspace
        roots = [to_fs_path(uri) for uri in workspace.folders] or [workspace.root_path]
        return [Path(r) for r in roots if r]

    def root_of(self, uri: str) -> Path | None:
        """The workspace folder holding a document (the deepest one), None if outside all."""
        path = to_fs_path(uri)
        if not path:
            return None
        holding = [r for r in self.roots() if Path(path).is_relative_to(r)]
        return max(holding, key=lambda r: len(r.parts), default=None)

    def for_document(self, uri: str) -> Settings:
        return self.for_root(self.root_of(uri))

    def for_root(self, root: Path | None) -> Settings:
        stamp = project_files_stamp(root)
        cached = self.cache.get(root)
        if cached and cached[0] == stamp and cached[1] == self.editor_version:
            return cached[2]
        scoped = self.configuration.get(root.as_uri() if root else "", self.configuration.get(""))
        editor = list(zip(EDITOR_SOURCES, (self.init_options, scoped)))
        settings, problems = resolve(editor, root)
        for problem in problems:
            self.warn(problem)
        self.cache[root] = (stamp, self.editor_version, settings)
        return settings

    def resolved(self) -> list[tuple[Path | None, Settings]]:
        """(root, settings) of each folder (None: documents outside any) resolved so far."""
        return [(root, settings) for root, (_, _, settings) in list(self.cache.items())]

    def in_use(self, documents: list[str]) -> list[Settings]:
        """The settings of every folder and of every open document's folder."""
        roots: list[Path | None] = list(self.roots()) or [None]
        roots += [self.root_of(uri) for uri in documents]
        return [self.for_root(root) for root in dict.fromkeys(roots)]

    async def editor_changed(self, pushed: Any = None) -> None:
        """After a change of the editor's settings: take pushed ones, then pull every folder's."""
        if isinstance(pushed, dict) and SECTION in pushed:
            self.configuration = {"": pushed[SECTION]}
        await self.pull()
        self.editor_version += 1

    async def pull(self) -> None:
        """Pull section `codegen-lsp` for every folder (and globally) when the client can."""
        workspace_caps = self.server.client_capabilities.workspace
        if not (workspace_caps and workspace_caps.configuration):
            return
        scopes = [""] + [r.as_uri() for r in self.roots()]
        items = [types.ConfigurationItem(section=SECTION, scope_uri=s or None) for s in scopes]
        try:
            values = await self.server.workspace_configuration_async(types.ConfigurationParams(items=items))
        except Exception as exc:  # the client may not answer well; editor settings then stay as they were
            log.warning("workspace/configuration failed: %s", exc)
            return
        self.configuration = dict(zip(scopes, values or []))
