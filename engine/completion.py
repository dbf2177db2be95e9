"""One completion request for one document: prompt, generation, typeahead.

`complete` is the entry point the language server calls. It builds the
prompt around the cursor (engine.prompt), runs the model on the document's
session (engine.session, which reuses whatever the cache already holds) and
remembers, in the document's `DocumentState`, where the prompt was cut and
the suggestion, so that typing the suggestion's first characters is
answered from memory:

    prefix "def add(a, b):\\n    return"   suggestion " a + b"
    user types " a"                          -> " + b", no model call

When the user has typed the whole suggestion and the model stopped only
because of max_new_tokens, decoding continues from the end of the
suggestion: its tokens are already in the cache (all but the last sampled).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace

from engine.errors import EngineError
from engine.generate import Generation, GenerationStats, SamplingParams, generate
from engine.prompt import build_prompt
from engine.session import Session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LastCompletion:
    """What a session remembers of its latest suggestion."""

    prefix: str  # text before the cursor when the suggestion (or what is left of it) was given
    suffix: str
    text: str  # the suggestion not typed yet
    finish_reason: str
    # Prompt ids + generated ids; they spell prefix + text. Set only when the
    # model was cut short by max_new_tokens, i.e. when it may go on.
    context_ids: list[int] | None
    settings: tuple  # (fim, max_prompt_tokens): a change of settings is a miss


@dataclass
class DocumentState:
    """What the completion layer keeps of one document between requests (the KV cache is the
    session's). Offsets are into the document's whole prefix and suffix, as given to complete()."""

    prefix_start: int | None = None  # the prompt held prefix[prefix_start:] ...
    suffix_end: int = 0  # ... and suffix[:suffix_end]
    last: LastCompletion | None = None  # the latest suggestion, for typeahead


def complete(
    session: Session,
    state: DocumentState,
    prefix: str,
    suffix: str,
    params: SamplingParams,
    *,
    max_prompt_tokens: int = 1536,
    fim: str = "auto",
    cancel: threading.Event | None = None,
    typeahead: bool = True,
) -> Generation:
    """The completion at a cursor between `prefix` and `suffix` (the document's text around it).

    typeahead=False always asks the model (and forgets the last suggestion).
    Raises EngineError for settings that cannot make a prompt.
    """
    with session.lock:
        return _complete(session, state, prefix, suffix, params, max_prompt_tokens, fim, cancel, typeahead)


def _complete(session, state, prefix, suffix, params, max_prompt_tokens, fim, cancel, typeahead) -> Generation:
    start = time.perf_counter()
    window = session.window
    if params.max_new_tokens >= window:
        raise EngineError(f"max_new_tokens {params.max_new_tokens} leaves no room in the window of {window}")
    settings = (fim, max_prompt_tokens)
    last = state.last if typeahead else None
    state.last = None  # set again below once this request has an answer

    if last is not None and last.settings == settings and last.suffix == suffix and prefix.startswith(last.prefix):
        typed = prefix[len(last.prefix) :]
        if last.text.startswith(typed):
            rest = last.text[len(typed) :]
            if rest:
                state.last = replace(last, prefix=prefix, text=rest)
                elapsed = (time.perf_counter() - start) * 1000
                stats = GenerationStats(typeahead=True, time_to_first_token_ms=elapsed, total_ms=elapsed)
                return Generation(text=rest, token_ids=[], finish_reason=last.finish_reason, stats=stats)
            context = last.context_ids
            if context is not None and len(context) + params.max_new_tokens <= window:
                # The whole suggestion was typed and the model had more to say: go on from its end.
                result = generate(session, context, params, cancel)
                _remember(state, prefix, suffix, context, result, settings)
                return result

    prompt = build_prompt(
        session.lm.tokenizer, prefix, suffix,
        max_prompt_tokens=min(max_prompt_tokens, window - params.max_new_tokens), fim=fim,
        previous_prefix_start=state.prefix_start,
    )
    state.prefix_start, state.suffix_end = prompt.prefix_start, prompt.suffix_end
    result = generate(session, prompt.ids, params, cancel, heal=prompt.heal)
    _remember(state, prefix, suffix, prompt.ids, result, settings)
    s = result.stats
    log.debug("completion %s: prompt %d (%s), reused %d, prefilled %d, generated %d, ttft %.0f ms, total %.0f ms",
              result.finish_reason, s.prompt_tokens, prompt.layout, s.reused_tokens, s.prefilled_tokens,
              s.generated_tokens, s.time_to_first_token_ms, s.total_ms)
    return result


def _remember(state: DocumentState, prefix: str, suffix: str, prompt_ids: list[int], result: Generation, settings) -> None:
    if result.finish_reason == "cancelled":
        return  # never shown to the user: nothing to type ahead into
    context = prompt_ids + result.token_ids if result.finish_reason == "length" else None
    state.last = LastCompletion(prefix, suffix, result.text, result.finish_reason, context, settings)
