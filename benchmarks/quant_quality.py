"""How far each quantization mode moves the logits from float32, on real-code prompts.

    .venv/bin/python benchmarks/quant_quality.py [--models small-codegen small-bigcode codegen-350M-mono demo]
        [--prompts 4] [--prompt-tokens 256] [--new-tokens 64]

For each mode: maximum and mean absolute logit error against float32 (also
relative to the spread of the float32 logits), and how many of 64 greedy
tokens agree with float32's. Agreement is counted with teacher forcing: every
mode is fed float32's greedy tokens, so one early disagreement does not decide
all later ones. "same prefix" is the free-running view: how many tokens the
two greedy continuations share from the start.

The only trained weights on these machines are the shipped demo model
("demo", 3.9M parameters); the others give a weaker signal:
- small-*: small models (made with transformers, as in tests/) with the wide
  random weights the tests use, so logits are far from uniform;
- codegen-350M-mono: the real shapes with N(0, 0.02) weights, whose logits
  are nearly flat (many near-ties), which exaggerates disagreement.
Prompts are standard-library source files.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import tempfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.common import CACHE, checkpoint  # noqa: E402
from benchmarks.random_checkpoint import CODEGEN_350M_MONO  # noqa: E402
from engine.build import build_quantized_model  # noqa: E402
from engine.loading import load_model  # noqa: E402
from engine.paths import DEMO_MODEL_DIR  # noqa: E402
from engine.quantize import DEFAULT_GROUP_SIZE, QuantSettings  # noqa: E402
from greedy import greedy_with_logits as run  # noqa: E402  (tests/greedy.py)

MODES = {  # label -> load_model keyword arguments
    "bfloat16": dict(dtype="bfloat16"),
    "int8": dict(quantization="int8"),
    "int8, float LM head": dict(quantization="int8", quantize_lm_head=False),
    "int4 g32": dict(quantization="int4", group_size=32),
    "int4 g64": dict(quantization="int4", group_size=64),
    "int4 g128": dict(quantization="int4", group_size=128),
}


def prompt_sources(n: int) -> list[str]:
    import argparse as a, collections, json.decoder, textwrap, tokenize

    return [Path(m.__file__).read_text(encoding="utf-8") for m in (a, textwrap, collections, json.decoder, tokenize)][:n]


def model_dir(name: str) -> Path:
    if name == "demo":
        return DEMO_MODEL_DIR
    if name == "codegen-350M-mono":
        return checkpoint(name, CODEGEN_350M_MONO)
    import checkpoints  # tests/checkpoints.py: transformers' save_pretrained layout, wide random weights

    directory = CACHE / name
    if not (directory / "config.json").is_file():
        if name == "small-codegen":
            checkpoints.make_codegen(directory, n_embd=256, n_layer=4, n_head=8, rotary_dim=16, n_positions=1024, n_ctx=1024)
        else:
            checkpoints.make_bigcode(directory, multi_query=True, n_embd=256, n_layer=4, n_head=8, n_positions=1024)
    return directory


def load(directory: Path, dtype: str = "float32", quantization: str = "none", quantize_lm_head: bool = True,
         group_size: int = DEFAULT_GROUP_SIZE):
    lm = load_model(str(directory), device="cpu", dtype=dtype, compile="false")
    if quantization != "none":  # built here because the group size is not a load_model option
        settings = QuantSettings(quantization, group_size, quantize_lm_head)
        lm = dataclasses.replace(lm, model=build_quantized_model(lm.config, lm.path, settings, lm.dtype, lm.device))
    return lm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["small-codegen", "small-bigcode", "codegen-350M-mono", "demo"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    if "CODEGEN_LSP_CACHE" not in os.environ:  # quantized copies of its own, removed when it ends
        scratch = tempfile.TemporaryDirectory(prefix="codegen-lsp-quality-")
        os.environ["CODEGEN_LSP_CACHE"] = scratch.name

    for name in args.models:
        directory = model_dir(name)
        reference = load(directory)
        vocab = min(reference.tokenizer.vocab_size, reference.config.vocab_size)
        length = min(args.prompt_tokens, reference.config.n_positions - args.new_tokens)  # the demo's window is 256
        prompts = [reference.tokenizer.encode(text)[:length] for text in prompt_sources(args.prompts)]
        prompts = [[i % vocab for i in p] for p in prompts]
        expected = [run(reference, p, args.new_tokens) for p in prompts]
        del reference
        gc.collect()
        print(f"\n{name}: {len(prompts)} stdlib prompts x {length} tokens, {args.new_tokens} greedy tokens each")
        print(f"{'mode':22}{'max |err|':>10}{'mean |err|':>11}{'max/std':>9}{'agree':>12}{'same prefix':>13}")
        for mode in args.modes:
            lm = load(directory, **MODES[mode])
            max_err = mean_err = rel = 0.0
            agree = prefix = 0
            for p, (ref_tokens, ref_logits) in zip(prompts, expected):
                tokens, logits = run(lm, p, args.new_tokens, follow=ref_tokens)
                err = (logits - ref_logits).abs()
                max_err = max(max_err, err.max().item())
                mean_err += err.mean().item() / len(prompts)
                rel = max(rel, (err.amax(-1) / ref_logits.std(-1)).max().item())
                agree += sum(a == b for a, b in zip(tokens, ref_tokens))
                free, _ = run(lm, p, args.new_tokens)
                prefix += next((i for i, (a, b) in enumerate(zip(free, ref_tokens)) if a != b), args.new_tokens)
            total = args.new_tokens * len(prompts)
            print(f"{mode:22}{max_err:10.4f}{mean_err:11.4f}{rel:9.3f}{agree:6d}/{total:<5d}"
                  f"{prefix / len(prompts):10.1f}/{args.new_tokens}")
            sys.stdout.flush()
            del lm
            gc.collect()


if __name__ == "__main__":
    main()
