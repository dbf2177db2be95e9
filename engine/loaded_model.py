"""What load_model (engine/loading.py) gives and sessions run: a model with everything its
generations need. Its own module so that the modules a generation uses (engine/session.py,
engine/speculative.py) need not import the loading code, which imports them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engine.compile import CompiledDecode
from engine.config import ModelConfig
from engine.tokenizer import Tokenizer


@dataclass(frozen=True)
class LoadedModel:
    """Everything needed to run one checkpoint: model, tokenizer and where they live."""

    model: torch.nn.Module
    tokenizer: Tokenizer
    config: ModelConfig
    path: Path
    device: torch.device
    dtype: torch.dtype
    load_seconds: float
    quantization: str = "none"
    # The compiled single-token decode (engine/compile.py), or None to run the model eagerly.
    decode_step: CompiledDecode | None = None
    threads: int | None = None  # CPU threads its generations run with (None: torch's default)
    cache_dtype: torch.dtype | None = None  # its sessions' KV cache dtype (kv_cache.cache_dtype), set by load_model
    drafts_pay: bool = True  # whether speculative = auto drafts (cpu_kernels.choose_drafting)

    def use_threads(self) -> None:
        """Give the calling thread's torch ops the threads chosen at load (engine/cpu_kernels.py), as the
        model's generations run (a count is per thread: generate() sets it, and so do benchmarks)."""
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
