"""A preallocated key/value cache for one sequence (batch size 1)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from engine import huge_pages
from engine.config import ModelConfig

# (kv heads, query heads per kv head, head dim) -> the instruction set our decode attention kernel
# runs with for that shape on this CPU (engine/kernels/cpu_matvec.cpp), where it was measured
# faster than SDPA at load (engine/cpu_kernels.py, choose_attention); other shapes use SDPA. With
# HALF after it ("avx2 float16"), ours was fastest over a float16 copy of the cache: quantized
# models of that shape keep their cache in float16 (cache_dtype).
DECODE_ATTENTION: dict[tuple[int, int, int], str] = {}
HALF = " float16"
# The same key and the cache's dtype -> the instruction set our prefill attention kernel runs with for
# that shape over such a cache, where it was measured faster than SDPA at load (a float16 cache is
# widened as it is read: cpu_kernels.choose_prefill_attention measures each), for chunks of more
# than SMALL_CHUNK_ROWS query rows per key/value head (tokens x query heads per kv head). The kernel
# fills a register's lanes (16 with AVX-512) with a head's rows: with a few rows it computes mostly
# empty lanes, and such a chunk (the few tokens a keystroke re-encodes) goes token by token through
# the decode kernel, as a verify's rows do, or SDPA. (codegen-350M's shape, 1,500 cached keys, 2 / 4
# / 8 new tokens over float16: decode kernel 262 / 504 / 1,177 us, prefill kernel 678 / 674 / 647,
# SDPA with the cast 1,497 / 881 / 929.)
PREFILL_ATTENTION: dict[tuple[int, int, int, torch.dtype], str] = {}
SMALL_CHUNK_ROWS = 4


def set_choice(choices: dict[tuple, str], shape: tuple, isa: str | None) -> None:
    """choices[shape] = isa in DECODE_ATTENTION or PREFILL_ATTENTION, or no entry (SDPA) for None."""
    choices.pop(shape, None)
    if isa is not None:
        choices[shape] = isa


def attention_shape(config: ModelConfig) -> tuple[int, int, int]:
    """A model's key in DECODE_ATTENTION: (kv heads, query heads per kv head, head dim)."""
    return config.n_kv_heads, config.n_head // config.n_kv_heads, config.head_dim


def cache_dtype(config: ModelConfig, dtype: torch.dtype, device, quantized: bool = False) -> torch.dtype:
    """The KV cache's dtype for a model of `dtype`: its architecture's where it names one (CodeGen's
    is float32), else the model's; float16 for a float32 cache of a quantized CPU model whose shape
    chose ours over float16 (half the bytes to read; each number is widened as it is read). Float
    models keep float32: their logits are checked against transformers'."""
    chosen = config.architecture.cache_dtype or dtype
    ours_over_half = DECODE_ATTENTION.get(attention_shape(config), "").endswith(HALF)
    if quantized and chosen == torch.float32 and torch.device(device).type == "cpu" and ours_over_half:
        return torch.float16
    return chosen


@torch.library.custom_op("codegen_lsp::write_cache", mutates_args=("cache",))
def write_cache(cache: torch.Tensor, layer: int, positions: torch.Tensor, values: torch.Tensor) -> None:
    """cache[layer, :, :, positions] = values. One opaque op that mutates its input, which a compiled
    CPU step (engine/compile.py) runs in place on the session's cache; written as tensor ops,
    inductor copied the layer's whole cache in and back out on every step. It takes the whole cache
    and the layer, not a view of the layer: with a view, inductor (torch 2.13) wrote every layer's
    keys into layer 0."""
    cache[layer].index_copy_(2, positions, values)


class KVCache:
    """Keys and values of every layer, written at explicit positions.

    Positions [0, n) hold the tokens a session has encoded; reusing the cache
    after an edit means writing again from the first changed position.
    """

    def __init__(self, config: ModelConfig, capacity: int, device, dtype: torch.dtype, zeroed: bool = True):
        """dtype: the cache's own (cache_dtype gives a model's). zeroed=False leaves the memory as
        allocated: for a cache only ever read at positions written before, since a step that attends
        over the whole window with a mask (CUDA graphs) would carry an unwritten NaN through its
        zero weight. (Zeroing a 1,536-token codegen-350M cache took 53 ms; the copy into the new
        cache then pays for touching its pages either way: 57-354 ms a growth on the AVX2 EPYC
        with or without zeroing, median 70 against 207 ms over 6 alternated growths.)"""
        shape = (config.n_layer, 1, config.n_kv_heads, capacity, config.head_dim)
        if torch.device(device).type == "cpu" and huge_pages.fills_one(math.prod(shape) * dtype.itemsize):
            # Read every step, as the weights are, and from huge pages faster: codegen-350M's decode
            # attention over 1,500 keys 394 against 500 us a layer (Intel Xeon VM; santacoder's 109 / 116).
            self.k, self.v = huge_pages.zeros(shape, dtype), huge_pages.zeros(shape, dtype)
        else:
            allocate = torch.zeros if zeroed else torch.empty
            self.k = allocate(shape, device=device, dtype=dtype)
            self.v = allocate(shape, device=device, dtype=dtype)
        self.capacity = capacity  # positions allocated (a session grows it up to the model's window)
        # Each layer's view, made once: indexing the cache for a layer in every step (select, slice,
        # index_copy_, a cast) took 19-33 us a layer on the AVX2 EPYC, narrow and copy_ 9-10.
        self.layer_keys, self.layer_values = self.k.unbind(0), self.v.unbind(0)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def update(self, layer: int, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: int):
        """Store k, v (1, n_kv_heads, T, head_dim) at input_pos; return keys and values [0, kv_len).

        Eagerly, input_pos is taken to be [kv_len - T, kv_len): a forward appends its T tokens
        after the kv_len - T cached (Session._forward). A compiled step, and a call over the whole
        static cache (kv_len = capacity), write at input_pos itself."""
        if torch.compiler.is_compiling() and self.k.device.type == "cpu":
            write_cache(self.k, layer, input_pos, k.to(self.k.dtype))
            write_cache(self.v, layer, input_pos, v.to(self.v.dtype))
        elif torch.compiler.is_compiling() or kv_len == self.capacity:
            self.k[layer].index_copy_(2, input_pos, k.to(self.k.dtype))
            self.v[layer].index_copy_(2, input_pos, v.to(self.v.dtype))
        else:
            keys, values, T = self.layer_keys[layer], self.layer_values[layer], k.shape[2]
            keys.narrow(2, kv_len - T, T).copy_(k)
            values.narrow(2, kv_len - T, T).copy_(v)
            return keys.narrow(2, 0, kv_len), values.narrow(2, 0, kv_len)
        return self.k[layer, :, :, :kv_len], self.v[layer, :, :, :kv_len]

    def update_and_attend(self, layer: int, input_pos: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          kv_len: int, mask, scale: float | None = None) -> torch.Tensor:
        """Store k, v as update() does and attend q (1, n_head, T, head_dim) over keys [0, kv_len) as
        attend() does -> (1, T, n_head * head_dim), as an output projection takes it. A decode step on
        the CPU where our kernel runs for its shape takes one op of ours for both, the same numbers,
        where update_then_attend takes ~10 of PyTorch's and their Python (the demo model's steps 4-7 %
        faster; benchmarks/cached_attention.py)."""
        B, H, T, D = q.shape
        if T == 1 and mask is None and not torch.compiler.is_compiling():
            keys, values = self.layer_keys[layer], self.layer_values[layer]
            isa = our_decode_kernel(q, keys)
            if isa is not None:
                return torch.ops.codegen_lsp_cpu.attend_decode_cached(q, k, v, keys, values, kv_len - 1, scale or D**-0.5, isa)
        return self.update_then_attend(layer, input_pos, q, k, v, kv_len, mask, scale)

    def update_then_attend(self, layer: int, input_pos: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           kv_len: int, mask, scale: float | None = None) -> torch.Tensor:
        """update_and_attend in PyTorch's ops around attend(): prefill, verifies, SDPA, compiled steps."""
        B, H, T, D = q.shape
        keys, values = self.update(layer, input_pos, k, v, kv_len)
        return attend(q, keys, values, mask, scale).transpose(1, 2).reshape(B, T, H * D)


class CausalMask:
    """The mask of a forward whose T tokens are the last of the kv_len it attends to, with no window
    in the way (a prefill chunk): each query sees every key up to its own. Our prefill kernel needs
    only that; SDPA gets `tensor`."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class RowSpans(tuple):
    """The mask of a verify forward (engine/speculative.py): one (kv_len, mask) per query row, what a
    single-token decode step at its position would use, so that each row attends alone exactly as
    that step does and the rows' results are bit for bit those of decode steps (a batched masked
    SDPA differs in the last bits)."""


def attention_span(input_pos: torch.Tensor, cache: KVCache | None, kv_len: int | None, window: int | None = None,
                   exact_rows: bool = False):
    """(kv_len, mask) for one forward call over the cache.

    kv_len None means the whole static cache (the compiled decode step, whose
    shapes never change); the boolean (T, kv_len) mask lets a query at position
    p see keys at positions <= p. A single query over a cache sliced to exactly
    its own length sees every key and needs no mask. (SDPA's is_causal aligns
    top-left, which is wrong as soon as there are cached keys.) With a sliding
    `window`, a query at p sees keys at positions (p - window, p] only. Training
    (no cache) gets (None, None).
    """
    if cache is None:
        return None, None
    if kv_len is not None and input_pos.shape[0] == 1 and (window is None or kv_len <= window):
        return kv_len, None
    if exact_rows and kv_len is not None:
        return kv_len, RowSpans(attention_span(p[None], cache, int(p) + 1, window) for p in input_pos)
    causal = kv_len is not None and (window is None or kv_len <= window)  # eagerly, input_pos are the last T of kv_len
    kv_len = cache.capacity if kv_len is None else kv_len
    key_pos = torch.arange(kv_len, device=input_pos.device)
    mask = key_pos[None, :] <= input_pos[:, None]
    if window is not None:
        mask &= key_pos[None, :] > input_pos[:, None] - window
    return kv_len, CausalMask(mask) if causal else mask


def our_decode_kernel(q: torch.Tensor, k: torch.Tensor) -> str | None:
    """The instruction set our decode attention kernel runs with for this call's shape, or None (SDPA)."""
    if not DECODE_ATTENTION or q.shape[0] != 1 or q.device.type != "cpu" or q.dtype != torch.float32:
        return None
    if k.dtype not in (torch.float32, torch.float16):
        return None
    H, KVH = q.shape[1], k.shape[1]
    choice = DECODE_ATTENTION.get((KVH, H // KVH, q.shape[3]))
    return None if choice is None else choice.removesuffix(HALF)


def small_chunk(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether a chunk of queries is small enough for our decode kernel row by row (SMALL_CHUNK_ROWS)."""
    return q.shape[2] * (q.shape[1] // k.shape[1]) <= SMALL_CHUNK_ROWS


def our_prefill_kernel(q: torch.Tensor, k: torch.Tensor) -> str | None:
    """The instruction set our prefill attention kernel runs with for this call's shape, or None (SDPA)."""
    if not PREFILL_ATTENTION or q.device.type != "cpu" or q.dtype != torch.float32 or k.dtype not in (torch.float32, torch.float16):
        return None
    H, KVH = q.shape[1], k.shape[1]
    return None if small_chunk(q, k) else PREFILL_ATTENTION.get((KVH, H // KVH, q.shape[3], k.dtype))


def consecutive_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, isa: str) -> torch.Tensor:
    """q (1, H, T, D), the last T of the S keys in k, v (1, KVH, S, D), each token over the keys up to
    its own as its decode step attends (our decode kernel, one call for all) -> (1, H, T, D)."""
    B, H, T, D = q.shape
    KVH = k.shape[1]
    rows = q[0].reshape(KVH, H // KVH, T, D).permute(2, 0, 1, 3)
    y = torch.ops.codegen_lsp_cpu.attend_decode(rows, k[0], v[0], scale, isa)
    return y.permute(1, 2, 0, 3).reshape(B, H, T, D)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, scale: float | None = None) -> torch.Tensor:
    """q (1, H, T, D) over k, v (1, KVH, S, D) -> (1, H, T, D); H is a multiple of KVH (grouped-query;
    KVH = 1 is multi-query), query heads [j*H/KVH, (j+1)*H/KVH) reading K/V head j."""
    B, H, T, D = q.shape
    KVH = k.shape[1]
    isa = our_decode_kernel(q, k)
    if isinstance(mask, CausalMask):
        if isa is not None and small_chunk(q, k):
            return consecutive_rows(q, k, v, scale or D**-0.5, isa)
        prefill_isa = our_prefill_kernel(q, k)
        if prefill_isa is not None:
            return torch.ops.codegen_lsp_cpu.attend_prefill(q, k, v, scale or D**-0.5, prefill_isa)
        mask = mask.tensor
    if isinstance(mask, RowSpans):
        last = mask[-1][0]
        if isa is not None and all(m is None for _, m in mask) and mask[0][0] == last - T + 1:
            # One call for all rows (consecutive tokens), each over its own keys as its decode step.
            return consecutive_rows(q, k[:, :, :last], v[:, :, :last], scale or D**-0.5, isa)
        return torch.cat([attend(q[:, :, i : i + 1], k[:, :, :n], v[:, :, :n], m, scale) for i, (n, m) in enumerate(mask)], dim=2)
    if T == 1 and mask is None and isa is not None:
        y = torch.ops.codegen_lsp_cpu.attend_decode(q.reshape(KVH, H // KVH, D), k[0], v[0], scale or D**-0.5, isa)
        return y.view(B, H, T, D)
    if k.dtype != q.dtype:  # a float16 cache (kept for our kernel) where SDPA runs, as in prefill: cast what it reads
        k, v = k.to(q.dtype), v.to(q.dtype)
    if KVH < H and T == 1:
        # Grouped decode: the heads of a group read the same keys, so they become the query rows
        # of one head and the cache is read once, in one matmul. On CPU this is 2x (float32) to
        # 15x (bfloat16) faster than SDPA's grouped-query path (multi-query); for prefill it is no faster.
        folded_mask = None if mask is None else mask.expand(H // KVH, -1)  # (group, S): T == 1
        y = F.scaled_dot_product_attention(q.reshape(B, KVH, H // KVH, D), k, v, attn_mask=folded_mask, scale=scale)
        return y.view(B, H, T, D)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=k.shape[1] != H)
