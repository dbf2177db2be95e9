"""Held-out figures of the demo model, computed through the engine (the server's own code paths).

    .venv/bin/python models/demo/evaluate.py [checkpoint_dir (engine/demo_model)] [--lines 1000]

- loss (nats/token) and next-token accuracy over every held-out chunk, read left to right;
- line completion: exact match of the rest of a line given everything before
  the cursor (a random point inside the line), greedy, stopping at the newline;
- middle line: a whole held-out line (after its indentation) is masked and must
  be written again, given the text before and after it: FIM (PSM and SPM
  prompts) against left to right (the text before it only); exact match of the
  greedy line, and the loss of the true line's tokens after each prompt.
- parses: how often the file, with the written text in place of the masked
  text, is still valid Python (ast.parse), next to how often it is with the
  masked text left out (what writing nothing would score).
Generation goes through engine.completion.complete, as the language server does.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from engine.completion import DocumentState, complete  # noqa: E402
from engine.generate import SamplingParams  # noqa: E402
from engine.loading import load_model  # noqa: E402
from engine.paths import DEMO_MODEL_DIR  # noqa: E402
from engine.prompt import build_prompt  # noqa: E402
from engine.session import Session  # noqa: E402
from lsp_server.postprocess import parses  # noqa: E402
from train import CHUNK_MARGIN, chunks_of, read_text, stdlib_files  # noqa: E402

MAX_NEW_TOKENS = 32


@torch.inference_mode()
def loss_and_accuracy(lm, texts: list[str]) -> tuple[float, float, int]:
    """Mean next-token loss (nats) and argmax accuracy over the held-out chunks, each read on its own."""
    tok, window = lm.tokenizer, lm.config.n_positions
    total_loss, correct, count = 0.0, 0, 0
    def count_tokens(lines: list[str]) -> list[int]:
        return [len(tok.encode(line)) for line in lines]

    for chunk in (c for t in texts for c in chunks_of(t, count_tokens, window - CHUNK_MARGIN)):
        ids = torch.tensor([(tok.encode(chunk) + [tok.eos_id])[:window]])
        logits = lm.model(ids[:, :-1], torch.arange(ids.shape[1] - 1), cache=None)[0, :, : tok.vocab_size]
        targets = ids[0, 1:]
        total_loss += F.cross_entropy(logits, targets, reduction="sum").item()
        correct += (logits.argmax(-1) == targets).sum().item()
        count += targets.numel()
    return total_loss / count, correct / count, count


@torch.inference_mode()
def middle_loss(lm, prefix: str, middle: str, suffix: str, fim: str, budget: int) -> tuple[float, int]:
    """Summed loss (nats) and count of the middle line's tokens, read after the prompt the server would build."""
    tok = lm.tokenizer
    prompt = build_prompt(tok, prefix, suffix, max_prompt_tokens=budget, fim=fim)
    # The prompt leaves the whitespace before the cursor to the model (prompt.heal): score it too.
    target = tok.encode(prompt.heal + middle)[:MAX_NEW_TOKENS]
    ids = torch.tensor([prompt.ids + target])
    logits = lm.model(ids[:, :-1], torch.arange(ids.shape[1] - 1), cache=None)[0, len(prompt.ids) - 1 :, : tok.vocab_size]
    return F.cross_entropy(logits, torch.tensor(target), reduction="sum").item(), len(target)


def sample_lines(texts: list[str], n: int, seed: int) -> list[tuple[str, int, int]]:
    """n (text, line start, line end) of held-out lines with at least 4 characters after the indentation."""
    candidates = []
    for text in texts:
        start = 0
        for line in text.splitlines(keepends=True):
            if len(line.strip()) >= 4:
                candidates.append((text, start, start + len(line.rstrip("\r\n"))))
            start += len(line)
    return random.Random(seed).sample(candidates, n)


def evaluate_checkpoint(
    directory: Path, n_lines: int = 1000, threads: int = 2, seed: int = 1234, prompt_tokens: int | None = None
) -> dict:
    torch.set_num_threads(threads)
    t0 = time.time()
    lm = load_model(str(directory), compile="false")
    lm.model.eval()
    _, held_out = stdlib_files()
    texts = [t for t in map(read_text, held_out) if t]
    loss, accuracy, n_tokens = loss_and_accuracy(lm, texts)

    session = Session(lm)
    params = SamplingParams(max_new_tokens=MAX_NEW_TOKENS, stop=("\n",))
    budget = prompt_tokens or lm.config.n_positions - MAX_NEW_TOKENS

    def write(prefix: str, suffix: str, fim: str) -> str:
        return complete(session, DocumentState(), prefix, suffix, params, max_prompt_tokens=budget, fim=fim, typeahead=False).text

    rng = random.Random(seed + 1)
    line_hits = line_parses = empty_line_parses = 0
    lines = sample_lines(texts, n_lines, seed)
    for text, start, end in lines:
        indent = start + len(text[start:end]) - len(text[start:end].lstrip())
        cursor = rng.randint(indent, end - 1)  # at least one character left to write
        written = write(text[:cursor], "", "off")
        line_hits += written.rstrip() == text[cursor:end].rstrip()
        line_parses += parses(text[:cursor] + written + text[end:])
        empty_line_parses += parses(text[:cursor] + text[end:])

    middle_hits = {"off": 0, "psm": 0, "spm": 0}
    middle_parses = dict.fromkeys(middle_hits, 0)
    middle_nats = {fim: [0.0, 0] for fim in middle_hits}
    empty_middle_parses = spm_only = left_to_right_only = 0
    for text, start, end in sample_lines(texts, n_lines, seed + 2):
        indent = start + len(text[start:end]) - len(text[start:end].lstrip())
        prefix, middle, suffix = text[:indent], text[indent:end], text[end:]
        empty_middle_parses += parses(prefix + suffix)
        hit = {}
        for fim in middle_hits:
            written = write(prefix, suffix, fim)
            hit[fim] = written.rstrip() == middle.rstrip()
            middle_hits[fim] += hit[fim]
            middle_parses[fim] += parses(prefix + written + suffix)
            nats, count = middle_loss(lm, prefix, middle, suffix, fim, budget)
            middle_nats[fim][0] += nats
            middle_nats[fim][1] += count
        # Paired: the lines one prompt gets right and the other does not (a sign test's counts).
        spm_only += hit["spm"] and not hit["off"]
        left_to_right_only += hit["off"] and not hit["spm"]

    return {
        "held_out_files": len(texts),
        "held_out_tokens": n_tokens,
        "loss_nats_per_token": round(loss, 4),
        "perplexity": round(math.exp(loss), 2),
        "next_token_accuracy": round(accuracy, 4),
        "lines": n_lines,
        "max_prompt_tokens": budget,
        "rest_of_line_exact_match": round(line_hits / n_lines, 4),
        "rest_of_line_parses": round(line_parses / n_lines, 4),
        "rest_of_line_parses_if_left_empty": round(empty_line_parses / n_lines, 4),
        "middle_line_exact_match_left_to_right": round(middle_hits["off"] / n_lines, 4),
        "middle_line_exact_match_fim_psm": round(middle_hits["psm"] / n_lines, 4),
        "middle_line_exact_match_fim_spm": round(middle_hits["spm"] / n_lines, 4),
        "middle_lines_only_fim_spm_gets_right": spm_only,
        "middle_lines_only_left_to_right_gets_right": left_to_right_only,
        "middle_line_parses_left_to_right": round(middle_parses["off"] / n_lines, 4),
        "middle_line_parses_fim_psm": round(middle_parses["psm"] / n_lines, 4),
        "middle_line_parses_fim_spm": round(middle_parses["spm"] / n_lines, 4),
        "middle_line_parses_if_left_empty": round(empty_middle_parses / n_lines, 4),
        # The same masked lines, teacher-forced: loss of the line's tokens after each prompt.
        "middle_line_loss_left_to_right": round(middle_nats["off"][0] / middle_nats["off"][1], 4),
        "middle_line_loss_fim_psm": round(middle_nats["psm"][0] / middle_nats["psm"][1], 4),
        "middle_line_loss_fim_spm": round(middle_nats["spm"][0] / middle_nats["spm"][1], 4),
        "evaluation_seconds": round(time.time() - t0, 1),
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Held-out figures of a demo checkpoint")
    p.add_argument("directory", nargs="?", default=str(DEMO_MODEL_DIR))
    p.add_argument("--lines", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--prompt-tokens", type=int, help="max_prompt_tokens (default: the window less 32)")
    p.add_argument("--write", action="store_true", help="also write figures.json into the checkpoint directory")
    a = p.parse_args()
    figures = evaluate_checkpoint(Path(a.directory), a.lines, a.threads, a.seed, a.prompt_tokens)
    print(json.dumps(figures, indent=2))
    if a.write:
        (Path(a.directory) / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
