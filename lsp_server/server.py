"""The language server: thin pygls handlers over documents, settings, models,
the scheduler and `suggest`.

Requests that arrive before their model is loaded get an empty result; a model
that fails to load is reported once. Nothing here blocks the event loop:
models load in a background thread and generations run in the scheduler's
worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method
from pygls.uris import to_fs_path

from engine import EngineError
from lsp_server import settings as config
from lsp_server.documents import Document, DocumentStore
from lsp_server.languages import LanguageOff, check_language
from lsp_server.models import Models, describe
from lsp_server.postprocess import language_of
from lsp_server.scheduler import Scheduler, Superseded
from lsp_server.status import folder_status
from lsp_server.suggest import Suggestion, suggest

log = logging.getLogger("codegen-lsp.server")

STATS_METHOD = "codegen/stats"
EXIT_GRACE_S = 2.0  # how long a generation gets to see its cancel flag before the process ends
STAT_FIELDS = ("prompt_tokens", "reused_tokens", "prefilled_tokens", "generated_tokens")


class Protocol(LanguageServerProtocol):
    """pygls' protocol with our own document store and malformed params answered.

    The store (documents.py) replaces pygls' workspace documents, whose line
    splitting differs from LSP's. A request whose params do not parse gets an
    InvalidParams error response; pygls would otherwise log it and never answer.
    """

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams):
        # UTF-8 whenever the client offers it (pygls would take the client's first choice).
        general = params.capabilities.general
        offered = list(general.position_encodings or []) if general else []
        if types.PositionEncodingKind.Utf8 in offered:
            general.position_encodings = [types.PositionEncodingKind.Utf8]
        return (yield from super().lsp_initialize(params))

    def _user(self, method: str, params: Any):
        if (handler := self.fm.features.get(method)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params):
        yield from self._user(types.TEXT_DOCUMENT_DID_OPEN, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params):
        yield from self._user(types.TEXT_DOCUMENT_DID_CHANGE, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params):
        yield from self._user(types.TEXT_DOCUMENT_DID_CLOSE, params)

    def structure_message(self, data: dict[str, Any]):
        try:
            return super().structure_message(data)
        except Exception as exc:
            if "method" in data and data.get("id") is not None:
                error = types.ResponseError(code=types.ErrorCodes.InvalidParams, message=f"invalid params for {data['method']}")
                self._send_response(data["id"], error=error)
            raise exc


@dataclass
class Stats:
    """Totals since start and the figures of the most recent completion (codegen/stats)."""

    requests: int = 0
    running: bool = False  # a generation is in the worker now
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAT_FIELDS, 0))
    last: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, suggestion: Suggestion, model: str) -> None:
        figures = suggestion.stats.to_dict()
        with self.lock:
            self.requests += 1
            for name in STAT_FIELDS:
                self.totals[name] += figures[name]
            self.last = {**figures, "finish_reason": suggestion.finish_reason, "model": model}

    def to_dict(self) -> dict[str, Any]:
        with self.lock:
            return {"requests": self.requests, **self.totals, "last": dict(self.last), "running": self.running}


class CodegenServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("codegen-lsp", "0.1.0", protocol_cls=Protocol)
        self.documents = DocumentStore()
        self.models = Models()
        self.scheduler = Scheduler()
        self.stats = Stats()
        self.init_options: Any = None
        self.configuration: dict[str, Any] = {}  # scope uri ("" = global) -> section `codegen-lsp`
        self.editor_version = 0  # bumped when editor settings change
        self.folder_settings: dict[Path | None, tuple[tuple, int, config.Settings]] = {}
        self.reported: set[str] = set()
        self.progress_count = 0
        self.tasks: set[asyncio.Task] = set()
        self.starting: set[tuple] = set()  # engine keys whose load task is setting up progress
        self.shutdown_requested = False

    # -- plumbing ----------------------------------------------------------

    @property
    def encoding(self) -> str:
        encoding = self.workspace.position_encoding
        return str(getattr(encoding, "value", encoding) or "utf-16")

    def report_server_error(self, error: Exception, source) -> None:
        log.error("%s: %s", getattr(source, "__name__", source), error)  # logged, never a popup

    def report(self, message: str, kind: types.MessageType = types.MessageType.Error) -> None:
        """Tell the user once (window/showMessage) and log it."""
        log.warning("%s", message)
        if message not in self.reported:
            self.reported.add(message)
            self.window_show_message(types.ShowMessageParams(type=kind, message=f"codegen-lsp: {message}"))

    def folder_roots(self) -> list[Path]:
        roots = [to_fs_path(uri) for uri in self.workspace.folders]
        if not roots and self.workspace.root_path:
            roots = [self.workspace.root_path]
        return [Path(r) for r in roots if r]

    def root_of(self, uri: str) -> Path | None:
        """The workspace folder holding a document (the deepest one), None if outside all."""
        path = to_fs_path(uri)
        if not path:
            return None
        holding = [r for r in self.folder_roots() if Path(path).is_relative_to(r)]
        return max(holding, key=lambda r: len(r.parts), default=None)

    def editor_layers(self, root: Path | None) -> list[tuple[str, Any]]:
        scoped = self.configuration.get(root.as_uri() if root else "", self.configuration.get(""))
        return [("initializationOptions", self.init_options), ("workspace/configuration", scoped)]

    def settings_for(self, root: Path | None) -> config.Settings:
        stamp = config.project_files_stamp(root)
        cached = self.folder_settings.get(root)
        if cached and cached[0] == stamp and cached[1] == self.editor_version:
            return cached[2]
        settings, problems = config.resolve(self.editor_layers(root), root)
        for problem in problems:
            self.report(problem, types.MessageType.Warning)
        self.folder_settings[root] = (stamp, self.editor_version, settings)
        return settings

    async def refresh_configuration(self) -> None:
        """Pull section `codegen-lsp` for every folder (and globally) when the client can."""
        workspace_caps = self.client_capabilities.workspace
        if not (workspace_caps and workspace_caps.configuration):
            return
        scopes = [""] + [r.as_uri() for r in self.folder_roots()]
        items = [types.ConfigurationItem(section=config.SECTION, scope_uri=s or None) for s in scopes]
        try:
            values = await self.workspace_configuration_async(types.ConfigurationParams(items=items))
        except Exception as exc:  # the client may not answer well; editor settings then stay as they were
            log.warning("workspace/configuration failed: %s", exc)
            return
        self.configuration = dict(zip(scopes, values or []))

    def settings_in_use(self) -> list[config.Settings]:
        roots: list[Path | None] = list(self.folder_roots()) or [None]
        roots += [self.root_of(uri) for uri in self.documents.documents]
        return [self.settings_for(root) for root in dict.fromkeys(roots)]

    async def settings_changed(self) -> None:
        self.editor_version += 1
        self.models.forget_failures()
        self.reported.clear()  # a problem still there after the change is worth saying again
        wanted = self.settings_in_use()
        self.models.retain({s.engine_key() for s in wanted})
        for settings in wanted:
            self.ensure_model(settings)

    # -- models --------------------------------------------------------------

    def ensure_model(self, settings: config.Settings) -> None:
        key = settings.engine_key()
        if key not in self.starting and self.models.needs_loading(settings):
            self.starting.add(key)  # until models.load takes over, after the progress set-up
            task = asyncio.get_running_loop().create_task(self.load_model(settings))
            self.tasks.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self.tasks.discard)

    async def load_model(self, settings: config.Settings) -> None:
        token = None
        window = self.client_capabilities.window
        if window and window.work_done_progress:
            self.progress_count += 1
            token = f"codegen-lsp/load/{self.progress_count}"
            try:
                await asyncio.wait_for(self.work_done_progress.create_async(token), 10)
                self.work_done_progress.begin(
                    token, types.WorkDoneProgressBegin(title="codegen-lsp", message=f"loading {describe(settings)}")
                )
            except Exception as exc:
                log.warning("no progress reporting: %s", exc)
                token = None
        try:
            loading = self.models.load(settings)
            self.starting.discard(settings.engine_key())
            engine = await loading
            done = f"loaded {engine.name} in {engine.lm.load_seconds:.1f}s"
            log.info("%s", done)
        except EngineError as exc:
            done = "failed"
            self.report(str(exc))
        except Exception as exc:  # a bug while loading must not take the server down
            done = "failed"
            log.exception("loading %s failed", describe(settings))
            self.report(f"cannot load {describe(settings)}: {exc}")
        if token is not None:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=done))

    # -- completion ------------------------------------------------------------

    async def suggestion_at(self, uri: str, position: types.Position) -> tuple[Suggestion, Document, int] | None:
        """The suggestion at position, or None (unknown document, model not ready, superseded)."""
        document = self.documents.get(uri)
        if document is None:
            log.info("completion asked for a document that is not open: %s", uri)
            return None
        offset = document.offset_at(position.line, position.character, self.encoding)
        settings = self.settings_for(self.root_of(uri))
        engine = self.models.ready(settings)
        if engine is None:
            self.ensure_model(settings)
            return None
        text, language = document.text, language_of(document.language_id, uri)
        try:
            check_language(engine, settings, language)
        except LanguageOff as exc:  # a model trained on other languages: say so once, answer nothing
            self.report(str(exc), types.MessageType.Info)
            return None

        def work(cancel: threading.Event) -> Suggestion:
            self.stats.running = True
            try:
                result = suggest(engine, uri, text, offset, language, settings, cancel)
            finally:
                self.stats.running = False
            self.stats.record(result, engine.name)
            return result

        request = self.protocol.msg_id
        try:
            result = await self.scheduler.run(uri, settings.debounce_ms, work)
        except Superseded:
            log.info("request %s superseded", request)
            return None
        except EngineError as exc:  # e.g. settings that leave no room in the model's window
            log.warning("request %s: %s", request, exc)
            self.report(str(exc), types.MessageType.Warning)
            return None
        except Exception as exc:  # a bug must cost one suggestion, not every request after it
            log.exception("request %s failed", request)
            self.report(f"cannot complete with {engine.name}: {type(exc).__name__}: {exc}")
            return None
        s = result.stats
        log.info(
            "request %s %s@%d: %s, prompt %d (reused %d, prefilled %d), generated %d, ttft %.0f ms, total %.0f ms",
            request, uri, offset, result.finish_reason, s.prompt_tokens, s.reused_tokens, s.prefilled_tokens,
            s.generated_tokens, s.time_to_first_token_ms, s.total_ms,
        )  # fmt: skip
        return result, document, offset


server = CodegenServer()


@server.feature(types.INITIALIZE)
def initialize(ls: CodegenServer, params: types.InitializeParams) -> None:
    ls.init_options = params.initialization_options
    log.info("position encoding %s", ls.encoding)


@server.feature(types.INITIALIZED)
async def initialized(ls: CodegenServer, params: types.InitializedParams) -> None:
    await ls.refresh_configuration()
    await ls.settings_changed()


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
async def did_change_configuration(ls: CodegenServer, params: types.DidChangeConfigurationParams) -> None:
    if isinstance(params.settings, dict) and config.SECTION in params.settings:
        ls.configuration = {"": params.settings[config.SECTION]}  # pushed settings
    await ls.refresh_configuration()
    await ls.settings_changed()


@server.feature(types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)
async def did_change_folders(ls: CodegenServer, params: types.DidChangeWorkspaceFoldersParams) -> None:
    await ls.refresh_configuration()
    await ls.settings_changed()


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: CodegenServer, params: types.DidOpenTextDocumentParams) -> None:
    item = params.text_document
    ls.documents.open(item.uri, item.text, item.version, item.language_id)
    ls.ensure_model(ls.settings_for(ls.root_of(item.uri)))


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: CodegenServer, params: types.DidChangeTextDocumentParams) -> None:
    doc = params.text_document
    ls.documents.change(doc.uri, doc.version, params.content_changes, ls.encoding)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: CodegenServer, params: types.DidCloseTextDocumentParams) -> None:
    uri = params.text_document.uri
    ls.documents.close(uri)
    ls.scheduler.cancel(uri)
    ls.scheduler.on_worker(lambda: ls.models.drop_document(uri))


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def inline_completion(ls: CodegenServer, params: types.InlineCompletionParams) -> types.InlineCompletionList:
    found = await ls.suggestion_at(params.text_document.uri, params.position)
    if found is None or not found[0].text:
        return types.InlineCompletionList(items=[])
    result, document, offset = found
    line, character = document.position_at(offset, ls.encoding)
    here = types.Position(line=line, character=character)
    item = types.InlineCompletionItem(insert_text=result.text, range=types.Range(start=here, end=here))
    return types.InlineCompletionList(items=[item])


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[".", "(", " "]))
async def completion(ls: CodegenServer, params: types.CompletionParams) -> types.CompletionList:
    """For clients without inline completion: one item carrying the whole suggestion."""
    found = await ls.suggestion_at(params.text_document.uri, params.position)
    if found is None or not found[0].text:
        return types.CompletionList(is_incomplete=True, items=[])
    result, document, offset = found
    line, character = document.position_at(offset, ls.encoding)
    here = types.Position(line=line, character=character)
    preview = result.text.strip().splitlines()[0]
    item = types.CompletionItem(
        label=preview if len(preview) <= 40 else preview[:39] + "…",
        kind=types.CompletionItemKind.Text,
        detail="codegen-lsp",
        documentation=result.text,
        text_edit=types.TextEdit(range=types.Range(start=here, end=here), new_text=result.text),
        sort_text="0",
    )
    return types.CompletionList(is_incomplete=True, items=[item])


@server.feature(STATS_METHOD)
def stats(ls: CodegenServer, params: Any = None) -> dict[str, Any]:
    models = sorted(engine.name for engine in ls.models.engines.values())
    return {**ls.stats.to_dict(), "models": models, "folders": folder_status(ls)}


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
