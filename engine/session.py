"""The KV cache of one document and the token ids it currently holds.

A request gives the whole prompt's ids; the session keeps the longest common
prefix with what it holds, prefills only the rest (in chunks) and decodes.
Generated tokens stay encoded, so an accepted suggestion is already cached
when the next request arrives.
"""

from __future__ import annotations

import threading

import torch

from engine.errors import EngineError
from engine.kv_cache import KVCache
from engine.loading import LoadedModel

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
    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.ids: list[int] = []  # tokens whose keys and values are in the cache, in order
        self.cache: KVCache | None = None

    @property
    def max_len(self) -> int:
        return self.lm.config.n_positions

    @property
    def nbytes(self) -> int:
        return self.cache.nbytes if self.cache is not None else 0

    def _reserve(self, length: int) -> None:
        """Make room for `length` positions, growing in steps and keeping what is cached."""
        if length > self.max_len:
            raise EngineError(f"sequence of {length} tokens exceeds the model's window of {self.max_len}")
        if self.cache is not None and self.cache.max_len >= length:
            return
        size = min(self.max_len, -(-length // CACHE_STEP) * CACHE_STEP)
        if self.lm.decode_step is not None:
            size = self.max_len  # compiled decode runs over the whole window (static shapes)
        grown = KVCache(self.lm.config, size, self.lm.device, self.lm.dtype)
        if self.cache is not None:
            n = len(self.ids)
            grown.k[..., :n, :] = self.cache.k[..., :n, :]
            grown.v[..., :n, :] = self.cache.v[..., :n, :]
        self.cache = grown

    def _forward(self, ids: list[int], last_only: bool) -> torch.Tensor:
        start = len(self.ids)
        device = self.lm.device
        idx = torch.tensor([ids], dtype=torch.long, device=device)
        input_pos = torch.arange(start, start + len(ids), device=device)
        logits = self.lm.model(idx, input_pos, self.cache, kv_len=start + len(ids), last_only=last_only)
        self.ids.extend(ids)
        return logits

    @torch.inference_mode()
    def prefill(self, prompt: list[int], cancel: threading.Event | None = None) -> tuple[torch.Tensor, int]:
        """Encode prompt, reusing the common prefix; return (next-token logits (vocab,), reused count).

        At least the last prompt token is encoded again, since its logits are
        what the next token is sampled from.
        """
        if not prompt:
            raise EngineError("empty prompt")
        reused = min(common_prefix_length(self.ids, prompt), len(prompt) - 1)
        del self.ids[reused:]
        self._reserve(len(prompt))
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
