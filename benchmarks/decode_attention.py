"""Decode with our attention kernel against PyTorch's SDPA, on the same quantized model, in one run.

    .venv/bin/python benchmarks/decode_attention.py [--models santacoder qwen2.5-coder-1.5b]
        [--contexts 512 1500] [--quantization int8] [--rounds 5] [--new-tokens 16] [--layers N] [--calls-only]

First one attention call alone: microseconds per call for each model's shape and context, each
call reading another layer's keys and values (96 MB cycled through, so from memory, as in decode).
Then whole decode steps: the checkpoints are vs_peers.py's (random weights in the published shapes,
written once under /tmp/codegen-lsp-bench); for each context a session is filled, then decode steps
are timed with our kernel (engine/kernels/cpu_matvec.cpp, attend_decode, in the best instruction set
this CPU has) over a float32 and over a float16 cache, and with SDPA, in interleaved rounds (ours,
SDPA, SDPA, ours, ...); medians, and the load average. Whole steps on a shared 2-core machine vary
by +-10 %: the calls alone are the steadier figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import interleaved, real_code  # noqa: E402
from benchmarks.random_checkpoint import keep_layers  # noqa: E402
from benchmarks.vs_peers import MODELS, peers_checkpoint  # noqa: E402
from engine import cpu_kernels  # noqa: E402
from engine.config import ModelConfig  # noqa: E402
from engine.kv_cache import DECODE_ATTENTION, HALF, attention_shape, set_choice  # noqa: E402
from engine.loading import load_model  # noqa: E402
from engine.paths import cache_dir  # noqa: E402
from engine.session import Session  # noqa: E402


def attention_calls(name: str, contexts: list[int], rounds: int) -> None:
    shape = kv_heads, group, head_dim = attention_shape(ModelConfig.from_dict(MODELS[name]))
    isa = torch.ops.codegen_lsp_cpu.isas().split()[0]
    q = torch.randn(kv_heads, group, head_dim)
    for context in contexts:
        layer_bytes = 2 * kv_heads * context * head_dim * 4
        caches = [torch.randn(2, kv_heads, context + 64, head_dim)[:, :, :context] for _ in range(-(-(96 << 20) // layer_bytes))]
        halves = [torch.randn(2, kv_heads, context + 64, head_dim)[:, :, :context].half() for _ in range(2 * len(caches))]
        sdpa_turns, our_turns, half_turns = itertools.cycle(caches), itertools.cycle(caches), itertools.cycle(halves)

        def sdpa():
            cache = next(sdpa_turns)
            return torch.nn.functional.scaled_dot_product_attention(q[None], cache[0][None], cache[1][None])

        def ours(turns=our_turns):
            cache = next(turns)
            return torch.ops.codegen_lsp_cpu.attend_decode(q, cache[0], cache[1], head_dim**-0.5, isa)

        calls = {"sdpa": sdpa, "ours": ours, "ours float16": lambda: ours(half_turns)}
        us = {key: seconds * 1e6 for key, seconds in cpu_kernels.median_seconds_per_call(calls, rounds=rounds, round_seconds=0.05).items()}
        print(f"| {name} | {shape} | {context} | {us['sdpa']:.0f} | {us['ours']:.0f} | {us['ours float16']:.0f} | "
              f"{us['sdpa'] / min(us['ours'], us['ours float16']):.2f} | {os.getloadavg()[0]:.2f} |", flush=True)


def decode_ms(lm, prompt: list[int], new_tokens: int) -> float:
    session = Session(lm)
    logits, _ = session.prefill(prompt)
    token = int(torch.argmax(logits))
    for _ in range(2):  # the first steps after a prefill pay for its freed memory
        token = int(torch.argmax(session.step(token)))
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = int(torch.argmax(session.step(token)))
    return (time.perf_counter() - start) / new_tokens * 1000


def attention_model(name: str, args) -> tuple:
    """(vs_peers.py's checkpoint of `name` loaded as args ask, its attention shape, the best instruction
    set of our kernels here, token ids of enough real code for args.contexts), its heading printed."""
    name, config = keep_layers(name, MODELS[name], args.layers)
    lm = load_model(str(peers_checkpoint(name, config)), device="cpu", quantization=args.quantization, compile="false")
    shape = attention_shape(lm.config)
    print(f"\n### {name} {args.quantization}, attention shape {shape} (kv heads, group, head dim), cache "
          f"{str(lm.cache_dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads, median of {args.rounds} rounds\n")
    return lm, shape, torch.ops.codegen_lsp_cpu.isas().split()[0], lm.tokenizer.encode(real_code(40 * max(args.contexts)))


def run(name: str, args) -> None:
    lm, shape, isa, code = attention_model(name, args)
    print(f"{args.new_tokens} tokens a round\n")
    print("| context | SDPA ms/token | ours ms/token | ours, float16 cache, ms/token | best of ours as fast as SDPA x | load |")
    print("|---|---|---|---|---|---|")

    def with_kernel(kernel: str | None, prompt: list[int]) -> float:
        set_choice(DECODE_ATTENTION, shape, kernel)
        kv_dtype = torch.float16 if kernel and kernel.endswith(HALF) else torch.float32  # as load_model would choose
        return decode_ms(dataclasses.replace(lm, cache_dtype=kv_dtype), prompt, args.new_tokens)

    for context in args.contexts:
        prompt = code[:context]
        kernels = {"ours": isa, "ours float16": isa + HALF, "sdpa": None}
        ms, load = interleaved({key: lambda kernel=kernel: with_kernel(kernel, prompt) for key, kernel in kernels.items()}, args.rounds)
        print(f"| {context} | {ms['sdpa']:.1f} | {ms['ours']:.1f} | {ms['ours float16']:.1f} | "
              f"{ms['sdpa'] / min(ms['ours'], ms['ours float16']):.2f} | {load:.2f} |", flush=True)


def attention_arguments(description: str, models: list[str]) -> argparse.ArgumentParser:
    """The options of this benchmark and of prefill_attention.py."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=models)
    parser.add_argument("--contexts", nargs="+", type=int, default=[512, 1500])
    parser.add_argument("--quantization", default="int8", choices=["int8", "int4"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, help="keep only this many blocks")
    parser.add_argument("--calls-only", action="store_true", help="time the attention calls alone, no model")
    return parser


def print_machine(rounds: int) -> None:
    """The machine's line and the calls' heading; an exit where our kernels could not be built."""
    if not cpu_kernels.compiled_kernels(cache_dir() / "kernels"):
        sys.exit("our CPU kernels could not be built here: nothing to compare")
    print(f"{cpu_kernels.machine_key()['cpu']}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"our kernels: {torch.ops.codegen_lsp_cpu.isas()}")
    print(f"\n### One attention call, median of {2 * rounds + 1} interleaved rounds\n")


def main() -> None:
    parser = attention_arguments(__doc__.split("\n\n")[0], ["santacoder", "qwen2.5-coder-1.5b"])
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    print_machine(args.rounds)
    print("| model | (kv heads, group, head dim) | keys | SDPA us | ours us | ours, float16 cache, us | best of ours as fast x | load |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        attention_calls(name, args.contexts, 2 * args.rounds + 1)
    if not args.calls_only:
        for name in args.models:
            run(name, args)


if __name__ == "__main__":
    main()
