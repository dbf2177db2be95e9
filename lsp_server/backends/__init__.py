"""Backends: where a suggestion's tokens are generated, behind one seam.

A backend turns settings into what the completion layer runs on (`Backend`): the model's
tokenizer and config (the prompt window is cut by the model's own token count, with its FIM
tokens) and a store handing each document a session. engine.completion.complete() runs the
same prompt window, typeahead and generation on any session; postprocessing, the scheduler,
stats and settings are the server's, the same for every backend.

- local.py: this process's engine (weights loaded, a KV cache per document),
- openai.py: a server's OpenAI-compatible /v1/completions, the FIM prompt rendered as text
  (vLLM, llama.cpp server, Ollama, TGI),
- llamacpp.py: llama.cpp server's /infill (prefix and suffix as text, its own KV reuse).

Adding a backend is one module with a `load(settings) -> Backend` and a line in `load`'s loaders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from lsp_server.settings import Settings


@dataclass
class Backend:
    lm: Any  # .tokenizer, .config (engine.loading.LoadedModel, or the tokenizer-only TokenizerModel)
    sessions: Any  # .get(document) -> a session, .drop(document)
    name: str  # "local", "openai", "llama.cpp"
    close: Callable[[], None] = lambda: None  # frees what the backend holds (connections, threads) once unused


def load(settings: Settings, progress: Callable[[int], None] = lambda percent: None) -> Backend:
    """The backend the settings name, loaded (blocking: call it off the event loop); progress is
    told the percentage done where loading takes long (the local engine's weights)."""
    from lsp_server.backends import llamacpp, local, openai

    if settings.backend == "local":
        return local.load(settings, progress)
    loaders: dict[str, Callable[[Settings], Backend]] = {"openai": openai.load, "llama.cpp": llamacpp.load}
    return loaders[settings.backend](settings)
