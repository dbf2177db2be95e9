"""Which device and dtype a model runs on, from the settings' names."""

from __future__ import annotations

import torch

from engine.errors import EngineError
from engine.options import DEVICES, DTYPES as DTYPE_NAMES

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise EngineError("device 'cuda' was asked for but no CUDA GPU is available")
    if device not in DEVICES:
        raise EngineError(f"unknown device {device!r} (use {', '.join(DEVICES)})")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPE_NAMES:
        raise EngineError(f"unknown dtype {dtype!r} (use {', '.join(DTYPE_NAMES)})")
    return TORCH_DTYPES[dtype]
