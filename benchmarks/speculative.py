"""Speculative decoding on vs off, in one run, request by request interleaved (engine/speculative.py).

(a) keystroke replay: editing code whose lines partly repeat (tests that mirror each
    other, calls repeated with other arguments): for each line of a region, the cursor
    after the line's first characters, the rest of the file after it (FIM where the
    model has it), each mode on its own document session, as an editor would drive it;
(b) left to right: plain continuation of held-out code at line starts, fresh sessions.

Figures per mode: decode tokens/s (generated tokens over the time after the first
token) and the median time to the whole suggestion; the suggestions must be identical.

    .venv/bin/python benchmarks/speculative.py                          # demo model, none
    .venv/bin/python benchmarks/speculative.py --quantization int8
    .venv/bin/python benchmarks/speculative.py --shape codegen-350M-mono --requests 6   # random weights
    .venv/bin/python benchmarks/speculative.py --shape santacoder --quantization int8 --verify-costs

Random weights (--shape) rarely agree with drafts: their figures say what a verify
costs, not what speculation gains; the demo model's are the real ones.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, checkpoint, interleaved  # noqa: E402
from benchmarks.random_checkpoint import SHAPES  # noqa: E402
from engine.completion import DocumentState, complete  # noqa: E402
from engine.generate import SamplingParams  # noqa: E402
from engine.loading import load_model  # noqa: E402
from engine.session import Session  # noqa: E402

MODES = ("off", "ngram")
# (a) code written after the demo model was trained, with mirrored tests; (b) other held-out code.
EDITED = ROOT / "tests" / "test_speculative.py"
HELD_OUT = ROOT / "engine" / "speculative.py"


def edits(text: str, count: int) -> list[tuple[str, str]]:
    """(prefix, suffix) at the start of `count` non-blank lines, after their first word."""
    lines = text.splitlines(keepends=True)
    picks = [i for i, line in enumerate(lines) if len(line.strip()) > 12][10:]
    picks = picks[:: max(1, len(picks) // count)][:count]
    out = []
    for i in picks:
        head = len(lines[i]) - len(lines[i].lstrip()) + max(1, len(lines[i].strip().split(" ")[0]))
        before = "".join(lines[:i]) + lines[i][:head]
        out.append((before, lines[i][head:] + "".join(lines[i + 1 :])))
    return out


def measure(lm, requests: list[tuple[str, str]], fim: str, max_new: int, keep_sessions: bool) -> dict:
    figures = {mode: {"tokens": 0, "decode_s": 0.0, "whole_ms": [], "drafted": 0, "accepted": 0} for mode in MODES}
    sessions = {mode: (Session(lm), DocumentState()) for mode in MODES}
    different = 0
    for prefix, suffix in requests:
        texts = []
        for mode in MODES:  # interleaved: both modes see the same machine load
            session, state = sessions[mode] if keep_sessions else (Session(lm), DocumentState())
            params = SamplingParams(max_new_tokens=max_new, speculative=mode)
            result = complete(session, state, prefix, suffix, params, max_prompt_tokens=1536, fim=fim, typeahead=False)
            s, f = result.stats, figures[mode]
            f["tokens"] += max(s.generated_tokens - 1, 0)
            f["decode_s"] += (s.total_ms - s.time_to_first_token_ms) / 1000
            f["whole_ms"].append(s.total_ms)
            f["drafted"] += s.draft_tokens
            f["accepted"] += s.accepted_draft_tokens
            texts.append(result.text)
        different += texts[0] != texts[1]
    return {"figures": figures, "different": different, "requests": len(requests)}


def report(name: str, result: dict) -> None:
    f = result["figures"]
    rate = {m: f[m]["tokens"] / max(f[m]["decode_s"], 1e-9) for m in MODES}
    whole = {m: statistics.median(f[m]["whole_ms"]) for m in MODES}
    print(f"{name}: {result['requests']} requests, {result['different']} with different output")
    for m in MODES:
        extra = f", drafted {f[m]['drafted']}, accepted {f[m]['accepted']}" if m != "off" else ""
        print(f"  {m:6s} decode {rate[m]:7.1f} tok/s, whole suggestion median {whole[m]:7.1f} ms{extra}")
    print(f"  speed-up: decode {rate['ngram'] / rate['off']:.2f}x, whole suggestion {whole['off'] / whole['ngram']:.2f}x")
    # Each forward decides one token beside the drafts it accepts: with these drafts, even a verify
    # as cheap as a decode step could not decode faster than this.
    decoded, accepted = f["ngram"]["tokens"], f["ngram"]["accepted"]
    print(f"  ceiling with these drafts, a verify costing one step: {decoded / max(decoded - accepted, 1):.2f}x decode")


def verify_costs(lm, rounds: int = 3) -> None:
    """A verify of n rows (the last token and n - 1 drafts) against one decode step, at 512 tokens
    of context (the window's half on the demo model): what a draft must win back."""
    prompt = lm.tokenizer.encode(EDITED.read_text(encoding="utf-8"))[: min(512, lm.config.n_positions // 2)]
    session = Session(lm)
    session.prefill(prompt)
    base = len(session.ids)

    def verify_ms(rows: int) -> float:
        start = time.perf_counter()
        session.verify(prompt[:rows]) if rows > 1 else session.step(prompt[0])
        session.truncate(base)
        return (time.perf_counter() - start) * 1000

    sizes = (1, 2, 3, 5, 9, 17)
    ms, load = interleaved({rows: (lambda rows=rows: verify_ms(rows)) for rows in sizes}, 2 * rounds + 1)
    print(f"verify of n rows / one decode step ({ms[1]:.2f} ms), median of {2 * rounds + 1} rounds, load {load:.1f}: "
          + ", ".join(f"{rows} rows {ms[rows] / ms[1]:.2f}x" for rows in sizes[1:]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=("demo", *SHAPES), default="demo")
    parser.add_argument("--quantization", choices=("none", "int8", "int4"), default="none")
    parser.add_argument("--requests", type=int, default=40, help="requests per part")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--verify-costs", action="store_true", help="only time a verify of n rows against a decode step")
    args = parser.parse_args()
    torch.manual_seed(0)
    spec = None
    if args.shape != "demo":
        spec = str(checkpoint(args.shape, SHAPES[args.shape]))
    lm = load_model(spec, device="cpu", dtype="float32", quantization=args.quantization, compile="false")
    lm.use_threads()  # as its generations run (verify_costs times steps directly)
    print(f"{lm.path.name} ({args.shape}), quantization {args.quantization}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f} before")
    if args.verify_costs:
        verify_costs(lm)
        return 0
    replay = edits(EDITED.read_text(encoding="utf-8"), args.requests)
    report("(a) keystroke replay, lines partly repeated", measure(lm, replay, "auto", args.max_new_tokens, True))
    held_out = [(p, "") for p, _ in edits(HELD_OUT.read_text(encoding="utf-8"), args.requests)]
    report("(b) left to right, held-out code", measure(lm, held_out, "off", args.max_new_tokens, False))
    print(f"load average {os.getloadavg()[0]:.1f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
