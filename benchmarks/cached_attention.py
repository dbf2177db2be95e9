"""A decode step's cache write and attention in one op of ours against the ops it replaced.

    .venv/bin/python benchmarks/cached_attention.py [--models demo santacoder codegen-350M-mono]
        [--quantization int8] [--context 1500] [--rounds 10]

Since 2026-12-03 `KVCache.update_and_attend` (engine/kv_cache.py) runs a CPU decode step's
attention, where our kernel was chosen for the shape, as one op (`attend_decode_cached`: the new
key and value written into the cache, then attend_decode over it, the output laid out for the
output projection). Before, the cache's update() (slices and two copies), attend() (its checks, a
reshape, our op, a view) and the transpose and reshape after it ran as ~10 PyTorch ops and their
Python. Here each model's session, filled to --context tokens (the demo: 200, its window is 256),
takes the same decode steps both ways in interleaved rounds in one process, the class's method
swapped: ms a step (medians) and their ratio; the first step's logits must be equal bit for bit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import code_prompt, interleaved, random_model  # noqa: E402
from benchmarks.random_checkpoint import SHAPES  # noqa: E402
from engine import kv_cache  # noqa: E402
from engine.kv_cache import KVCache  # noqa: E402
from engine.loading import load_model  # noqa: E402
from engine.session import Session  # noqa: E402

FUSED, AS_BEFORE = KVCache.update_and_attend, KVCache.update_then_attend


def using(method) -> None:
    KVCache.update_and_attend = method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["demo", "santacoder", "codegen-350M-mono"], choices=["demo", *SHAPES])
    parser.add_argument("--quantization", default="int8")
    parser.add_argument("--context", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    for name in args.models:
        for quantization in (["none", args.quantization] if name == "demo" else [args.quantization]):
            if name == "demo":
                lm = load_model(None, device="cpu", dtype="float32", quantization=quantization, compile="false")
                lm.use_threads()
            else:
                lm = random_model(name, quantization, compile="false")
            context = min(args.context, 200) if name == "demo" else args.context
            steps = 32 if name == "demo" else 8
            session = Session(lm)
            prompt = code_prompt(lm, context)
            session.prefill(prompt)

            def step_ms(method) -> float:
                using(method)
                start = time.perf_counter()
                for token in prompt[:steps]:
                    session.step(token)
                elapsed = (time.perf_counter() - start) / steps * 1e3
                session.truncate(context)
                return elapsed

            logits = {}
            for way, method in (("fused", FUSED), ("before", AS_BEFORE)):
                using(method)
                logits[way] = session.step(prompt[0]).clone()
                session.truncate(context)
            shape = kv_cache.attention_shape(lm.model.config)
            ours = kv_cache.DECODE_ATTENTION.get(shape, "SDPA (the fused op is not used)")
            step_ms(FUSED), step_ms(AS_BEFORE)  # warm
            figures, load = interleaved({"fused": lambda: step_ms(FUSED), "before": lambda: step_ms(AS_BEFORE)}, args.rounds)
            using(FUSED)
            print(f"{name} {quantization}, {context} tokens, {torch.get_num_threads()} threads, attention {shape}: {ours}, "
                  f"{lm.cache_dtype} cache: one op {figures['fused']:.3f} ms a step, as before {figures['before']:.3f}, "
                  f"{figures['before'] / figures['fused']:.3f}x; same logits: {torch.equal(logits['fused'], logits['before'])} "
                  f"(load {load:.1f})", flush=True)


if __name__ == "__main__":
    main()
