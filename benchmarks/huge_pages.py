"""Decode with the weights and the KV cache in huge pages (engine/huge_pages.py) against as before.

    .venv/bin/python benchmarks/huge_pages.py [--shapes santacoder codegen-350M-mono]
        [--quantization int8] [--contexts 512 1500] [--steps 8] [--rounds 10]

Random weights with the real shapes (benchmarks/random_checkpoint.py). Each shape is loaded twice
in this process, once with its weights moved and once without (as before 2026-12-03), and each
model's own session is filled to the context, its KV cache in huge pages or from PyTorch's
allocator (as before); then --steps decode steps of each, in interleaved rounds: ms a step
(medians), their ratio, and each load's seconds. Also printed: the kernel's transparent huge
page settings, and how much of the moved weights the kernel gave huge pages (AnonHugePages).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import code_prompt, interleaved, random_model  # noqa: E402
from benchmarks.random_checkpoint import SHAPES  # noqa: E402
from engine import huge_pages  # noqa: E402
from engine.session import Session  # noqa: E402

THP = Path("/sys/kernel/mm/transparent_hugepage")


def setting(name: str) -> str:
    try:
        return next(word.strip("[]") for word in (THP / name).read_text().split() if word.startswith("["))
    except (OSError, StopIteration):
        return "absent"


def anon_huge_mb() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def huge_pages_off():
    """Loads and KV caches as before 2026-12-03: the weights where loading leaves them, caches from PyTorch's allocator."""
    supported = huge_pages.supported
    huge_pages.supported = lambda: False
    try:
        yield
    finally:
        huge_pages.supported = supported


def loaded(name: str, quantization: str):
    """The model, and the seconds its load took."""
    start = time.perf_counter()
    lm = random_model(name, quantization, compile="false")
    return lm, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["santacoder", "codegen-350M-mono"], choices=list(SHAPES))
    parser.add_argument("--quantization", default="int8")
    parser.add_argument("--contexts", nargs="+", type=int, default=[512, 1500])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    print(f"transparent_hugepage: enabled {setting('enabled')}, defrag {setting('defrag')}; {torch.get_num_threads()} threads")
    for name in args.shapes:
        huge_before = anon_huge_mb()
        moved, moved_load = loaded(name, args.quantization)
        huge_mb = anon_huge_mb() - huge_before
        with huge_pages_off():
            left, left_load = loaded(name, args.quantization)  # random_model set the threads both take
        for context in args.contexts:
            sessions = {"moved": Session(moved), "left": Session(left)}
            prompt = code_prompt(moved, context)
            sessions["moved"].prefill(prompt)
            with huge_pages_off():
                sessions["left"].prefill(prompt)  # its cache allocated here, for these steps too

            def ms_per_step(session: Session) -> float:
                start = time.perf_counter()
                for token in prompt[: args.steps]:
                    session.step(token)
                session.truncate(context)
                return (time.perf_counter() - start) / args.steps * 1000

            for session in sessions.values():
                ms_per_step(session)  # warm
            figures, load = interleaved({kind: lambda s=s: ms_per_step(s) for kind, s in sessions.items()}, args.rounds)
            print(f"{name} {args.quantization}, {context} tokens of context, median of {args.rounds} interleaved rounds: "
                  f"huge pages {figures['moved']:.2f} ms a step, as before {figures['left']:.2f} "
                  f"({figures['left'] / figures['moved']:.2f}x); loads {moved_load:.2f} s against {left_load:.2f}, "
                  f"{huge_mb:.0f} MB in huge pages  (load {load:.1f})")
        del moved, left, sessions


if __name__ == "__main__":
    main()
