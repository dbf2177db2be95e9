"""Shared set-up for benchmarks: random checkpoints with real shapes, real-code prompts, timing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

from benchmarks.random_checkpoint import SHAPES, write_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TOKENIZERS = ROOT / "tests" / "data" / "tokenizers"
CODEGEN_TOKENIZER = TOKENIZERS / "codegen" / "tokenizer.json"
CODEGEN_TOKENIZER_IDS = 50295  # GPT-2's 50,257 and CodeGen's 38 runs of blanks
CACHE = Path("/tmp/codegen-lsp-bench")
ENDOFTEXT = "<|endoftext|>"
# Where a shape's embedding has fewer rows than CodeGen's tokenizer has ids, its checkpoint gets GPT-2's
# BPE cut to fit, then these special tokens, spelled as the family's published tokenizer spells them
# (santacoder's 49,280 rows: 49,152 BPE ids, <|endoftext|> at 49,152 as its config says, FIM after it).
SPECIAL_TOKENS = {
    "gpt_bigcode": [ENDOFTEXT, "<fim-prefix>", "<fim-middle>", "<fim-suffix>", "<fim-pad>"],
    "starcoder2": [ENDOFTEXT, "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"],
}


def gpt2_tokenizer_of(ids: int, specials: tuple[str, ...] = (ENDOFTEXT,)) -> list[Path]:
    """GPT-2's BPE cut to its first `ids` ids (ids are in merge order), then `specials` from id `ids`:
    tokenizer.json and a tokenizer_config.json naming <|endoftext|> as bos and eos."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tag = hashlib.sha256("\n".join(specials).encode()).hexdigest()[:8]
    folder = CACHE / "tokenizers" / f"gpt2-{ids}-{tag}"
    files = [folder / "tokenizer.json", folder / "tokenizer_config.json"]
    if not all(f.is_file() for f in files):
        vocab = {t: i for t, i in json.loads((TOKENIZERS / "gpt2" / "vocab.json").read_text()).items() if i < ids}
        merges = [tuple(m.split()) for m in (TOKENIZERS / "gpt2" / "merges.txt").read_text().splitlines()[1:] if m][: ids - 256]
        assert all(a + b in vocab for a, b in merges), "GPT-2 ids are no longer merge order"
        tokenizer = Tokenizer(models.BPE(vocab, merges))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
        folder.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(files[0]))
        files[1].write_text(json.dumps(dict.fromkeys(("eos_token", "bos_token", "unk_token"), ENDOFTEXT)))
    return files


def tokenizer_files(config: dict) -> list[Path]:
    """CodeGen's tokenizer where the embedding has a row for each of its ids, else GPT-2's cut to fit,
    <|endoftext|> at the config's eos id where that leaves room for the other special tokens."""
    if config["vocab_size"] >= CODEGEN_TOKENIZER_IDS:
        return [CODEGEN_TOKENIZER]
    specials = tuple(SPECIAL_TOKENS.get(config["model_type"], [ENDOFTEXT]))
    ids = config["eos_token_id"]
    if not 256 < ids <= config["vocab_size"] - len(specials):
        ids = config["vocab_size"] - len(specials)
    return gpt2_tokenizer_of(ids, specials)


def checkpoint(name: str, config: dict, tokenizer: Iterable[Path] | None = None) -> Path:
    """A random-weight checkpoint with the given config, written once and reused across runs; its
    tokenizer files (tokenizer_files(config) unless given) are copied in every time."""
    directory = CACHE / name
    files = list(tokenizer) if tokenizer is not None else tokenizer_files(config)
    if not (directory / "model.safetensors").is_file():
        write_random_checkpoint(directory, dict(config, torch_dtype="float32"), files)
    for path in files:
        if not (directory / path.name).is_file() or (directory / path.name).read_bytes() != path.read_bytes():
            shutil.copy(path, directory / path.name)
    return directory


def cpu_flags() -> set[str]:
    """This CPU's flags as /proc/cpuinfo names them (empty where it does not say)."""
    from engine import cpu_kernels

    return set(cpu_kernels.cpu_fields().get("flags", "").split())


def random_model(name: str, quantization: str, compile: str = "auto"):
    """The random-weight checkpoint of SHAPES[name], loaded on the CPU with the threads chosen at load set."""
    from engine.loading import load_model

    lm = load_model(str(checkpoint(name, SHAPES[name])), device="cpu", quantization=quantization, compile=compile)
    lm.use_threads()
    return lm


def code_prompt(lm, tokens: int) -> list[int]:
    """`tokens` ids of real code."""
    return lm.tokenizer.encode(real_code(12 * tokens))[:tokens]


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


def cold_prefill_rate(session, prompt: list[int]) -> float:
    """Tokens/s of prefilling prompt into session, emptied first."""
    session.truncate(0)
    start = time.perf_counter()
    session.prefill(prompt)
    return len(prompt) / (time.perf_counter() - start)


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


def bandwidth_buffer(nbytes: int = 1 << 31) -> torch.Tensor:
    """float32 ones to sum for the memory's read bandwidth: in huge pages where the kernel gives them, as a
    loaded model's weights are (engine/huge_pages.py; on the Intel Xeon VM a sum of 2 GB read 26.7-26.9
    GB/s from them against 22.4-23.5 from 4 KB pages)."""
    from engine import huge_pages

    if huge_pages.supported():
        return huge_pages.huge_page_bytes(nbytes).view(torch.float32).fill_(1)
    return torch.ones(nbytes // 4)


def threads() -> int:
    return torch.get_num_threads()
