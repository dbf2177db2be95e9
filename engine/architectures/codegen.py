"""CodeGen (Salesforce/codegen-*), read top-down: attention -> MLP -> block -> model.

Parameter names match the Hugging Face checkpoints, so loading is a 1:1 copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.architectures import Architecture
from engine.config import ACTIVATIONS, ConfigReader, ModelConfig
from engine.decoder import GPT2LayoutLM
from engine.kv_cache import KVCache
from engine.layers import Rope, apply_rotary_interleaved, rotary_sin_cos

# The original model was trained with its qkv projection split over 4 devices:
# the fused output is 4 chunks, each laid out [q | v | k] for n_head/4 heads.
MP_NUM = 4


@dataclass
class CodeGenConfig(ModelConfig):
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    rotary_dim: int | None = None  # rotated dims per head (None = all)

    @classmethod
    def read_fields(cls, r: ConfigReader) -> dict:
        fields = r.gpt2_sizes(tie_default=False)
        if r.raw.get("rotary_dim", 64) is not None:  # None: the whole head
            fields["rotary_dim"] = r.size("rotary_dim", default=64)
            if fields["rotary_dim"] > fields["head_dim"] or fields["rotary_dim"] % 2:
                raise r.error(f"rotary_dim {fields['rotary_dim']} must be even and at most the head size {fields['head_dim']}")
        return fields


class CodeGenAttention(nn.Module):
    def __init__(self, config: CodeGenConfig, layer: int):
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
        # Queries and keys are rotated and attended in float32, as in the original; both at once (every
        # second of [q | v | k]), since each small op costs as much as their arithmetic in a decode step,
        # into (2, B, T, MP_NUM, n_head / MP_NUM, head_dim): q and k each contiguous, no copy to come.
        qk = apply_rotary_interleaved(qkv[:, :, :, ::2].movedim(3, 0), *sin_cos, position_dim=2)
        q, k, v = (t.reshape(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (qk[0], qk[1], qkv[:, :, :, 1]))
        if cache is None:  # training: the batch holds whole sequences, no past
            y = F.scaled_dot_product_attention(q, k, v.float(), is_causal=True).transpose(1, 2).reshape(B, T, E)
        else:  # the cache float32, or float16 for our kernel
            y = cache.update_and_attend(self.layer, input_pos, q, k, v, kv_len, mask)
        return self.out_proj(y.to(x.dtype))


class CodeGenMLP(nn.Module):
    def __init__(self, config: CodeGenConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.n_embd, config.n_inner)
        self.fc_out = nn.Linear(config.n_inner, config.n_embd)
        self.act = ACTIVATIONS[config.activation_function]

    def forward(self, x):
        return self.fc_out(self.act(self.fc_in(x)))


class CodeGenBlock(nn.Module):
    def __init__(self, config: CodeGenConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CodeGenAttention(config, layer)
        self.mlp = CodeGenMLP(config)

    def forward(self, x, input_pos, cache, kv_len, mask, sin_cos):
        # Parallel residual: attention and MLP both read the same normalized input.
        h = self.ln_1(x)
        return x + self.attn(h, input_pos, cache, kv_len, mask, sin_cos) + self.mlp(h)


class CodeGenTransformer(nn.Module):
    def __init__(self, config: CodeGenConfig):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.h = nn.ModuleList(CodeGenBlock(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)


class CodeGen(GPT2LayoutLM):
    def __init__(self, config: CodeGenConfig):
        super().__init__()
        self.config = config
        self.transformer = CodeGenTransformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=True)

    def embed(self, idx: torch.Tensor, input_pos: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        # No position table: each block rotates q and k by these (engine/decoder.py runs the blocks).
        inv_freq = Rope().inverse_frequencies(self.config.rotary_dim or self.config.head_dim, input_pos.device)
        return self.transformer.wte(idx), (rotary_sin_cos(input_pos, inv_freq, interleaved=True),)


# CodeGen attends in float32 (as the original does): a 16-bit cache would be cast whole on every
# decode step, which costs more than the step's matmuls at a long context. Twice the memory instead,
# except where our CPU attention kernel was chosen over a float16 cache (engine/kv_cache.py): it
# widens each number as it reads it.
ARCHITECTURE = Architecture("codegen", CodeGenConfig, CodeGen, cache_dtype=torch.float32)
