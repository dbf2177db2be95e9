"""An OpenAI-compatible /v1/completions (vLLM, llama.cpp server, llama-cpp-python, Ollama, TGI):
the FIM prompt rendered as text with the model's own FIM tokens, since most of these servers
reject or ignore `suffix`. Streamed; greedy unless the request says otherwise."""

from __future__ import annotations

from engine.generate import SamplingParams
from engine.tokenizer import Tokenizer
from lsp_server.backends import Backend
from lsp_server.backends.remote import (
    PromptParts, RemoteClient, RemoteSession, RemoteSessions, load_tokenizer_model, render, sampling,
)  # fmt: skip
from lsp_server.settings import Settings


class OpenAICompletions:
    name = "openai"
    path = "/v1/completions"

    def body(self, tokenizer: Tokenizer, parts: PromptParts, params: SamplingParams, max_tokens: int, model: str,
             heal: str) -> dict:  # fmt: skip
        return {"prompt": render(tokenizer, parts), "max_tokens": max_tokens, **sampling(params, model)}

    def piece(self, event: dict) -> tuple[str, str | None, dict]:
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return "", None, {}
        text = choices[0].get("text")
        reason = choices[0].get("finish_reason")
        return (text if isinstance(text, str) else ""), (str(reason) if reason else None), {}


def load(settings: Settings) -> Backend:
    lm = load_tokenizer_model(settings)
    client = RemoteClient(settings, OpenAICompletions())
    return Backend(lm, RemoteSessions(RemoteSession(lm, client, "openai")), "openai", client.close)
