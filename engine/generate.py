"""Sampling, stop criteria and per-request statistics around a Session."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from engine.session import Cancelled, Session
from engine.speculative import Speculator, wanted


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # generation ends before the first of these strings
    stopper: Any = None  # engine.stops.Stopper: asked after each token where to end (repeats, confidence)
    speculative: str = "off"  # auto | off | ngram: draft from the prompt, verify k tokens per forward


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0
    prefilled_tokens: int = 0
    generated_tokens: int = 0
    time_to_first_token_ms: float = 0.0
    total_ms: float = 0.0
    typeahead: bool = False  # answered from the previous suggestion, without running the model
    draft_tokens: int = 0  # tokens drafted by speculative decoding (engine/speculative.py)
    accepted_draft_tokens: int = 0  # of which the model agreed with

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str  # "eos", "stop", "length" or "cancelled"
    stats: GenerationStats = field(default_factory=GenerationStats)


def sample(logits: torch.Tensor, params: SamplingParams, allowed: int, rng: torch.Generator | None) -> int:
    """One token id below `allowed` (ids past the tokenizer's vocabulary are never emitted)."""
    logits = logits[:allowed].float()
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest set of tokens whose mass reaches top_p (at least one).
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= params.top_p
        sorted_probs[outside] = 0.0
        choice = torch.multinomial(sorted_probs, 1, generator=rng)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=rng))


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution `sample` draws from when sampling (temperature, then top-p), over logits' ids."""
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        sorted_probs[torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= params.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return probs / probs.sum()


def generate(
    session: Session,
    prompt: list[int],
    params: SamplingParams,
    cancel: threading.Event | None = None,
    heal: str = "",
) -> Generation:
    """Decode after `prompt`. With `heal`, the generated tokens must start by
    spelling that text (see engine/prompt.py), which the returned text leaves out."""
    start = time.perf_counter()
    session.lm.use_threads()
    tokenizer = session.lm.tokenizer
    stats = GenerationStats(prompt_tokens=len(prompt))
    rng = None
    if params.temperature > 0:
        rng = torch.Generator(device="cpu")
        rng.manual_seed(params.seed if params.seed is not None else torch.seed())
    stop_ids = set(tokenizer.special_ids)
    if tokenizer.eos_id is not None:
        stop_ids.add(tokenizer.eos_id)
    allowed = min(tokenizer.vocab_size, session.lm.config.vocab_size)
    room = session.window - len(prompt)

    generated: list[int] = []
    text, finish = "", "length"
    limit = min(params.max_new_tokens, room)
    speculator = Speculator(session, prompt, params.temperature, allowed, rng) if wanted(params.speculative, session) else None
    decided: list[tuple[int, torch.Tensor]] = []  # (token, its logits) a verify already chose
    try:
        logits, stats.reused_tokens = session.prefill(prompt, cancel, room_after=limit)
        stats.prefilled_tokens = len(prompt) - stats.reused_tokens
        for step in range(limit):
            if decided:
                token, logits = decided.pop(0)  # logits: what the stop rules read
            else:
                logits = logits.to("cpu", non_blocking=False)
                if len(text) < len(heal):
                    logits = _healing(logits, tokenizer.spelling(heal[len(text) :], allowed))
                token = sample(logits, params, allowed, rng)
            if step == 0:
                stats.time_to_first_token_ms = (time.perf_counter() - start) * 1000
            if token in stop_ids:
                finish = "eos"
                break
            generated.append(token)
            text = tokenizer.decode(generated, continuation=True)
            if params.stopper is not None and (cut := params.stopper.step(generated, logits, text, len(heal))) is not None:
                text, finish = text[:cut], "stop"
                break
            cut = _first_stop(text[len(heal) :], params.stop)
            if cut is not None:
                text, finish = text[: len(heal) + cut], "stop"
                break
            if step + 1 == limit:
                break  # the last token needs no forward: nothing will read its logits
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            if speculator is None:
                logits = session.step(token)
                continue
            speculator.observe(token)
            drafts = [] if decided or len(text) < len(heal) else speculator.draft(limit - step - 2)
            if drafts:
                decided = speculator.verify(token, drafts, lambda row: probabilities(row, params))
            elif not decided:
                logits = session.step(token)
    except Cancelled:
        finish = "cancelled"
        text = tokenizer.decode(generated, continuation=True)
    if speculator is not None:
        # Keep what plain decoding keeps: every token before the last one the loop took.
        taken = len(generated) + (finish == "eos")
        session.truncate(len(prompt) + max(taken - 1, 0))
        stats.draft_tokens, stats.accepted_draft_tokens = speculator.draft_tokens, speculator.accepted_draft_tokens
    stats.generated_tokens = len(generated)
    stats.total_ms = (time.perf_counter() - start) * 1000
    return Generation(text=text[len(heal) :], token_ids=generated, finish_reason=finish, stats=stats)


def _healing(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """logits with every token but the ids `keep` masked out."""
    if keep.numel() == 0:  # no token spells it (not a byte-level vocabulary): decode unconstrained
        return logits
    masked = torch.full_like(logits, float("-inf"))
    masked[keep] = logits[keep]
    return masked


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    positions = [text.find(s) for s in stops if s]
    positions = [p for p in positions if p >= 0]
    return min(positions) if positions else None
