"""Where a suggestion should end, from what the model wrote and how sure it was.

Two rules against rambling, applied while decoding (generate() asks a Stopper
after each token) so that a loop costs no more decode steps than it shows:

- Within-line repetition: a chunk of at least MIN_CHUNK tokens written twice
  in a row ends the suggestion before the second copy
  (`"a list of a list of"` -> `"a list of"`). The chunk must be primitive
  (not itself a shorter repeat, so `0, 0, 0, 0` is left alone) and hold no
  line break (whole repeated lines are postprocessing's business).
- Confidence: a token the model gave a log-probability below `min_logprob`
  ends the suggestion before it. On a line after the first, a token below
  `min_line_logprob` drops that whole line and what follows: a block goes on
  only while the model is sure of each next line. The defaults were chosen by
  measurement on held-out code (benchmarks/stop_thresholds.py), not guessed.

Pure functions and one small class over token ids, text offsets and logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

MIN_CHUNK = 3
MAX_CHUNK = 64  # longer repeats span lines (postprocessing's); the bound keeps each step's check short
# Chosen by benchmarks/stop_thresholds.py on held-out code (300 lines and 150 blocks of pytest's
# own package, not the demo model's training data): the lowest probability from which on the
# tokens shown are right more often than wrong (first line: p >= 0.4, 72 of 134 right; 0.3
# would show 83 right of 169), and the lines shown right at least half the time (later lines:
# least token probability >= 0.5, 2 of 4 right; 0.3: 3 of 13).
MIN_LOGPROB = math.log(0.4)
MIN_LINE_LOGPROB = math.log(0.5)


def smallest_period(chunk: Sequence[int]) -> int:
    """The length of the shortest p with chunk == chunk[:p] repeated (p = len(chunk) if none)."""
    n = len(chunk)
    for p in range(1, n):
        if n % p == 0 and all(chunk[i] == chunk[i - p] for i in range(p, n)):
            return p
    return n


def repeat_at_end(ids: Sequence[int], min_chunk: int = MIN_CHUNK, allowed: Callable[[Sequence[int]], bool] | None = None) -> int | None:
    """If ids ends with a primitive chunk of >= min_chunk tokens written twice in a row, the index
    where its second copy starts; else None. Checked after each token, this finds the first repeat."""
    n = len(ids)
    for k in range(min_chunk, min(n // 2, MAX_CHUNK) + 1):
        second = ids[n - k :]
        if list(ids[n - 2 * k : n - k]) == list(second) and smallest_period(second) == k:
            if allowed is None or allowed(second):
                return n - k
    return None


def first_repeat(ids: Sequence[int], min_chunk: int = MIN_CHUNK, allowed: Callable[[Sequence[int]], bool] | None = None) -> int | None:
    """The index where the first consecutive repeat of a chunk starts (the second copy), or None."""
    for end in range(2 * min_chunk, len(ids) + 1):
        found = repeat_at_end(ids[:end], min_chunk, allowed)
        if found is not None:
            return found
    return None


def repeat_cut_of_text(text: str, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str]) -> int | None:
    """Where text should end by the repetition rule (before the second copy of the first chunk
    written twice on one line), for text that came without its tokens (a remote server's)."""
    ids = encode(text)
    second = first_repeat(ids, MIN_CHUNK, lambda chunk: "\n" not in decode(list(chunk)))
    return None if second is None else len(decode(ids[:second]))


def logprob_and_entropy(logits: torch.Tensor, token: int) -> tuple[float, float]:
    """log p(token) and the entropy (nats) of the distribution the logits give."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(logp.exp() * logp).nan_to_num().sum()
    return float(logp[token]), float(entropy)


@dataclass
class TokenRecord:
    token: int
    logprob: float
    entropy: float
    start: int  # offset in the suggestion's text where the token's text begins (< 0: healed whitespace)
    end: int


@dataclass
class Stopper:
    """Asked by generate() after each token; remembers what it saw (for measurement too).

    decode: the tokenizer's decode (ids -> text); allowed: how many logits are real tokens.
    min_logprob / min_line_logprob: None turns that rule off; repeats=False turns off the other.
    """

    decode: Callable[[list[int]], str]
    allowed: int
    min_logprob: float | None = MIN_LOGPROB
    min_line_logprob: float | None = MIN_LINE_LOGPROB
    repeats: bool = True
    records: list[TokenRecord] = field(default_factory=list)
    reason: str = ""  # why it stopped: "repeat", "unsure" or "unsure line"

    def step(self, generated: list[int], logits: torch.Tensor, text: str, heal: int = 0) -> int | None:
        """generated: every token so far (the last one just sampled from logits); text: their
        decoded text, whose first `heal` characters are the healed whitespace the suggestion leaves
        out. The offset in text where the suggestion should end, or None to go on."""
        token = generated[-1]
        logprob, entropy = logprob_and_entropy(logits[: self.allowed], token)
        start = self.records[-1].end + heal if self.records else 0
        self.records.append(TokenRecord(token, logprob, entropy, start - heal, len(text) - heal))
        if self.repeats:
            second = repeat_at_end(generated, MIN_CHUNK, lambda chunk: "\n" not in self.decode(list(chunk)))
            if second is not None:
                self.reason = "repeat"
                return max(heal, len(self.decode(generated[:second])))
        if start < heal:
            return None  # still spelling the healed whitespace: the distribution was constrained
        cut = unsure_cut(text[heal:], start - heal, logprob, self.min_logprob, self.min_line_logprob)
        if cut is not None:
            self.reason = "unsure line" if "\n" in text[heal : heal + start + 1] else "unsure"
            return heal + cut
        return None


def unsure_cut(text: str, start: int, logprob: float, min_logprob: float | None, min_line_logprob: float | None) -> int | None:
    """Where to end text when its token beginning at `start` had `logprob`, or None to keep it.
    On the first line: before the token; on a later line: before that line's line break."""
    line_start = text.rfind("\n", 0, start + 1)
    if line_start >= 0:
        if min_line_logprob is not None and logprob < min_line_logprob:
            return line_start
    elif min_logprob is not None and logprob < min_logprob:
        return start
    return None


def cut_unsure(records: Sequence[TokenRecord], text: str, min_logprob: float | None, min_line_logprob: float | None) -> str:
    """What the confidence rule leaves of text (as generated without it) under other thresholds:
    benchmarks/stop_thresholds.py replays recorded generations with it."""
    for r in records:
        if r.start < 0:
            continue  # healed whitespace
        cut = unsure_cut(text, r.start, r.logprob, min_logprob, min_line_logprob)
        if cut is not None:
            return text[:cut]
    return text
