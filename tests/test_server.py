"""The language server end to end: a real server process driven over stdio by
pytest-lsp's client, on the tiny checkpoints of conftest.py.

One server (module scope) serves most tests; the tests that need their own
start-up (folders with different models, a missing model, exit codes) start
their own. Expected suggestions come from the same middle layer (`suggest`)
run in this process on the text the server should hold, so a wrong position,
edit or setting shows up as a different suggestion.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import sys
import uuid
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import make_test_lsp_client

from lsp_server.client import _plain
from lsp_server.documents import Document
from lsp_server.pool import ModelPool
from lsp_server.settings import Settings, apply
from lsp_server.suggest import suggest

pytestmark = pytest.mark.asyncio(loop_scope="module")
logging.getLogger("pygls").setLevel(logging.WARNING)  # it logs every message, megabytes included
ROOT = Path(__file__).resolve().parents[1]
# ramble_stop off: a random model is unsure of every token, and loops (engine/stops.py would cut it all).
MAIN_SETTINGS = {"debounce_ms": 0, "max_new_tokens": 12, "multiline": "always", "ramble_stop": "off"}
CODE = 'import os\n\n\ndef greet(name):\n    """Say hi 😀 to name."""\n    message = "hi 😀 " + name\n    return message\n'


def capabilities(encodings: list[str] | None = None) -> types.ClientCapabilities:
    return types.ClientCapabilities(
        general=types.GeneralClientCapabilities(position_encodings=encodings) if encodings else None,
        window=types.WindowClientCapabilities(work_done_progress=True),
        workspace=types.WorkspaceClientCapabilities(configuration=True, did_change_configuration=types.DidChangeConfigurationClientCapabilities()),
        text_document=types.TextDocumentClientCapabilities(
            inline_completion=types.InlineCompletionClientCapabilities(),
            completion=types.CompletionClientCapabilities(),
        ),
    )  # fmt: skip


async def start_server(folders: list[Path], init_options=None, configuration=None, encodings=None, initialize=True):
    client = make_test_lsp_client()
    for scope, section in (configuration or {}).items():
        client.set_configuration(section, section="codegen-lsp", scope_uri=scope)
    # --stdio as vscode-languageclient passes it; `codegen-lsp complete` and the editor tests start plain `serve`.
    await client.start_io(sys.executable, "-m", "lsp_server", "-v", "serve", "--stdio", cwd=str(ROOT))
    params = types.InitializeParams(
        capabilities=capabilities(encodings),
        workspace_folders=[types.WorkspaceFolder(uri=f.as_uri(), name=f.name) for f in folders] or None,
        initialization_options=init_options,
    )
    if initialize:
        client.init_result = await client.initialize_session(params)
    else:
        client.init_params = params
        client.capabilities = params.capabilities  # pytest-lsp checks requests against them
    return client


async def stop_server(client) -> None:
    """shutdown + exit; a server that does not go within a minute is killed (a test failed)."""
    try:
        await asyncio.wait_for(client.shutdown_session(), 60)
    finally:
        if client._server.returncode is None:
            client._server.kill()
        await client.stop()


async def wait_for(condition, what: str):
    for _ in range(2400):  # a guard against hanging, not a timing assertion
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def ended_loads(client) -> int:
    return sum(isinstance(r, types.WorkDoneProgressEnd) for reports in client.progress_reports.values() for r in reports)


async def stats(client) -> dict:
    return _plain(await client.protocol.send_request_async("codegen/stats", None))


def open_doc(client, uri: str, text: str, language: str = "python", version: int = 1) -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(uri=uri, language_id=language, version=version, text=text))
    )  # fmt: skip


def change_doc(client, uri: str, version: int, changes: list) -> None:
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version), content_changes=changes
        )
    )


def edit(l1: int, c1: int, l2: int, c2: int, text: str) -> types.TextDocumentContentChangePartial:
    rng = types.Range(start=types.Position(line=l1, character=c1), end=types.Position(line=l2, character=c2))
    return types.TextDocumentContentChangePartial(range=rng, text=text)


async def inline(client, uri: str, line: int, character: int) -> list[types.InlineCompletionItem]:
    result = await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        )
    )
    return list(result.items) if isinstance(result, types.InlineCompletionList) else list(result or [])


class Expected:
    """The suggestion the server should give, computed in this process."""

    def __init__(self, model: Path, **overrides):
        self.settings, problems = apply(Settings(), {"model": str(model), **overrides}, "test")
        assert not problems
        self.served = ModelPool._load_blocking(self.settings)
        self.count = 0

    def __call__(self, text: str, line: int, character: int, encoding: str = "utf-16", language: str = "python") -> str:
        self.count += 1  # a fresh session each time: no typeahead state
        offset = Document("x", text).offset_at(line, character, encoding)
        return suggest(self.served, f"expected-{self.count}", text, offset, language, self.settings).text


@pytest.fixture(scope="module")
def main_folder(tmp_path_factory, codegen_dir) -> Path:
    folder = tmp_path_factory.mktemp("main_project")
    settings = "\n".join(f"{k} = {json.dumps(v)}" for k, v in MAIN_SETTINGS.items())
    (folder / ".codegen-lsp.toml").write_text(f'model = "{codegen_dir}"\n{settings}\n')
    long_folder = folder / "long"
    long_folder.mkdir()
    # A folder whose suggestions are long, to cancel and supersede them mid-generation.
    (long_folder / ".codegen-lsp.toml").write_text(f'model = "{codegen_dir}"\ndebounce_ms = 0\nmax_new_tokens = 400\nmultiline = "always"\nramble_stop = "off"\n')
    (folder / "single").mkdir()
    (folder / "single" / "pyproject.toml").write_text(
        f'[tool.codegen-lsp]\nmodel = "{codegen_dir}"\ndebounce_ms = 0\nmax_new_tokens = 12\nmultiline = "never"\nramble_stop = "off"\n'
    )
    (folder / "debounced").mkdir()
    (folder / "debounced" / ".codegen-lsp.toml").write_text(f'model = "{codegen_dir}"\ndebounce_ms = 300\nmax_new_tokens = 12\nramble_stop = "off"\n')
    return folder


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(main_folder):
    client = await start_server([main_folder, main_folder / "long", main_folder / "single", main_folder / "debounced"])
    await wait_for(lambda: ended_loads(client) >= 1, "the model to load")
    yield client
    await stop_server(client)


@pytest.fixture(scope="module")
def expected(codegen_dir) -> Expected:
    return Expected(codegen_dir, **MAIN_SETTINGS)


async def test_capabilities(client):
    caps = client.init_result.capabilities
    assert caps.inline_completion_provider is not None
    assert caps.completion_provider is not None
    assert caps.position_encoding == types.PositionEncodingKind.Utf16
    sync = caps.text_document_sync
    assert getattr(sync, "change", sync) == types.TextDocumentSyncKind.Incremental
    assert client.messages == []  # no errors or warnings at start


async def test_a_load_reports_its_percentage_before_it_ends(client):
    await wait_for(lambda: ended_loads(client) >= 1, "the model's load")
    loads = [reports for reports in client.progress_reports.values() if isinstance(reports[-1], types.WorkDoneProgressEnd)]
    percentages = [r.percentage for r in loads[0] if isinstance(r, (types.WorkDoneProgressBegin, types.WorkDoneProgressReport))]
    assert percentages == [0, 10, 70]


async def test_round_trip_with_emoji_and_edits(client, main_folder, expected):
    uri = (main_folder / "greet.py").as_uri()
    open_doc(client, uri, CODE)
    line = CODE.splitlines()[5]  # '    message = "hi 😀 " + name'
    end = len(line.encode("utf-16-le")) // 2
    items = await inline(client, uri, 5, end)
    assert len(items) == 1 and items[0].insert_text == expected(CODE, 5, end)
    assert items[0].range == types.Range(start=types.Position(line=5, character=end), end=types.Position(line=5, character=end))

    # Edit after the emoji on the same line (UTF-16 columns), then complete there.
    change_doc(client, uri, 2, [edit(5, 21, 5, 21, "there "), edit(4, 14, 4, 16, "🎉")])
    text = CODE.replace('"hi 😀 "', '"hi 😀 there "').replace("hi 😀 to", "hi 🎉 to")
    items = await inline(client, uri, 5, 27)
    want = expected(text, 5, 27)
    assert want and [i.insert_text for i in items] == [want]
    assert items[0].range.start == types.Position(line=5, character=27)

    # A position past the end of the line is clamped to the line's end.
    line5 = text.splitlines()[5]
    items = await inline(client, uri, 5, 500)
    eol = len(line5.encode("utf-16-le")) // 2
    assert [i.insert_text for i in items] == [expected(text, 5, eol)]
    assert items[0].range.start == types.Position(line=5, character=eol)

    # The same text with CRLF line breaks: same positions, the document's own line breaks inserted.
    crlf_uri = (main_folder / "greet_crlf.py").as_uri()
    crlf = text.replace("\n", "\r\n")
    open_doc(client, crlf_uri, crlf)
    items = await inline(client, crlf_uri, 3, 16)
    want = expected(crlf, 3, 16)
    assert [i.insert_text for i in items] == [want] and items[0].range.start == types.Position(line=3, character=16)
    assert "\n" not in want.replace("\r\n", "")


async def test_completion_item_for_clients_without_inline(client, main_folder, expected):
    uri = (main_folder / "items.py").as_uri()
    open_doc(client, uri, CODE)
    result = await client.text_document_completion_async(
        types.CompletionParams(text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=3, character=16))
    )  # fmt: skip
    want = expected(CODE, 3, 16)
    assert want and len(result.items) == 1
    item = result.items[0]
    assert item.text_edit.new_text == want and item.text_edit.range.start == types.Position(line=3, character=16)
    assert item.label and item.label.rstrip("…") in want


async def test_bad_input_never_breaks_the_server(client, main_folder, expected):
    want = expected(CODE, 6, 18)
    assert want
    count = 0

    async def still_works():
        nonlocal count
        count += 1
        uri = (main_folder / f"works{count}.py").as_uri()
        open_doc(client, uri, CODE)
        assert [i.insert_text for i in await inline(client, uri, 6, 18)] == [want]

    async def raw(method: str, params) -> Exception | object:
        """Send params as given, past the client's own type checks."""
        msg_id = f"raw-{uuid.uuid4()}"
        future = concurrent.futures.Future()
        client.protocol._request_futures[msg_id] = future
        client.protocol._send_data({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        try:
            return await asyncio.wrap_future(future)
        except JsonRpcException as exc:
            return exc

    # A document that was never opened.
    assert await inline(client, (main_folder / "nope.py").as_uri(), 0, 0) == []
    await still_works()
    # Negative positions and malformed params: a JSON-RPC error, not silence.
    uri = (main_folder / "works1.py").as_uri()
    negative = {"textDocument": {"uri": uri}, "position": {"line": -1, "character": -5}, "context": {"triggerKind": 1}}
    error = await raw("textDocument/inlineCompletion", negative)
    assert isinstance(error, JsonRpcException) and error.code == types.ErrorCodes.InvalidParams
    await still_works()
    error = await raw("textDocument/inlineCompletion", {"textDocument": 5, "position": "here"})
    assert isinstance(error, JsonRpcException) and error.code == types.ErrorCodes.InvalidParams
    await still_works()
    error = await raw("codegen/no-such-method", None)
    assert isinstance(error, JsonRpcException) and error.code == types.ErrorCodes.MethodNotFound
    await still_works()
    # Positions past the end of the document.
    items = await inline(client, uri, 10_000, 10_000)
    last_line = len(CODE.splitlines())
    assert all(i.range.start == types.Position(line=last_line, character=0) for i in items)
    await still_works()
    # Edits with impossible ranges, and changes to documents that are not open.
    change_doc(client, uri, 5, [edit(3, 5, 1, 0, "x")])
    change_doc(client, (main_folder / "ghost.py").as_uri(), 2, [edit(0, 0, 0, 0, "x")])
    await still_works()
    # Binary content with NUL bytes, lone surrogates, and a document of several MB.
    binary = bytes(range(256)).decode("latin-1") * 8 + "\x00\x00def f():\x00"
    for name, text in [("binary.bin", binary), ("surrogates.py", "x = '\ud800\udfff\udc00'\ndef f(\ud83d"), ("huge.py", CODE * 40_000)]:
        bad_uri = (main_folder / name).as_uri()
        open_doc(client, bad_uri, text, language="plaintext" if name.endswith(".bin") else "python")
        lines = text.count("\n")
        items = await inline(client, bad_uri, lines, 3)
        assert all(isinstance(i.insert_text, str) for i in items)
        await still_works()
    assert (await stats(client))["requests"] > 0


async def test_postprocessing_through_the_server(client, main_folder, expected, codegen_dir):
    # A block at the end of a line that opens one: inside the block, never repeating the next line.
    source = "def area(r):\n    return 3.14 * r * r\n\n\nprint(area(2))\n"
    uri = (main_folder / "post.py").as_uri()
    open_doc(client, uri, source)
    items = await inline(client, uri, 0, 12)
    got = items[0].insert_text if items else ""
    assert got == expected(source, 0, 12)
    lines = got.split("\n")
    assert all(not line.strip() or line.startswith(" ") for line in lines[1:])  # never below the block
    assert "    return 3.14 * r * r" not in lines[1:]
    assert got == got.rstrip()

    # One line (folder "single"), with a closing bracket after the cursor.
    single = Expected(codegen_dir, debounce_ms=0, max_new_tokens=12, multiline="never", ramble_stop="off")
    uri = (main_folder / "single" / "post.py").as_uri()
    open_doc(client, uri, "total = sum()\n")
    items = await inline(client, uri, 0, 12)
    want = single("total = sum()\n", 0, 12)
    assert [i.insert_text for i in items] == ([want] if want else [])
    assert "\n" not in want and not want.endswith(")")


async def test_stats_move_when_typing_at_the_end_of_a_line(client, main_folder):
    uri = (main_folder / "typing.py").as_uri()
    text = CODE + "result = greet('bob')"
    open_doc(client, uri, text)
    before = await stats(client)
    line, character = text.count("\n"), len(text.splitlines()[-1])
    previous = before
    typed = 0
    for version, char in enumerate("\n# ab", start=2):
        items = await inline(client, uri, line, character)
        now = await stats(client)
        last = now["last"]
        assert now["requests"] == previous["requests"] + 1
        for name in ("prompt_tokens", "reused_tokens", "prefilled_tokens", "generated_tokens"):
            assert now[name] == previous[name] + last[name]
        assert last["prompt_tokens"] == last["reused_tokens"] + last["prefilled_tokens"] or last["typeahead"]
        if typed and not last["typeahead"]:
            assert last["reused_tokens"] >= last["prompt_tokens"] - 4, last  # mostly reused
        previous = now
        # Type one character that differs from the suggestion (so the model runs again).
        char = char if not (items and items[0].insert_text.startswith(char)) else "@"
        change_doc(client, uri, version, [edit(line, character, line, character, char)])
        if char == "\n":
            line, character = line + 1, 0
        else:
            character += 1
        typed += 1
    assert previous["reused_tokens"] > before["reused_tokens"]


async def test_cancellation_and_supersession(client, main_folder):
    uri = (main_folder / "long" / "story.txt").as_uri()
    open_doc(client, uri, "Once upon a time", language="plaintext")
    before = (await stats(client))["requests"]
    first = asyncio.ensure_future(inline(client, uri, 0, 16))
    await asyncio.sleep(0)  # sent before the next one
    # A newer request for the same document supersedes the first one.
    change_doc(client, uri, 2, [edit(0, 16, 0, 16, ",")])
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=0, character=17),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
    )  # fmt: skip
    second = asyncio.ensure_future(
        client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="second")
    )
    assert await first == []

    # $/cancelRequest stops the second one while it generates (polling the stats to see it run).
    for _ in range(2400):
        if (await stats(client))["running"] or second.done():
            break
        await asyncio.sleep(0.02)
    assert not second.done(), "a 400-token generation finished before it could be cancelled"
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="second"))
    with pytest.raises(JsonRpcException) as error:
        await second
    assert error.value.code == types.LSPErrorCodes.RequestCancelled
    for _ in range(2400):
        now = await stats(client)
        if not now["running"] and now["requests"] >= before + 1:
            break
        await asyncio.sleep(0.02)
    assert now["last"]["finish_reason"] == "cancelled"
    assert 0 < now["last"]["generated_tokens"] < 400


async def test_debounce_runs_only_the_last_of_quick_keystrokes(client, main_folder, codegen_dir):
    # Three keystrokes 50 ms apart in a folder with debounce_ms = 300: the first
    # two requests are superseded while they wait, only the last one generates.
    uri = (main_folder / "debounced" / "quick.py").as_uri()
    open_doc(client, uri, "x = 1\n")
    before = (await stats(client))["requests"]
    pending = []
    for i, char in enumerate("abc"):
        change_doc(client, uri, i + 2, [edit(1, i, 1, i, char)])
        pending.append(asyncio.ensure_future(inline(client, uri, 1, i + 1)))
        await asyncio.sleep(0.05)
    first, second, last = await asyncio.gather(*pending)
    assert first == [] and second == []
    want = Expected(codegen_dir, debounce_ms=300, max_new_tokens=12, ramble_stop="off")("x = 1\nabc", 1, 3)
    assert [i.insert_text for i in last] == ([want] if want else [])
    assert (await stats(client))["requests"] == before + 1

