"""llama.cpp server's /infill: prefix and suffix as text (the server adds the FIM tokens of the
GGUF and reuses its KV cache across requests), with the /completion options. Streamed events
carry `content`; the last one has `stop: true` and the server's `timings`.

llama-cpp-python's server (`python -m llama_cpp.server`) has no /infill: use backend "openai"
with it; /infill is the `llama-server` binary's.
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

    def body(self, tokenizer: Tokenizer, parts: PromptParts, params: SamplingParams, max_tokens: int, model: str) -> dict:
        return {
            "input_prefix": parts.prefix,
            "input_suffix": parts.suffix,
            "input_extra": [],
            "n_predict": max_tokens,
            "top_k": 0 if params.temperature > 0 else 1,
            "cache_prompt": True,
            **sampling(params, model),
        }

    def piece(self, event: dict) -> tuple[str, str | None, dict]:
        text = event.get("content")
        timings = event.get("timings")
        timings = {k: timings[k] for k in TIMINGS if k in timings} if isinstance(timings, dict) else {}
        reason = None
        if event.get("stop"):
            reason = "length" if event.get("stop_type") == "limit" or event.get("truncated") else "eos"
        return (text if isinstance(text, str) else ""), reason, timings


def load(settings: Settings) -> Backend:
    lm = load_tokenizer_model(settings)
    client = RemoteClient(settings, LlamaCppInfill())
    return Backend(lm, RemoteSessions(RemoteSession(lm, client, "llama.cpp")), "llama.cpp", client.close)
