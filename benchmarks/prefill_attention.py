"""Prefill with our attention kernel against PyTorch's SDPA, on the same quantized model, in one run.

    .venv/bin/python benchmarks/prefill_attention.py [--models codegen-350M-mono santacoder]
        [--contexts 512 1500] [--quantization int8] [--rounds 5] [--layers N] [--calls-only]

First one attention call alone, a prefill chunk (engine/session.py's PREFILL_CHUNK new tokens) after
0, 256 and 1,280 cached ones, for each model's shape over a float32 and a float16 cache: ours
(engine/kernels/cpu_matvec.cpp, attend_prefill, in the best instruction set this CPU has) against
SDPA as engine/kv_cache.attend runs it (a boolean mask; a float16 cache cast to float32 first). Then
whole prefills of each context: vs_peers.py's checkpoints (random weights in the published shapes),
prompts of real code, in interleaved rounds (ours, SDPA, SDPA, ours, ...); medians, and the load
average. Last, a keystroke's re-encoding: the last 2 to 12 tokens of a session holding the longest
context changed and encoded again, with our kernels as attend() picks them (a few rows per key/value
head through the decode kernel, more through the prefill kernel) against SDPA alone.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import interleaved  # noqa: E402
from benchmarks.decode_attention import attention_arguments, attention_model, print_machine  # noqa: E402
from benchmarks.vs_peers import MODELS  # noqa: E402
from engine import cpu_kernels  # noqa: E402
from engine.config import ModelConfig  # noqa: E402
from engine.kv_cache import DECODE_ATTENTION, PREFILL_ATTENTION, attention_shape, set_choice  # noqa: E402
from engine.session import PREFILL_CHUNK, Session  # noqa: E402


def attention_calls(name: str, rounds: int) -> None:
    kv_heads, group, head_dim = shape = attention_shape(ModelConfig.from_dict(MODELS[name]))
    isa = torch.ops.codegen_lsp_cpu.isas().split()[0]
    T, scale = PREFILL_CHUNK, head_dim**-0.5
    for cached in (0, 256, 1280):
        S = cached + T
        q = torch.randn(1, T, kv_heads * group, head_dim).transpose(1, 2)  # as the architectures give it
        mask = torch.arange(S)[None, :] <= torch.arange(cached, S)[:, None]
        for dtype in (torch.float32, torch.float16):
            k, v = (torch.randn(1, kv_heads, S, head_dim).to(dtype) for _ in range(2))
            calls = {
                "sdpa": lambda k=k, v=v: torch.nn.functional.scaled_dot_product_attention(
                    q, k.float(), v.float(), attn_mask=mask, scale=scale, enable_gqa=group > 1),
                "ours": lambda k=k, v=v: torch.ops.codegen_lsp_cpu.attend_prefill(q, k, v, scale, isa),
            }
            ms = {key: seconds * 1e3 for key, seconds in cpu_kernels.median_seconds_per_call(calls, rounds=rounds, round_seconds=0.05).items()}
            print(f"| {name} | {shape} | {T} after {cached} | {str(dtype).removeprefix('torch.')} | {ms['sdpa']:.2f} | {ms['ours']:.2f} | "
                  f"{ms['sdpa'] / ms['ours']:.2f} | {os.getloadavg()[0]:.2f} |", flush=True)


def prefill_tokens_per_s(lm, prompt: list[int]) -> float:
    session = Session(lm)
    start = time.perf_counter()
    session.prefill(prompt)
    return len(prompt) / (time.perf_counter() - start)


def run(name: str, args) -> None:
    lm, shape, isa, code = attention_model(name, args)
    prefill_key = (*shape, lm.cache_dtype)  # prefill's choice is per shape and cache dtype
    print("| prompt tokens | SDPA tokens/s | ours tokens/s | ours as fast x | load |")
    print("|---|---|---|---|---|")

    def with_kernel(kernel: str | None, prompt: list[int]) -> float:
        set_choice(PREFILL_ATTENTION, prefill_key, kernel)
        return prefill_tokens_per_s(lm, prompt)

    for context in args.contexts:
        prompt = code[:context]
        speed, load = interleaved({"ours": lambda: with_kernel(isa, prompt), "sdpa": lambda: with_kernel(None, prompt)}, args.rounds)
        print(f"| {context} | {speed['sdpa']:.0f} | {speed['ours']:.0f} | {speed['ours'] / speed['sdpa']:.2f} | {load:.2f} |", flush=True)

    context = max(args.contexts)
    print(f"\nRe-encoding the last tokens of a {context}-token session (decode kernel: {DECODE_ATTENTION.get(shape)}):\n")
    print("| tokens re-encoded | SDPA ms | ours ms | ours as fast x | load |")
    print("|---|---|---|---|---|")
    chosen = {"decode": DECODE_ATTENTION.get(shape), "prefill": PREFILL_ATTENTION.get(prefill_key)}
    session = Session(lm)
    session.prefill(code[:context])

    def reencode(tokens: int, ours: bool) -> float:
        set_choice(DECODE_ATTENTION, shape, chosen["decode"] if ours else None)
        set_choice(PREFILL_ATTENTION, prefill_key, chosen["prefill"] if ours else None)
        edited = code[: context - tokens] + code[context : context + tokens]  # the reused prefix, then new text
        start = time.perf_counter()
        session.prefill(edited)
        seconds = time.perf_counter() - start
        session.prefill(code[:context])  # back, for the next round
        return seconds * 1000

    for tokens in (2, 3, 6, 12):
        ms, load = interleaved({"ours": lambda: reencode(tokens, True), "sdpa": lambda: reencode(tokens, False)}, 2 * args.rounds + 1)
        print(f"| {tokens} | {ms['sdpa']:.1f} | {ms['ours']:.1f} | {ms['sdpa'] / ms['ours']:.2f} | {load:.2f} |", flush=True)
    set_choice(DECODE_ATTENTION, shape, chosen["decode"])
    set_choice(PREFILL_ATTENTION, prefill_key, chosen["prefill"])


def main() -> None:
    args = attention_arguments(__doc__.split("\n\n")[0], ["codegen-350M-mono", "santacoder"]).parse_args()
    print_machine(args.rounds)
    print("| model | (kv heads, group, head dim) | new tokens after cached | cache | SDPA ms | ours ms | ours as fast x | load |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        attention_calls(name, 2 * args.rounds + 1)
    if not args.calls_only:
        for name in args.models:
            run(name, args)


if __name__ == "__main__":
    main()
