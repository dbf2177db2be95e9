"""Model configuration read from a Hugging Face checkpoint's config.json."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch.nn.functional as F

from engine.errors import EngineError
from engine.files import read_json_object

SUPPORTED_MODEL_TYPES = ("codegen", "gpt_bigcode")


@dataclass
class ModelConfig:
    model_type: str  # "codegen" or "gpt_bigcode"
    vocab_size: int  # rows of the embedding / lm_head (may exceed the tokenizer)
    n_positions: int  # context window in tokens
    n_embd: int  # hidden size
    n_layer: int
    n_head: int
    n_inner: int  # MLP width (4 * n_embd when the checkpoint says null)
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    rotary_dim: int | None = None  # codegen: rotated dims per head (None = all)
    multi_query: bool = False  # gpt_bigcode: one shared K/V head
    scale_attn_weights: bool = True  # gpt_bigcode: scale scores by 1/sqrt(head_dim)
    tie_word_embeddings: bool = False  # lm_head shares wte's weight
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    torch_dtype: str | None = None  # dtype the checkpoint was saved in

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_kv_heads(self) -> int:
        return 1 if self.model_type == "gpt_bigcode" and self.multi_query else self.n_head

    @property
    def parameter_count(self) -> int:
        """Parameters the config describes (an upper estimate: full K/V heads), known before any allocation."""
        E = self.n_embd
        per_layer = 4 * E * E + 2 * E * self.n_inner + 9 * E + self.n_inner
        heads = self.vocab_size * E * (1 if self.tie_word_embeddings else 2)
        positions = self.n_positions * E if self.model_type == "gpt_bigcode" else 0
        return self.n_layer * per_layer + heads + positions + 2 * E

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config.json") -> "ModelConfig":
        """The config, every size checked against BOUNDS (EngineError naming source, key and range)."""
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise EngineError(
                f"{source}: unsupported model_type {model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )

        def size(key: str, value) -> int:
            low, high = BOUNDS[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or int(value) != value:
                raise EngineError(f"{source}: {key} must be a whole number from {low} to {high}, got {value!r}")
            if not low <= value <= high:
                raise EngineError(f"{source}: {key} = {int(value)} is out of range (allowed {low} to {high})")
            return int(value)

        for key in ("vocab_size", "n_embd", "n_layer", "n_head"):
            if raw.get(key) is None:
                raise EngineError(f"{source}: {key} is missing")
        n_embd = size("n_embd", raw["n_embd"])
        n_head = size("n_head", raw["n_head"])
        if n_embd % n_head:
            raise EngineError(f"{source}: n_embd {n_embd} is not divisible by n_head {n_head}")
        rotary_dim = None
        if model_type == "codegen" and raw.get("rotary_dim", 64) is not None:  # None: the whole head
            rotary_dim = size("rotary_dim", raw.get("rotary_dim", 64))
            if rotary_dim > n_embd // n_head or rotary_dim % 2:
                raise EngineError(f"{source}: rotary_dim {rotary_dim} must be even and at most the head size {n_embd // n_head}")
        epsilon = raw.get("layer_norm_epsilon", 1e-5)
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon < 1:
            raise EngineError(f"{source}: layer_norm_epsilon must be a number between 0 and 1, got {epsilon!r}")
        activation = raw.get("activation_function", "gelu_new")
        if activation not in ACTIVATIONS:
            raise EngineError(f"{source}: unsupported activation_function {activation!r}")
        vocab_size = size("vocab_size", raw["vocab_size"])
        config = cls(
            model_type=model_type,
            vocab_size=vocab_size,
            n_positions=size("n_positions", raw.get("n_positions") or raw.get("n_ctx") or 2048),
            n_embd=n_embd,
            n_layer=size("n_layer", raw["n_layer"]),
            n_head=n_head,
            n_inner=size("n_inner", raw.get("n_inner") or 4 * n_embd),
            activation_function=activation,
            layer_norm_epsilon=float(epsilon),
            rotary_dim=rotary_dim,
            multi_query=bool(raw.get("multi_query", True)) if model_type == "gpt_bigcode" else False,
            scale_attn_weights=bool(raw.get("scale_attn_weights", True)),
            # transformers' own defaults differ per architecture.
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", model_type == "gpt_bigcode")),
            bos_token_id=_token_id(raw, "bos_token_id", vocab_size, source),
            eos_token_id=_token_id(raw, "eos_token_id", vocab_size, source),
            torch_dtype=raw.get("dtype") or raw.get("torch_dtype"),
        )
        return config

    @classmethod
    def from_file(cls, path: Path) -> "ModelConfig":
        if not os.path.lexists(path):
            raise EngineError(f"no config.json in {Path(path).parent}")
        config = cls.from_dict(read_json_object(path), source=str(path))
        _check_memory(config, path)
        return config


# Allowed sizes: every published CodeGen / StarCoder checkpoint fits well inside,
# and nothing outside them can be a model worth allocating.
BOUNDS = {
    "vocab_size": (1, 1 << 20),
    "n_positions": (1, 1 << 20),
    "n_embd": (1, 1 << 16),
    "n_layer": (1, 1024),
    "n_head": (1, 1024),
    "n_inner": (1, 1 << 18),
    "rotary_dim": (2, 1 << 16),
}


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


def _token_id(raw: dict, key: str, vocab_size: int, source: str) -> int | None:
    value = raw.get(key)
    if isinstance(value, list):  # some configs give a list of eos ids; the first is the document separator
        value = value[0] if value else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
        raise EngineError(f"{source}: {key} must be a token id from 0 to {vocab_size - 1}, got {value!r}")
    return value


# Every name here is a GELU variant or relu; "gelu_new", "gelu_fast" and
# "gelu_pytorch_tanh" are all the tanh approximation.
ACTIVATIONS = {
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_fast": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
}
