"""Choose the confidence thresholds of engine/stops.py by measurement on held-out code.

Lines of an installed pip package (default `_pytest`: not the package
benchmarks/heldout_eval.py reports on, and not the standard library the demo
model was trained on) are completed through lsp_server.suggest with the
confidence rule off, each token's log-probability recorded; then every
threshold of a grid is replayed on the recordings (engine.stops.cut_unsure).

- min_logprob (first line): cases cut mid-line, as in heldout_eval.py.
  Calibration: of the tokens the model wrote while its text so far was still
  right, how many were right, per band of the model's probability. The
  threshold is the lowest probability t such that the tokens with p >= t are
  right at least as often as wrong: what is shown is more often right.
- min_line_logprob (later lines): the cursor at the end of a line that opens
  a block, the block's body removed; the same calibration per line (a line is
  as sure as its least sure token), over the lines written while the lines
  before them were right.

Also printed: what each threshold leaves (characters right minus wrong,
characters shown, empty share), by probability and by entropy. Recordings
are kept in /tmp/codegen-lsp-bench (--fresh to run the model again).

    .venv/bin/python benchmarks/stop_thresholds.py [--package _pytest] [-n 300] [--model SPEC]
"""

from __future__ import annotations

import argparse
import math
import pickle
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.heldout_eval import package_files, sample_cases  # noqa: E402
from engine.loading import load_model  # noqa: E402
from engine.session import SessionStore  # noqa: E402
from engine.stops import TokenRecord, unsure_cut  # noqa: E402
from lsp_server.pool import ServedModel  # noqa: E402
from lsp_server.settings import Settings  # noqa: E402
from lsp_server.suggest import suggest  # noqa: E402

PROBABILITIES = (None, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6)
ENTROPIES = (None, 4.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5)


def block_cases(package: str, n: int, seed: int) -> list[tuple[str, int, str]]:
    """(document, offset, true body) with the cursor after a line ending in ':' and its body removed."""
    rng = random.Random(seed)
    found = []
    for path in package_files(package):
        lines = path.read_text(encoding="utf-8").split("\n")
        for i, line in enumerate(lines[:-1]):
            if not line.rstrip().endswith(":") or line.lstrip().startswith("#"):
                continue
            indent = len(line) - len(line.lstrip())
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
                j += 1
            body = "\n".join(lines[i + 1 : j]).rstrip()
            if body:
                before = "\n".join(lines[: i + 1])
                found.append((before + "\n" + "\n".join(lines[j:]), len(before), "\n" + body))
    return rng.sample(found, min(n, len(found)))


def replay(records: list[TokenRecord], text: str, threshold, entropy: bool, line: bool) -> str:
    """text as the rule would leave it: by log-probability (threshold a probability) or by entropy."""
    for r in records:
        if r.start < 0:
            continue
        score = -r.entropy if entropy else r.logprob
        limit = None if threshold is None else (-threshold if entropy else math.log(threshold))
        cut = unsure_cut(text, r.start, score, None if line else limit, limit if line else None)
        if cut is not None:
            return text[:cut]
    return text


def line_score(shown: str, truth: str) -> int:
    common = 0
    while common < min(len(shown), len(truth)) and shown[common] == truth[common]:
        common += 1
    return common - (len(shown) - common)


def block_score(shown: str, truth: str) -> int:
    truth_lines = truth.split("\n")[1:]
    score = 0
    for k, line in enumerate(shown.split("\n")[1:]):
        score += len(line.strip()) if k < len(truth_lines) and line.rstrip() == truth_lines[k].rstrip() else -len(line.strip())
    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", default="_pytest")
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model", default="")
    parser.add_argument("--fresh", action="store_true", help="run the model again instead of replaying")
    args = parser.parse_args()
    cache = Path("/tmp/codegen-lsp-bench") / f"stops-{args.package}-{args.n}-{args.seed}-{Path(args.model).name or 'demo'}.pkl"
    if cache.exists() and not args.fresh:
        lines, blocks = pickle.loads(cache.read_bytes())
    else:
        lines, blocks = record(args)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(pickle.dumps((lines, blocks)))
    report(args, lines, blocks)


def record(args):

    settings = Settings(model=args.model, max_new_tokens=48, debounce_ms=0)
    lm = load_model(args.model or None)
    served = ServedModel(settings.engine_key(), lm, SessionStore(lm, 256))
    off = (None, None)

    lines = []
    for k, case in enumerate(sample_cases(args.package, args.n, args.seed)):
        offset = len("\n".join(case.document.split("\n")[: case.line])) + (case.line > 0) + case.cut
        s = suggest(served, f"line{k}", case.document, offset, "python", settings, thresholds=off)
        lines.append((s.raw.split("\n", 1)[0], s.stopper.records, case.rest))
        served.sessions.drop(f"line{k}")
    blocks = []
    multiline = Settings(model=args.model, max_new_tokens=64, debounce_ms=0, multiline="always")
    for k, (document, offset, body) in enumerate(block_cases(args.package, args.n // 2, args.seed)):
        s = suggest(served, f"block{k}", document, offset, "python", multiline, thresholds=off)
        blocks.append((s.raw, s.stopper.records, body))
        served.sessions.drop(f"block{k}")
    return lines, blocks


def calibration(pairs: list[tuple[float, bool]]) -> float | None:
    """Print right/total per probability band and from each band up; return the lowest band edge t
    such that of the items with p >= t, at least half are right (None: no such edge)."""
    edges = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01]
    chosen = None
    for low, high in zip(edges, edges[1:]):
        inside = [ok for p, ok in pairs if low <= p < high]
        above = [ok for p, ok in pairs if p >= low]
        print(f"    p in [{low:.1f}, {min(high, 1):.1f}): {sum(inside):5d} right of {len(inside):5d}"
              f"   p >= {low:.1f}: {sum(above):5d} right of {len(above):5d}")
    for low in reversed(edges[:-1]):
        above = [ok for p, ok in pairs if p >= low]
        if above and 2 * sum(above) >= len(above):
            chosen = low
        elif above:
            break
    return chosen


def report(args, lines, blocks) -> None:
    tokens = []  # (probability, right) of each first-line token written while the text was right
    for text, records, truth in lines:
        for r in records:
            if r.start < 0:
                continue
            if not truth.startswith(text[: r.start]):
                break
            tokens.append((math.exp(r.logprob), truth.startswith(text[: r.end])))
    later = []  # (least probability of the line's tokens, line right) of lines written while the ones before were right
    for text, records, truth in blocks:
        shown, wanted = text.split("\n"), truth.split("\n")
        for k in range(1, len(shown)):
            start = len("\n".join(shown[:k]))
            probs = [math.exp(r.logprob) for r in records if start <= r.start < start + 1 + len(shown[k])]
            if not probs or k >= len(wanted):
                break
            right = shown[k].rstrip() == wanted[k].rstrip()
            later.append((min(probs), right))
            if not right:
                break
    print("first-line tokens, calibration:")
    first_choice = calibration(tokens)
    print("later lines (least token probability), calibration:")
    line_choice = calibration(later)
    print(f"chosen: min probability {first_choice} (first line), {line_choice} (later lines)")
    print(f"{len(lines)} mid-line cuts, {len(blocks)} blocks from {args.package}; model {args.model or 'demo'}")
    for entropy, grid in ((False, PROBABILITIES), (True, ENTROPIES)):
        name = "max entropy" if entropy else "min probability"
        print(f"\n{name:>16} | first line: score, shown chars, empty % | later lines: score, lines shown")
        for t in grid:
            first = [replay(r, text, t, entropy, False) for text, r, _ in lines]
            score = sum(line_score(shown, truth) for shown, (_, _, truth) in zip(first, lines))
            chars = sum(len(shown) for shown in first)
            empty = 100 * sum(not shown.strip() for shown in first) / len(first)
            later = [replay(r, text, t, entropy, True) for text, r, _ in blocks]
            bscore = sum(block_score(shown, truth) for shown, (_, _, truth) in zip(later, blocks))
            shown_lines = sum(len(shown.split("\n")) - 1 for shown in later)
            print(f"{str(t):>16} | {score:6d} {chars:6d} {empty:5.1f} | {bscore:6d} {shown_lines:5d}")


if __name__ == "__main__":
    main()
