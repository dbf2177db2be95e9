"""The KV cache of one document and the token ids it currently holds.

A request gives the whole prompt's ids; the session keeps the longest common
prefix with what it holds, prefills only the rest (in chunks) and decodes.
Generated tokens stay encoded, so an accepted suggestion is already cached
when the next request arrives. `SessionStore` keeps one session per document
in an LRU bounded by a memory budget.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Callable

import torch

from engine.errors import EngineError
from engine.kv_cache import KVCache
from engine.loaded_model import LoadedModel

log = logging.getLogger(__name__)

PREFILL_CHUNK = 256  # tokens per prefill forward; cancellation is checked between chunks
CACHE_STEP = 256  # the cache grows in steps of this many positions


class Cancelled(Exception):
    """Raised inside a request whose cancel event was set; the session stays consistent."""


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Session:
    """One sequence: `ids[i]` has its keys and values at position i of `cache`.

    Invariant (kept through cancellation): `ids` lists exactly the tokens whose
    keys and values are in the cache, so any prefix of it can be reused.
    A session is used by one request at a time: hold `lock` around a request.
    """

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.ids: list[int] = []  # tokens whose keys and values are in the cache, in order
        self.cache: KVCache | None = None
        self.lock = threading.Lock()
        self.on_grow: Callable[[Session], None] | None = None  # set by SessionStore to keep its budget

    @property
    def window(self) -> int:
        """The model's window: the most tokens a sequence may hold."""
        return self.lm.config.n_positions

    @property
    def nbytes(self) -> int:
        return self.cache.nbytes if self.cache is not None else 0

    def free(self) -> None:
        """Drop the cache (and with it everything encoded)."""
        self.ids = []
        self.cache = None

    def _reserve(self, length: int) -> None:
        """Make room for `length` positions, growing in steps and keeping what is cached."""
        if length > self.window:
            raise EngineError(f"sequence of {length} tokens exceeds the model's window of {self.window}")
        if self.cache is not None and self.cache.capacity >= length:
            return
        whole_window = self.lm.decode_step is not None and self.lm.decode_step.whole_window
        if whole_window:
            size = self.window  # a CUDA-graph decode step has static shapes: the whole window
        else:
            size = min(self.window, -(-length // CACHE_STEP) * CACHE_STEP)
        grown = KVCache(self.lm.config, size, self.lm.device, self.lm.cache_dtype, zeroed=whole_window)
        if self.cache is not None:
            n = len(self.ids)
            grown.k[..., :n, :] = self.cache.k[..., :n, :]
            grown.v[..., :n, :] = self.cache.v[..., :n, :]
        self.cache = grown
        if self.on_grow is not None:
            self.on_grow(self)

    def _forward(self, ids: list[int], last_only: bool, exact_rows: bool = False) -> torch.Tensor:
        start = len(self.ids)
        device = self.lm.device
        idx = torch.tensor([ids], dtype=torch.long, device=device)
        input_pos = torch.arange(start, start + len(ids), device=device)
        logits = self.lm.model(idx, input_pos, self.cache, kv_len=start + len(ids), last_only=last_only, exact_rows=exact_rows)
        self.ids.extend(ids)  # only after the forward: a failed one leaves ids as they were
        return logits

    @torch.inference_mode()
    def prefill(self, prompt: list[int], cancel: threading.Event | None = None, room_after: int = 0) -> tuple[torch.Tensor, int]:
        """Encode prompt, reusing the common prefix; return (next-token logits (vocab,), reused count).

        At least the last prompt token is encoded again, since its logits are
        what the next token is sampled from. If cancelled between chunks, the
        chunks already encoded stay in the cache and count for the next request.
        The cache is given room for `room_after` more positions (the tokens to be
        generated), so that decoding never stops to grow it: a growth copies the
        whole cache, 60-350 ms for codegen-350M at 1,500 tokens, ten decode steps.
        """
        if not prompt:
            raise EngineError("empty prompt")
        reused = min(common_prefix_length(self.ids, prompt), len(prompt) - 1)
        rows = self.lm.config.vocab_size
        bad = next((token for token in prompt[reused:] if not 0 <= token < rows), None)
        if bad is not None:
            raise EngineError(f"token id {bad} is outside the model's {rows} embedding rows: "
                              "the checkpoint's tokenizer does not match its weights")
        del self.ids[reused:]
        self._reserve(max(len(prompt), min(len(prompt) + room_after, self.window)))  # a prompt past the window raises
        logits = None
        for begin in range(reused, len(prompt), PREFILL_CHUNK):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            logits = self._forward(prompt[begin : begin + PREFILL_CHUNK], last_only=True)
        return logits[0, -1], reused

    @torch.inference_mode()
    def step(self, token: int) -> torch.Tensor:
        """Append one token; return the logits for the one after it."""
        self._reserve(len(self.ids) + 1)
        if self.lm.decode_step is not None:
            logits = self.lm.decode_step(self.cache, token, len(self.ids))
            self.ids.append(token)
            return logits
        return self._forward([token], last_only=True)[0, -1]

    @torch.inference_mode()
    def verify(self, tokens: list[int]) -> torch.Tensor:
        """Append tokens in one forward; return the logits after each (len(tokens), vocab).

        With quantized weights each row is computed as a decode step would compute it (attention
        of each row over its own keys, row-exact linear kernels: engine/quantize.py), so the logits
        equal those of len(tokens) steps. Dense float weights give no row its one-token result
        anyway (engine/speculative.py's TIE_MARGIN covers that), so there the rows attend in one
        masked call.
        """
        self._reserve(len(self.ids) + len(tokens))
        return self._forward(tokens, last_only=False, exact_rows=self.lm.quantization != "none")[0]

    def truncate(self, length: int) -> None:
        """Forget every token from position `length` on (rejected drafts); the cache keeps the rest."""
        del self.ids[length:]


class SessionStore:
    """One Session per document key, least recently used evicted first.

    The budget counts KV-cache bytes. Caches grow while they are used, so the
    budget is enforced whenever a session is created or grows: other sessions
    are freed, oldest first, until the total fits. A session busy in another
    thread is never freed under it; a single session larger than the budget
    is kept (there is nothing else to give back).
    """

    def __init__(self, lm: LoadedModel, cache_memory_mb: int):
        if cache_memory_mb <= 0:
            raise EngineError(f"cache_memory_mb must be positive, got {cache_memory_mb}")
        self.lm = lm
        self.budget_bytes = int(cache_memory_mb * 2**20)
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # oldest first
        self._lock = threading.Lock()

    def get(self, key: str) -> Session:
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = Session(self.lm)
                session.on_grow = self._fit
                self._sessions[key] = session
            self._sessions.move_to_end(key)
            self._evict(keep=session)
            return session

    def drop(self, key: str) -> None:
        with self._lock:
            session = self._sessions.pop(key, None)
        if session is not None:
            with session.lock:  # a request running on it finishes first
                session.on_grow = None
                session.free()

    def keys(self) -> list[str]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._sessions)

    def __contains__(self, key: str) -> bool:
        return key in self._sessions

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in list(self._sessions.values()))

    def _fit(self, grown: Session) -> None:
        with self._lock:
            self._evict(keep=grown)

    def _evict(self, keep: Session) -> None:
        """Free least recently used sessions until the budget holds (caller holds self._lock)."""
        for key, session in list(self._sessions.items()):
            if self.nbytes <= self.budget_bytes:
                return
            if session is keep or not session.lock.acquire(blocking=False):
                continue  # the requester, or busy in another request
            try:
                del self._sessions[key]
                session.on_grow = None
                session.free()
                log.debug("evicted session %s to stay within %d bytes", key, self.budget_bytes)
            finally:
                session.lock.release()
