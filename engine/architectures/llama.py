"""Llama (model_type "llama"): DeepSeek-Coder, CodeLlama. Rotary positions (with linear or Llama 3
scaling), grouped-query attention, RMSNorm, a gated SiLU MLP (engine/layers.py has the shared parts).

Parameter names match the Hugging Face checkpoints, so loading is a 1:1 copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from engine.architectures import Architecture, FimSpelling
from engine.config import ACTIVATIONS, ConfigReader, ModelConfig
from engine.layers import RMSNorm, Rope, RopeDecoder


@dataclass
class LlamaConfig(ModelConfig):
    norm_epsilon: float = 1e-6  # rms_norm_eps
    activation_function: str = "silu"  # hidden_act
    rope: Rope = field(default_factory=Rope)
    attention_bias: bool = False  # biases on q, k, v and o
    mlp_bias: bool = False

    mlp_matrices = 3

    @classmethod
    def read_fields(cls, r: ConfigReader) -> dict:
        return dict(
            r.hf_sizes(norm_epsilon_key="rms_norm_eps", tie_default=False),
            activation_function=r.choice("hidden_act", "silu", ACTIVATIONS),
            rope=Rope.read(r),
            attention_bias=bool(r.get("attention_bias", False)),
            mlp_bias=bool(r.get("mlp_bias", False)),
        )


class LlamaMLP(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.n_inner, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.n_embd, config.n_inner, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.n_inner, config.n_embd, bias=config.mlp_bias)
        self.act = ACTIVATIONS[config.activation_function]

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Llama(RopeDecoder):
    def biases(self, config: LlamaConfig) -> tuple[bool, bool]:
        return config.attention_bias, config.attention_bias

    def norm(self, config: LlamaConfig) -> nn.Module:
        return RMSNorm(config.n_embd, config.norm_epsilon)

    def mlp(self, config: LlamaConfig) -> nn.Module:
        return LlamaMLP(config)


# DeepSeek-Coder: <｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>, i.e. prefix, suffix, middle, after the
# <｜begin▁of▁sentence｜> its tokenizer files put before every text.
DEEPSEEK_FIM = FimSpelling("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>")
# CodeLlama: <s>▁<PRE> {prefix} ▁<SUF>{suffix} ▁<MID>, the infill ending in ▁<EOT> (Meta's codellama
# generation.py). The space before the prefix is the sentencepiece tokenizer's own (its dummy prefix); the
# suffix is encoded without one, as Meta's encode_infilling does. The <s> comes from the tokenizer files.
CODELLAMA_FIM = FimSpelling("▁<PRE>", "▁<SUF>", "▁<MID>", end="▁<EOT>", suffix_without_leading_space=True)

ARCHITECTURE = Architecture("llama", LlamaConfig, Llama, fim=(DEEPSEEK_FIM, CODELLAMA_FIM))
