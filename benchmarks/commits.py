"""Two commits of this repository side by side: decode ms/token and prefill tokens/s, in turns.

    .venv/bin/python benchmarks/commits.py 334bc1d 055ac38 [--shapes santacoder:int8 codegen-350M-mono:none]
        [--rounds 3] [--context 512] [--steps 16]

Each commit is checked out (detached) in a temporary worktree; every round runs each shape in a
fresh process of each commit in turn (A, B, A, B, ...), so a busy moment of this shared machine
hurts neither side alone. Per run: a --context-token prefill, then the median of --steps decode
steps. Printed: each run, then the median per commit and shape. Random weights with the real
shapes (benchmarks/random_checkpoint.py); "demo" is the shipped model. For a claim that a change
did not move the figures (or did), e.g. the before/after tables of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(shape: str, mode: str, context: int, steps: int) -> None:
    """In the commit's own tree (the current directory): one run, printed as 'decode_ms prefill_tps'."""
    sys.path.insert(0, os.getcwd())
    from benchmarks.common import checkpoint
    from benchmarks.random_checkpoint import CODEGEN_350M_MONO, SANTACODER  # what older trees have (not SHAPES)
    from engine.loading import load_model
    from engine.session import Session

    spec = None if shape == "demo" else str(checkpoint(shape, {"santacoder": SANTACODER, "codegen-350M-mono": CODEGEN_350M_MONO}[shape]))
    lm = load_model(spec, device="cpu", dtype="float32", quantization=mode, compile="false")
    context = min(context, lm.config.n_positions - steps - 1)
    session = Session(lm)
    start = time.perf_counter()
    session.prefill([(i * 7919) % min(lm.config.vocab_size - 200, 40000) + 100 for i in range(context)])
    prefill = context / (time.perf_counter() - start)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        session.step(100 + i)
        times.append(time.perf_counter() - start)
    print(f"{statistics.median(times[1:]) * 1000:.2f} {prefill:.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commits", nargs=2)
    parser.add_argument("--shapes", nargs="+", default=["santacoder:int8", "codegen-350M-mono:none", "codegen-350M-mono:int8"],
                        help="shape:quantization (shape: santacoder, codegen-350M-mono or demo)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--measure", nargs=2, metavar=("SHAPE", "MODE"), help=argparse.SUPPRESS)  # the child's run
    args = parser.parse_args()
    if args.measure:
        measure(*args.measure, args.context, args.steps)
        return 0
    with tempfile.TemporaryDirectory(prefix="codegen-lsp-commits-") as temp:
        trees = {}
        for commit in args.commits:
            trees[commit] = Path(temp) / commit
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(trees[commit]), commit], check=True)
        try:
            results: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for round_ in range(args.rounds):
                for shape in args.shapes:
                    for commit, tree in trees.items():
                        run = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args.commits, "--measure",
                                              *shape.split(":"), "--context", str(args.context), "--steps", str(args.steps)],
                                             cwd=tree, capture_output=True, text=True, check=True)  # fmt: skip
                        decode, prefill = map(float, run.stdout.split()[-2:])
                        results.setdefault((commit, shape), []).append((decode, prefill))
                        print(f"round {round_ + 1} {commit:>10} {shape:26} decode {decode:7.2f} ms/token, "
                              f"prefill {prefill:7.1f} tok/s, load {os.getloadavg()[0]:.2f}", flush=True)
            print(f"\nmedians of {args.rounds} rounds, {args.context}-token context (less where the window is shorter):")
            for (commit, shape), runs in results.items():
                print(f"{commit:>10} {shape:26} decode {statistics.median(r[0] for r in runs):7.2f} ms/token, "
                      f"prefill {statistics.median(r[1] for r in runs):7.1f} tok/s")
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
