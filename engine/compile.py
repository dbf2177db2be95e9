"""Compiled single-token decode (torch.compile), gpt-fast style.

Only the hot step is compiled: one token in, logits out. Prefill stays eager
(any prompt length, never recompiling).

On CUDA the step runs as CUDA graphs (mode="reduce-overhead"), which removes the
per-kernel launch cost that dominates batch-1 decode. A graph has fixed shapes,
so there the cache holds the model's whole window and attention runs over all of
it with the positions past the token masked.

On the CPU there is no launch cost to remove, only Python and dispatch per op,
so the step is compiled with a symbolic length instead: attention reads exactly
the positions in use, the cache grows as in eager decoding, and the keys and
values are written in place (kv_cache.write_cache). The earlier CPU step, with
static shapes, attended over the whole window and copied the whole cache back
into its input every call: 3-8x slower than eager on long windows. The graph
is run by inductor's C++ wrapper, not its Python one: with the Python wrapper
the compiled step of a 0.35-1.1B model was 5-6 % slower than eager decoding
(each of its calls goes through Python and the dispatcher as eager ops do);
with the C++ one it is as fast or 1-10 % faster (benchmarks/README.md, "CPU decode kernels").

Compilation happens at load, with warm-up calls, not on the first keystroke.
`compile = auto` turns it on for CUDA only: on the CPU it costs 40-80 s at the
first start of a 0.35-1.5B model (15-25 s later, from inductor's cache) for that
little, and speculative decoding stays off beside it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import torch

from engine.config import ModelConfig
from engine.kv_cache import KVCache
from engine.options import COMPILE as COMPILE_SETTINGS

WARM_UP_POSITION = 32  # CPU warm-up: sizes 0 and 1 would be specialized as constants


def want_compile(setting: str, device: torch.device) -> bool:
    """auto: on for CUDA only; true / false: as asked."""
    if setting == "auto":
        return device.type == "cuda"
    return setting == "true"


@dataclass
class CompiledDecode:
    """decode_step(cache, token, position) -> logits (vocab,) for the token after `token`."""

    step: Callable[[KVCache, int, int], torch.Tensor]
    whole_window: bool  # the cache must hold the model's whole window (static shapes: CUDA graphs)

    def __call__(self, cache: KVCache, token: int, position: int) -> torch.Tensor:
        return self.step(cache, token, position)


def compile_decode(model: torch.nn.Module, config: ModelConfig, device: torch.device, cache_dtype: torch.dtype) -> CompiledDecode:
    """Compile and warm up the decode step for `device` and caches of `cache_dtype` (see the module's docstring)."""
    on_cuda = device.type == "cuda"

    def decode(cache: KVCache, idx: torch.Tensor, input_pos: torch.Tensor, kv_len: int | None) -> torch.Tensor:
        return model(idx, input_pos, cache, kv_len=kv_len, last_only=True)

    if on_cuda:
        compiled = torch.compile(decode, mode="reduce-overhead", fullgraph=True, dynamic=False)
    else:
        compiled = torch.compile(decode, fullgraph=True, dynamic=True, options={"cpp_wrapper": True})

    marked: weakref.WeakSet[KVCache] = weakref.WeakSet()  # CPU caches whose fixed dims are marked static

    @torch.inference_mode()
    def decode_step(cache: KVCache, token: int, position: int) -> torch.Tensor:
        if on_cuda:
            # The cache is written in place each step: a static address lets
            # the CUDA graph write it directly instead of copying it in.
            # (A new session's cache re-records the graph; it does not recompile.)
            torch._dynamo.mark_static_address(cache.k, guard=False)
            torch._dynamo.mark_static_address(cache.v, guard=False)
        elif cache not in marked:  # once per cache, not per step (8 calls: 14-70 us of a ~1 ms demo step)
            for dim in (0, 1, 2, 4):  # only the capacity (dim 3) varies; heads and sizes stay constants
                torch._dynamo.mark_static(cache.k, dim)
                torch._dynamo.mark_static(cache.v, dim)
            marked.add(cache)
        idx = torch.tensor([[token]], device=device)
        input_pos = torch.tensor([position], device=device)
        logits = compiled(cache, idx, input_pos, None if on_cuda else position + 1)[0, -1]
        return logits.clone() if on_cuda else logits  # a CUDA graph's output buffer is overwritten by its next replay

    with torch.inference_mode():
        warm = KVCache(config, config.n_positions if on_cuda else 2 * WARM_UP_POSITION, device, cache_dtype)
    for position in range(3):  # CUDA graph trees record on the second or third call
        decode_step(warm, 0, position if on_cuda else WARM_UP_POSITION + position)
    return CompiledDecode(decode_step, whole_window=on_cuda)
