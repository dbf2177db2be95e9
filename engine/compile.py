"""Compiled single-token decode (torch.compile), gpt-fast style.

Only the hot step is compiled: one token in, logits out, over a KV cache of
the model's full window, so every call has the same shapes and compiles once.
On CUDA it runs as CUDA graphs (mode="reduce-overhead"), which removes the
per-kernel launch cost that dominates batch-1 decode. Prefill stays eager
(scaled_dot_product_attention, any prompt length, never recompiling).

Compilation happens at load, with a warm-up call, not on the first keystroke.
`compile = auto` turns it on for CUDA only: on the CPU a compiled decode step
measured 422 ms against 35 ms eager (README, "Quantization and dtypes").
"""

from __future__ import annotations

from typing import Callable

import torch

from engine.config import ModelConfig
from engine.kv_cache import KVCache
from engine.options import COMPILE as COMPILE_SETTINGS



def want_compile(setting: str, device: torch.device) -> bool:
    """auto: on for CUDA only; true / false: as asked."""
    if setting == "auto":
        return device.type == "cuda"
    return setting == "true"


def compile_decode(
    model: torch.nn.Module, config: ModelConfig, device: torch.device, dtype: torch.dtype
) -> Callable[[KVCache, int, int], torch.Tensor]:
    """decode_step(cache, token, position) -> logits (vocab,) for the token after `token`.

    `cache` must hold the model's whole window (config.n_positions): attention
    runs over all of it with positions past `position` masked, so the shapes
    never change. Compiles and warms up before returning.
    """
    on_cuda = device.type == "cuda"

    def decode(cache: KVCache, idx: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return model(idx, input_pos, cache, kv_len=None, last_only=True)

    compiled = torch.compile(decode, mode="reduce-overhead" if on_cuda else None, fullgraph=True, dynamic=False)

    @torch.inference_mode()
    def decode_step(cache: KVCache, token: int, position: int) -> torch.Tensor:
        if on_cuda:
            # The cache is written in place each step: a static address lets
            # the CUDA graph write it directly instead of copying it in.
            # (A new session's cache re-records the graph; it does not recompile.)
            torch._dynamo.mark_static_address(cache.k, guard=False)
            torch._dynamo.mark_static_address(cache.v, guard=False)
        idx = torch.tensor([[token]], device=device)
        input_pos = torch.tensor([position], device=device)
        # Clone: a CUDA graph's output buffer is overwritten by its next replay.
        return compiled(cache, idx, input_pos)[0, -1].clone()

    with torch.inference_mode():
        warm = KVCache(config, config.n_positions, device, dtype)
    for position in range(3):  # CUDA graph trees record on the second or third call
        decode_step(warm, 0, position)
    return decode_step
