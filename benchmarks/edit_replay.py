"""Replay typing a real standard-library file, one keystroke per request, and measure reuse.

    .venv/bin/python benchmarks/edit_replay.py [--keystrokes 40] [--fim-keystrokes 20] [--samples 3]

Two scenarios on random weights with real shapes (float32, CPU):

1. codegen-350M-mono: typing at the end of argparse.py, prompt ~1,500 tokens.
2. santacoder (FIM): retyping a line in the middle of a function, PSM vs SPM.
   With PSM every keystroke changes the prefix, so the suffix tokens after it
   are encoded again; with SPM the suffix comes first and stays encoded.

Each keystroke asks for one new token (time to first token). Rows:
reuse on (one session per document, engine.completion.complete), reuse off
(a fresh session per request) and transformers' generate() on the same
prompts. Reuse off and transformers cost the same on every keystroke, so they
run on `--samples` keystrokes spread over the replay.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import checkpoint  # noqa: E402
from benchmarks.random_checkpoint import CODEGEN_350M_MONO, SANTACODER  # noqa: E402
from engine.generate import SamplingParams  # noqa: E402
from engine.loading import load_model  # noqa: E402
from engine.session import Session  # noqa: E402
from engine.completion import DocumentState, complete  # noqa: E402
from engine.prompt import build_prompt  # noqa: E402

ONE_TOKEN = SamplingParams(max_new_tokens=1)


@dataclass
class Row:
    name: str
    prompt_tokens: list[int]
    prefilled: list[int]
    ttft_ms: list[float]

    def reused_share(self) -> float:
        return 1 - sum(self.prefilled) / sum(self.prompt_tokens)


def keystrokes(prefix: str, typed: str, suffix: str) -> list[tuple[str, str]]:
    """(prefix, suffix) after each typed character."""
    return [(prefix + typed[: i + 1], suffix) for i in range(len(typed))]


def replay_with_reuse(lm, states, fim: str, max_prompt_tokens: int) -> Row:
    session, state = Session(lm), DocumentState()
    complete(session, state, *states[0], ONE_TOKEN, fim=fim, max_prompt_tokens=max_prompt_tokens)  # the document opens
    row = Row("reuse on", [], [], [])
    for prefix, suffix in states[1:]:
        start = time.perf_counter()
        result = complete(session, state, prefix, suffix, ONE_TOKEN, fim=fim, max_prompt_tokens=max_prompt_tokens,
                          typeahead=False)
        row.ttft_ms.append((time.perf_counter() - start) * 1000)
        row.prompt_tokens.append(result.stats.prompt_tokens)
        row.prefilled.append(result.stats.prefilled_tokens)
    return row


def replay_without_reuse(lm, states, fim: str, max_prompt_tokens: int) -> Row:
    row = Row("reuse off", [], [], [])
    for prefix, suffix in states:
        start = time.perf_counter()
        result = complete(Session(lm), DocumentState(), prefix, suffix, ONE_TOKEN, fim=fim, max_prompt_tokens=max_prompt_tokens)
        row.ttft_ms.append((time.perf_counter() - start) * 1000)
        row.prompt_tokens.append(result.stats.prompt_tokens)
        row.prefilled.append(result.stats.prefilled_tokens)
    return row


@torch.inference_mode()
def replay_transformers(directory: Path, lm, states, fim: str, max_prompt_tokens: int) -> Row:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    row = Row("transformers generate()", [], [], [])
    for prefix, suffix in states:
        start = time.perf_counter()
        ids = build_prompt(lm.tokenizer, prefix, suffix, max_prompt_tokens=max_prompt_tokens, fim=fim).ids
        model.generate(torch.tensor([ids]), max_new_tokens=1, do_sample=False, pad_token_id=0)
        row.ttft_ms.append((time.perf_counter() - start) * 1000)
        row.prompt_tokens.append(len(ids))
        row.prefilled.append(len(ids))
    del model
    return row


def spread(states: list, n: int) -> list:
    step = max(1, len(states) // n)
    return states[step - 1 :: step][:n]


def report(title: str, rows: list[Row], baseline: Row) -> None:
    print(f"\n{title}")
    print(f"{'':26}{'keystrokes':>11}{'prompt tok':>11}{'prefilled/key':>14}{'reused':>8}{'TTFT ms':>10}{'vs on':>8}")
    ref = statistics.mean(baseline.ttft_ms)
    for row in rows:
        ttft = statistics.mean(row.ttft_ms)
        print(f"{row.name:26}{len(row.ttft_ms):11d}{statistics.mean(row.prompt_tokens):11.0f}"
              f"{statistics.mean(row.prefilled):14.1f}{row.reused_share():8.1%}{ttft:10.0f}{ttft / ref:7.1f}x")


def end_of_file_states(tokenizer, text: str, prompt_tokens: int, n: int) -> list[tuple[str, str]]:
    """Start where the file's first `prompt_tokens` tokens end (at a line start) and type the next n characters."""
    ids = tokenizer.encode(text)
    begin = text.rfind("\n", 0, len(tokenizer.decode(ids[:prompt_tokens]))) + 1
    return [(text[:begin], "")] + keystrokes(text[:begin], text[begin : begin + n], "")


def middle_of_function_states(text: str, n: int) -> list[tuple[str, str]]:
    """Delete a line of a function body about a third into the file and type it again."""
    lines = text.splitlines(keepends=True)
    i = len(lines) // 3
    while not (lines[i].startswith("        ") and len(lines[i].strip()) >= n):
        i += 1
    begin = sum(len(line) for line in lines[:i])
    line = lines[i].rstrip("\n")
    prefix, suffix = text[:begin], text[begin + len(line) :]
    return [(prefix, suffix)] + keystrokes(prefix, line[:n], suffix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keystrokes", type=int, default=40, help="typed at the end of the file (codegen)")
    parser.add_argument("--fim-keystrokes", type=int, default=20, help="typed in a function, per FIM layout")
    parser.add_argument("--samples", type=int, default=3, help="keystrokes measured without reuse / transformers")
    parser.add_argument("--max-prompt-tokens", type=int, default=1536)
    parser.add_argument("--skip-fim", action="store_true")
    args = parser.parse_args()
    source = Path(argparse.__file__).read_text(encoding="utf-8")
    print(f"float32, CPU, {torch.get_num_threads()} threads, random weights; "
          f"one new token per keystroke; TTFT = wall time of the request, prompt building included")

    directory = checkpoint("codegen-350M-mono", CODEGEN_350M_MONO)
    lm = load_model(str(directory), device="cpu", dtype="float32", compile="false")
    states = end_of_file_states(lm.tokenizer, source, args.max_prompt_tokens - 40, args.keystrokes)
    on = replay_with_reuse(lm, states, "auto", args.max_prompt_tokens)
    sampled = spread(states[1:], args.samples)
    off = replay_without_reuse(lm, sampled, "auto", args.max_prompt_tokens)
    del lm
    hf = replay_transformers(directory, load_model(str(directory), device="cpu", dtype="float32", compile="false"),
                             sampled, "auto", args.max_prompt_tokens)
    report(f"codegen-350M-mono shapes: typing at the end of argparse.py ({args.keystrokes} keystrokes)",
           [on, off, hf], on)

    if args.skip_fim:
        return
    directory = checkpoint("santacoder", SANTACODER)
    lm = load_model(str(directory), device="cpu", dtype="float32", compile="false")
    states = middle_of_function_states(source, args.fim_keystrokes)
    rows = []
    for layout in ("psm", "spm"):
        on = replay_with_reuse(lm, states, layout, args.max_prompt_tokens)
        on.name = f"{layout.upper()} reuse on"
        rows.append(on)
    sampled = spread(states[1:], args.samples)
    for layout in ("psm", "spm"):
        off = replay_without_reuse(lm, sampled, layout, args.max_prompt_tokens)
        off.name = f"{layout.upper()} reuse off"
        rows.append(off)
    hf = replay_transformers(directory, lm, sampled, "psm", args.max_prompt_tokens)
    hf.name = "PSM transformers"
    rows.append(hf)
    report(f"santacoder shapes (FIM): retyping a line in a function of argparse.py ({args.fim_keystrokes} keystrokes)",
           rows, rows[1])


if __name__ == "__main__":
    main()
