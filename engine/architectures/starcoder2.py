"""StarCoder2 (model_type "starcoder2"): rotary positions, grouped-query attention and a sliding
window over it, LayerNorm, a GELU MLP, biases everywhere, a tied LM head. Llama's layout
(engine/layers.py has the shared parts).

Parameter names match the Hugging Face checkpoints, so loading is a 1:1 copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from engine.architectures import Architecture, FimSpelling
from engine.architectures.gpt_bigcode import GPTBigCodeMLP
from engine.config import ACTIVATIONS, ConfigReader, ModelConfig
from engine.layers import Rope, RopeDecoder


@dataclass
class Starcoder2Config(ModelConfig):
    norm_epsilon: float = 1e-5
    activation_function: str = "gelu_pytorch_tanh"  # hidden_act
    rope: Rope = field(default_factory=Rope)
    use_bias: bool = True  # on every linear layer

    @classmethod
    def read_fields(cls, r: ConfigReader) -> dict:
        fields = r.hf_sizes(norm_epsilon_key="norm_epsilon", tie_default=True)
        window = r.get("sliding_window")
        return dict(
            fields,
            activation_function=r.choice("hidden_act", "gelu_pytorch_tanh", ACTIVATIONS),
            rope=Rope.read(r),
            use_bias=bool(r.get("use_bias", True)),
            sliding_window=None if window is None else r.size("sliding_window", "n_positions"),
        )


class Starcoder2(RopeDecoder):
    def biases(self, config: Starcoder2Config) -> tuple[bool, bool]:
        return config.use_bias, config.use_bias

    def norm(self, config: Starcoder2Config) -> nn.Module:
        return nn.LayerNorm(config.n_embd, eps=config.norm_epsilon)  # with a bias even without use_bias

    def mlp(self, config: Starcoder2Config) -> nn.Module:
        return GPTBigCodeMLP(config, bias=config.use_bias)  # the same names and activation


# StarCoder's FIM tokens plus the repository-level ones StarCoder2 was trained with.
STARCODER2_FIM = FimSpelling("<fim_prefix>", "<fim_suffix>", "<fim_middle>", pad="<fim_pad>",
                             file_separator="<file_sep>", repo_name="<repo_name>")

ARCHITECTURE = Architecture("starcoder2", Starcoder2Config, Starcoder2, fim=(STARCODER2_FIM,))
