"""`codegen-lsp complete`: ask a real server, over stdio, for the suggestion at a position.

It goes through the same path an editor does (initialize, didOpen,
textDocument/inlineCompletion, codegen/stats), so what it prints is what an
editor would show.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from engine.errors import EngineError
from lsp_server.methods import FAILED, MODEL_STATUS, SECTION, STATS
from lsp_server.postprocess import EXTENSIONS
from lsp_server.settings import PROJECT_FILE

log = logging.getLogger("codegen-lsp.client")
LOAD_TIMEOUT_S = 1800.0


@dataclass
class CompleteResult:
    text: str
    stats: dict[str, Any]


def project_root(path: Path) -> Path:
    """The folder an editor would open: the nearest one with a project file or .git."""
    for folder in [path.parent, *path.parent.parents]:
        if any((folder / name).exists() for name in (PROJECT_FILE, "pyproject.toml", ".git")):
            return folder
    return path.parent


async def suggestion_over_stdio(
    path: Path, line: int, character: int, settings: dict[str, Any], verbose: bool = False
) -> CompleteResult:
    """The inline completion at (line, character) of path (0-based, UTF-16).

    settings are sent as editor settings. When they name a model, no workspace
    folder is given, so a project file cannot override what the command line asked.
    """
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise EngineError(f"cannot read {path}: {exc}") from None
    path = path.resolve()
    client = LanguageClient("codegen-lsp-complete", "0.1.0")
    loaded: asyncio.Future = asyncio.get_running_loop().create_future()

    @client.feature(MODEL_STATUS)
    def model_status(params: Any) -> None:
        if not loaded.done():
            loaded.set_result(_plain(params))

    @client.feature(types.WINDOW_SHOW_MESSAGE)
    def show_message(params: types.ShowMessageParams) -> None:
        if params.type != types.MessageType.Error:  # a load failure is the command's error, from MODEL_STATUS
            print(params.message, file=sys.stderr)

    await client.start_io(sys.executable, "-m", "lsp_server", *(["-v"] if verbose else []), "serve")
    stderr = asyncio.create_task(_forward(client._server.stderr, verbose))
    try:
        root = None if "model" in settings else project_root(path)
        capabilities = types.ClientCapabilities(
            text_document=types.TextDocumentClientCapabilities(
                inline_completion=types.InlineCompletionClientCapabilities()
            ),
        )
        folders = [types.WorkspaceFolder(uri=root.as_uri(), name=root.name)] if root else None
        await client.initialize_async(
            types.InitializeParams(
                capabilities=capabilities,
                workspace_folders=folders,
                initialization_options={SECTION: {"debounce_ms": 0, **settings}},
            )
        )
        client.initialized(types.InitializedParams())
        status = await asyncio.wait_for(loaded, LOAD_TIMEOUT_S)
        if status.get("status") == FAILED:
            raise EngineError(status.get("message", "the model did not load"))
        uri = path.as_uri()
        language = EXTENSIONS.get(path.suffix.lower(), "plaintext")
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(uri=uri, language_id=language, version=1, text=text)
            )
        )
        result = await client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=types.Position(line=line, character=character),
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
            )
        )
        items = result.items if isinstance(result, types.InlineCompletionList) else (result or [])
        suggestion = items[0].insert_text if items else ""
        stats = await client.protocol.send_request_async(STATS, None)
        await client.shutdown_async(None)
        client.exit(None)
        await asyncio.wait_for(client._server.wait(), 30)
        return CompleteResult(suggestion if isinstance(suggestion, str) else suggestion.value, _plain(stats).get("last", {}))
    finally:
        if client._server.returncode is None:
            client._server.kill()
        await client.stop()
        stderr.cancel()


async def _forward(stream: asyncio.StreamReader, verbose: bool) -> None:
    """Drain the server's stderr (a full pipe would block it); show it with --verbose."""
    while line := await stream.readline():
        if verbose:
            sys.stderr.buffer.write(line)
            sys.stderr.flush()


def _plain(value: Any) -> Any:
    """A custom request's result arrives as a namespace object; make it plain JSON."""
    if hasattr(value, "_asdict"):  # pygls turns JSON objects into named tuples
        value = value._asdict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return {k: _plain(v) for k, v in vars(value).items()}
    return value
