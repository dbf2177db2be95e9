"""A GPTBigCode checkpoint as one GGUF file (llama.cpp's arch "starcoder"), tokenizer included,
so a team can serve on llama.cpp the very weights it tried locally.

    codegen-lsp export-gguf MODEL OUT.gguf [--outtype f32|f16]

Written with the `gguf` package (`pip install 'codegen-lsp[gguf]'`), the writer llama.cpp's own
converter uses. The names and metadata are those of llama.cpp's convert_hf_to_gguf.py for
GPTBigCodeForCausalLM, with three differences: the MLP width is the checkpoint's n_inner (the
converter writes 4 * n_embd), and a checkpoint without multi-query (multi_query false) gets its
per-head [q | k | v] rows regrouped as [all q | all k | all v] with n_head K/V heads (the
converter writes one), and the FIM tokens' ids are written (the converter leaves llama.cpp to
guess them). The tokenizer must be byte-level BPE in a tokenizer.json (GPT-2's pre-tokenizer,
which llama.cpp calls "gpt-2"); a tied lm_head is left out, as llama.cpp takes token_embd for it.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.checkpoint import resolve_model_dir
from engine.config import ModelConfig
from engine.errors import EngineError
from engine.files import read_text
from engine.paths import DEMO_MODEL_DIR
from engine.tokenizer import load_tokenizer
from engine.weights import read_state_dict

NAMES = {
    "wte": "token_embd", "wpe": "position_embd", "ln_f": "output_norm",
    "ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down",
}  # fmt: skip
TOKENIZER_LIMIT = 64 * 1024 * 1024


def gguf_name(name: str) -> str | None:
    """The GGUF tensor name of a checkpoint's parameter (None: not written)."""
    if name == "lm_head.weight":
        return "output.weight"
    name = name.removeprefix("transformer.")
    stem, _, kind = name.rpartition(".")
    if stem.startswith("h."):
        _, layer, part = stem.split(".", 2)
        return f"blk.{int(layer)}.{NAMES[part]}.{kind}" if part in NAMES else None
    return f"{NAMES[stem]}.{kind}" if stem in NAMES else None


def export_gguf(spec: str | None, out: Path, outtype: str = "f32") -> Path:
    """Write the GGUF file of a GPTBigCode checkpoint (None: the demo model); returns out."""
    try:
        import gguf
        import numpy as np
    except ImportError:
        raise EngineError("export-gguf needs the gguf package: pip install 'codegen-lsp[gguf]'") from None
    if outtype not in ("f32", "f16"):
        raise EngineError(f"unknown --outtype {outtype!r} (use f32 or f16)")
    directory = resolve_model_dir(spec or str(DEMO_MODEL_DIR))
    config = ModelConfig.from_file(directory / "config.json")
    if config.model_type != "gpt_bigcode":
        raise EngineError(f"llama.cpp has no {config.model_type} architecture: only GPTBigCode checkpoints can be exported")
    tokens, types, merges, specials = _vocabulary(directory, config.vocab_size, gguf.TokenType)

    writer = gguf.GGUFWriter(str(out), "starcoder")
    writer.add_name(directory.name)
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(config.n_inner)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for setter, token_id in ((writer.add_bos_token_id, config.bos_token_id), (writer.add_eos_token_id, config.eos_token_id)):
        if token_id is not None:
            setter(token_id)
    writer.add_add_bos_token(False)
    # The FIM tokens by id: llama-server's /infill builds its prompt from these where the file has
    # them, and otherwise guesses them from a list of spellings (which is all its converter leaves it).
    fim = load_tokenizer(directory).fim
    if fim is not None:
        keys = gguf.Keys.Tokenizer
        for key, token_id in ((keys.FIM_PRE_ID, fim.prefix), (keys.FIM_SUF_ID, fim.suffix), (keys.FIM_MID_ID, fim.middle),
                              (keys.FIM_PAD_ID, fim.pad), (keys.FIM_SEP_ID, fim.file_separator),
                              (keys.FIM_REP_ID, fim.repo_name)):  # fmt: skip
            if token_id is not None:
                writer.add_uint32(key, token_id)

    for name, tensor in read_state_dict(directory).items():
        target = gguf_name(name)
        if target is None:
            continue
        tensor = tensor.float()
        if target.endswith("attn_qkv.weight") or target.endswith("attn_qkv.bias"):
            tensor = _grouped_qkv(tensor, config)
        # 1-D tensors (norms, biases) stay float32, as llama.cpp's converter writes them.
        dtype = np.float16 if outtype == "f16" and tensor.dim() > 1 else np.float32
        writer.add_tensor(target, tensor.numpy().astype(dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _grouped_qkv(tensor, config: ModelConfig):
    """c_attn rows as llama.cpp reads them: all q, then all k, then all v."""
    if config.multi_query:
        return tensor  # already [q: E | k: D | v: D]
    H, D = config.n_head, config.head_dim
    rest = tensor.shape[1:]
    return tensor.reshape(H, 3, D, *rest).transpose(0, 1).reshape(3 * H * D, *rest)


def _vocabulary(directory: Path, rows: int, TokenType) -> tuple[list[str], list[int], list[str], set[int]]:
    """Tokens (one per row of the embedding, padded), their types and the BPE merges."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise EngineError(f"{directory}: export-gguf needs a tokenizer.json (byte-level BPE)")
    data = json.loads(read_text(path, limit=TOKENIZER_LIMIT))
    model, pre = data.get("model") or {}, data.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel":
        raise EngineError(f"{path}: only byte-level BPE tokenizers can be exported (GPT-2's pre-tokenizer)")
    by_id = {i: t for t, i in model["vocab"].items()}
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    by_id.update({i: t["content"] for i, t in added.items()})
    if max(by_id) >= rows:
        raise EngineError(f"{path}: token id {max(by_id)} is past the model's {rows} embedding rows")
    tokens, types = [], []
    for i in range(rows):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL if i not in added else
                         TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)  # fmt: skip
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges, {i for i, t in added.items() if t.get("special")}
