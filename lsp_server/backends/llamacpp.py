"""llama.cpp server's /infill: prefix and suffix as text (the server adds the FIM tokens of the
GGUF and reuses its KV cache across requests), with the /completion options. Streamed events
(`data: {...}`, no `[DONE]`) carry `content`; the last one has `stop: true`, `stop_type` ("limit":
n_predict reached) and the server's `timings`.

The server writes the FIM prompt itself, `<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>`
(PSM); with `--spm-infill` it puts the suffix first, `<fim_suffix>{suffix}<fim_prefix>{prefix}<fim_middle>`,
which is not StarCoder's SPM (engine/prompt.py), so a checkpoint whose layout is "spm" gets
other suggestions than from the local engine. The local engine's token healing (the blanks
before the cursor left out of the prompt, the continuation made to start with them) is a
grammar here, which llama-server applies while sampling.

llama-cpp-python's server (`python -m llama_cpp.server`) has no /infill: use backend "openai"
with it; /infill is the `llama-server` binary's. Tested against llama-server (llama.cpp of
llama-cpp-python 0.3.36) in tests/test_remote_e2e.py.
"""

from __future__ import annotations

from engine.generate import SamplingParams
from engine.tokenizer import Tokenizer
from lsp_server.backends import Backend
from lsp_server.backends.remote import (
    PromptParts, RemoteClient, RemoteSession, RemoteSessions, load_tokenizer_model, sampling,
)  # fmt: skip
from lsp_server.settings import Settings

TIMINGS = ("prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "cache_n")


class LlamaCppInfill:
    name = "llama.cpp"
    path = "/infill"

    def body(self, tokenizer: Tokenizer, parts: PromptParts, params: SamplingParams, max_tokens: int, model: str,
             heal: str) -> dict:  # fmt: skip
        return {
            "input_prefix": parts.prefix,
            "input_suffix": parts.suffix,
            "input_extra": [],
            "n_predict": max_tokens,
            "top_k": 0 if params.temperature > 0 else 1,
            "cache_prompt": True,
            **sampling(params, model),
            **({"grammar": healing_grammar(heal)} if heal else {}),
        }

    def piece(self, event: dict) -> tuple[str, str | None, dict]:
        text = event.get("content")
        timings = event.get("timings")
        timings = {k: timings[k] for k in TIMINGS if k in timings} if isinstance(timings, dict) else {}
        reason = None
        if event.get("stop"):
            reason = "length" if event.get("stop_type") == "limit" else "eos"  # ("truncated" is about the prompt)
        return (text if isinstance(text, str) else ""), reason, timings


def healing_grammar(heal: str) -> str:
    """A GBNF grammar for a continuation that starts by spelling heal, as the local engine's
    token healing constrains it (engine/tokenizer.py Spellings): whatever follows the blanks
    does not start with more whitespace (it would indent past the cursor), or nothing does."""
    literal = "".join(c if c == " " else f"\\U{ord(c):08X}" for c in heal)
    return f'root ::= "{literal}" ([^ \\t\\n\\r\\x0B\\x0C] [^\\x00]*)?'


def load(settings: Settings) -> Backend:
    lm = load_tokenizer_model(settings)
    client = RemoteClient(settings, LlamaCppInfill())
    return Backend(lm, RemoteSessions(RemoteSession(lm, client, "llama.cpp")), "llama.cpp", client.close)
