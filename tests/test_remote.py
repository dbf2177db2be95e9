"""Remote backend settings and failures that need no inference server: the settings schema's
new keys, and the failures a user meets, each against something real (never a mock): a closed
port, a host that does not exist, and a small HTTP server in a thread (`Answering`) that
answers what a broken, busy or wrong server answers, counting the requests it gets."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from lsprotocol import types

from engine.generate import SamplingParams
from lsp_server.backends import load
from lsp_server.backends.remote import BACKOFF_S, UNREACHABLE_BACKOFF_S, RemoteError, render, split_prompt
from lsp_server.settings import Settings, apply


def test_backend_settings_are_validated_and_keys_are_never_read_from_settings(tmp_path):
    settings, problems = apply(Settings(), {"backend": "openai", "endpoint": "http://127.0.0.1:8080/", "remote_model": "m",
                                            "api_key_env": "TEAM_KEY", "request_timeout_ms": 2000}, "editor")  # fmt: skip
    assert problems == [] and settings.backend == "openai" and settings.api_key_env == "TEAM_KEY"
    assert settings.engine_key() != Settings().engine_key()
    _, problems = apply(Settings(), {"backend": "vllm", "endpoint": "127.0.0.1:8080", "api_key": "sk-123"}, "f.toml")
    assert "backend: expected one of local, openai, llama.cpp" in problems[0]
    assert "endpoint: expected an http:// or https:// base URL" in problems[0]
    assert "api_key: a key is never read from settings" in problems[0] and "sk-123" not in problems[0]
    # A repository's project file may not send just any variable to its endpoint.
    settings, problems = apply(Settings(), {"api_key_env": "AWS_SECRET_ACCESS_KEY"}, "p.toml", root=tmp_path)
    assert settings.api_key_env == "" and "starting with CODEGEN_LSP_" in problems[0]
    settings, problems = apply(Settings(), {"api_key_env": "CODEGEN_LSP_TEAM"}, "p.toml", root=tmp_path)
    assert settings.api_key_env == "CODEGEN_LSP_TEAM" and problems == []


def test_a_remote_backend_needs_an_endpoint():
    with pytest.raises(Exception, match="needs an endpoint"):
        load(apply(Settings(), {"backend": "openai"}, "editor")[0])


def test_prompts_are_rendered_with_the_models_fim_tokens():
    backend = load(apply(Settings(), {"backend": "openai", "endpoint": "http://127.0.0.1:9"}, "editor")[0])
    tokenizer = backend.lm.tokenizer
    f = tokenizer.fim
    spm = [f.prefix, f.suffix, *tokenizer.encode(")\n"), f.middle, *tokenizer.encode("print(x")]
    psm = [f.prefix, *tokenizer.encode("print(x"), f.suffix, *tokenizer.encode(")\n"), f.middle]
    assert render(tokenizer, split_prompt(tokenizer, spm)) == "<fim_prefix><fim_suffix>)\n<fim_middle>print(x"
    assert render(tokenizer, split_prompt(tokenizer, psm)) == "<fim_prefix>print(x<fim_suffix>)\n<fim_middle>"


@pytest.mark.parametrize("family", ["deepseek", "codellama"])
def test_a_servers_prompt_leaves_the_bos_to_its_tokenizer_and_keeps_the_text(family, family_checkpoint):
    from engine.prompt import build_prompt
    from engine.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(family_checkpoint(family))
    pre, suf, mid = (tokenizer.token(i) for i in (tokenizer.fim.prefix, tokenizer.fim.suffix, tokenizer.fim.middle))
    for prefix, suffix in (("def f(", " x)\n"), ("if x:\n    y", ")\n")):
        psm = build_prompt(tokenizer, prefix, suffix, max_prompt_tokens=64)
        assert render(tokenizer, split_prompt(tokenizer, psm.ids)) == f"{pre}{prefix}{suf}{suffix}{mid}"
        spm = build_prompt(tokenizer, prefix, suffix, max_prompt_tokens=64, fim="spm")
        assert render(tokenizer, split_prompt(tokenizer, spm.ids)) == f"{pre}{suf}{suffix}{mid}{prefix}"
        plain = build_prompt(tokenizer, prefix, suffix, max_prompt_tokens=64, fim="off")
        assert render(tokenizer, split_prompt(tokenizer, plain.ids)) == prefix
        # Going on after a suggestion: the generated text, its leading space included, follows the prefix.
        generated = tokenizer.encode(" z", continuation=True)
        assert split_prompt(tokenizer, psm.ids + generated).prefix == prefix + " z"


@dataclass
class Remote:
    """A remote backend (openai) of the demo model's tokenizer, and a prompt for it."""

    endpoint: str
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.backend = load(apply(Settings(), {"backend": "openai", "endpoint": self.endpoint, **self.settings}, "editor")[0])
        self.ids = self.backend.lm.tokenizer.encode("def f(x):")

    def ask(self) -> str:
        """The suggestion, or "error: " and the message of the RemoteError the request raised
        (anything else raised fails the test: the server would report it as a bug)."""
        try:
            return self.backend.sessions.get("a.py").generate(self.ids, SamplingParams(max_new_tokens=8), threading.Event()).text
        except RemoteError as exc:
            return f"error: {exc}"


def test_a_closed_port_is_one_clear_message_and_requests_pause_briefly():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    remote = Remote(endpoint)
    refused = remote.ask()
    assert refused == f"error: nothing answers at {endpoint} (connection refused): is the server running? (endpoint)"
    started = time.perf_counter()
    assert remote.ask() == refused  # within the pause: no connection attempt, same message
    assert time.perf_counter() - started < 0.1


def test_a_host_that_does_not_exist_is_one_clear_message_and_fast():
    endpoint = "http://no-such-host.invalid:8080"  # .invalid never resolves (RFC 6761), with or without a network
    started = time.perf_counter()
    message = Remote(endpoint).ask()
    assert message.startswith(f"error: cannot find the host of {endpoint} (DNS: ") and message.endswith("; check endpoint")
    assert time.perf_counter() - started < 5


# ---------------------------------------------------------------- a real HTTP server answering what a broken one does

SUGGESTION = " return x"
COMPLETION = (f'data: {json.dumps({"choices": [{"text": SUGGESTION, "finish_reason": "stop"}]})}\n\n'
              "data: [DONE]\n\n").encode()  # fmt: skip
EVENT_STREAM = {"Content-Type": "text/event-stream"}


@dataclass
class Answer:
    """What the server answers every POST with."""

    status: int = 200
    body: bytes = COMPLETION
    headers: dict = field(default_factory=lambda: dict(EVENT_STREAM))
    cut: bool = False  # sent chunked, and the connection closed after body without the last chunk: a server that died
    hang: bool = False  # no answer at all (until the test ends)


class Answering(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 in a thread that answers every POST with `answer` (a healthy
    completion stream unless told otherwise) and counts the requests."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), AnsweringHandler)
        self.answer = Answer()
        self.requests = 0
        self.paths: list[str] = []
        self.ended = threading.Event()
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def __enter__(self) -> Answering:
        return self

    def __exit__(self, *exc) -> None:
        self.ended.set()
        self.shutdown()
        self.server_close()


class AnsweringHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # kept connections, as a real server's
    server: Answering

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests += 1
        self.server.paths.append(self.path)
        answer = self.server.answer
        if answer.hang:
            self.server.ended.wait(30)
            self.close_connection = True
            return
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if answer.cut:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(answer.body), answer.body))
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    def log_message(self, format, *args) -> None:
        pass


@pytest.fixture
def answering():
    with Answering() as server:
        yield server


def paused_without_a_request(remote: Remote, server: Answering, message: str) -> None:
    """Asked again at once (the next keystrokes): the same message, and no request reaches the server."""
    requests = server.requests
    for _ in range(5):
        assert remote.ask() == message
    assert server.requests == requests


def until_answered(remote: Remote, server: Answering, seconds: float) -> float:
    """Asks every 50 ms, the server healthy again, until a suggestion comes; when it came (time.monotonic)."""
    server.answer = Answer()
    deadline = time.monotonic() + seconds
    while (text := remote.ask()) != SUGGESTION:
        assert text.startswith("error: ") and time.monotonic() < deadline, text
        time.sleep(0.05)
    return time.monotonic()


@pytest.mark.parametrize("status, reason", [(401, "Unauthorized"), (403, "Forbidden")])
@pytest.mark.parametrize("key", ["", "CODEGEN_LSP_TEST_KEY"])
def test_a_refused_key_names_the_setting(answering, status, reason, key, monkeypatch):
    monkeypatch.setenv("CODEGEN_LSP_TEST_KEY", "wrong")
    answering.answer = Answer(status, b'{"error": "no"}', {"Content-Type": "application/json"})
    remote = Remote(answering.endpoint, {"api_key_env": key} if key else {})
    what = f"error: {answering.endpoint}/v1/completions answered {status} {reason}: "
    if key:
        assert remote.ask() == what + "the key in $CODEGEN_LSP_TEST_KEY (api_key_env) was refused"
    else:
        assert remote.ask() == what + "the server wants a key; set api_key_env to the name of an environment variable holding it"
    answering.answer = Answer()
    assert remote.ask() == SUGGESTION  # no pause: nothing to wait for once the key is right


def test_a_404_names_the_url_and_the_settings_to_check(answering):
    answering.answer = Answer(404, b'{"detail":"Not Found"}', {"Content-Type": "application/json"})
    remote = Remote(answering.endpoint + "/v1")  # the base URL given with /v1
    assert remote.ask() == (f'error: {answering.endpoint}/v1/v1/completions answered 404 Not Found: check endpoint (the '
                            'server\'s base URL, without /v1) and remote_model: {"detail":"Not Found"}')  # fmt: skip
    assert answering.paths == ["/v1/v1/completions"]


def test_429_pauses_requests_for_what_retry_after_says(answering):
    answering.answer = Answer(429, b"slow down", {"Retry-After": "2", "Content-Type": "text/plain"})
    remote = Remote(answering.endpoint)
    message = remote.ask()
    failed = time.monotonic()
    assert message == (f"error: {answering.endpoint}/v1/completions answered 429 Too Many Requests: slow down; "
                       "pausing requests to it and retrying later")  # fmt: skip
    paused_without_a_request(remote, answering, message)
    time.sleep(max(0.0, failed + BACKOFF_S[0] + 0.2 - time.monotonic()))  # our own first backoff is over ...
    paused_without_a_request(remote, answering, message)  # ... Retry-After's 2 s not
    assert time.monotonic() - failed < 2
    assert 2 <= until_answered(remote, answering, 3) - failed < 3 and answering.requests == 2


def test_5xx_backs_off_exponentially_without_a_storm_and_the_server_is_used_again(answering):
    remote = Remote(answering.endpoint)
    message = ""
    for count, (status, reason) in enumerate(((500, "Internal Server Error"), (503, "Service Unavailable")), 1):
        answering.answer = Answer(status, b"", {})
        previous = message
        while (message := remote.ask()) == previous:  # until the previous pause ends
            time.sleep(0.05)
        failed = time.monotonic()
        assert message == f"error: {answering.endpoint}/v1/completions answered {status} {reason}; pausing requests to it and retrying later"
        assert answering.requests == count
        while time.monotonic() < failed + BACKOFF_S[count - 1] - 0.1:  # typing all the pause long: no request
            paused_without_a_request(remote, answering, message)
            time.sleep(0.05)
    # The second failure in a row pauses for longer; then the server, healthy again, is used.
    assert BACKOFF_S[1] <= until_answered(remote, answering, BACKOFF_S[1] + 0.5) - failed < BACKOFF_S[1] + 0.5
    assert answering.requests == 3


HTML = b"<!DOCTYPE html>\n<html><head><title>Login</title></head><body>Sign in</body></html>\n"


@pytest.mark.parametrize("headers, body, says", [
    ({"Content-Type": "text/html"}, HTML, "text/html instead of a completion stream: <!DOCTYPE html>"),
    ({"Content-Type": "application/json"}, b'{"choices": [{"text": " return x"}]}', 'JSON instead of a stream: {"choices"'),
    (EVENT_STREAM, b"data: <html>\n\n", "something that is not a completion stream: '<html>'"),
], ids=["html", "json", "not-json-events"])  # fmt: skip
def test_a_200_that_is_not_a_completion_stream_is_one_clear_message(answering, headers, body, says):
    answering.answer = Answer(200, body, headers)
    remote = Remote(answering.endpoint)
    message = remote.ask()
    assert message.startswith(f"error: {answering.endpoint}/v1/completions answered {says}"), message
    answering.answer = Answer()
    assert remote.ask() == SUGGESTION


def test_a_stream_cut_in_the_middle_is_one_clear_message_and_the_server_is_used_again(answering):
    event = json.dumps({"choices": [{"text": " return", "finish_reason": None}]})
    answering.answer = Answer(body=f"data: {event}\n\n".encode(), cut=True)  # one event, then the server dies
    remote = Remote(answering.endpoint)
    message = remote.ask()
    failed = time.monotonic()
    assert message == f"error: the stream from {answering.endpoint} ended in the middle of a completion (server stopped?)"
    paused_without_a_request(remote, answering, message)
    assert UNREACHABLE_BACKOFF_S[0] <= until_answered(remote, answering, 2) - failed < UNREACHABLE_BACKOFF_S[0] + 0.5


def test_a_server_that_does_not_answer_in_time_is_one_clear_message_and_is_used_again(answering):
    answering.answer = Answer(hang=True)
    remote = Remote(answering.endpoint, {"request_timeout_ms": 200})
    started = time.monotonic()
    message = remote.ask()
    failed = time.monotonic()
    assert message == f"error: {answering.endpoint} did not answer within 200 ms (request_timeout_ms)"
    assert 0.2 <= failed - started < 1
    paused_without_a_request(remote, answering, message)
    assert UNREACHABLE_BACKOFF_S[0] <= until_answered(remote, answering, 2) - failed < UNREACHABLE_BACKOFF_S[0] + 0.5


async def test_through_the_server_a_failure_is_shown_once_per_outage_then_logged_and_suggestions_resume(answering, tmp_path):
    from test_remote_e2e import folder, shown, until
    from test_server import ended_loads, inline, open_doc, start_server, stats, stop_server, wait_for

    remote = folder(tmp_path, "remote", backend="openai", endpoint=answering.endpoint)
    client = await start_server([remote])
    uri = (remote / "a.py").as_uri()
    busy = (f"codegen-lsp: {answering.endpoint}/v1/completions answered 503 Service Unavailable: busy; pausing "
            "requests to it and retrying later")  # fmt: skip
    logged = lambda: [m.message for m in client.log_messages if answering.endpoint in m.message]  # noqa: E731
    try:
        open_doc(client, uri, "def f(x):\n")
        await wait_for(lambda: ended_loads(client) >= 1, "the tokenizer to load")
        answering.answer = Answer(503, b"busy", {"Retry-After": "1", "Content-Type": "text/plain"})
        assert await inline(client, uri, 1, 0) == []
        assert await inline(client, uri, 0, 9) == []  # paused: no request; the same message, logged only
        assert (shown(client, answering.endpoint), logged(), answering.requests) == ([busy], [busy], 1)
        answering.answer = Answer()
        await until(lambda: inline(client, uri, 1, 0), bool, "the server to be used again", 5)
        answering.answer = Answer(503, b"busy", {"Retry-After": "1", "Content-Type": "text/plain"})
        assert await inline(client, uri, 0, 9) == []  # a second outage is shown again
        assert shown(client, answering.endpoint) == [busy, busy]
        assert (await stats(client))["last"]["endpoint"] == answering.endpoint  # still answering
        assert not [m for m in client.messages if "cannot complete" in m.message]  # no exception but RemoteError
    finally:
        await stop_server(client)
    assert client._server.returncode == 0


async def test_changing_the_endpoint_leaves_no_thread_behind(tmp_path):
    """Each remote backend has a thread closing cancelled responses; a backend no folder uses
    any more is closed, thread included (nothing listens at these endpoints: none is asked).
    Counted by name: the total also holds thread pools that grow with load (pygls', OpenMP's)."""
    from test_server import ended_loads, start_server, stats, stop_server, wait_for

    folder = tmp_path / "project"
    folder.mkdir()
    endpoint = {"backend": "openai", "debounce_ms": 0, "endpoint": "http://127.0.0.1:9"}
    client = await start_server([folder], configuration={folder.as_uri(): endpoint})
    try:
        for port in range(10, 16):
            await wait_for(lambda: ended_loads(client) >= port - 9, "the backend of the endpoint")
            client.set_configuration({**endpoint, "endpoint": f"http://127.0.0.1:{port}"}, section="codegen-lsp",
                                     scope_uri=folder.as_uri())  # fmt: skip
            client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
        await wait_for(lambda: ended_loads(client) >= 7, "the backend of the endpoint")
        watchers = []
        for _ in range(100):  # the dropped backends close in the generation worker, after the loads
            threads = (await stats(client))["threads"]
            watchers = [name for name in threads if name == "codegen-lsp-remote-cancel"]
            if len(watchers) == 1:
                break
            await asyncio.sleep(0.1)
        assert watchers == ["codegen-lsp-remote-cancel"], threads  # the one backend in use
        ends = [r.message for reports in client.progress_reports.values() for r in reports
                if isinstance(r, types.WorkDoneProgressEnd)]  # fmt: skip
        # The ready message names where suggestions come from.
        assert ends[-1].endswith("; suggestions from http://127.0.0.1:15 (backend openai)"), ends
    finally:
        await stop_server(client)


def test_export_gguf_writes_the_demo_model_with_its_fim_token_ids(tmp_path):
    """`codegen-lsp export-gguf`: llama.cpp's starcoder layout, every embedding row a token, and the
    FIM tokens by id (llama-server's /infill builds its prompt from them)."""
    import gguf

    from engine.gguf_export import export_gguf
    from engine.loading import load_model

    lm = load_model(None, device="cpu", compile="false")
    reader = gguf.GGUFReader(str(export_gguf(None, tmp_path / "demo.gguf")))

    def number(key):
        field = reader.fields[key]
        return int(field.parts[field.data[0]][0])

    keys, fim = gguf.Keys.Tokenizer, lm.tokenizer.fim
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "starcoder"
    assert len(reader.fields[keys.LIST].data) == lm.config.vocab_size
    assert (number(keys.FIM_PRE_ID), number(keys.FIM_SUF_ID), number(keys.FIM_MID_ID)) == (fim.prefix, fim.suffix, fim.middle)
    assert number(keys.EOS_ID) == lm.config.eos_token_id
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "blk.0.attn_qkv.weight", f"blk.{lm.config.n_layer - 1}.ffn_down.bias"} <= names
