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

The rest is split the same way: the step's attention calls (our attend_decode, or PyTorch's
scaled_dot_product_attention), recorded with their arguments and replayed back to back, against
everything else (norms, activations, cache writes, dispatch and Python), which is the step less
both replays. It also holds whatever the matmuls lose inside a step against alone, and a cache
that fits in the CPU's last-level cache is read from there when replayed back to back, so the
split is a bound on attention from below. (torch.profiler split it before: its own time per op
inflated the small ops' share.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import code_prompt, interleaved, random_model  # noqa: E402
from benchmarks.random_checkpoint import SHAPES  # noqa: E402
from engine.quantize import QuantizedLinear  # noqa: E402
from engine.session import Session  # noqa: E402

# The ops a step's attention ends in, as a dispatch mode sees them (SDPA reaches one of its kernels).
ATTENTION = ("codegen_lsp_cpu.attend_decode", "aten._scaled_dot_product")


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


class RecordedAttention(TorchDispatchMode):
    """Records every attention op of the steps run under it, with its arguments (views of the cache)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(ATTENTION):
            self.calls.append((func, args, kwargs or {}))
        return func(*args, **(kwargs or {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["santacoder", "codegen-350M-mono"], choices=list(SHAPES))
    parser.add_argument("--context", type=int, default=1500)
    parser.add_argument("--quantization", default="int8")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for name in args.shapes:
        lm = random_model(name, args.quantization)
        session = Session(lm)
        prompt = code_prompt(lm, args.context)
        session.prefill(prompt)

        def steps() -> None:  # --steps decode steps from the same place each time
            for i in range(args.steps):
                session.step(prompt[i])
            session.truncate(args.context)

        with torch.inference_mode():
            matmuls = recorded_matmuls(lm.model, lambda: session.step(prompt[0]))
        session.truncate(args.context)
        with torch.inference_mode(), RecordedAttention() as recorded:
            session.step(prompt[0])
        attentions = recorded.calls  # read again after the truncate: the positions they read stay written
        session.truncate(args.context)
        steps()  # warm

        @torch.inference_mode()
        def matmuls_alone() -> None:
            for _ in range(args.steps):
                for module, x in matmuls:
                    module(x)

        @torch.inference_mode()
        def attention_alone() -> None:
            for _ in range(args.steps):
                for func, call_args, kwargs in attentions:
                    func(*call_args, **kwargs)

        def ms_per_step(run) -> float:
            start = time.perf_counter()
            run()
            return (time.perf_counter() - start) / args.steps * 1000

        figures, load = interleaved({"step": lambda: ms_per_step(steps), "matmuls": lambda: ms_per_step(matmuls_alone),
                                     "attention": lambda: ms_per_step(attention_alone)}, args.rounds)
        outside = 1 - figures["matmuls"] / figures["step"]
        rest = figures["step"] - figures["matmuls"] - figures["attention"]
        print(f"{name} {args.quantization}, {args.context} tokens of context, {lm.threads or torch.get_num_threads()} threads, "
              f"{len(matmuls)} matmuls a step, median of {args.rounds} interleaved rounds: step {figures['step']:.1f} ms, "
              f"its matmuls alone {figures['matmuls']:.1f} ms; outside the matmuls {outside:.0%} "
              f"({figures['step'] - figures['matmuls']:.1f} ms)  (load {load:.1f})")
        print(f"    of which attention ({len(attentions)} calls alone) {figures['attention']:.1f} ms "
              f"({figures['attention'] / figures['step']:.0%}), everything else {rest:.1f} ms ({rest / figures['step']:.0%})")


if __name__ == "__main__":
    main()
