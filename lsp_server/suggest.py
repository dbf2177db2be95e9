"""One suggestion from plain values: document text, cursor offset, settings.

The middle layer between the protocol handlers and the engine: it picks one
line or a block and the stop rules, runs the engine's completion (the window
around the cursor, prompt building, FIM, KV reuse) and postprocesses.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass, field

from engine.generate import SamplingParams
from engine.completion import complete
from engine.generate import GenerationStats
from engine.stops import MIN_LINE_LOGPROB, MIN_LOGPROB, Stopper
from lsp_server.languages import check_language
from lsp_server.pool import ServedModel
from lsp_server.postprocess import postprocess, stop_sequences, wants_multiline
from lsp_server.settings import Settings

LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class Suggestion:
    text: str  # what to show ('' for nothing)
    raw: str  # the engine's text before postprocessing
    finish_reason: str
    stats: GenerationStats = field(default_factory=GenerationStats)
    stopper: Stopper | None = None  # what the stop rules saw (token log-probabilities), and why they stopped


def clean(text: str) -> str:
    """Lone surrogates (possible in JSON strings) cannot be tokenized: replace them."""
    return LONE_SURROGATE.sub("\ufffd", text)


def suggest(
    served: ServedModel,
    document: str,
    text: str,
    offset: int,
    language: str,
    settings: Settings,
    cancel: threading.Event | None = None,
    thresholds: tuple[float | None, float | None] = (MIN_LOGPROB, MIN_LINE_LOGPROB),
) -> Suggestion:
    # The whole text goes to the engine, which cuts the one window (engine/prompt.py) and
    # keeps its cut points in the document's state, as offsets into this very text.
    check_language(served, settings, language)  # raises LanguageOff, which the server says once
    prefix, suffix = clean(text[:offset]), clean(text[offset:])
    multiline = wants_multiline(prefix, suffix, language, settings.multiline)
    lm = served.lm
    on = settings.ramble_stop == "on"
    stopper = Stopper(
        functools.partial(lm.tokenizer.decode, continuation=True), min(lm.tokenizer.vocab_size, lm.config.vocab_size),
        *(thresholds if on else (None, None)), repeats=on,
    )  # fmt: skip
    params = SamplingParams(
        max_new_tokens=settings.max_new_tokens, stop=stop_sequences(language, multiline), stopper=stopper,
        speculative=settings.speculative,
    )
    state = served.document_state(document)
    generation = complete(
        served.sessions.get(document), state, prefix, suffix, params,
        max_prompt_tokens=settings.max_prompt_tokens, fim=settings.fim, cancel=cancel,
    )  # fmt: skip
    shown = ""
    if generation.finish_reason != "cancelled":
        # Postprocessing sees the text the model saw; without FIM, as much after the cursor as before.
        before = prefix[state.prefix_start or 0 :]
        after = suffix[: state.suffix_end or len(before)]
        shown = postprocess(generation.text, before, after, language, multiline)
        if "\r\n" in text[max(0, offset - 2000) : offset + 2000]:
            shown = shown.replace("\n", "\r\n")  # insert the document's own line breaks
    return Suggestion(shown, generation.text, generation.finish_reason, generation.stats, stopper)
