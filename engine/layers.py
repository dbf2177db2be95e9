"""Pieces the architectures share: rotary position embeddings (GPT-J's interleaved pairs and
Llama's halves, with the scaling variants of published checkpoints), RMSNorm, attention over
separate q/k/v projections with grouped-query heads, and the pre-norm block with its model.

Grouped-query attention itself (any number of K/V heads, read once per decode step) is
engine/kv_cache.py's `attend`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine import config as engine_config
from engine.config import ConfigReader, ModelConfig
from engine.decoder import DecoderLM
from engine.kv_cache import KVCache

# ---------------------------------------------------------------- rotary embeddings


@dataclass(frozen=True)
class Rope:
    """How positions become rotation angles: theta, and the scaling a long-context checkpoint adds."""

    theta: float = 10000.0
    scaling: str = "default"  # default | linear | llama3
    factor: float = 1.0  # linear: positions divided by it; llama3: long wavelengths divided by it
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max_positions: int = 8192  # llama3

    @classmethod
    def read(cls, r: ConfigReader, default_theta: float = 10000.0) -> "Rope":
        """From rope_parameters (transformers 5.x), else rope_scaling and rope_theta (older exports)."""
        params = r.get("rope_parameters") or r.get("rope_scaling") or {}
        if not isinstance(params, dict):
            raise r.error(f"rope_parameters must be an object, got {params!r}")
        reader = ConfigReader({"rope_theta": r.get("rope_theta", default_theta), **params}, r.source)
        scaling = reader.choice("rope_type", params.get("type", "default"), ("default", "linear", "llama3"))
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            raise r.error("partial_rotary_factor other than 1 is not supported")
        rope = cls(theta=reader.number("rope_theta", default_theta, 0, math.inf), scaling=scaling)
        if scaling == "default":
            return rope
        factor = reader.number("factor", 1.0, 0, 1e6)
        if scaling == "linear":
            return cls(rope.theta, scaling, factor)
        return cls(rope.theta, scaling, factor, reader.number("low_freq_factor", 1.0, 0, 1e6),
                   reader.number("high_freq_factor", 4.0, 0, 1e6),
                   reader.size("original_max_position_embeddings", "n_positions", default=r.get("max_position_embeddings", 8192)))

    def inverse_frequencies(self, dim: int, device) -> torch.Tensor:
        """(dim/2,) float32: the angle per position of each rotated pair, as transformers computes it."""
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))
        if self.scaling == "linear":
            return inv_freq / self.factor
        if self.scaling == "llama3":
            low_wavelen = self.original_max_positions / self.low_freq_factor
            high_wavelen = self.original_max_positions / self.high_freq_factor
            wavelen = 2 * math.pi / inv_freq
            scaled = torch.where(wavelen > low_wavelen, inv_freq / self.factor, inv_freq)
            smooth = (self.original_max_positions / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
            smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
            return torch.where(medium, smoothed, scaled)
        return inv_freq


def rotary_sin_cos(input_pos: torch.Tensor, inv_freq: torch.Tensor, interleaved: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """sin, cos of shape (T, 2 * len(inv_freq)). Interleaved (GPT-J): each angle's for its pair, the
    sine negated on the pair's first dim (apply_rotary_interleaved); halves (Llama): the angles twice over."""
    angles = input_pos.float()[:, None] * inv_freq  # (T, dim/2)
    if interleaved:
        sin = angles.sin()
        return torch.stack((-sin, sin), dim=-1).flatten(-2), angles.cos().repeat_interleave(2, -1)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.sin(), angles.cos()


def our_rotary(x: torch.Tensor) -> bool:
    """Whether our CPU rotary op takes x: float32, where our element-wise ops run (engine/config.py)."""
    return x.dtype == torch.float32 and engine_config.our_cpu_ops_take(x)


def apply_rotary_interleaved(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, position_dim: int = 1) -> torch.Tensor:
    """Rotate interleaved pairs (2i, 2i+1) of the first sin.shape[-1] dims of x (..., T, ..., D), its
    positions along position_dim (GPT-J, CodeGen), in float32, into a new contiguous tensor: (a, b) ->
    (a cos - b sin, b cos + a sin), as x * cos + (x with each pair swapped) * signed sin. On the CPU
    one op of ours (engine/kernels/cpu_matvec.cpp, the same numbers; PyTorch's eight cost a
    codegen-350M decode step 39 us a layer)."""
    if our_rotary(x):
        return torch.ops.codegen_lsp_cpu.rotary(x, sin, cos, position_dim, True)
    x = x.float()
    rot_dim = sin.shape[-1]
    sin, cos = (t.view(t.shape[0], *[1] * (x.dim() - position_dim - 2), rot_dim) for t in (sin, cos))  # over the heads
    x_rot = x[..., :rot_dim]
    swapped = x_rot.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    rotated = x_rot * cos + swapped * sin
    return rotated if rot_dim == x.shape[-1] else torch.cat((rotated, x[..., rot_dim:]), dim=-1)


def apply_rotary_halves(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + D/2) of x (B, H, T, D) (Llama and the architectures after it); on the CPU
    in one op of ours, as apply_rotary_interleaved (PyTorch's six, twice a layer)."""
    if our_rotary(x):
        return torch.ops.codegen_lsp_cpu.rotary(x, sin, cos, 2, False)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


# ---------------------------------------------------------------- norm, attention, block


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32 and engine_config.our_cpu_ops_take(x):
            # One op of ours (engine/kernels/cpu_matvec.cpp) for PyTorch's ~9 below, the same roundings.
            return torch.ops.codegen_lsp_cpu.rms_norm(x, self.weight, self.eps, engine_config.CPU_OPS_ISA)
        h = x.float()  # normalized in float32, scaled in x's dtype, as in the original
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class RopeAttention(nn.Module):
    """Separate q/k/v/o projections (named as in Llama checkpoints), rotary q and k, n_kv_heads <= n_head."""

    def __init__(self, config: ModelConfig, layer: int, qkv_bias: bool, out_bias: bool):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_heads, self.head_dim = config.n_head, config.n_kv_heads, config.head_dim
        E, q_width, kv_width = config.n_embd, config.n_head * config.head_dim, config.n_kv_heads * config.head_dim
        self.q_proj = nn.Linear(E, q_width, bias=qkv_bias)
        self.k_proj = nn.Linear(E, kv_width, bias=qkv_bias)
        self.v_proj = nn.Linear(E, kv_width, bias=qkv_bias)
        self.o_proj = nn.Linear(q_width, E, bias=out_bias)

    def forward(self, x, input_pos, cache: KVCache | None, kv_len: int, mask, sin_cos):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_halves(q, *sin_cos), apply_rotary_halves(k, *sin_cos)
        if cache is None:  # training: the batch holds whole sequences, no past
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_head)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
        return self.o_proj(cache.update_and_attend(self.layer, input_pos, q, k, v, kv_len, mask))


class PreNormBlock(nn.Module):
    """x + attention(norm(x)), then + mlp(norm(x)), with Llama's module names."""

    def __init__(self, input_layernorm: nn.Module, self_attn: nn.Module, post_attention_layernorm: nn.Module, mlp: nn.Module):
        super().__init__()
        self.input_layernorm, self.self_attn = input_layernorm, self_attn
        self.post_attention_layernorm, self.mlp = post_attention_layernorm, mlp

    def forward(self, x, input_pos, cache, kv_len, mask, sin_cos):
        x = x + self.self_attn(self.input_layernorm(x), input_pos, cache, kv_len, mask, sin_cos)
        return x + self.mlp(self.post_attention_layernorm(x))


class RopeDecoder(DecoderLM):
    """Llama's layout (model.embed_tokens, model.layers, model.norm, lm_head) with rotary positions; an
    architecture gives its norm, MLP and attention biases."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.model.layers = nn.ModuleList(
            PreNormBlock(self.norm(config), RopeAttention(config, i, *self.biases(config)), self.norm(config), self.mlp(config))
            for i in range(config.n_layer)
        )
        self.model.norm = self.norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def biases(self, config: ModelConfig) -> tuple[bool, bool]:
        """Whether q, k, v have biases, and whether o has."""
        raise NotImplementedError

    def norm(self, config: ModelConfig) -> nn.Module:
        raise NotImplementedError

    def mlp(self, config: ModelConfig) -> nn.Module:
        raise NotImplementedError

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.layers

    @property
    def final_norm(self) -> nn.Module:
        return self.model.norm

    @property
    def embedding(self) -> nn.Embedding:
        return self.model.embed_tokens

    def embed(self, idx: torch.Tensor, input_pos: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        x = self.model.embed_tokens(idx)
        inv_freq = self.config.rope.inverse_frequencies(self.config.head_dim, input_pos.device)
        sin, cos = rotary_sin_cos(input_pos, inv_freq, interleaved=False)
        return x, ((sin.to(x.dtype), cos.to(x.dtype)),)
