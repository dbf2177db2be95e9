"""Whole prefills with each int8 / int4 prefill product this CPU runs: AMX tiles, AVX-512 VNNI, AVX2.

    .venv/bin/python benchmarks/prefill_products.py [--shapes codegen-350M-mono santacoder]
        [--prompt-tokens 512 1500] [--quantization int8] [--rounds 3]

Random weights with the real shapes (benchmarks/random_checkpoint.py), a cold session prefilled
with the whole prompt per round, the products interleaved. The load-time choice takes the best
(engine/cpu_kernels.py product_isa: "amx" where the tiles run, AMX's int8 product giving the VNNI
one's numbers bit for bit); this measures what that choice is worth. The decode kernels do not
change; int4's product is the same in "amx" and "avx512".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import code_prompt, cold_prefill_rate, interleaved, random_model  # noqa: E402
from benchmarks.random_checkpoint import SHAPES  # noqa: E402
from engine.quantize import QuantizedLinear  # noqa: E402
from engine.session import Session  # noqa: E402


def products() -> list[str]:
    isas = torch.ops.codegen_lsp_cpu.isas().split()[:-1]  # not the portable build
    return (["amx"] if torch.ops.codegen_lsp_cpu.amx() else []) + isas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["codegen-350M-mono", "santacoder"], choices=list(SHAPES))
    parser.add_argument("--prompt-tokens", nargs="+", type=int, default=[512, 1500])
    parser.add_argument("--quantization", default="int8", choices=["int8", "int4"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for name in args.shapes:
        lm = random_model(name, args.quantization)
        layers = [m for m in lm.model.modules() if isinstance(m, QuantizedLinear) and m.product_isa]
        if not layers:
            sys.exit("our CPU kernels are not built here: no products to compare")
        chosen = layers[0].product_isa
        print(f"{name}, {args.quantization}, {torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds, "
              f"prefill tokens/s by product (chosen at load: {chosen})")
        session = Session(lm)
        for tokens in args.prompt_tokens:
            prompt = code_prompt(lm, tokens)

            def tokens_per_second(isa: str) -> float:
                for layer in layers:
                    layer.product_isa = isa
                return cold_prefill_rate(session, prompt)

            tokens_per_second(chosen)  # warm
            figures, load = interleaved({isa: (lambda isa=isa: tokens_per_second(isa)) for isa in products()}, args.rounds)
            print(f"  {len(prompt)} tokens: " + ", ".join(f"{isa} {value:.1f}" for isa, value in figures.items())
                  + f"  (load {load:.1f})")
        for layer in layers:
            layer.product_isa = chosen


if __name__ == "__main__":
    main()
