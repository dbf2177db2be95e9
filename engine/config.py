"""Model configuration read from a Hugging Face checkpoint's config.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch.nn.functional as F

from engine.errors import EngineError

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

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise EngineError(
                f"unsupported model_type {model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        try:
            n_embd = int(raw["n_embd"])
            n_head = int(raw["n_head"])
            config = cls(
                model_type=model_type,
                vocab_size=int(raw["vocab_size"]),
                n_positions=int(raw.get("n_positions") or raw.get("n_ctx") or 2048),
                n_embd=n_embd,
                n_layer=int(raw["n_layer"]),
                n_head=n_head,
                n_inner=int(raw.get("n_inner") or 4 * n_embd),
                activation_function=raw.get("activation_function", "gelu_new"),
                layer_norm_epsilon=float(raw.get("layer_norm_epsilon", 1e-5)),
                rotary_dim=raw.get("rotary_dim", 64) if model_type == "codegen" else None,
                multi_query=bool(raw.get("multi_query", True)) if model_type == "gpt_bigcode" else False,
                scale_attn_weights=bool(raw.get("scale_attn_weights", True)),
                # transformers' own defaults differ per architecture.
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", model_type == "gpt_bigcode")),
                bos_token_id=_first_id(raw.get("bos_token_id")),
                eos_token_id=_first_id(raw.get("eos_token_id")),
                torch_dtype=raw.get("dtype") or raw.get("torch_dtype"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineError(f"config.json is missing or has a bad value for {exc}") from None
        if n_embd % n_head:
            raise EngineError(f"config.json: n_embd {n_embd} is not divisible by n_head {n_head}")
        if config.activation_function not in ACTIVATIONS:
            raise EngineError(f"config.json: unsupported activation_function {config.activation_function!r}")
        return config

    @classmethod
    def from_file(cls, path: Path) -> "ModelConfig":
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EngineError(f"no config.json in {Path(path).parent}") from None
        except (OSError, ValueError) as exc:
            raise EngineError(f"cannot read {path}: {exc}") from None
        if not isinstance(raw, dict):
            raise EngineError(f"{path} is not a JSON object")
        return cls.from_dict(raw)


def _first_id(value):
    # Some configs give a list of eos ids; the first is the document separator.
    if isinstance(value, list):
        return value[0] if value else None
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
