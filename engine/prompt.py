"""Turn the text around the cursor into prompt token ids within a budget.

Layouts (FIM = fill in the middle, detected from the tokenizer's vocabulary):

- "psm":    <fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>   (the default, unless
            the checkpoint's tokenizer_config.json says "fim_layout": "spm")
- "spm":    <fim_prefix><fim_suffix>{suffix}<fim_middle>{prefix}
            SantaCoder/StarCoder's SPM, "variant 2" of Bavarian et al. 2022,
            as bigcode's Megatron-LM FIM training writes it. The prefix comes
            last, so typing at the cursor only appends to the prompt.
- "prefix": {prefix} alone, left to right (CodeGen, or fim="off").

SantaCoder spells the same tokens with hyphens (<fim-prefix>, ...);
`tokenizer.fim` holds whichever ids the vocabulary has. Every layout starts
with `tokenizer.start_ids`, the bos that DeepSeek-Coder's and CodeLlama's
tokenizers put before every text (none for the others): the one token that
never changes, counted in the budget like the FIM tokens.

Whitespace just before the cursor (line breaks and indentation) is left out
of the prompt and becomes `heal`, text the continuation must start with
(generation constrains its first tokens to spell it). Byte-level BPE
tokenizers split a whitespace run so that its last space goes with the word
after it, and its line break with the spaces ("):\n        self" is "):",
"\n       ", " self"), so a prompt ending in indentation, the usual state
after Enter, would end in tokens the model has rarely seen before code, and
the word after them would have to start without its space. Ending the prompt
on the last non-blank character puts the cut where tokens naturally end.

Prefix and suffix are tokenized separately, so an edit in one never changes
the other's tokens, and the token-level common prefix with the cached
session stays long. When the prefix is too long it is cut from the left at a
line start chosen from fixed anchors (the first line start after every
`cut_step_chars` characters of the document), so the window only moves when
the text after an anchor outgrows the budget, in large steps, and the
prompt's beginning stays the same between them: reuse survives typing.
The suffix is cut on the right, at a line end.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import EngineError
from engine.options import FIM_MODES
from engine.tokenizer import Tokenizer

DEFAULT_SUFFIX_SHARE = 0.25  # of max_prompt_tokens, for the text after the cursor (FIM only)
# Text longer than budget * this never fits, so it is not even tokenized: a
# keystroke in a huge file costs no more than one in a small one.
MAX_CHARS_PER_TOKEN = 32


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    layout: str  # "psm", "spm" or "prefix"
    prefix_start: int  # the prompt holds prefix[prefix_start:] ...
    suffix_end: int  # ... and suffix[:suffix_end] (0 when the layout has no suffix)
    prefix_tokens: int
    suffix_tokens: int
    heal: str = ""  # the end of the prefix left out of ids: the continuation must start with it


def build_prompt(
    tokenizer: Tokenizer,
    prefix: str,
    suffix: str,
    *,
    max_prompt_tokens: int,
    fim: str = "auto",
    suffix_share: float = DEFAULT_SUFFIX_SHARE,
    cut_step_chars: int | None = None,
    previous_prefix_start: int | None = None,
) -> Prompt:
    """Prompt ids for text before (prefix) and after (suffix) the cursor.

    fim: auto (FIM when the vocabulary has FIM tokens, in the checkpoint's layout, PSM by default), psm,
    spm, or off (left to right). A model without FIM tokens always gets the
    prefix alone. cut_step_chars: distance between the anchors the prefix is
    cut at (default max_prompt_tokens // 2 characters). previous_prefix_start:
    the last prompt's `prefix_start` for this document, which keeps the window
    from flipping back and forth (see cut_left).
    """
    if fim not in FIM_MODES:
        raise EngineError(f"unknown fim setting {fim!r} (use auto, off, psm or spm)")
    if not 0.0 <= suffix_share < 1.0:
        raise EngineError(f"suffix_share must be in [0, 1), got {suffix_share}")
    layout = choose_layout(tokenizer, fim)
    start = tokenizer.start_ids
    specials = len(start) + (3 if layout != "prefix" else 0)
    if max_prompt_tokens < specials + 1:
        raise EngineError(f"max_prompt_tokens {max_prompt_tokens} is too small for a prompt")
    step = cut_step_chars or max(64, max_prompt_tokens // 2)

    suffix_ids, suffix_end = [], 0
    if layout != "prefix":
        suffix_ids, suffix_end = cut_right(
            tokenizer, suffix, int(max_prompt_tokens * suffix_share), tokenizer.fim.suffix_without_leading_space
        )
    heal = prefix[len(prefix.rstrip()) :]
    # The prefix gets the rest, including what a short suffix leaves unused.
    prefix_ids, prefix_start = cut_left(
        tokenizer, prefix[: len(prefix) - len(heal)], max_prompt_tokens - specials - len(suffix_ids), step,
        previous_prefix_start,
    )

    if layout == "prefix":
        ids = [*start, *prefix_ids]
        if not ids:  # nothing before the cursor: start from the document-start token
            document_start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
            ids = [document_start] if document_start is not None else []
        if not ids:
            raise EngineError("empty prompt and the tokenizer has no bos or eos token")
    elif layout == "psm":
        f = tokenizer.fim
        ids = [*start, f.prefix, *prefix_ids, f.suffix, *suffix_ids, f.middle]
    else:  # spm
        f = tokenizer.fim
        ids = [*start, f.prefix, f.suffix, *suffix_ids, f.middle, *prefix_ids]
    return Prompt(ids, layout, prefix_start, suffix_end, len(prefix_ids), len(suffix_ids), heal)


def choose_layout(tokenizer: Tokenizer, fim: str) -> str:
    if fim == "off" or tokenizer.fim is None:
        return "prefix"
    return tokenizer.fim.layout if fim == "auto" else fim


def cut_left(
    tokenizer: Tokenizer, text: str, budget: int, step: int, previous_start: int | None = None
) -> tuple[list[int], int]:
    """(ids of text[start:], start) with at most `budget` ids; start is 0 or an anchored line start.

    Anchors are the first line start at or after each multiple of `step`
    characters. The chosen one is the earliest whose tail fits, so appending
    text moves it only when the tail outgrows the budget, and then by at least
    `step` characters. Token counts are not monotone in the text (typing a
    character can merge two tokens into one), so near the limit the earliest
    fitting anchor could flip back and forth between keystrokes: given the
    previous cut, the window moves back only when the earlier tail fits with
    room to spare.
    """
    if budget <= 0:
        return [], len(text)
    if len(text) <= budget * MAX_CHARS_PER_TOKEN:
        ids = tokenizer.encode(text)
        if len(ids) <= budget:
            return ids, 0
    first = max(step, (len(text) - budget * MAX_CHARS_PER_TOKEN) // step * step)
    anchors = []
    for multiple in range(first, len(text), step):
        newline = text.find("\n", multiple - 1)
        if newline < 0:
            break
        start = newline + 1
        if start < len(text) and (not anchors or start > anchors[-1]):
            anchors.append(start)
    # Earliest anchor whose tail fits (tails shrink as the anchor moves right).
    lo, hi, best = 0, len(anchors) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        tail = tokenizer.encode(text[anchors[mid] :])
        if len(tail) <= budget:
            best, hi = (tail, anchors[mid]), mid - 1
        else:
            lo = mid + 1
    if best is not None:
        if previous_start in anchors and previous_start > best[1] and len(best[0]) > budget - budget // 8:
            tail = tokenizer.encode(text[previous_start:])
            if len(tail) <= budget:
                return tail, previous_start
        return best
    # No line start fits (e.g. one enormous last line): cut tokens, in steps of a quarter budget.
    start = anchors[-1] if anchors else 0
    tail = tokenizer.encode(text[start:])
    quantum = max(1, budget // 4)
    drop = -(-(len(tail) - budget) // quantum) * quantum
    return tail[drop:], start


def cut_right(tokenizer: Tokenizer, text: str, budget: int, continuation: bool = False) -> tuple[list[int], int]:
    """(ids of text[:end], end) with at most `budget` ids, end at a line end where possible.

    continuation: text encoded without a sentencepiece tokenizer's leading space (Tokenizer.encode)."""
    if budget <= 0 or not text:
        return [], 0
    text = text[: budget * MAX_CHARS_PER_TOKEN]
    ids = tokenizer.encode(text, continuation=continuation)
    if len(ids) <= budget:
        return ids, len(text)
    # Line ends (just after each "\n"), latest that fits, by bisection.
    ends = [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    lo, hi, best = 0, len(ends) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        head = tokenizer.encode(text[: ends[mid]], continuation=continuation)
        if len(head) <= budget:
            best, lo = (head, ends[mid]), mid + 1
        else:
            hi = mid - 1
    if best is not None:
        return best
    head = ids[:budget]  # the first line alone is too long
    return head, len(tokenizer.decode(head, continuation=continuation))
