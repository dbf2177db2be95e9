"""The language server's protocol glue: pygls handlers, each a few lines, over

- documents.py: the open documents and LSP position conversion,
- folders.py: the settings of each workspace folder,
- lifecycle.py (over pool.py): loading and unloading models, with progress,
- scheduler.py: when generations run (debounce, newest first, cancellation),
- suggest.py: one suggestion from plain values, and stats.py: codegen/stats.

Requests that arrive before their model is loaded get an empty result. Nothing
here blocks the event loop: models load in background threads and generations
run in the scheduler's worker.
"""

from __future__ import annotations

import logging
import os
import threading
from functools import partial
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from engine.errors import EngineError
from lsp_server.backends.remote import RemoteError
from lsp_server.documents import Document, DocumentStore
from lsp_server.folders import FolderSettings
from lsp_server.languages import LanguageOff, check_language
from lsp_server.lifecycle import ModelLifecycle
from lsp_server.methods import STATS
from lsp_server.pool import ModelPool, ServedModel
from lsp_server.postprocess import language_of
from lsp_server.scheduler import Scheduler, Superseded
from lsp_server.settings import Settings
from lsp_server.stats import Stats, folder_status
from lsp_server.suggest import Suggestion, suggest

log = logging.getLogger("codegen-lsp.server")

EXIT_GRACE_S = 2.0  # how long a generation gets to see its cancel flag before the process ends


class Protocol(LanguageServerProtocol):
    """pygls' protocol with three of its built-in handlers replaced (the documented way to change
    them: a protocol class with methods under the same @lsp_method names)."""

    def __init__(self, server: CodegenServer, converter) -> None:
        super().__init__(server, converter)
        self.codegen = server

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams):
        # UTF-8 whenever the client offers it: pygls takes the client's first choice.
        general = params.capabilities.general
        offered = list(general.position_encodings or []) if general else []
        if types.PositionEncodingKind.Utf8 in offered:
            general.position_encodings = [types.PositionEncodingKind.Utf8]
        return (yield from super().lsp_initialize(params))

    # pygls' built-in didOpen/didChange/didClose keep pygls' own copy of each document, whose
    # TextDocument splits lines with str.splitlines() (also at form feeds, U+2028, ...) and so
    # disagrees with LSP positions (tests/test_server_documents.py checks that it still does).
    # Ours (documents.py) replaces that copy instead of running beside it.

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams) -> None:
        self.codegen.did_open(params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams) -> None:
        self.codegen.did_change(params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams) -> None:
        self.codegen.did_close(params.text_document.uri)

    def structure_message(self, data: dict[str, Any]):
        # A request whose params do not parse: pygls 2.1 logs the error raised here and never
        # answers (the reader drops the message), so a client would wait forever. No public hook
        # sends that answer, hence _send_response; tests/test_server.py
        # (test_bad_input_never_breaks_the_server) fails if this stops working.
        try:
            return super().structure_message(data)
        except Exception:
            if "method" in data and data.get("id") is not None:
                error = types.ResponseError(code=types.ErrorCodes.InvalidParams, message=f"invalid params for {data['method']}")
                self._send_response(data["id"], error=error)
            raise


class CodegenServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("codegen-lsp", "0.1.0", protocol_cls=Protocol)
        self.documents = DocumentStore()
        self.folders = FolderSettings(self, lambda message: self.report(message, types.MessageType.Warning))
        self.models = ModelLifecycle(self, ModelPool(), self.report)
        self.scheduler = Scheduler()
        self.stats = Stats()
        self.reported: set[str] = set()
        self.outages: dict[tuple, set[str]] = {}  # a remote backend's failures since its server last answered
        self.shutdown_requested = False

    @property
    def encoding(self) -> str:
        encoding = self.workspace.position_encoding
        return str(getattr(encoding, "value", encoding) or "utf-16")

    def report_server_error(self, error: Exception, source) -> None:
        log.error("%s: %s", getattr(source, "__name__", source), error)  # logged, never a popup

    def report(self, message: str, kind: types.MessageType = types.MessageType.Error) -> None:
        """Tell the user once (window/showMessage), then only in the log (window/logMessage)."""
        log.warning("%s", message)
        if message not in self.reported:
            self.reported.add(message)
            self.window_show_message(types.ShowMessageParams(type=kind, message=f"codegen-lsp: {message}"))
        else:
            self.window_log_message(types.LogMessageParams(type=kind, message=f"codegen-lsp: {message}"))

    async def settings_changed(self, pushed: Any = None) -> None:
        await self.folders.editor_changed(pushed)
        self.reported.clear()  # a problem still there after the change is worth saying again
        self.outages.clear()
        for dropped in self.models.settings_changed(self.folders.in_use(list(self.documents.documents))):
            self.scheduler.on_worker(dropped.close)  # after the generation that may still use it

    def did_open(self, params: types.DidOpenTextDocumentParams) -> None:
        item = params.text_document
        self.documents.open(item.uri, item.text, item.version, item.language_id)
        self.models.ensure(self.folders.for_document(item.uri))

    def did_change(self, params: types.DidChangeTextDocumentParams) -> None:
        document = params.text_document
        self.documents.change(document.uri, document.version, params.content_changes, self.encoding)

    def did_close(self, uri: str) -> None:
        self.documents.close(uri)
        self.scheduler.cancel(uri)
        self.scheduler.on_worker(lambda: self.models.pool.drop_document(uri))

    async def suggestion_at(self, uri: str, position: types.Position) -> tuple[str, types.Range] | None:
        """The suggestion at position and the empty range it goes in, or None (unknown document,
        model not ready, superseded, nothing to suggest)."""
        document = self.documents.get(uri)
        if document is None:
            log.info("completion asked for a document that is not open: %s", uri)
            return None
        offset = document.offset_at(position.line, position.character, self.encoding)
        settings = self.folders.for_document(uri)
        served = self.models.ready(settings)
        suggestion = served and await self.scheduled_suggestion(served, document, offset, settings)
        if not (suggestion and suggestion.text):
            return None
        here = types.Position(*document.position_at(offset, self.encoding))
        return suggestion.text, types.Range(start=here, end=here)

    async def scheduled_suggestion(self, served: ServedModel, document: Document, offset: int,
                                   settings: Settings) -> Suggestion | None:  # fmt: skip
        """suggest() in the scheduler's worker; failures are reported and cost this suggestion only."""
        uri, language = document.uri, language_of(document.language_id, document.uri)
        try:
            check_language(served, settings, language)
        except LanguageOff as exc:  # a model trained on other languages: say so once, answer nothing
            self.report(str(exc), types.MessageType.Info)
            return None
        # The scheduler calls work(cancel) in its worker, with the text as it is now.
        work = partial(self.stats.measure, served.name, partial(suggest, served, uri, document.text, offset, language, settings))
        request = self.protocol.msg_id
        try:
            result = await self.scheduler.run(uri, settings.debounce_ms, work)
        except Superseded:
            log.info("request %s superseded", request)
            return None
        except EngineError as exc:  # e.g. settings that leave no room in the model's window, a server down
            log.warning("request %s: %s", request, exc)
            if isinstance(exc, RemoteError):  # shown once per outage: again once the server has answered
                self.outages.setdefault(served.key, set()).add(str(exc))
            self.report(str(exc), types.MessageType.Warning)
            return None
        except Exception as exc:  # a bug must cost one suggestion, not every request after it
            log.exception("request %s failed", request)
            self.report(f"cannot complete with {served.name}: {type(exc).__name__}: {exc}")
            return None
        s = result.stats
        if getattr(s, "response_ms", 0) > 0:  # a remote server answered: the outage is over
            self.reported -= self.outages.pop(served.key, set())
        log.info(
            "request %s %s@%d: %s, prompt %d (reused %d, prefilled %d), generated %d, ttft %.0f ms, total %.0f ms",
            request, uri, offset, result.finish_reason, s.prompt_tokens, s.reused_tokens, s.prefilled_tokens,
            s.generated_tokens, s.time_to_first_token_ms, s.total_ms,
        )  # fmt: skip
        return result


server = CodegenServer()


@server.feature(types.INITIALIZE)
def initialize(ls: CodegenServer, params: types.InitializeParams) -> None:
    ls.folders.init_options = params.initialization_options
    log.info("position encoding %s", ls.encoding)


@server.feature(types.INITIALIZED)
async def initialized(ls: CodegenServer, params: types.InitializedParams) -> None:
    await ls.settings_changed()


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
async def did_change_configuration(ls: CodegenServer, params: types.DidChangeConfigurationParams) -> None:
    await ls.settings_changed(pushed=params.settings)


@server.feature(types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)
async def did_change_folders(ls: CodegenServer, params: types.DidChangeWorkspaceFoldersParams) -> None:
    await ls.settings_changed()


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def inline_completion(ls: CodegenServer, params: types.InlineCompletionParams) -> types.InlineCompletionList:
    found = await ls.suggestion_at(params.text_document.uri, params.position)
    items = [types.InlineCompletionItem(insert_text=found[0], range=found[1])] if found else []
    return types.InlineCompletionList(items=items)


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[".", "(", " "]))
async def completion(ls: CodegenServer, params: types.CompletionParams) -> types.CompletionList:
    """For clients without inline completion: one item carrying the whole suggestion."""
    found = await ls.suggestion_at(params.text_document.uri, params.position)
    return types.CompletionList(is_incomplete=True, items=[completion_item(*found)] if found else [])


def completion_item(text: str, where: types.Range) -> types.CompletionItem:
    preview = text.strip().splitlines()[0]
    return types.CompletionItem(
        label=preview if len(preview) <= 40 else preview[:39] + "…",
        kind=types.CompletionItemKind.Text,
        detail="codegen-lsp",
        documentation=text,
        text_edit=types.TextEdit(range=where, new_text=text),
        sort_text="0",
    )


@server.feature(STATS)
def stats(ls: CodegenServer, params: Any = None) -> dict[str, Any]:
    return {**ls.stats.to_dict(), "models": ls.models.pool.names(), "folders": folder_status(ls.folders, ls.models),
            "threads": sorted(thread.name for thread in threading.enumerate())}  # fmt: skip


@server.feature(types.SHUTDOWN)
def shutdown(ls: CodegenServer, params: Any = None) -> None:
    ls.shutdown_requested = True
    ls.scheduler.shutdown()


class UnknownCancelFilter(logging.Filter):
    """A client cancels requests that were already answered all the time; pygls logs each at
    WARNING on stderr, which editors show as errors (Neovim's LSP log says ERROR)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Cancel notification for unknown message id")


def serve(tcp: str | None = None) -> int:
    """Run the server over stdio, or on HOST:PORT; the exit code once the client has gone.

    Over stdio the process ends as soon as the client does (exit, or stdin closed),
    whatever a model load or a generation is doing: nothing may outlive its editor.
    """
    logging.getLogger("pygls.protocol.json_rpc").addFilter(UnknownCancelFilter())
    if tcp:
        host, _, port = tcp.rpartition(":")
        server.start_tcp(host or "127.0.0.1", int(port))
        return 0
    server.start_io()
    log.info("client gone: exiting")
    server.scheduler.shutdown(wait_s=EXIT_GRACE_S)
    logging.shutdown()
    # Without shutdown first, exit code 1 (LSP); os._exit, since the interpreter would
    # otherwise wait for a worker thread in the middle of a long prefill.
    os._exit(0 if server.shutdown_requested else 1)
