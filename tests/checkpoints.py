"""Tiny random checkpoints in the exact Hugging Face layout, made with transformers.

Each is small enough to build in a second and run on CPU, yet has the
features that trip loaders: CodeGen with rotary_dim < head_dim and an
embedding padded past the tokenizer, GPTBigCode multi-query and multi-head,
the legacy `.bin` layout with attention-mask buffers, and both tokenizer
layouts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

TOKENIZERS = Path(__file__).resolve().parent / "data" / "tokenizers"  # README.md there: sources, license
GPT2_DIR = TOKENIZERS / "gpt2"
CODEGEN_TOKENIZER_JSON = TOKENIZERS / "codegen" / "tokenizer.json"
ENDOFTEXT = "<|endoftext|>"
STARCODER_FIM = ["<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"]
SANTACODER_FIM = ["<fim-prefix>", "<fim-middle>", "<fim-suffix>", "<fim-pad>"]


def codegen_whitespace_tokens() -> dict[str, int]:
    """CodeGen's 38 added tokens: runs of 31..2 spaces, then 9..2 tabs, from id 50257."""
    runs = [" " * n for n in range(31, 1, -1)] + ["\t" * n for n in range(9, 1, -1)]
    return {run: 50257 + i for i, run in enumerate(runs)}


def write_codegen_vocab_tokenizer(directory: Path) -> None:
    """The layout of the published Salesforce/codegen-* repos: vocab, merges, added tokens."""
    shutil.copy(GPT2_DIR / "vocab.json", directory)
    shutil.copy(GPT2_DIR / "merges.txt", directory)
    (directory / "added_tokens.json").write_text(json.dumps(codegen_whitespace_tokens()))
    special = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
    (directory / "special_tokens_map.json").write_text(json.dumps(special))
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CodeGenTokenizer", "add_prefix_space": False, **special})
    )


def write_bigcode_tokenizer(directory: Path, fim_tokens: list[str]) -> None:
    """GPT-2's BPE plus FIM special tokens, saved as tokenizer.json (a test stand-in for StarCoder's)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(str(GPT2_DIR / "vocab.json"), str(GPT2_DIR / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in [ENDOFTEXT, *fim_tokens]])
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def make_codegen(directory: Path, *, legacy_bin: bool = False, seed: int = 0, **overrides) -> Path:
    """A CodeGen checkpoint: safetensors + tokenizer.json, or the published .bin layout."""
    from transformers import CodeGenConfig, CodeGenForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    params = dict(
        vocab_size=50400,  # padded past the tokenizer's 50295 ids, as published
        n_positions=512, n_ctx=512, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
        bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=False,
    )
    params.update(overrides)
    model = CodeGenForCausalLM(CodeGenConfig(**params)).eval()
    _spread_weights(model)
    if legacy_bin:
        state = {k: v.to(torch.float16) for k, v in model.state_dict().items()}
        n_pos = params["n_positions"]
        for i in range(params["n_layer"]):  # the buffers old exports carry
            state[f"transformer.h.{i}.attn.causal_mask"] = torch.tril(torch.ones(n_pos, n_pos, dtype=torch.bool))[None, None]
            state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e9)
        torch.save(state, directory / "pytorch_model.bin")
        config = model.config.to_dict()
        config["torch_dtype"] = config.pop("dtype", "float16")
        config["n_inner"] = None
        config["extra_key_from_an_old_export"] = True
        (directory / "config.json").write_text(json.dumps(config))
        write_codegen_vocab_tokenizer(directory)
    else:
        model.save_pretrained(directory)
        shutil.copy(CODEGEN_TOKENIZER_JSON, directory / "tokenizer.json")
        (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": ENDOFTEXT, "bos_token": ENDOFTEXT}))
    return directory


def make_bigcode(directory: Path, *, multi_query: bool = True, fim_tokens=STARCODER_FIM, seed: int = 0, **overrides) -> Path:
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    params = dict(
        vocab_size=50304, n_positions=512, n_embd=64, n_layer=2, n_head=4, multi_query=multi_query,
        bos_token_id=50256, eos_token_id=50256,
    )
    params.update(overrides)
    model = GPTBigCodeForCausalLM(GPTBigCodeConfig(**params)).eval()
    _spread_weights(model)
    model.save_pretrained(directory)
    write_bigcode_tokenizer(directory, fim_tokens)
    return directory


def _spread_weights(model: torch.nn.Module) -> None:
    """Wider random weights than the default init, so logits are far from uniform and greedy
    decoding is not decided by float noise (ties would make token comparisons flaky)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.15 if "wte" in name or "wpe" in name else 0.08)


def hf_model(directory: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def hf_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)
