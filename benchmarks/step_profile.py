"""Where one decode step's time goes: weight matmuls vs everything else (attention, norms, Python).

    .venv/bin/python benchmarks/step_profile.py [--shapes santacoder codegen-350M-mono] [--context 1500]
        [--quantization int8] [--steps 8] [--rounds 5]

Random weights with the real shapes (benchmarks/random_checkpoint.py). A session is filled to
--context tokens. Then, in interleaved rounds, --steps whole decode steps are timed against the
same steps' weight matmuls alone: every linear layer called, in order and back to back, on the
input it got in a recorded step. The matmuls' share is the second time over the first; the rest
of the step (attention, norms, activations, cache writes, dispatch and Python) is what the issue
bounds at 10 %. The matmuls alone run without the other ops between them, so if anything they
are faster than inside a step, and the share outside is not understated.

Then one torch.profiler pass over the same steps splits the rest: attention (our attend_decode
or scaled_dot_product_attention) against everything else. The profiler adds its own time to
every op, so its shares of the small ops are larger than the wall-clock ones above.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import checkpoint, interleaved, real_code  # noqa: E402
from benchmarks.random_checkpoint import CODEGEN_350M_MONO, SANTACODER  # noqa: E402
from engine.loading import load_model  # noqa: E402
from engine.quantize import QuantizedLinear  # noqa: E402
from engine.session import Session  # noqa: E402

SHAPES = {"santacoder": SANTACODER, "codegen-350M-mono": CODEGEN_350M_MONO}
MATMULS = ("codegen_lsp_cpu::int", "aten::linear", "aten::addmm", "aten::mm", "aten::_weight_int")
ATTENTION = ("aten::scaled_dot_product_attention", "codegen_lsp_cpu::attend_decode")


def recorded_matmuls(model: torch.nn.Module, step) -> list[tuple[torch.nn.Module, torch.Tensor]]:
    """Each linear layer with the input it got during step(), in call order."""
    calls: list[tuple[torch.nn.Module, torch.Tensor]] = []
    hooks = [module.register_forward_pre_hook(lambda module, args: calls.append((module, args[0].clone())))
             for module in model.modules() if isinstance(module, (torch.nn.Linear, QuantizedLinear))]
    try:
        step()
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--context", type=int, default=1500)
    parser.add_argument("--quantization", default="int8")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for name in args.shapes:
        lm = load_model(str(checkpoint(name, SHAPES[name])), device="cpu", quantization=args.quantization)
        if lm.threads:
            torch.set_num_threads(lm.threads)
        session = Session(lm)
        prompt = [i % lm.config.vocab_size for i in lm.tokenizer.encode(real_code(12 * args.context))[: args.context]]
        session.prefill(prompt)

        def steps() -> None:  # --steps decode steps from the same place each time
            for i in range(args.steps):
                session.step(prompt[i])
            session.truncate(args.context)

        with torch.inference_mode():
            matmuls = recorded_matmuls(lm.model, lambda: session.step(prompt[0]))
        session.truncate(args.context)
        steps()  # warm

        @torch.inference_mode()
        def matmuls_alone() -> None:
            for _ in range(args.steps):
                for module, x in matmuls:
                    module(x)

        def ms_per_step(run) -> float:
            start = time.perf_counter()
            run()
            return (time.perf_counter() - start) / args.steps * 1000

        figures, load = interleaved({"step": lambda: ms_per_step(steps), "matmuls": lambda: ms_per_step(matmuls_alone)},
                                    args.rounds)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            steps()
            profiled_us = (time.perf_counter() - start) * 1e6
        # Top-level ops only: self time of an op counts once, under the first matching family.
        attention_us = sum(e.cpu_time_total for e in prof.key_averages() if e.key.startswith(ATTENTION))
        matmul_us = sum(e.cpu_time_total for e in prof.key_averages() if e.key.startswith(MATMULS))
        outside = 1 - figures["matmuls"] / figures["step"]
        print(f"{name} {args.quantization}, {args.context} tokens of context, {lm.threads or torch.get_num_threads()} threads, "
              f"{len(matmuls)} matmuls a step, median of {args.rounds} interleaved rounds: step {figures['step']:.1f} ms, "
              f"its matmuls alone {figures['matmuls']:.1f} ms; outside the matmuls {outside:.0%} "
              f"({figures['step'] - figures['matmuls']:.1f} ms)  (load {load:.1f})")
        print(f"    under torch.profiler: matmuls {matmul_us / profiled_us:.0%}, attention {attention_us / profiled_us:.0%}, "
              f"everything else {1 - (matmul_us + attention_us) / profiled_us:.0%}")


if __name__ == "__main__":
    main()
