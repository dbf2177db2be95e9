"""What every architecture's model shares: ids -> embeddings -> blocks over the KV cache -> logits.

An architecture module (codegen.py, gpt_bigcode.py) subclasses DecoderLM with its
`transformer` (wte, h, ln_f), `lm_head` and `embed`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from engine.kv_cache import KVCache, attention_span


class DecoderLM(nn.Module):
    transformer: nn.Module  # .h: the blocks, .ln_f: the final norm
    lm_head: nn.Module

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
        kv_len, mask = attention_span(input_pos, cache, kv_len, exact_rows)
        x, extra = self.embed(idx, input_pos)
        for block in self.transformer.h:
            x = block(x, input_pos, cache, kv_len, mask, *extra)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.transformer.ln_f(x)).float()
