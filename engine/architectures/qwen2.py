"""Qwen2 (model_type "qwen2"): Qwen2.5-Coder. Llama's model (engine/architectures/llama.py) with
biases on q, k and v (not o), usually a tied LM head on the smaller sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.architectures import Architecture, FimSpelling
from engine.architectures.llama import Llama, LlamaConfig
from engine.config import ConfigReader


@dataclass
class Qwen2Config(LlamaConfig):
    @classmethod
    def read_fields(cls, r: ConfigReader) -> dict:
        if r.get("use_sliding_window", False):  # off in every published Qwen2.5-Coder config
            raise r.error("use_sliding_window is not supported for qwen2")
        return super().read_fields(r)


class Qwen2(Llama):
    def biases(self, config: Qwen2Config) -> tuple[bool, bool]:
        return True, False


QWEN_FIM = FimSpelling("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", pad="<|fim_pad|>",
                       file_separator="<|file_sep|>", repo_name="<|repo_name|>")

ARCHITECTURE = Architecture("qwen2", Qwen2Config, Qwen2, fim=(QWEN_FIM,))
