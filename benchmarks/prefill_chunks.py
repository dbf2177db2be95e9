"""Prefill tokens/s against the tokens per prefill forward (engine/session.py PREFILL_CHUNK).

    .venv/bin/python benchmarks/prefill_chunks.py [--shapes codegen-350M-mono santacoder]
        [--prompt-tokens 512 1500] [--quantization int8] [--chunks 64 128 256 512 1024] [--rounds 3]

Random weights with the real shapes (benchmarks/random_checkpoint.py), a cold session prefilled
with the whole prompt per round, the chunk sizes interleaved. Each chunk reads every weight once,
so small chunks pay that read more often (and up to quantize.DECODE_KERNEL_MAX_TOKENS tokens they
run the decode kernels, not the prefill products); large ones attend over more masked keys and
check for cancellation (a newer keystroke) less often.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import engine.session as session_module  # noqa: E402
from benchmarks.common import code_prompt, cold_prefill_rate, interleaved, random_model  # noqa: E402
from benchmarks.random_checkpoint import SHAPES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["codegen-350M-mono", "santacoder"], choices=list(SHAPES))
    parser.add_argument("--prompt-tokens", nargs="+", type=int, default=[512, 1500])
    parser.add_argument("--quantization", default="int8")
    parser.add_argument("--chunks", nargs="+", type=int, default=[64, 128, 256, 512, 1024])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    default = session_module.PREFILL_CHUNK
    print(f"{torch.get_num_threads()} threads, {args.quantization}, median of {args.rounds} interleaved rounds, "
          f"tokens/s by chunk (the default: {default})")
    for name in args.shapes:
        lm = random_model(name, args.quantization)
        session = session_module.Session(lm)
        for tokens in args.prompt_tokens:
            prompt = code_prompt(lm, tokens)

            def tokens_per_second(chunk: int) -> float:
                session_module.PREFILL_CHUNK = chunk
                return cold_prefill_rate(session, prompt)

            tokens_per_second(default)  # warm
            figures, load = interleaved({chunk: (lambda chunk=chunk: tokens_per_second(chunk)) for chunk in args.chunks},
                                        args.rounds)
            session_module.PREFILL_CHUNK = default
            print(f"{name}, {len(prompt)} tokens: " + ", ".join(f"{chunk} {figures[chunk]:.0f}" for chunk in args.chunks)
                  + f"  (load {load:.1f})")


if __name__ == "__main__":
    main()
