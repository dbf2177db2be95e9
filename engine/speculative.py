"""Speculative decoding from the prompt itself ("prompt lookup"): n-gram drafts, one verify forward.

Code completion often writes text the context already holds: a call repeated with
other arguments, a block like the one above, names defined earlier. The drafter
finds the latest earlier occurrence of the last few tokens (in the prompt, which
holds the document's window and, with FIM, the text after the cursor, and in what
was generated so far) and proposes the tokens that followed it. One forward over
the KV cache then scores the last token and the k drafts together: the weights
are read once for up to k + 1 tokens.

Acceptance is the greedy rule (a draft is kept while it is the argmax), so output
is token for token that of plain greedy decoding; with sampling, the standard
speculative rule for a point-mass draft (keep d with probability p(d), else sample
from p without d), which keeps the distribution. Rejected positions are dropped
from the session (`Session.truncate`), so its invariant holds after every verify.

Exactness. A verify computes each row as a decode step does (Session.verify):
attention of each row over its own keys (row by row, or all rows in one call of our
CPU kernel, engine/kv_cache.py), and quantized linears whose kernels give every row of a
multi-token call exactly its one-token result (ours, PyTorch's packed int8 and
int4 ones). A dense float matmul does not (differences ~1e-6 relative), so a row
whose two best logits are closer than TIE_MARGIN is not trusted: it is computed
again by a plain decode step, and drafting stops there.

Draft length adapts: it grows by 2 after a fully accepted draft and shrinks to
what was accepted plus one otherwise; after a draft with nothing accepted,
drafting pauses for a number of tokens that doubles with each such miss, so text
that repeats nothing costs (almost) no verifies.
"""

from __future__ import annotations

import torch

from engine.errors import EngineError
from engine.options import SPECULATIVE
from engine.session import Session

NGRAM_SIZES = (4, 3, 2)  # longest match first
FIRST_DRAFT, MAX_DRAFT = 4, 16  # draft lengths (a verify's rows stay within DECODE_KERNEL_MAX_TOKENS)
MAX_PAUSE = 16  # most tokens decoded plainly after a draft that was wholly rejected
TIE_MARGIN = 1e-2  # logits closer than this (top two) are decided by a decode step, not a verify row
# The share of drafted tokens accepted on the demo model's keystroke replay (benchmarks/README.md, 496 of 745),
# which `auto` assumes when it weighs a verify's cost.
ACCEPTANCE = 2 / 3


def expected_tokens(drafts: int, acceptance: float = ACCEPTANCE) -> float:
    """The tokens one verify of `drafts` drafts decides on average, each draft accepted with
    probability `acceptance` once the one before it was: the accepted drafts and the token after."""
    return sum(acceptance**i for i in range(drafts + 1))


def wanted(mode: str, session: Session) -> bool:
    """Whether to draft: ngram always; auto when decode is eager (the verify is never compiled: beside
    a compiled step, a CUDA graph's or a CPU one's, it is not measured to pay) and a verify of a first
    draft was measured at load to cost less than the tokens it decides (LoadedModel.drafts_pay: on
    a 1B model in int8 or int4 on a CPU each verify row costs half a step or more)."""
    if mode not in SPECULATIVE:
        raise EngineError(f"unknown speculative mode {mode!r} (use {', '.join(SPECULATIVE)})")
    if mode == "auto":
        return session.lm.decode_step is None and session.lm.drafts_pay
    return mode == "ngram"


class NgramIndex:
    """Where each n-gram of a token list last occurred, for the token after it; updated per token."""

    def __init__(self, tokens: list[int]):
        self.tokens: list[int] = []
        self.next_after: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token after its latest occurrence
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        t, i = self.tokens, len(self.tokens)
        for n in NGRAM_SIZES:
            if i >= n:
                self.next_after[tuple(t[i - n : i])] = i
        t.append(token)

    def draft(self, k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the longest suffix n-gram."""
        t = self.tokens
        for n in NGRAM_SIZES:
            if len(t) > n:
                at = self.next_after.get(tuple(t[-n:]))
                if at is not None:
                    return t[at : at + k]
        return []


class Speculator:
    """Drafts and verifies for one generation; `advance` replaces Session.step when it drafts."""

    def __init__(self, session: Session, prompt: list[int], temperature: float, allowed: int, rng: torch.Generator | None):
        self.session = session
        self.index = NgramIndex(prompt)
        self.temperature, self.allowed, self.rng = temperature, allowed, rng
        self.k = FIRST_DRAFT
        self.pause = 0  # tokens to decode plainly before the next draft
        self.misses = 0  # consecutive wholly rejected drafts
        self.draft_tokens = 0
        self.accepted_draft_tokens = 0

    def observe(self, token: int) -> None:
        """A token of the output (sampled, or decided by a verify)."""
        self.index.append(token)

    def draft(self, budget: int) -> list[int]:
        """Drafts to verify after the last observed token (at most budget), or [] to decode plainly."""
        if self.pause > 0:
            self.pause -= 1
            return []
        return self.index.draft(min(self.k, budget))

    def verify(self, token: int, drafts: list[int], probs) -> list[tuple[int, torch.Tensor]]:
        """Run token + drafts in one forward; return the tokens decided, each with the logits it was
        chosen from: the accepted drafts and the one after them (sampled by `probs(logits)` when
        sampling). The session keeps token and the accepted drafts; the last decided token is not
        encoded yet (as after a plain sample)."""
        session = self.session
        base = len(session.ids)
        all_rows = session.verify([token, *drafts])
        rows = all_rows[:, : self.allowed].float()
        if self.temperature <= 0:  # every row's two best at once: per row, a few small ops cost ~30 us
            top = torch.topk(rows, 2, dim=-1)
            best, margins = top.indices[:, 0].tolist(), (top.values[:, 0] - top.values[:, 1]).tolist()
        decided: list[int] = []
        chosen_from: list[torch.Tensor] = []
        for i in range(len(rows)):
            draft = drafts[i] if i < len(drafts) else None
            if self.temperature <= 0:
                if margins[i] < TIE_MARGIN:
                    # Too close to trust a verify row: decide it as plain decoding would.
                    session.truncate(base + i)
                    stepped = session.step(([token, *drafts])[i])
                    decided.append(int(torch.argmax(stepped[: self.allowed].float())))
                    chosen_from.append(stepped)
                    break
                choice = best[i]
            else:
                p = probs(rows[i])
                if draft is not None and float(torch.rand((), generator=self.rng)) < float(p[draft]):
                    choice = draft
                else:
                    if draft is not None:
                        p = p.clone()
                        p[draft] = 0.0
                    choice = int(torch.multinomial(p / p.sum(), 1, generator=self.rng))
            decided.append(choice)
            chosen_from.append(all_rows[i])
            if choice != draft:
                break
        accepted = len(decided) - 1  # every decided token but the last is a kept draft
        session.truncate(base + 1 + accepted)
        self._adapt(len(drafts), accepted)
        return list(zip(decided, chosen_from))

    def _adapt(self, drafted: int, accepted: int) -> None:
        self.draft_tokens += drafted
        self.accepted_draft_tokens += accepted
        if accepted == drafted:
            self.k = min(self.k + 2, MAX_DRAFT)
            self.misses = 0
        else:
            self.k = max(1, accepted + 1)
            if accepted == 0:
                self.misses += 1
                self.pause = min(2 ** (self.misses - 1), MAX_PAUSE)
            else:
                self.misses = 0
