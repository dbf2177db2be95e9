"""Greedy tokens with their logits: what quantization and kernels are measured by (tests and
benchmarks/quant_quality.py)."""

from __future__ import annotations

import torch

from engine.loaded_model import LoadedModel
from engine.session import Session


@torch.inference_mode()
def greedy_with_logits(lm: LoadedModel, prompt: list[int], n: int, follow: list[int] | None = None):
    """(n greedy tokens, their logits (n, vocab)).

    With `follow`, those tokens are fed instead of the model's own (teacher
    forcing), so one early disagreement does not change every later step.
    """
    session = Session(lm)
    logits, _ = session.prefill(prompt)
    tokens, rows = [], []
    for i in range(n):
        rows.append(logits)
        tokens.append(int(torch.argmax(logits)))
        logits = session.step(follow[i] if follow else tokens[-1])
    return tokens, torch.stack(rows).float()
