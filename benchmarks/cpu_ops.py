"""Whole decode steps with our element-wise CPU ops (GELU, rotary positions) against PyTorch's ops.

    .venv/bin/python benchmarks/cpu_ops.py [--shapes codegen-350M-mono santacoder qwen2.5-coder-0.5b]
        [--quantization int8] [--context 512] [--steps 8] [--rounds 11]

Random weights with the real shapes (benchmarks/random_checkpoint.py; the Qwen shape writes ~2 GB
once). One session filled to --context tokens; then, in interleaved rounds, --steps decode steps
with our ops (engine/config.py CPU_OPS_ISA set, as after our kernels load) and with PyTorch's
(CPU_OPS_ISA None): the same numbers either way (tests/test_cpu_kernels.py), fewer ops with ours.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import code_prompt, interleaved, random_model  # noqa: E402
from benchmarks.random_checkpoint import SHAPES  # noqa: E402
from engine import config  # noqa: E402
from engine.session import Session  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["codegen-350M-mono", "santacoder", "qwen2.5-coder-0.5b"], choices=list(SHAPES))
    parser.add_argument("--quantization", default="int8")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    for name in args.shapes:
        lm = random_model(name, args.quantization)
        ours = config.CPU_OPS_ISA
        if ours is None:
            sys.exit("our CPU kernels are not loaded here (no compiler?): nothing to compare")
        session = Session(lm)
        prompt = code_prompt(lm, args.context)
        session.prefill(prompt)

        def ms_per_step(isa: str | None) -> float:
            config.CPU_OPS_ISA = isa
            start = time.perf_counter()
            for i in range(args.steps):
                session.step(prompt[i])
            session.truncate(args.context)
            config.CPU_OPS_ISA = ours
            return (time.perf_counter() - start) / args.steps * 1000

        ms_per_step(ours)  # warm
        figures, load = interleaved({"pytorch": lambda: ms_per_step(None), "ours": lambda: ms_per_step(ours)}, args.rounds)
        print(f"{name} {args.quantization}, {args.context} tokens of context, median of {args.rounds} interleaved rounds: "
              f"PyTorch's ops {figures['pytorch']:.2f} ms a step, ours {figures['ours']:.2f} "
              f"({figures['pytorch'] / figures['ours']:.3f}x)  (load {load:.1f})")


if __name__ == "__main__":
    main()
