"""What the remote backends share: the tokenizer-only model, the streaming HTTP client, the
failure messages and the backoff.

One httpx.Client per backend (connections are kept and reused); generations run in the
scheduler's one worker thread, so there is no thread per request. The response is read as a
server-sent event stream and closed as soon as our own stop rules end the suggestion, or the
moment the request is superseded or cancelled: one watcher thread per backend closes the
response when the request's cancel flag is set, and closing the connection is how vLLM and
llama.cpp learn to stop generating.

Every failure is one RemoteError whose message names the endpoint (and the setting to change);
the server shows it once per outage (again once the server has answered in between) and logs
it after. 429 and 5xx answers, and a server that cannot be reached, pause requests to that
endpoint (exponential backoff, Retry-After honoured), during which suggestions are empty
without a request: a dead server is not hit at every keystroke, and it is used again once it
answers.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Protocol

import httpx

from engine.checkpoint import resolve_model_dir
from engine.config import ModelConfig
from engine.errors import EngineError
from engine.generate import Generation, GenerationStats, SamplingParams
from engine.paths import DEMO_MODEL_DIR
from engine.stops import repeat_cut_of_text
from engine.tokenizer import Tokenizer, load_tokenizer
from lsp_server.settings import Settings

log = logging.getLogger(__name__)

BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # after 1, 2, ... failures in a row (429 / 5xx)
UNREACHABLE_BACKOFF_S = (0.5, 1.0, 2.0, 3.0)  # nothing answers: short, so a restarted server is used soon
MAX_RETRY_AFTER_S = 60.0
EXCERPT = 200  # characters of a bad answer quoted in a message
SSE_LINES = (":", "event:", "id:", "retry:")  # the lines of an event stream besides data: (and blank ones)


class RemoteError(EngineError):
    """A request to the remote server failed; the message names the endpoint."""


@dataclass(frozen=True)
class TokenizerModel:
    """What a remote backend loads of `model`: the tokenizer (FIM tokens) and the config (window)."""

    tokenizer: Tokenizer
    config: ModelConfig
    path: Path
    load_seconds: float


def load_tokenizer_model(settings: Settings) -> TokenizerModel:
    start = time.perf_counter()
    directory = resolve_model_dir(settings.model or str(DEMO_MODEL_DIR))
    config = ModelConfig.from_file(directory / "config.json")
    tokenizer = load_tokenizer(directory, eos_token_id=config.eos_token_id)
    log.info("%s: tokenizer only, suggestions from %s (backend %s)", directory, settings.endpoint, settings.backend)
    return TokenizerModel(tokenizer, config, directory, time.perf_counter() - start)


@dataclass
class RemoteStats(GenerationStats):
    """GenerationStats plus the remote request's figures (codegen/stats `last`)."""

    backend: str = ""
    endpoint: str = ""
    response_ms: float = 0.0  # request sent -> response headers (connect, queueing, prompt processing starts)
    server_timings: dict[str, Any] = field(default_factory=dict)  # what the server reports (llama.cpp: prompt_ms, ...)


class Adapter(Protocol):
    """One remote API: the request for a prompt, and the text in each streamed event."""

    name: str
    path: str  # appended to the endpoint

    def body(self, tokenizer: Tokenizer, parts: PromptParts, params: SamplingParams, max_tokens: int, model: str,
             heal: str) -> dict:
        """The request; heal: the blanks before the cursor, left out of the prompt, which the
        continuation must start with (an API that can be told so says it; others are asked again)."""
        ...

    def piece(self, event: dict) -> tuple[str, str | None, dict]:
        """(text, finish reason or None, server timings) of one streamed event."""
        ...


class RemoteClient:
    """The HTTP side of one remote backend: connection pool, backoff, cancel watcher."""

    def __init__(self, settings: Settings, adapter: Adapter) -> None:
        if not settings.endpoint:
            raise EngineError(f"backend {settings.backend} needs an endpoint, the server's base URL "
                              f"(e.g. endpoint = \"http://127.0.0.1:8080\")")  # fmt: skip
        self.endpoint = settings.endpoint.rstrip("/")
        self.url = self.endpoint + adapter.path
        self.adapter = adapter
        self.model = settings.remote_model
        self.key_env = settings.api_key_env
        self.timeout_ms = settings.request_timeout_ms
        seconds = settings.request_timeout_ms / 1000
        self.http = httpx.Client(timeout=httpx.Timeout(seconds), limits=httpx.Limits(max_connections=4))
        self.failures = 0
        self.paused_until = 0.0
        self.pause_message = ""
        self.watching: queue.SimpleQueue = queue.SimpleQueue()
        self.watcher = threading.Thread(target=self._watch, name="codegen-lsp-remote-cancel", daemon=True)
        self.watcher.start()

    # ---------------------------------------------------------------- one request

    def stream(self, body: dict, cancel: threading.Event | None, stats: RemoteStats) -> Iterator[dict]:
        """The events of one streamed completion; raises RemoteError (cancelled: ends quietly)."""
        if time.monotonic() < self.paused_until:
            raise RemoteError(self.pause_message)
        headers = {"Accept": "text/event-stream"}
        if self.key_env:
            key = os.environ.get(self.key_env, "")
            if not key:
                raise RemoteError(f"api_key_env names {self.key_env}, which is not set in the language server's "
                                  f"environment (the key for {self.endpoint})")  # fmt: skip
            headers["Authorization"] = f"Bearer {key}"
        sent = time.perf_counter()
        done = threading.Event()
        try:
            with self.http.stream("POST", self.url, json=body, headers=headers) as response:
                stats.response_ms = (time.perf_counter() - sent) * 1000
                if cancel is not None:
                    self.watching.put((cancel, done, response))
                if response.status_code != 200:
                    self._refused(response)
                yield from self._events(response, cancel)
        except httpx.HTTPError as exc:
            if cancel is not None and cancel.is_set():
                return  # we closed it
            raise self._failure(exc) from None
        finally:
            done.set()

    def _events(self, response: httpx.Response, cancel: threading.Event | None) -> Iterator[dict]:
        finished = False
        for line in response.iter_lines():
            if cancel is not None and cancel.is_set():
                return
            if not line.startswith("data:"):
                if line.strip().startswith("{"):  # not a stream: an error object, or stream ignored
                    raise RemoteError(f"{self.url} answered JSON instead of a stream: {line.strip()[:EXCERPT]}")
                if line.strip() and not line.startswith(SSE_LINES):  # not a stream: a web page, plain text
                    kind = response.headers.get("content-type", "").split(";")[0] or "a body"
                    raise RemoteError(f"{self.url} answered {kind} instead of a completion stream: {line.strip()[:EXCERPT]}")
                continue  # comments, event names, keep-alives, blank separators
            data = line[5:].strip()
            if data == "[DONE]":
                finished = True
                break
            try:
                event = json.loads(data)
            except json.JSONDecodeError:
                raise RemoteError(f"{self.url} answered something that is not a completion stream: {data[:EXCERPT]!r}") from None
            if not isinstance(event, dict):
                raise RemoteError(f"{self.url} answered something that is not a completion stream: {data[:EXCERPT]!r}")
            if "error" in event:
                raise RemoteError(f"{self.url} answered an error: {_excerpt(event['error'])}")
            self.failures = 0
            yield event
            if self.adapter.piece(event)[1] is not None:
                finished = True
                break
        if not finished and not (cancel is not None and cancel.is_set()):
            raise RemoteError(f"the stream from {self.endpoint} ended in the middle of a completion (server stopped?)")

    # ---------------------------------------------------------------- failures

    def _refused(self, response: httpx.Response) -> None:
        status = response.status_code
        try:
            text = response.read().decode("utf-8", "replace")
        except httpx.HTTPError:
            text = ""
        what = f"{self.url} answered {status} {response.reason_phrase}"
        detail = f": {text.strip()[:EXCERPT]}" if text.strip() else ""
        if status in (401, 403):
            if not self.key_env:
                raise RemoteError(f"{what}: the server wants a key; set api_key_env to the name of an environment "
                                  f"variable holding it")  # fmt: skip
            raise RemoteError(f"{what}: the key in ${self.key_env} (api_key_env) was refused")
        if status == 404:
            raise RemoteError(f"{what}: check endpoint (the server's base URL, without /v1) and remote_model{detail}")
        if status == 429 or status >= 500:
            retry_after = _retry_after(response.headers.get("retry-after"))
            raise self._pause(f"{what}{detail}; pausing requests to it and retrying later", retry_after, BACKOFF_S)
        raise RemoteError(f"{what}{detail}")

    def _failure(self, exc: httpx.HTTPError) -> RemoteError:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            setting = "request_timeout_ms"
            return self._pause(f"{self.endpoint} did not answer within {self.timeout_ms} ms ({setting})", None,
                               UNREACHABLE_BACKOFF_S)  # fmt: skip
        if isinstance(exc, httpx.ConnectError):
            low = reason.lower()
            if "name or service not known" in low or "name resolution" in low or "nodename nor servname" in low \
                    or "no address associated" in low:
                message = f"cannot find the host of {self.endpoint} (DNS: {reason}); check endpoint"
            elif "refused" in low:
                message = f"nothing answers at {self.endpoint} (connection refused): is the server running? (endpoint)"
            else:
                message = f"cannot connect to {self.endpoint}: {reason} (endpoint)"
            return self._pause(message, None, UNREACHABLE_BACKOFF_S)
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
            return self._pause(f"the stream from {self.endpoint} ended in the middle of a completion (server stopped?)",
                               None, UNREACHABLE_BACKOFF_S)  # fmt: skip
        return RemoteError(f"request to {self.endpoint} failed: {type(exc).__name__}: {reason}")

    def _pause(self, message: str, retry_after: float | None, steps: tuple[float, ...]) -> RemoteError:
        """Pause requests to the endpoint after a failure (exponential, or what Retry-After says)."""
        self.failures += 1
        wait = retry_after if retry_after is not None else steps[min(self.failures, len(steps)) - 1]
        self.paused_until = time.monotonic() + wait
        self.pause_message = message
        log.info("%s: no requests to %s for %.1f s", message, self.endpoint, wait)
        return RemoteError(message)

    # ---------------------------------------------------------------- cancellation

    def _watch(self) -> None:
        """Close a response the moment its request's cancel flag is set (or leave it once done);
        ends at close()."""
        while (watched := self.watching.get()) is not None:
            cancel, done, response = watched
            while not done.is_set():
                if cancel.wait(0.02):
                    if not done.is_set():
                        log.debug("request cancelled: closing the connection to %s", self.endpoint)
                        try:
                            response.close()
                        except Exception:  # closing from another thread may race with the reader's close
                            pass
                    break

    def close(self) -> None:
        """Stop the watcher thread and the connections (call it where no request runs any more)."""
        self.watching.put(None)
        self.watcher.join(5)
        self.http.close()


class RemoteSession:
    """What engine.completion.complete() runs on, for a remote backend: one for all documents
    (the server keeps its own caches)."""

    def __init__(self, lm: TokenizerModel, client: RemoteClient, backend: str) -> None:
        self.lm = lm
        self.client = client
        self.backend = backend
        self.window = lm.config.n_positions
        self.lock = threading.Lock()

    def generate(self, ids: list[int], params: SamplingParams, cancel: threading.Event | None = None,
                 heal: str = "") -> Generation:  # fmt: skip
        """The server's continuation of ids, read until our stop rules end it.

        heal: the blanks before the cursor, left out of the prompt (engine/prompt.py); the
        continuation must start with them. The local engine constrains its first tokens to
        spell them; a server cannot be told to, but a greedy continuation that starts with
        them is the one the constrained decoding gives. One that does not is asked again with
        the blanks in the prompt.
        """
        parts = split_prompt(self.lm.tokenizer, ids)
        result = self._generate(parts, len(ids), params, cancel, heal)
        if heal and result.finish_reason == "heal":
            healed = replace(parts, prefix=parts.prefix + heal)
            result = self._generate(healed, len(ids) + len(self._encode(heal)), params, cancel, "")
        return result

    def _encode(self, text: str) -> list[int]:
        return self.lm.tokenizer.encode(text, continuation=True)

    def _decode(self, ids: list[int]) -> str:
        return self.lm.tokenizer.decode(ids, continuation=True)

    def _generate(self, parts: PromptParts, prompt_tokens: int, params: SamplingParams, cancel, heal: str) -> Generation:
        start = time.perf_counter()
        stats = RemoteStats(prompt_tokens=prompt_tokens, prefilled_tokens=prompt_tokens, backend=self.backend,
                            endpoint=self.client.endpoint)  # fmt: skip
        max_tokens = max(1, min(params.max_new_tokens, self.window - prompt_tokens))
        body = self.client.adapter.body(self.lm.tokenizer, parts, params, max_tokens, self.client.model, heal)
        text, finish = "", None
        for event in self.client.stream(body, cancel, stats):
            piece, reason, timings = self.client.adapter.piece(event)
            stats.server_timings.update(timings)
            if piece and not text:
                stats.time_to_first_token_ms = (time.perf_counter() - start) * 1000
            text += piece
            if heal and not (text.startswith(heal) or heal.startswith(text)):
                finish = "heal"
                break
            cut = _first_stop(text[len(heal) :], params.stop) if len(text) >= len(heal) else None
            if cut is None and params.stopper is not None and params.stopper.repeats and len(text) > len(heal):
                # The repetition rule needs only the text; the others need log-probabilities.
                cut = repeat_cut_of_text(text[len(heal) :], self._encode, self._decode)
                if cut is not None:
                    params.stopper.reason = "repeat"
            if cut is not None:
                text, finish = text[: len(heal) + cut], "stop"
                break
            if reason is not None:
                finish = "length" if reason == "length" else "eos"
                break
        if finish is None:
            finish = "cancelled" if cancel is not None and cancel.is_set() else "length"
        if heal and finish in ("eos", "length") and not text.startswith(heal):
            finish = "heal"  # it ended before spelling the blanks (local decoding would not have let it)
        generated = self._encode(text) if text else []
        stats.generated_tokens = len(generated)
        stats.total_ms = (time.perf_counter() - start) * 1000
        shown = text[len(heal) :] if text.startswith(heal) else ""
        return Generation(text=shown, token_ids=generated, finish_reason=finish, stats=stats)


class RemoteSessions:
    """The session store of a remote backend: one session whatever the document."""

    def __init__(self, session: RemoteSession) -> None:
        self.session = session

    def get(self, document: str) -> RemoteSession:
        return self.session

    def drop(self, document: str) -> None:
        pass


@dataclass(frozen=True)
class PromptParts:
    """A prompt of engine/prompt.py taken apart again (the window is already cut)."""

    layout: str  # "psm", "spm" or "prefix"
    prefix: str  # the text before the cursor (with what was generated after it, when going on)
    suffix: str
    lead: str = ""  # "prefix" layout: the special token a prompt with nothing before the cursor starts with


def split_prompt(tokenizer: Tokenizer, ids: list[int]) -> PromptParts:
    start = tokenizer.start_ids
    if start and ids[: len(start)] == start:
        ids = ids[len(start) :]  # the server's tokenizer puts its bos there itself
    fim = tokenizer.fim
    if fim is not None and len(ids) >= 3 and ids[0] == fim.prefix and fim.middle in ids:
        middle = ids.index(fim.middle)
        bare_suffix = fim.suffix_without_leading_space  # encoded so (engine/prompt.py): decoded so
        if ids[1] == fim.suffix:  # spm: <pre><suf>{suffix}<mid>{prefix}
            suffix = tokenizer.decode(ids[2:middle], continuation=bare_suffix)
            return PromptParts("spm", tokenizer.decode(ids[middle + 1 :]), suffix)
        cut = ids.index(fim.suffix)  # psm: <pre>{prefix}<suf>{suffix}<mid>{generated}
        prefix = tokenizer.decode(ids[1:cut]) + tokenizer.decode(ids[middle + 1 :], continuation=True)
        return PromptParts("psm", prefix, tokenizer.decode(ids[cut + 1 : middle], continuation=bare_suffix))
    lead = tokenizer.token(ids[0]) if ids and ids[0] in tokenizer.special_ids else ""
    return PromptParts("prefix", tokenizer.decode(ids), "", lead or "")


def render(tokenizer: Tokenizer, parts: PromptParts) -> str:
    """The prompt as text, FIM tokens spelled out (the server reads them back as its special tokens)."""
    if parts.layout == "prefix":
        return parts.lead + parts.prefix
    fim = tokenizer.fim
    pre, suf, mid = (tokenizer.token(i) for i in (fim.prefix, fim.suffix, fim.middle))
    if parts.layout == "spm":
        return f"{pre}{suf}{parts.suffix}{mid}{parts.prefix}"
    return f"{pre}{parts.prefix}{suf}{parts.suffix}{mid}"


def sampling(params: SamplingParams, model: str) -> dict:
    """The request fields both APIs spell alike: sampling, and the served model's name."""
    fields = {"temperature": params.temperature, "top_p": params.top_p, "stream": True}
    if params.seed is not None:
        fields["seed"] = params.seed
    if model:
        fields["model"] = model
    return fields


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    positions = [p for p in (text.find(s) for s in stops if s) if p >= 0]
    return min(positions) if positions else None


def _retry_after(value: str | None) -> float | None:
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S) if value else None
    except ValueError:
        return None  # an HTTP date: use our own backoff


def _excerpt(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:EXCERPT]
