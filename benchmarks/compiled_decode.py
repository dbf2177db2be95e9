"""The compiled CPU decode step (`compile = true`) against eager decoding, same model, one run.

    .venv/bin/python benchmarks/compiled_decode.py [--models demo santacoder qwen2.5-coder-1.5b]
        [--quantization int8 int4] [--contexts 512 1500] [--rounds 5] [--new-tokens 16] [--layers N]

For each model and quantization, the model is loaded twice, eager and compiled (the compile
time printed is the load's extra seconds; inductor keeps its artefacts in its own cache, so
a second start compiles faster); then, per context, a session is filled and decode steps
are timed in interleaved rounds (compiled, eager, eager, compiled, ...), with the thread
count the load chose. Medians and the load average. `demo` is the shipped model (its window
of 256 caps the context); the others are vs_peers.py's random checkpoints in published shapes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import interleaved, real_code  # noqa: E402
from benchmarks.decode_attention import decode_ms  # noqa: E402
from benchmarks.random_checkpoint import keep_layers  # noqa: E402
from benchmarks.vs_peers import MODELS, peers_checkpoint  # noqa: E402
from engine import cpu_kernels  # noqa: E402
from engine.loading import load_model  # noqa: E402


def run(name: str, quantization: str, args) -> None:
    if name == "demo":
        spec = None
    else:
        name, config = keep_layers(name, MODELS[name], args.layers)
        spec = str(peers_checkpoint(name, config))
    eager = load_model(spec, device="cpu", quantization=quantization, compile="false")
    compiled = load_model(spec, device="cpu", quantization=quantization, compile="true")
    threads = eager.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    print(f"\n### {name} {quantization}, {threads} threads, median of {args.rounds} rounds, {args.new_tokens} tokens; "
          f"load {eager.load_seconds:.1f} s eager, {compiled.load_seconds:.1f} s compiled\n")
    print("| context | eager ms/token | compiled ms/token | compiled as fast as eager x | load |")
    print("|---|---|---|---|---|")
    code = eager.tokenizer.encode(real_code(40 * max(args.contexts)))
    for context in args.contexts:
        context = min(context, eager.config.n_positions - args.new_tokens - 4)
        prompt = code[:context]
        ms, load = interleaved({"compiled": lambda: decode_ms(compiled, prompt, args.new_tokens),
                                "eager": lambda: decode_ms(eager, prompt, args.new_tokens)}, args.rounds)
        e, c = ms["eager"], ms["compiled"]
        print(f"| {context} | {e:.2f} | {c:.2f} | {e / c:.2f} | {load:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=["demo", *MODELS], default=["demo", "santacoder"])
    parser.add_argument("--quantization", nargs="+", choices=["none", "int8", "int4"], default=["int8"])
    parser.add_argument("--contexts", nargs="+", type=int, default=[512, 1500])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--layers", type=int, help="keep only this many blocks")
    args = parser.parse_args()
    print(f"{cpu_kernels.machine_key()['cpu']}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    for name in args.models:
        for quantization in args.quantization:
            run(name, quantization, args)


if __name__ == "__main__":
    main()
