"""Tiny random checkpoints in the exact Hugging Face layout, made with transformers.

Each is small enough to build in a second and run on CPU, yet has the
features that trip loaders: CodeGen with rotary_dim < head_dim and an
embedding padded past the tokenizer, GPTBigCode multi-query and multi-head,
the legacy `.bin` layout with attention-mask buffers, and both tokenizer
layouts; and one checkpoint per family of the rotary architectures (FAMILIES),
each with grouped-query attention and its family's FIM tokens, in a tokenizer
laid out as the family's published one (DeepSeek-Coder's and CodeLlama's put
a bos before every text; CodeLlama's is a sentencepiece-style BPE).
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
DEEPSEEK_BOS, DEEPSEEK_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"


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


def gpt2_tokenizer(special_tokens: list[str]):
    """GPT-2's byte-level BPE plus special tokens (ids from 50257 on), a `tokenizers` Tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(str(GPT2_DIR / "vocab.json"), str(GPT2_DIR / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return tok


def write_bigcode_tokenizer(directory: Path, fim_tokens: list[str]) -> None:
    """GPT-2's BPE plus FIM special tokens, saved as tokenizer.json (a test stand-in for StarCoder's,
    and for the families in FAMILIES that put no bos before a text)."""
    gpt2_tokenizer([ENDOFTEXT, *fim_tokens]).save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def write_deepseek_tokenizer(directory: Path, fim_tokens: list[str], add_bos_token: bool | None = True,
                             post_processor_bos: bool = True) -> None:  # fmt: skip
    """GPT-2's BPE with DeepSeek-Coder's bos, eos and FIM tokens (ids 50257 on), laid out as DeepSeek-Coder's
    files are: a post-processor that puts the bos before every text, "add_bos_token": true and the class
    LlamaTokenizerFast in tokenizer_config.json. add_bos_token None leaves the key out (the post-processor
    decides), post_processor_bos=False leaves the post-processor out."""
    from tokenizers import processors

    tok = gpt2_tokenizer([DEEPSEEK_BOS, DEEPSEEK_EOS, *fim_tokens])
    if post_processor_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{DEEPSEEK_BOS} $A", pair=f"{DEEPSEEK_BOS} $A $B", special_tokens=[(DEEPSEEK_BOS, 50257)]
        )
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "LlamaTokenizerFast", "bos_token": DEEPSEEK_BOS, "eos_token": DEEPSEEK_EOS,
              "add_eos_token": False}  # fmt: skip
    if add_bos_token is not None:
        config["add_bos_token"] = add_bos_token
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def write_codellama_tokenizer(directory: Path, fim_tokens: list[str], legacy: bool = True) -> None:
    """A sentencepiece-style BPE laid out as CodeLlama's tokenizer files: <unk> <s> </s>, the 256 byte
    tokens <0x00>.. a text falls back to, then pieces that start with "▁" (a space), trained here on a
    few standard-library modules (~2,000 ids); then the FIM tokens. A space goes before every text
    (sentencepiece's dummy prefix) and <s> before that.

    legacy: the layout of CodeLlama's tokenizer.json, whose normalizer puts the space; else the newer
    one, a Metaspace pre-tokenizer's. "☺" is a piece of its own that no merge takes, as in Llama's
    vocabulary, for the reference of CodeLlama's suffix (Meta's encode_infilling)."""
    import string
    import textwrap

    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)  # pieces within words
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens],
                                  initial_alphabet=["☺"], show_progress=False)  # fmt: skip
    # Lines without their line break, which is then spelled by its byte token, as in Llama's vocabulary.
    corpus = "".join(Path(m.__file__).read_text(encoding="utf-8") for m in (textwrap, string, json.decoder))
    tok.train_from_iterator(corpus.splitlines(), trainer)
    if legacy:
        tok.pre_tokenizer = None
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in fim_tokens])
    data = json.loads(tok.to_str())
    # The byte tokens are plain vocabulary, decoded to their byte (the trainer made them special).
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in byte_tokens]
    (directory / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    config = {"tokenizer_class": "CodeLlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "add_bos_token": True, "add_eos_token": False}  # fmt: skip
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


# name -> (transformers' model_type, config overrides, FIM and file tokens, config.json edits after saving,
# the writer of its tokenizer files). Shared: 4 query heads over 2 K/V heads, a window of 512; unless
# overridden, GPT-2's BPE and <|endoftext|> as bos and eos.
FAMILIES = {
    # A sliding window shorter than the tests' prompts (300 tokens).
    "starcoder2": ("starcoder2", dict(sliding_window=48, rope_theta=1e5),
                   [*STARCODER_FIM, "<file_sep>", "<repo_name>"], {}, write_bigcode_tokenizer),
    # DeepSeek-Coder 6.7B's config spells its rope as older exports do: rope_theta and a linear rope_scaling.
    "deepseek": ("llama", dict(bos_token_id=50257, eos_token_id=50258), ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"],
                 dict(rope_parameters=None, rope_theta=100000, rope_scaling={"type": "linear", "factor": 4.0}),
                 write_deepseek_tokenizer),
    # An embedding padded past the ~2,000 ids of its tokenizer.
    "codellama": ("llama", dict(rope_theta=1e6, vocab_size=2048, bos_token_id=1, eos_token_id=2),
                  ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"], {}, write_codellama_tokenizer),
    # Tied embeddings (as Qwen2.5-Coder up to 3B).
    "qwen2": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1e6),
              ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>"], {},
              write_bigcode_tokenizer),
}


def make_family(directory: Path, family: str, seed: int = 0, dtype: torch.dtype = torch.float32, **sizes) -> Path:
    """A checkpoint of one of FAMILIES, saved by transformers (in dtype: the published ones are bfloat16);
    sizes override the small defaults (hidden_size=...)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, overrides, tokens, edits, write_tokenizer = FAMILIES[family]
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    params = dict(
        vocab_size=50304, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=50256, eos_token_id=50256,
    )
    config = AutoConfig.for_model(model_type, **{**params, **overrides, **sizes})
    model = AutoModelForCausalLM.from_config(config).eval()
    _spread_weights(model)
    model.to(dtype).save_pretrained(directory, max_shard_size="8MB")  # sharded, with model.safetensors.index.json
    if edits:
        saved = json.loads((directory / "config.json").read_text())
        saved.update(edits)
        (directory / "config.json").write_text(json.dumps({k: v for k, v in saved.items() if v is not None}))
    write_tokenizer(directory, tokens)
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
