"""Held-out evaluation through the server, as an editor would ask.

N lines at random from the Python files of an installed pip package (not the
standard library, which the demo model was trained on); each line is cut at a
random point inside its code, the rest of the line is removed from the
document, and `codegen-lsp serve` (over stdio, one process for all lines) is
asked for the inline completion at the cut with the text after it as the
fill-in-the-middle suffix. Printed:

- exact: the suggestion's first line is the rest of the line (trailing spaces aside)
- exact >= 5: the same over the rests of 5 characters or more
- repeat: suggestions in which a chunk of >= 3 tokens is written twice in a row
  (engine.stops.first_repeat on the model's tokens of the suggestion)
- past end: suggestions whose first line runs more than 30 characters past the true line end
- empty: no suggestion
- right when shown: of the suggestions shown, the share whose first line is a start of the rest
- latency: median and 90th percentile of request-to-answer time, milliseconds

    .venv/bin/python benchmarks/heldout_eval.py --package hypothesis -n 150 [--model SPEC] [--set KEY=VALUE] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.stops import first_repeat  # noqa: E402

PAST_END_CHARS = 30


@dataclass
class Case:
    path: Path
    line: int  # 0-based
    cut: int  # character offset in the line
    document: str  # the file with the rest of the line removed
    rest: str  # what was removed


def package_files(package: str) -> list[Path]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{package}: not an installed package")
    files = []
    for location in spec.submodule_search_locations:
        files += sorted(p for p in Path(location).rglob("*.py") if "test" not in p.name)
    return files


def sample_cases(package: str, n: int, seed: int) -> list[Case]:
    """n cuts, each on a line with at least 8 characters of code (comments and docstrings count too)."""
    rng = random.Random(seed)
    candidates = []
    for path in package_files(package):
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError):
            continue
        candidates += [(path, i) for i, line in enumerate(lines) if len(line.strip()) >= 8 and len(line) < 200]
    cases = []
    for path, i in rng.sample(candidates, min(n, len(candidates))):
        lines = path.read_text(encoding="utf-8").split("\n")
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        cut = rng.randrange(indent + 1, len(line.rstrip()))
        document = "\n".join(lines[:i] + [line[:cut]] + lines[i + 1 :])
        cases.append(Case(path, i, cut, document, line[cut:].rstrip()))
    return cases


async def ask_all(cases: list[Case], settings: dict, command: list[str]) -> list[tuple[str, float]]:
    client = LanguageClient("heldout-eval", "0.1.0")
    ready = asyncio.Event()

    @client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
    def progress_create(params):
        return None

    @client.feature(types.PROGRESS)
    def progress(params):
        if isinstance(params.value, dict) and params.value.get("kind") == "end":
            ready.set()

    @client.feature(types.WINDOW_SHOW_MESSAGE)
    def show_message(params):
        print("server:", params.message, file=sys.stderr)

    await client.start_io(*command)
    capabilities = types.ClientCapabilities(
        window=types.WindowClientCapabilities(work_done_progress=True),
        text_document=types.TextDocumentClientCapabilities(inline_completion=types.InlineCompletionClientCapabilities()),
    )
    await client.initialize_async(
        types.InitializeParams(capabilities=capabilities, initialization_options={"codegen-lsp": settings})
    )
    client.initialized(types.InitializedParams())
    await asyncio.wait_for(ready.wait(), 600)
    answers = []
    for k, case in enumerate(cases):
        uri = f"file:///heldout/{k}/{case.path.name}"
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=case.document)))
        start = time.perf_counter()
        result = await client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=case.line, character=len(case.document.split("\n")[case.line][: case.cut].encode("utf-16-le")) // 2),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        ))
        elapsed = (time.perf_counter() - start) * 1000
        items = result.items if isinstance(result, types.InlineCompletionList) else (result or [])
        text = items[0].insert_text if items else ""
        answers.append((text if isinstance(text, str) else text.value, elapsed))
        client.text_document_did_close(types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri)))
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return answers


def figures(cases: list[Case], answers: list[tuple[str, float]], encode) -> dict:
    n = len(cases)
    exact = long_total = long_exact = repeats = past = empty = right = 0
    for case, (text, _) in zip(cases, answers):
        first = text.split("\n", 1)[0].rstrip()
        exact += first == case.rest
        if len(case.rest) >= 5:
            long_total += 1
            long_exact += first == case.rest
        repeats += bool(text) and first_repeat(encode(text)) is not None
        past += len(first) > len(case.rest) + PAST_END_CHARS
        empty += not text.strip()
        right += bool(text.strip()) and case.rest.startswith(first)
    latencies = sorted(ms for _, ms in answers)
    pct = lambda k: round(100 * k / max(n, 1), 1)  # noqa: E731
    return {
        "lines": n, "exact_pct": pct(exact), "exact_rest_ge5_pct": round(100 * long_exact / max(long_total, 1), 1),
        "rests_ge5": long_total, "repeat_pct": pct(repeats), "past_end_pct": pct(past), "empty_pct": pct(empty),
        "right_when_shown_pct": round(100 * right / max(n - empty, 1), 1),
        "latency_median_ms": round(statistics.median(latencies), 1),
        "latency_p90_ms": round(latencies[int(0.9 * (len(latencies) - 1))], 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", default="hypothesis", help="an installed pip package (default: hypothesis)")
    parser.add_argument("-n", type=int, default=150)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--model", default="", help='checkpoint directory or hub id ("": the demo model)')
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another server setting, e.g. --set ramble_stop=off")
    parser.add_argument("--show", type=int, default=0, help="print this many cases with their suggestions")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from engine.tokenizer import load_tokenizer
    from engine.checkpoint import resolve_model_dir
    from engine.paths import DEMO_MODEL_DIR

    cases = sample_cases(args.package, args.n, args.seed)
    settings = {"model": args.model, "debounce_ms": 0, "max_new_tokens": args.max_new_tokens}
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = int(value) if value.isdigit() else value
    answers = asyncio.run(ask_all(cases, settings, [sys.executable, "-m", "lsp_server", "serve"]))
    tokenizer = load_tokenizer(resolve_model_dir(args.model) if args.model else DEMO_MODEL_DIR)
    result = {"package": args.package, "model": args.model or "demo", "set": args.set, **figures(cases, answers, tokenizer.encode)}
    for case, (text, _) in list(zip(cases, answers))[: args.show]:
        print(f"{case.path.name}:{case.line + 1}: rest {case.rest!r}\n    got  {text!r}")
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
