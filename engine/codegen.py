"""CodeGen (Salesforce/codegen-*), read top-down: attention -> MLP -> block -> model.

Parameter names match the Hugging Face checkpoints, so loading is a 1:1 copy.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.config import ACTIVATIONS, ModelConfig
from engine.decoder import DecoderLM
from engine.kv_cache import KVCache, attend

# The original model was trained with its qkv projection split over 4 devices:
# the fused output is 4 chunks, each laid out [q | v | k] for n_head/4 heads.
MP_NUM = 4


def rotary_sin_cos(input_pos: torch.Tensor, rotary_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """sin, cos of shape (T, rotary_dim), each angle repeated for its pair (GPT-J style)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=input_pos.device) / rotary_dim))
    angles = input_pos.float()[:, None] * inv_freq  # (T, rotary_dim/2)
    return angles.sin().repeat_interleave(2, -1), angles.cos().repeat_interleave(2, -1)


def apply_rotary(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (2i, 2i+1) of the first rotary_dim dims of x (1, T, H, D)."""
    rot_dim = sin.shape[-1]
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    x1, x2 = x_rot[..., ::2], x_rot[..., 1::2]
    rotated_half = torch.stack((-x2, x1), dim=-1).flatten(-2)
    sin, cos = sin[None, :, None, :], cos[None, :, None, :]
    return torch.cat((x_rot * cos + rotated_half * sin, x_pass), dim=-1)


class CodeGenAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.rotary_dim = config.rotary_dim or config.head_dim
        self.qkv_proj = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.out_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, input_pos, cache: KVCache | None, kv_len: int, mask, sin_cos):
        B, T, E = x.shape
        qkv = self.qkv_proj(x).view(B, T, MP_NUM, 3, self.n_head // MP_NUM, self.head_dim)
        q, v, k = (qkv[:, :, :, i].reshape(B, T, self.n_head, self.head_dim) for i in range(3))  # (B, T, nh, hs)
        # Queries and keys are rotated and attended in float32, as in the original.
        sin, cos = sin_cos
        q = apply_rotary(q.float(), sin, cos).transpose(1, 2)  # (B, nh, T, hs)
        k = apply_rotary(k.float(), sin, cos).transpose(1, 2)
        v = v.transpose(1, 2)
        if cache is None:  # training: the batch holds whole sequences, no past
            y = F.scaled_dot_product_attention(q, k, v.float(), is_causal=True)
        else:
            k, v = cache.update(self.layer, input_pos, k, v, kv_len)
            y = attend(q, k.float(), v.float(), mask)
        y = y.to(x.dtype).transpose(1, 2).reshape(B, T, E)
        return self.out_proj(y)


class CodeGenMLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.n_embd, config.n_inner)
        self.fc_out = nn.Linear(config.n_inner, config.n_embd)
        self.act = ACTIVATIONS[config.activation_function]

    def forward(self, x):
        return self.fc_out(self.act(self.fc_in(x)))


class CodeGenBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CodeGenAttention(config, layer)
        self.mlp = CodeGenMLP(config)

    def forward(self, x, input_pos, cache, kv_len, mask, sin_cos):
        # Parallel residual: attention and MLP both read the same normalized input.
        h = self.ln_1(x)
        return x + self.attn(h, input_pos, cache, kv_len, mask, sin_cos) + self.mlp(h)


class CodeGenTransformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.h = nn.ModuleList(CodeGenBlock(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)


class CodeGen(DecoderLM):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.transformer = CodeGenTransformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=True)

    def embed(self, idx: torch.Tensor, input_pos: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        # No position table: each block rotates q and k by these (engine/decoder.py runs the blocks).
        sin_cos = rotary_sin_cos(input_pos, self.config.rotary_dim or self.config.head_dim)
        return self.transformer.wte(idx), (sin_cos,)
