"""Tiny random checkpoints in the exact Hugging Face layout, made with transformers.

Each is small enough to build in a second and run on CPU, yet has the
features that trip loaders: CodeGen with rotary_dim < head_dim and an
embedding padded past the tokenizer, GPTBigCode multi-query and multi-head,
the legacy `.bin` layout with attention-mask buffers, and both tokenizer
layouts; and one checkpoint per family of the rotary architectures (FAMILIES),
each with grouped-query attention and its family's FIM tokens.
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
    """GPT-2's BPE plus FIM special tokens, saved as tokenizer.json (a test stand-in for StarCoder's,
    and for every family's in FAMILIES)."""
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


# name -> (transformers' model_type, config overrides, FIM and file tokens, config.json edits after saving).
# Shared: 4 query heads over 2 K/V heads, a window of 512, GPT-2's BPE and <|endoftext|> as eos.
FAMILIES = {
    # A sliding window shorter than the tests' prompts (300 tokens).
    "starcoder2": ("starcoder2", dict(sliding_window=48, rope_theta=1e5),
                   [*STARCODER_FIM, "<file_sep>", "<repo_name>"], {}),
    # DeepSeek-Coder 6.7B's config spells its rope as older exports do: rope_theta and a linear rope_scaling.
    "deepseek": ("llama", {}, ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"],
                 dict(rope_parameters=None, rope_theta=100000, rope_scaling={"type": "linear", "factor": 4.0})),
    "codellama": ("llama", dict(rope_theta=1e6), ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"], {}),
    # Tied embeddings (as Qwen2.5-Coder up to 3B).
    "qwen2": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1e6),
              ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>"], {}),
}


def make_family(directory: Path, family: str, seed: int = 0) -> Path:
    """A checkpoint of one of FAMILIES, saved by transformers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, overrides, tokens, edits = FAMILIES[family]
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    params = dict(
        vocab_size=50304, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=50256, eos_token_id=50256,
    )
    config = AutoConfig.for_model(model_type, **{**params, **overrides})
    model = AutoModelForCausalLM.from_config(config).eval()
    _spread_weights(model)
    model.save_pretrained(directory, max_shard_size="8MB")  # sharded, with model.safetensors.index.json
    if edits:
        saved = json.loads((directory / "config.json").read_text())
        saved.update(edits)
        (directory / "config.json").write_text(json.dumps({k: v for k, v in saved.items() if v is not None}))
    write_bigcode_tokenizer(directory, tokens)
    return directory


def _spread_weights(model: torch.nn.Module) -> None:
    """Wider random weights than the default init, so logits are far from uniform and greedy
    decoding is not decided by float noise (ties would make token comparisons flaky)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.15 if "wte" in name or "wpe" in name or "embed_tokens" in name else 0.08)
            elif "bias" in name:
                p.normal_(0.0, 0.02)


def hf_model(directory: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def hf_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)
