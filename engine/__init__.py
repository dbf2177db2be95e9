"""The inference engine: CodeGen and GPTBigCode in plain PyTorch (no LSP here)."""

from engine.errors import EngineError
from engine.generate import Generation, GenerationStats, SamplingParams, generate
from engine.loading import LoadedModel, load_model
from engine.session import Session

__all__ = [
    "EngineError",
    "Generation",
    "GenerationStats",
    "LoadedModel",
    "SamplingParams",
    "Session",
    "generate",
    "load_model",
]
