"""One suggestion from plain values: document text, cursor offset, settings.

The middle layer between the protocol handlers and the engine: it cuts the
text around the cursor, picks one line or a block and the stop rules, runs the
engine's completion (prompt building, FIM, KV reuse) and postprocesses.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

from engine import SamplingParams
from engine.completion import complete
from engine.generate import GenerationStats
from lsp_server.models import Engine
from lsp_server.postprocess import postprocess, stop_sequences, wants_multiline
from lsp_server.settings import Settings

LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Characters of context kept per prompt token before the engine counts tokens:
# generous (CodeGen has 31-space tokens), but it spares tokenizing megabytes.
CHARS_PER_TOKEN = 16


@dataclass
class Suggestion:
    text: str  # what to show ('' for nothing)
    raw: str  # the engine's text before postprocessing
    finish_reason: str
    stats: GenerationStats = field(default_factory=GenerationStats)


def clean(text: str) -> str:
    """Lone surrogates (possible in JSON strings) cannot be tokenized: replace them."""
    return LONE_SURROGATE.sub("\ufffd", text)


def context_window(prefix: str, suffix: str, max_prompt_tokens: int) -> tuple[str, str]:
    """Cut a huge prefix/suffix to a character budget, at line starts that stay put
    while the user types (so the cached prompt stays reusable)."""
    budget = max_prompt_tokens * CHARS_PER_TOKEN
    if len(prefix) > budget:
        step = budget // 4
        cut = (len(prefix) - budget) // step * step + step
        newline = prefix.find("\n", cut)
        prefix = prefix[newline + 1 :] if 0 <= newline < cut + step else prefix[cut:]
    if len(suffix) > budget // 2:
        newline = suffix.rfind("\n", 0, budget // 2)
        suffix = suffix[: newline + 1] if newline > 0 else suffix[: budget // 2]
    return prefix, suffix


def suggest(
    engine: Engine,
    document: str,
    text: str,
    offset: int,
    language: str,
    settings: Settings,
    cancel: threading.Event | None = None,
) -> Suggestion:
    prefix, suffix = context_window(clean(text[:offset]), clean(text[offset:]), settings.max_prompt_tokens)
    multiline = wants_multiline(prefix, suffix, language, settings.multiline)
    params = SamplingParams(max_new_tokens=settings.max_new_tokens, stop=stop_sequences(language, multiline))
    session = engine.sessions.get(document)
    generation = complete(
        session, prefix, suffix, params, max_prompt_tokens=settings.max_prompt_tokens, fim=settings.fim, cancel=cancel
    )
    shown = ""
    if generation.finish_reason != "cancelled":
        shown = postprocess(generation.text, prefix, suffix, language, multiline)
        if "\r\n" in text[max(0, offset - 2000) : offset + 2000]:
            shown = shown.replace("\n", "\r\n")  # insert the document's own line breaks
    return Suggestion(shown, generation.text, generation.finish_reason, generation.stats)
