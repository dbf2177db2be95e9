"""GPTBigCode (SantaCoder, StarCoder family), read top-down: attention -> MLP -> block -> model.

Parameter names match the Hugging Face checkpoints, so loading is a 1:1 copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.architectures import Architecture, FimSpelling
from engine.config import ACTIVATIONS, ConfigReader, ModelConfig
from engine.decoder import GPT2LayoutLM
from engine.kv_cache import KVCache


@dataclass
class GPTBigCodeConfig(ModelConfig):
    activation_function: str = "gelu_pytorch_tanh"
    layer_norm_epsilon: float = 1e-5
    multi_query: bool = True  # one shared K/V head
    scale_attn_weights: bool = True  # scale scores by 1/sqrt(head_dim)

    @property
    def extra_parameters(self) -> int:
        return self.n_positions * self.n_embd  # learned positions

    @classmethod
    def read_fields(cls, r: ConfigReader) -> dict:
        fields = r.gpt2_sizes(tie_default=True)
        multi_query = bool(r.get("multi_query", True))
        return dict(fields, multi_query=multi_query, scale_attn_weights=bool(r.get("scale_attn_weights", True)),
                    n_kv_heads=1 if multi_query else fields["n_head"])


class GPTBigCodeAttention(nn.Module):
    def __init__(self, config: GPTBigCodeConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head = config.n_head
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        self.scale = None if config.scale_attn_weights else 1.0  # None = 1/sqrt(head_dim)
        self.c_attn = nn.Linear(config.n_embd, config.n_embd + 2 * self.n_kv_heads * self.head_dim)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x, input_pos, cache: KVCache | None, kv_len: int, mask):
        B, T, E = x.shape
        qkv = self.c_attn(x)
        if self.n_kv_heads == 1:
            # Multi-query: [q (all heads) | k | v], one K/V head shared by every query head.
            # (split_with_sizes: Tensor.split's Python wrapper costs ~3 us more a call.)
            q, k, v = qkv.split_with_sizes((E, self.head_dim, self.head_dim), dim=-1)
            q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
            k, v = k.unsqueeze(1), v.unsqueeze(1)  # (B, 1, T, hs)
        else:
            # Multi-head: each head's slice is [q_h | k_h | v_h].
            qkv = qkv.view(B, T, self.n_head, 3 * self.head_dim).transpose(1, 2)  # (B, nh, T, 3*hs)
            q, k, v = qkv.split(self.head_dim, dim=-1)
        if cache is None:  # training: the batch holds whole sequences, no past
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=k.shape[1] != q.shape[1])
            return self.c_proj(y.transpose(1, 2).reshape(B, T, E))
        return self.c_proj(cache.update_and_attend(self.layer, input_pos, q, k, v, kv_len, mask, self.scale))


class GPTBigCodeMLP(nn.Module):
    """c_fc -> activation -> c_proj; StarCoder2's too (engine/architectures/starcoder2.py)."""

    def __init__(self, config: ModelConfig, bias: bool = True):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.n_inner, bias=bias)
        self.c_proj = nn.Linear(config.n_inner, config.n_embd, bias=bias)
        self.act = ACTIVATIONS[config.activation_function]

    def forward(self, x):
        return self.c_proj(self.act(self.c_fc(x)))


class GPTBigCodeBlock(nn.Module):
    def __init__(self, config: GPTBigCodeConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPTBigCodeAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPTBigCodeMLP(config)

    def forward(self, x, input_pos, cache, kv_len, mask):
        x = x + self.attn(self.ln_1(x), input_pos, cache, kv_len, mask)
        return x + self.mlp(self.ln_2(x))


class GPTBigCodeTransformer(nn.Module):
    def __init__(self, config: GPTBigCodeConfig):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)  # learned absolute positions
        self.h = nn.ModuleList(GPTBigCodeBlock(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)


class GPTBigCode(GPT2LayoutLM):
    def __init__(self, config: GPTBigCodeConfig):
        super().__init__()
        self.config = config
        self.transformer = GPTBigCodeTransformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # tied to wte on load

    def embed(self, idx: torch.Tensor, input_pos: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        return self.transformer.wte(idx) + self.transformer.wpe(input_pos)[None], ()


# StarCoder's spelling, also StarCoder2's (engine/architectures/starcoder2.py), and SantaCoder's.
STARCODER_FIM = FimSpelling("<fim_prefix>", "<fim_suffix>", "<fim_middle>", pad="<fim_pad>")
SANTACODER_FIM = FimSpelling("<fim-prefix>", "<fim-suffix>", "<fim-middle>", pad="<fim-pad>")

ARCHITECTURE = Architecture("gpt_bigcode", GPTBigCodeConfig, GPTBigCode, fim=(STARCODER_FIM, SANTACODER_FIM))
