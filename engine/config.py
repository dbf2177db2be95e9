"""Model configuration read from a Hugging Face checkpoint's config.json.

ModelConfig holds what every architecture has; each architecture's module
(engine/architectures/) subclasses it with its own fields and reads them in
`read_fields`, through a ConfigReader that checks every value and names the
file and key of a bad one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from engine.errors import EngineError
from engine.files import read_json_object


@dataclass
class ModelConfig:
    model_type: str  # config.json's model_type (engine/architectures/)
    vocab_size: int  # rows of the embedding / lm_head (may exceed the tokenizer)
    n_positions: int  # context window in tokens
    n_embd: int  # hidden size
    n_layer: int
    n_head: int  # query heads
    n_kv_heads: int  # key/value heads (n_head: multi-head, 1: multi-query, between: grouped-query)
    head_dim: int
    n_inner: int  # MLP width
    tie_word_embeddings: bool = False  # lm_head shares the token embedding's weight
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    torch_dtype: str | None = None  # dtype the checkpoint was saved in
    sliding_window: int | None = None  # attend to at most this many latest positions (None: all)

    mlp_matrices: ClassVar[int] = 2  # weight matrices of one MLP (3 for a gated one)

    @property
    def architecture(self):
        from engine.architectures import architecture

        return architecture(self.model_type)

    @property
    def parameter_count(self) -> int:
        """Parameters the config describes (an upper estimate), known before any allocation."""
        E, q_width, kv_width = self.n_embd, self.n_head * self.head_dim, self.n_kv_heads * self.head_dim
        per_layer = 2 * E * q_width + 2 * E * kv_width + self.mlp_matrices * E * self.n_inner + 9 * E + self.n_inner
        heads = self.vocab_size * E * (1 if self.tie_word_embeddings else 2)
        return self.n_layer * per_layer + heads + self.extra_parameters + 2 * E

    @property
    def extra_parameters(self) -> int:
        """Parameters outside the blocks and heads (a learned position table)."""
        return 0

    @classmethod
    def read_fields(cls, r: "ConfigReader") -> dict:
        """This architecture's fields, read and checked from config.json."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config.json") -> "ModelConfig":
        """The config of raw's architecture, every size checked against BOUNDS (EngineError naming source,
        key and range)."""
        from engine.architectures import architecture

        config_class = architecture(raw.get("model_type"), source).config_class
        return config_class(model_type=raw["model_type"], **config_class.read_fields(ConfigReader(raw, source)))

    @classmethod
    def from_file(cls, path: Path) -> "ModelConfig":
        if not os.path.lexists(path):
            raise EngineError(f"no config.json in {Path(path).parent}")
        config = cls.from_dict(read_json_object(path), source=str(path))
        _check_memory(config, path)
        return config


# Allowed sizes (by kind: each architecture names its keys): every published
# checkpoint fits well inside, and nothing outside them can be a model worth allocating.
BOUNDS = {
    "vocab_size": (1, 1 << 20),
    "n_positions": (1, 1 << 20),
    "n_embd": (1, 1 << 16),
    "n_layer": (1, 1024),
    "n_head": (1, 1024),
    "n_inner": (1, 1 << 18),
    "rotary_dim": (2, 1 << 16),
    "head_dim": (2, 1 << 12),
}


class ConfigReader:
    """Checked reads of config.json's values; each error names the file and the key."""

    def __init__(self, raw: dict, source: str):
        self.raw, self.source = raw, source

    def error(self, message: str) -> EngineError:
        return EngineError(f"{self.source}: {message}")

    def get(self, key: str, default=None):
        value = self.raw.get(key)
        return default if value is None else value

    def require(self, *keys: str) -> None:
        for key in keys:
            if self.raw.get(key) is None:
                raise self.error(f"{key} is missing")

    def size(self, key: str, kind: str | None = None, default=None) -> int:
        """A whole number within BOUNDS[kind or key]; default where the key is absent or null."""
        value = self.get(key, default)
        low, high = BOUNDS[kind or key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or int(value) != value:
            raise self.error(f"{key} must be a whole number from {low} to {high}, got {value!r}")
        if not low <= value <= high:
            raise self.error(f"{key} = {int(value)} is out of range (allowed {low} to {high})")
        return int(value)

    def number(self, key: str, default: float, low: float, high: float) -> float:
        """A number strictly between low and high."""
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
            raise self.error(f"{key} must be a number between {low:g} and {high:g}, got {value!r}")
        return float(value)

    def choice(self, key: str, default: str, allowed) -> str:
        value = self.get(key, default)
        if value not in allowed:
            raise self.error(f"unsupported {key} {value!r}")
        return value

    def heads(self, n_embd: int, embd_key: str, n_head: int, head_key: str) -> None:
        if n_embd % n_head:
            raise self.error(f"{embd_key} {n_embd} is not divisible by {head_key} {n_head}")

    def token_id(self, key: str, vocab_size: int) -> int | None:
        value = self.raw.get(key)
        if isinstance(value, list):  # some configs give a list of eos ids; the first is the document separator
            value = value[0] if value else None
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
            raise self.error(f"{key} must be a token id from 0 to {vocab_size - 1}, got {value!r}")
        return value

    def common(self, vocab_size: int, tie_default: bool) -> dict:
        """The fields every architecture reads the same way."""
        return dict(
            vocab_size=vocab_size,
            # transformers' own defaults differ per architecture.
            tie_word_embeddings=bool(self.get("tie_word_embeddings", tie_default)),
            bos_token_id=self.token_id("bos_token_id", vocab_size),
            eos_token_id=self.token_id("eos_token_id", vocab_size),
            torch_dtype=self.raw.get("dtype") or self.raw.get("torch_dtype"),
        )

    def gpt2_sizes(self, *, tie_default: bool) -> dict:
        """Sizes under GPT-2's names (n_embd, n_layer, n_head, n_inner, n_positions), as CodeGen and
        GPTBigCode spell them."""
        self.require("vocab_size", "n_embd", "n_layer", "n_head")
        n_embd, n_head = self.size("n_embd"), self.size("n_head")
        self.heads(n_embd, "n_embd", n_head, "n_head")
        epsilon = self.number("layer_norm_epsilon", 1e-5, 0, 1)
        activation = self.choice("activation_function", "gelu_new", ACTIVATIONS)
        vocab_size = self.size("vocab_size")
        return dict(
            n_positions=self.size("n_positions", default=self.raw.get("n_ctx") or 2048),
            n_embd=n_embd,
            n_layer=self.size("n_layer"),
            n_head=n_head,
            n_kv_heads=n_head,
            head_dim=n_embd // n_head,
            n_inner=self.size("n_inner", default=4 * n_embd),
            layer_norm_epsilon=epsilon,
            activation_function=activation,
            **self.common(vocab_size, tie_default),
        )

    def hf_sizes(self, *, norm_epsilon_key: str, tie_default: bool) -> dict:
        """Sizes under the names of Llama and the architectures after it (hidden_size, num_hidden_layers,
        num_attention_heads, num_key_value_heads, intermediate_size, max_position_embeddings)."""
        self.require("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        n_embd = self.size("hidden_size", "n_embd")
        n_head = self.size("num_attention_heads", "n_head")
        n_kv_heads = self.size("num_key_value_heads", "n_head", default=n_head)
        if n_head % n_kv_heads:
            raise self.error(f"num_attention_heads {n_head} is not divisible by num_key_value_heads {n_kv_heads}")
        if self.raw.get("head_dim") is None:
            self.heads(n_embd, "hidden_size", n_head, "num_attention_heads")
        head_dim = self.size("head_dim", default=n_embd // n_head)
        if head_dim % 2:
            raise self.error(f"head_dim {head_dim} must be even (rotary embeddings rotate pairs)")
        return dict(
            n_positions=self.size("max_position_embeddings", "n_positions", default=2048),
            n_embd=n_embd,
            n_layer=self.size("num_hidden_layers", "n_layer"),
            n_head=n_head,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            n_inner=self.size("intermediate_size", "n_inner"),
            norm_epsilon=self.number(norm_epsilon_key, 1e-5, 0, 1),
            **self.common(self.size("vocab_size"), tie_default),
        )


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo where there is one, else the physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_memory(config: ModelConfig, path: Path) -> None:
    """Refuse a model that cannot fit in memory before any tensor is allocated (2 bytes a parameter
    is the least any dtype we load takes)."""
    needed, available = 2 * config.parameter_count, available_memory_bytes()
    if needed > available:
        raise EngineError(
            f"{path}: the sizes it gives make a model of {config.parameter_count / 1e9:.1f}B parameters, "
            f"at least {needed / 2**30:.1f} GB, more than the {available / 2**30:.1f} GB of memory available"
        )


# The instruction set our CPU element-wise kernels (GELU here, rotary positions in engine/layers.py)
# run with, once engine/cpu_kernels.py has loaded our kernels (None before, or where they cannot be built).
CPU_OPS_ISA: str | None = None


def our_cpu_ops_take(x: torch.Tensor) -> bool:
    """Whether those kernels run on x: on the CPU, ours loaded, not being traced by torch.compile."""
    return CPU_OPS_ISA is not None and x.device.type == "cpu" and not torch.compiler.is_compiling()


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation: on the CPU our kernel where it is loaded (engine/kernels/cpu_matvec.cpp,
    3x PyTorch's at 8,192 numbers, within 2e-6 relative), else PyTorch's."""
    if our_cpu_ops_take(x):
        return torch.ops.codegen_lsp_cpu.gelu_tanh(x, CPU_OPS_ISA)
    return F.gelu(x, approximate="tanh")


# Every name here is a GELU variant, relu or silu; "gelu_new", "gelu_fast" and
# "gelu_pytorch_tanh" are all the tanh approximation.
ACTIVATIONS = {
    "gelu_new": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}
