"""What every architecture's model shares: ids -> embeddings -> blocks over the KV cache -> logits.

An architecture module (engine/architectures/) subclasses DecoderLM with its blocks
(`layers`), final norm (`final_norm`), token embedding (`embedding`), `lm_head` and
`embed`, keeping the checkpoint's parameter names.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from engine.kv_cache import KVCache, attention_span


class DecoderLM(nn.Module):
    lm_head: nn.Module  # the LM head (every Hugging Face causal LM names it so; quantize.py relies on it)

    @property
    def layers(self) -> nn.ModuleList:
        """The blocks, each called as block(x, input_pos, cache, kv_len, mask, *extra)."""
        raise NotImplementedError

    @property
    def final_norm(self) -> nn.Module:
        raise NotImplementedError

    @property
    def embedding(self) -> nn.Embedding:
        """The token embedding (a tied lm_head shares its weight)."""
        raise NotImplementedError

    def embed(self, idx: torch.Tensor, input_pos: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """(the input embeddings (B, T, E), what each block gets after the mask)."""
        raise NotImplementedError

    def forward(
        self,
        idx: torch.Tensor,  # (1, T) token ids; (B, T) when training
        input_pos: torch.Tensor,  # (T,) their absolute positions
        cache: KVCache | None,  # None = training: full sequences from position 0, plain causal attention
        kv_len: int | None = None,  # attend to cache[:kv_len]; None = the whole (static) cache
        last_only: bool = False,  # only the last position's logits (prefill)
        exact_rows: bool = False,  # attention row by row, as decode steps do it (speculative verify)
    ) -> torch.Tensor:  # (B, T or 1, vocab_size) float32 logits
        kv_len, mask = attention_span(input_pos, cache, kv_len, self.config.sliding_window, exact_rows)
        x, extra = self.embed(idx, input_pos)
        for block in self.layers:
            x = block(x, input_pos, cache, kv_len, mask, *extra)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.final_norm(x)).float()


def speed_up_attribute_lookups(model: nn.Module) -> None:
    """Put each module's submodules and parameters in its instance __dict__ too (they stay
    registered, so state_dict, .to() and .modules() are unchanged): Python then finds them without
    calling nn.Module.__getattr__, which costs 1-1.7 us per access on the AVX2 EPYC, ~110 of them
    in a decode step of the demo model (its step 1.21 -> 1.03 and 1.45 -> 1.29 ms, interleaved).
    nn.Module.__setattr__ drops such an entry when a Module or Parameter is assigned to the name
    again, so a later assignment still takes effect (None assigned, or add_module, would not: none
    happens after loading). Buffers are left out: assigning a registered buffer does not drop it
    (Int8Linear.prepare assigns its buffers). For eager models; a compiled one is traced."""
    for module in model.modules():
        module.__dict__.update(module._modules)
        module.__dict__.update(module._parameters)


def call_forward_directly(model: nn.Module) -> None:
    """Give each module a subclass of its class whose __call__ is its forward: nn.Module's own takes
    two more Python frames and a dozen checks for hooks, ~220 times in a santacoder decode step (24
    blocks of ~9 modules). Decode steps, interleaved (Intel Xeon): the demo model 1.39 -> 1.28 ms
    (float32) and 0.86 -> 0.78 (int8), santacoder's 24 layers with tiny widths 4.98 -> 4.37.
    The modules, their state_dict and isinstance are unchanged (type() names the subclass), and a
    module assigned later is called the usual way; hooks and a forward set on an instance are not
    called (nothing here sets them; a benchmark that times calls wraps the class's __call__). For
    eager models; a compiled one is traced."""
    for module in model.modules():
        module.__class__ = _direct_call_class(type(module))


_DIRECT_CALL_CLASSES: dict[type, type] = {}


def _direct_call_class(cls: type) -> type:
    if cls in _DIRECT_CALL_CLASSES.values():  # already one
        return cls
    if cls not in _DIRECT_CALL_CLASSES:
        _DIRECT_CALL_CLASSES[cls] = type(cls.__name__, (cls,), {"__call__": cls.forward, "__module__": cls.__module__,
                                                               "__qualname__": cls.__qualname__})
    return _DIRECT_CALL_CLASSES[cls]


class GPT2LayoutLM(DecoderLM):
    """GPT-2's module names: transformer.wte, transformer.h (the blocks), transformer.ln_f (CodeGen, GPTBigCode)."""

    transformer: nn.Module

    @property
    def layers(self) -> nn.ModuleList:
        return self.transformer.h

    @property
    def final_norm(self) -> nn.Module:
        return self.transformer.ln_f

    @property
    def embedding(self) -> nn.Embedding:
        return self.transformer.wte
