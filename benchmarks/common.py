"""Shared set-up for benchmarks: random checkpoints with real shapes, real-code prompts, timing."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

from benchmarks.random_checkpoint import write_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CODEGEN_TOKENIZER = ROOT / "tests" / "data" / "tokenizers" / "codegen" / "tokenizer.json"
CACHE = Path("/tmp/codegen-lsp-bench")


def checkpoint(name: str, config: dict, tokenizer_files: Iterable[Path] = (CODEGEN_TOKENIZER,)) -> Path:
    """A random-weight checkpoint with the given config, written once and reused across runs."""
    directory = CACHE / name
    if not (directory / "model.safetensors").is_file():
        write_random_checkpoint(directory, dict(config, torch_dtype="float32"), tokenizer_files)
    return directory


def real_code(min_chars: int, module=None) -> str:
    """Source text of a standard-library module (real code, not filler)."""
    import argparse

    text = Path((module or argparse).__file__).read_text(encoding="utf-8")
    return text[:min_chars]


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(variants: dict[str, Callable[[], float]], rounds: int) -> tuple[dict[str, float], float]:
    """Each variant's median figure over `rounds` rounds run in turns (a b, b a, a b, ...), so that
    every variant sees the same machine, and the median load average beside them."""
    figures: dict[str, list[float]] = {name: [] for name in variants}
    loads = []
    for round_ in range(rounds):
        for name in (list(variants) if round_ % 2 == 0 else list(reversed(variants))):
            figures[name].append(variants[name]())
            loads.append(os.getloadavg()[0])
    return {name: statistics.median(values) for name, values in figures.items()}, statistics.median(loads)


def threads() -> int:
    return torch.get_num_threads()
