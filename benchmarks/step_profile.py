"""Where one decode step's time goes: weight matmuls vs everything else (attention, norms, Python).

    .venv/bin/python benchmarks/step_profile.py [--shapes santacoder codegen-350M-mono] [--context 1500]
        [--quantization int8] [--steps 8] [--rounds 5] [--compile]

Random weights with the real shapes (benchmarks/random_checkpoint.py). A session is filled to
--context tokens. Then, in interleaved rounds, --steps whole decode steps are timed, and the same
steps again with every call of a linear layer and of the attention (engine/kv_cache.py's
`KVCache.update_and_attend`: the cache write and our attend_decode in one op, or PyTorch's ops and
SDPA) wrapped with two clock reads, which add up the time inside
them. The weight matmuls' share is their time over those steps' own, round by round (a step moves
more between rounds than what lies outside its matmuls); the rest of the step (attention, norms,
activations, cache writes, dispatch and Python) is what the issue bounds at 10 %, and everything
else is the step less matmuls and attention. The plain steps are printed beside, to show that the
clock reads cost little.

Beside them, the matmuls alone: every linear layer called, in order and back to back, on the
input it got in a recorded step. Before 2026-12-01 the share came from that replay, and attention
from its calls replayed alone; but replayed back to back, a cache that fits in the CPU's last-level
cache is read from there, where in a step the weights streamed through since evict it (santacoder
at 1,500 tokens: attention 2.2 ms a step alone, 2.8-3.0 inside steps), and the matmuls inside steps
took 1-5 % less than alone. (A dispatch mode sees the ops too, but its own Python between them
changed their times: matmuls 7 % faster than in a plain step.)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import code_prompt, interleaved, random_model  # noqa: E402
from benchmarks.random_checkpoint import SHAPES  # noqa: E402
from engine import kv_cache  # noqa: E402
from engine.quantize import QuantizedLinear  # noqa: E402
from engine.session import Session  # noqa: E402


def linear_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [module for module in model.modules() if isinstance(module, (torch.nn.Linear, QuantizedLinear))]


@contextmanager
def calls_wrapped(modules: list[torch.nn.Module], wrap):
    """Each module's class's __call__ replaced by wrap(it) under it. The class's, not the instance's:
    a loaded model's modules call their forward directly (engine/decoder.py, call_forward_directly),
    past hooks and a forward set on an instance."""
    classes = {type(module) for module in modules}
    own = {cls: cls.__dict__.get("__call__") for cls in classes}
    calls = {cls: cls.__call__ for cls in classes}  # all before any is replaced: a subclass wrapped once
    for cls in classes:
        cls.__call__ = wrap(calls[cls])
    try:
        yield
    finally:
        for cls, call in own.items():
            if call is None:
                del cls.__call__
            else:
                cls.__call__ = call


def recorded_matmuls(model: torch.nn.Module, step) -> list[tuple[torch.nn.Module, torch.Tensor]]:
    """Each linear layer with the input it got during step(), in call order."""
    calls: list[tuple[torch.nn.Module, torch.Tensor]] = []

    def recording(call):
        def recorded_call(module, x, *args, **kwargs):
            calls.append((module, x.clone()))
            return call(module, x, *args, **kwargs)

        return recorded_call

    with calls_wrapped(linear_layers(model), recording):
        step()
    return calls


def timed(function, kind: str, seconds: dict[str, float]):
    """function, adding the seconds inside each call to seconds[kind]."""

    def timed_call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[kind] += time.perf_counter() - start

    return timed_call


@contextmanager
def timed_inside_steps(model: torch.nn.Module, seconds: dict[str, float]):
    """Adds up in seconds["matmuls"] and seconds["attention"] the time inside every linear layer and
    every attention call (with its cache write) of what runs under it."""
    update_and_attend = kv_cache.KVCache.update_and_attend
    kv_cache.KVCache.update_and_attend = timed(update_and_attend, "attention", seconds)
    try:
        with calls_wrapped(linear_layers(model), lambda call: timed(call, "matmuls", seconds)):
            yield
    finally:
        kv_cache.KVCache.update_and_attend = update_and_attend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["santacoder", "codegen-350M-mono"], choices=list(SHAPES))
    parser.add_argument("--context", type=int, default=1500)
    parser.add_argument("--quantization", default="int8")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="compiled steps (compile = true) against the matmuls alone")
    args = parser.parse_args()
    for name in args.shapes:
        lm = random_model(name, args.quantization, compile="true" if args.compile else "false")
        session = Session(lm)
        # The same weights run eagerly, for recording the matmuls (a compiled step runs none of ours):
        # a session of its own only beside a compiled one.
        eager_session = Session(dataclasses.replace(lm, decode_step=None)) if args.compile else session
        prompt = code_prompt(lm, args.context)
        session.prefill(prompt)
        if eager_session is not session:
            eager_session.prefill(prompt)

        def steps(session: Session = session) -> None:  # --steps decode steps from the same place each time
            for i in range(args.steps):
                session.step(prompt[i])
            session.truncate(args.context)

        with torch.inference_mode():
            matmuls = recorded_matmuls(lm.model, lambda: eager_session.step(prompt[0]))
        eager_session.truncate(args.context)
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

        if args.compile:  # a compiled step runs no module of ours to time: only its whole against the matmuls alone
            figures, load = interleaved({"step": lambda: ms_per_step(steps), "eager step": lambda: ms_per_step(lambda: steps(eager_session)),
                                         "matmuls alone": lambda: ms_per_step(matmuls_alone)}, args.rounds)
            print(f"{name} {args.quantization}, compiled, {args.context} tokens of context, median of {args.rounds} interleaved "
                  f"rounds: step {figures['step']:.1f} ms (eager {figures['eager step']:.1f}), its matmuls alone "
                  f"{figures['matmuls alone']:.1f} ms; outside them {1 - figures['matmuls alone'] / figures['step']:.0%} "
                  f"(eager {1 - figures['matmuls alone'] / figures['eager step']:.0%})  (load {load:.1f})")
            continue
        timed_rounds: list[dict[str, float]] = []  # each round's steps with their calls timed: ms a step

        def timed_steps() -> float:
            seconds = {"matmuls": 0.0, "attention": 0.0}
            with timed_inside_steps(lm.model, seconds):
                whole = ms_per_step(steps)
            timed_rounds.append({"step": whole, **{kind: value / args.steps * 1000 for kind, value in seconds.items()}})
            return whole

        figures, load = interleaved({"step": lambda: ms_per_step(steps), "timed step": timed_steps,
                                     "matmuls alone": lambda: ms_per_step(matmuls_alone)}, args.rounds)
        # Shares from the timed steps themselves, round by round: a step moves more between rounds than
        # what lies outside its matmuls (santacoder's float32 step by 5 ms).
        median = {kind: statistics.median(r[kind] for r in timed_rounds) for kind in ("step", "matmuls", "attention")}
        outside = statistics.median(1 - r["matmuls"] / r["step"] for r in timed_rounds)
        attention = statistics.median(r["attention"] / r["step"] for r in timed_rounds)
        rest = statistics.median((r["step"] - r["matmuls"] - r["attention"]) / r["step"] for r in timed_rounds)
        print(f"{name} {args.quantization}, {args.context} tokens of context, {lm.threads or torch.get_num_threads()} threads, "
              f"{len(matmuls)} matmuls a step, median of {args.rounds} interleaved rounds: step {figures['step']:.1f} ms "
              f"(timed {median['step']:.1f}), its matmuls {median['matmuls']:.1f} ms (alone {figures['matmuls alone']:.1f}); "
              f"outside the matmuls {outside:.0%} ({median['step'] - median['matmuls']:.1f} ms)  (load {load:.1f})")
        print(f"    of which attention {median['attention']:.1f} ms ({attention:.0%}), "
              f"everything else {median['step'] - median['matmuls'] - median['attention']:.1f} ms ({rest:.0%})")


if __name__ == "__main__":
    main()
