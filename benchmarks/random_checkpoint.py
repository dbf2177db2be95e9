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
from engine.build import ARCHITECTURES

# Shapes of published checkpoints, as their config.json files give them.
CODEGEN_350M_MONO = {
    "model_type": "codegen", "vocab_size": 51200, "n_positions": 2048, "n_ctx": 2048, "n_embd": 1024,
    "n_layer": 20, "n_head": 16, "rotary_dim": 32, "n_inner": None, "activation_function": "gelu_new",
    "bos_token_id": 1, "eos_token_id": 50256, "tie_word_embeddings": False, "torch_dtype": "float16",
}
SANTACODER = {
    "model_type": "gpt_bigcode", "vocab_size": 49280, "n_positions": 2048, "n_embd": 2048, "n_layer": 24,
    "n_head": 16, "n_inner": 8192, "multi_query": True, "activation_function": "gelu_pytorch_tanh",
    "bos_token_id": 49152, "eos_token_id": 49152, "torch_dtype": "float16",
}


def write_random_checkpoint(directory: Path, config: dict, tokenizer_files: Iterable[Path], seed: int = 0) -> Path:
    """config.json + model.safetensors with N(0, 0.02) weights, plus the given tokenizer files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model_config = ModelConfig.from_dict(config)
    torch.manual_seed(seed)
    model = ARCHITECTURES[model_config.model_type](model_config)
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model_config.tie_word_embeddings:
            continue  # tied to wte, left out of the file as save_pretrained does
        if name.endswith(".weight") and tensor.dim() == 2:
            state[name] = torch.randn_like(tensor) * 0.02
        elif "ln" in name and name.endswith(".weight"):
            state[name] = torch.ones_like(tensor)
        else:
            state[name] = torch.zeros_like(tensor)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    for path in tokenizer_files:
        shutil.copy(path, directory / Path(path).name)
    return directory

