"""Where one decode step's time goes: weight matmuls vs everything else (attention, norms, Python).

    .venv/bin/python benchmarks/step_profile.py [--shapes santacoder codegen-350M-mono] [--context 1500]
        [--quantization int8] [--steps 20]

Random weights with the real shapes (benchmarks/random_checkpoint.py). A session is filled to
--context tokens, then --steps decode steps run under torch.profiler; printed per shape: ms per
step, the share of the step in the quantized or dense weight matmuls (our kernels' ops,
aten::linear / addmm / mm), in attention (scaled_dot_product_attention or our attend_decode) and the rest (norms,
activations, cache writes, dispatch and Python), and the load average beside them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import checkpoint, real_code  # noqa: E402
from benchmarks.random_checkpoint import CODEGEN_350M_MONO, SANTACODER  # noqa: E402
from engine.loading import load_model  # noqa: E402
from engine.session import Session  # noqa: E402

SHAPES = {"santacoder": SANTACODER, "codegen-350M-mono": CODEGEN_350M_MONO}
MATMULS = ("codegen_lsp_cpu::", "aten::linear", "aten::addmm", "aten::mm", "aten::_weight_int")
ATTENTION = ("aten::scaled_dot_product_attention", "codegen_lsp_cpu::attend_decode")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--context", type=int, default=1500)
    parser.add_argument("--quantization", default="int8")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    for name in args.shapes:
        lm = load_model(str(checkpoint(name, SHAPES[name])), device="cpu", quantization=args.quantization)
        if lm.threads:
            torch.set_num_threads(lm.threads)
        session = Session(lm)
        prompt = [i % lm.config.vocab_size for i in lm.tokenizer.encode(real_code(12 * args.context))[: args.context]]
        session.prefill(prompt)
        for _ in range(3):
            session.step(1)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for _ in range(args.steps):
                session.step(1)
            seconds = time.perf_counter() - start
        # Top-level ops only: self time of an op counts once, under the first matching family.
        shares = {"matmuls": 0.0, "attention": 0.0}
        for event in prof.key_averages():
            if event.key.startswith(ATTENTION):
                shares["attention"] += event.cpu_time_total
            elif event.key.startswith(MATMULS):
                shares["matmuls"] += event.cpu_time_total
        total_us = seconds * 1e6
        rest = 1 - (shares["matmuls"] + shares["attention"]) / total_us
        print(f"{name} {args.quantization}, {args.context} tokens of context, {lm.threads or torch.get_num_threads()} threads: "
              f"{seconds / args.steps * 1000:.1f} ms/step (profiled); matmuls {shares['matmuls'] / total_us:.0%}, "
              f"attention {shares['attention'] / total_us:.0%}, everything else {rest:.0%}  (load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
