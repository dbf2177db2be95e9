"""Shared set-up for benchmarks: random checkpoints with real shapes, real-code prompts, timing."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

from benchmarks.random_checkpoint import SHAPES, write_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CODEGEN_TOKENIZER = ROOT / "tests" / "data" / "tokenizers" / "codegen" / "tokenizer.json"
CACHE = Path("/tmp/codegen-lsp-bench")


def checkpoint(name: str, config: dict, tokenizer_files: Iterable[Path] = (CODEGEN_TOKENIZER,)) -> Path:
    """A random-weight checkpoint with the given config, written once and reused across runs."""
    directory = CACHE / name
    if not (directory / "model.safetensors").is_file():
        write_random_checkpoint(directory, dict(config, torch_dtype="float32"), tokenizer_files)
    return directory


def random_model(name: str, quantization: str, compile: str = "auto"):
    """The random-weight checkpoint of SHAPES[name], loaded on the CPU with the threads chosen at load set."""
    from engine.loading import load_model

    lm = load_model(str(checkpoint(name, SHAPES[name])), device="cpu", quantization=quantization, compile=compile)
    if lm.threads:
        torch.set_num_threads(lm.threads)
    return lm


def code_prompt(lm, tokens: int) -> list[int]:
    """`tokens` ids of real code, folded below lm's vocabulary (the random checkpoints carry CodeGen's
    tokenizer, whose ids can pass a smaller embedding)."""
    return [i % lm.config.vocab_size for i in lm.tokenizer.encode(real_code(12 * tokens))[:tokens]]


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
