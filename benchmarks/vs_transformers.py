"""Ours vs transformers on the same random weights with Salesforce/codegen-350M-mono's shapes.

    .venv/bin/python benchmarks/vs_transformers.py [--prompt-tokens 512] [--new-tokens 64]

Prints prefill tokens/s and decode ms/token for both, side by side, and the ratios.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import SHARED_TOKENIZERS, checkpoint, median_seconds, real_code  # noqa: E402
from engine import Session, load_model  # noqa: E402
from engine.random_checkpoint import CODEGEN_350M_MONO  # noqa: E402
from engine.tokenizer import load_tokenizer  # noqa: E402


def ours(directory: Path, prompt: list[int], new_tokens: int, repeat: int) -> tuple[float, float]:
    lm = load_model(str(directory), device="cpu", dtype="float32")
    prefill = median_seconds(lambda: Session(lm).prefill(prompt), repeat)
    session = Session(lm)

    def decode():
        logits, _ = session.prefill(prompt)  # reuses everything but the last token
        for _ in range(new_tokens):
            logits = session.step(int(torch.argmax(logits)))

    total = median_seconds(decode, repeat)
    return prefill, (total - 0) / new_tokens


@torch.inference_mode()
def transformers_reference(directory: Path, prompt: list[int], new_tokens: int, repeat: int) -> tuple[float, float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])

    def run(n):
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    prefill = median_seconds(lambda: run(1), repeat)
    full = median_seconds(lambda: run(new_tokens + 1), repeat)
    return prefill, (full - prefill) / new_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    directory = checkpoint("codegen-350M-mono", CODEGEN_350M_MONO, [SHARED_TOKENIZERS / "codegen" / "tokenizer.json"])
    tokenizer = load_tokenizer(directory)
    prompt = tokenizer.encode(real_code(20000))[: args.prompt_tokens]
    assert len(prompt) == args.prompt_tokens

    our_prefill, our_decode = ours(directory, prompt, args.new_tokens, args.repeat)
    ref_prefill, ref_decode = transformers_reference(directory, prompt, args.new_tokens, args.repeat)
    print(f"codegen-350M-mono shapes, random weights, float32, CPU, {torch.get_num_threads()} threads")
    print(f"prompt {len(prompt)} tokens, {args.new_tokens} new tokens, median of {args.repeat}")
    print(f"{'':24}{'ours':>12}{'transformers':>14}{'ratio':>8}")
    print(f"{'prefill tokens/s':24}{len(prompt) / our_prefill:12.1f}{len(prompt) / ref_prefill:14.1f}"
          f"{ref_prefill / our_prefill:7.2f}x")
    print(f"{'decode ms/token':24}{our_decode * 1000:12.1f}{ref_decode * 1000:14.1f}{ref_decode / our_decode:7.2f}x")


if __name__ == "__main__":
    main()
