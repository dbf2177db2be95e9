"""Write a random-weight checkpoint in the exact Hugging Face layout.

For benchmarks: real model shapes, no real weights on these machines.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import save_file

from engine.config import ModelConfig

# Shapes of published checkpoints, as their config.json files give them.
CODEGEN_350M_MONO = {
    "architectures": ["CodeGenForCausalLM"], "model_type": "codegen", "vocab_size": 51200, "n_positions": 2048, "n_ctx": 2048, "n_embd": 1024,
    "n_layer": 20, "n_head": 16, "rotary_dim": 32, "n_inner": None, "activation_function": "gelu_new",
    "bos_token_id": 1, "eos_token_id": 50256, "tie_word_embeddings": False, "torch_dtype": "float16",
}
SANTACODER = {
    "architectures": ["GPTBigCodeForCausalLM"], "model_type": "gpt_bigcode", "vocab_size": 49280, "n_positions": 2048,
    "n_embd": 2048, "n_layer": 24, "n_head": 16, "n_inner": 8192, "multi_query": True, "layer_norm_epsilon": 1e-5,
    "activation_function": "gelu_pytorch_tanh",
    "bos_token_id": 49152, "eos_token_id": 49152, "torch_dtype": "float16",
}
QWEN25_CODER_1_5B = {  # Qwen/Qwen2.5-Coder-1.5B
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
    "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": True,
    "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 21,
    "bos_token_id": 151643, "eos_token_id": 151643, "torch_dtype": "bfloat16",
}
QWEN25_CODER_0_5B = dict(  # Qwen/Qwen2.5-Coder-0.5B: the 1.5B's config but for these
    QWEN25_CODER_1_5B, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
)
STARCODER2_3B = {  # bigcode/starcoder2-3b
    "architectures": ["Starcoder2ForCausalLM"], "model_type": "starcoder2", "vocab_size": 49152, "hidden_size": 3072, "intermediate_size": 12288,
    "num_hidden_layers": 30, "num_attention_heads": 24, "num_key_value_heads": 2, "max_position_embeddings": 16384,
    "sliding_window": 4096, "rope_theta": 999999.4420358813, "norm_epsilon": 1e-5, "hidden_act": "gelu_pytorch_tanh",
    "use_bias": True, "bos_token_id": 0, "eos_token_id": 0, "torch_dtype": "float32",
}

# The shapes by the names their checkpoints get (benchmarks/common.py random_model).
SHAPES = {"codegen-350M-mono": CODEGEN_350M_MONO, "santacoder": SANTACODER, "qwen2.5-coder-0.5b": QWEN25_CODER_0_5B,
          "qwen2.5-coder-1.5b": QWEN25_CODER_1_5B, "starcoder2-3b": STARCODER2_3B}


LAYER_KEYS = ("n_layer", "num_hidden_layers")  # the block count, as each family's config.json names it


def keep_layers(name: str, config: dict, layers: int | None) -> tuple[str, dict]:
    """The shape with only `layers` blocks (None: all of them) and the name of its checkpoint."""
    if not layers:
        return name, config
    return f"{name}-{layers}-layers", {k: layers if k in LAYER_KEYS else v for k, v in config.items()}


def write_random_checkpoint(directory: Path, config: dict, tokenizer_files: Iterable[Path], seed: int = 0) -> Path:
    """config.json + model.safetensors with N(0, 0.02) weights, plus the given tokenizer files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model_config = ModelConfig.from_dict(config)
    torch.manual_seed(seed)
    model = model_config.architecture.model_class(model_config)
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model_config.tie_word_embeddings:
            continue  # tied to wte, left out of the file as save_pretrained does
        if name.endswith(".weight") and tensor.dim() == 2:
            state[name] = torch.randn_like(tensor) * 0.02
        elif ("ln" in name or "norm" in name) and name.endswith(".weight"):
            state[name] = torch.ones_like(tensor)
        else:
            state[name] = torch.zeros_like(tensor)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    for path in tokenizer_files:
        shutil.copy(path, directory / Path(path).name)
    return directory

