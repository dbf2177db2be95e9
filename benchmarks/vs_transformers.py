"""Ours in each mode vs transformers (its forward over its own KV cache) on the same random weights and prompt.

    .venv/bin/python benchmarks/vs_transformers.py
        [--models codegen-350M-mono santacoder qwen2.5-coder-1.5b starcoder2-3b]
        [--modes float32 bfloat16 int8 int4] [--prompt-tokens 512] [--new-tokens 32] [--rounds 2] [--layers N]

Random-weight checkpoints with the shapes of Salesforce/codegen-350M-mono,
bigcode/gpt_bigcode-santacoder, Qwen/Qwen2.5-Coder-1.5B and bigcode/starcoder2-3b
(written once under /tmp/codegen-lsp-bench; --layers N keeps only N blocks, to
check the script quickly).
Prints load time, prefill tokens/s and decode ms/token for transformers
float32 and for ours in each mode, with the speed-ups over transformers, side
by side from one run. int8 and int4 run with float32 activations except
where a kernel wants bfloat16 (engine/quantize.py). The CPU may be shared
with other work: all runners stay loaded and are measured in rounds, each
keeping its best round (see compare()).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CACHE, checkpoint, real_code  # noqa: E402
from benchmarks.random_checkpoint import keep_layers  # noqa: E402
from benchmarks.vs_peers import MODELS  # noqa: E402
from engine.loading import load_model  # noqa: E402
from engine.bench import run_bench  # noqa: E402
from engine.tokenizer import load_tokenizer  # noqa: E402

# The shapes are vs_peers.py's. No SantaCoder, Qwen or StarCoder2 tokenizer on these machines: their
# checkpoints carry CodeGen's, or GPT-2's cut to fit the embedding (benchmarks/common.py; only speed
# is measured).
MODES = {  # name -> (dtype, quantization)
    "float32": ("float32", "none"),
    "bfloat16": ("bfloat16", "none"),
    "int8": ("float32", "int8"),
    "int4": ("float32", "int4"),
}


class Ours:
    """Our model in one mode, loaded once; each call measures one prefill and one decode."""

    def __init__(self, directory: Path, mode: str):
        dtype, quantization = MODES[mode]
        if quantization != "none":  # the first load quantizes and fills the disk cache
            load_model(str(directory), device="cpu", dtype=dtype, quantization=quantization, compile="false")
            gc.collect()
        self.lm = load_model(str(directory), device="cpu", dtype=dtype, quantization=quantization, compile="false")
        self.load_seconds = self.lm.load_seconds

    def measure(self, prompt: list[int], new_tokens: int) -> tuple[float, float]:
        result = run_bench(self.lm, prompt, new_tokens, repeat=1)
        return len(prompt) / result.prefill_tokens_per_second, result.decode_ms_per_token / 1000


class Transformers:
    """transformers' model in float32, greedy over its own KV cache, measured as ours is: one
    prefill forward, then one forward per new token (what generate() runs, without its extras)."""

    def __init__(self, directory: Path):
        from transformers import AutoModelForCausalLM

        start = time.perf_counter()
        self.model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        self.load_seconds = time.perf_counter() - start

    @torch.inference_mode()
    def measure(self, prompt: list[int], new_tokens: int) -> tuple[float, float]:
        start = time.perf_counter()
        out = self.model(torch.tensor([prompt]), use_cache=True)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(new_tokens):
            token = out.logits[:, -1:].argmax(-1)
            out = self.model(token, cache=out.cache, use_cache=True)
        return prefill, (time.perf_counter() - start) / new_tokens


def compare(name: str, modes: list[str], args) -> None:
    name, config = keep_layers(name, MODELS[name], args.layers)
    directory = checkpoint(name, config)
    ids = load_tokenizer(directory).encode(real_code(40000))
    prompt = ids[: args.prompt_tokens]
    assert len(prompt) == args.prompt_tokens

    # Quantized first: quantizing holds a float copy for a while, best done before the rest is loaded.
    ours = {mode: Ours(directory, mode) for mode in sorted(modes, key=lambda m: MODES[m][1] == "none")}
    runners = {"transformers float32": Transformers(directory)}
    runners.update({f"ours {mode}": ours[mode] for mode in modes})
    # Other work shares this CPU: measure in rounds, every runner once per round,
    # and keep each runner's best round, so a busy moment hurts no side alone.
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.rounds):
        for label, runner in runners.items():
            prefill, decode = runner.measure(prompt, args.new_tokens)
            old = best.get(label, (float("inf"), float("inf")))
            best[label] = (min(old[0], prefill), min(old[1], decode))
    ref = best["transformers float32"]

    print(f"\n{name} shapes, random weights, CPU, {torch.get_num_threads()} threads, "
          f"prompt {len(prompt)} tokens, {args.new_tokens} new tokens, best of {args.rounds} rounds")
    print(f"{'':24}{'load s':>8}{'prefill tok/s':>15}{'decode ms/tok':>15}{'prefill x':>11}{'decode x':>10}")
    for label, runner in runners.items():
        prefill, decode = best[label]
        print(f"{label:24}{runner.load_seconds:8.1f}{len(prompt) / prefill:15.1f}{decode * 1000:15.1f}"
              f"{ref[0] / prefill:10.2f}x{ref[1] / decode:9.2f}x")
    sys.stdout.flush()
    del runners, ours
    gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="measurements per runner (the best is kept)")
    parser.add_argument("--layers", type=int, help="keep only this many blocks (a quick check of the script)")
    args = parser.parse_args()
    # Quantized weights of these throwaway checkpoints stay beside them, not in the user's cache.
    os.environ.setdefault("CODEGEN_LSP_CACHE", str(CACHE / "quantized-cache"))
    for name in args.models:
        compare(name, args.modes, args)


if __name__ == "__main__":
    main()
