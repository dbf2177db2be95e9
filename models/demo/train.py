"""Train the demo model shipped in engine/demo_model/: a small GPTBigCode on the Python standard library.

    .venv/bin/python models/demo/train.py                 # train, evaluate, write engine/demo_model/
    .venv/bin/python models/demo/train.py --probe 20      # time 20 steps, write nothing
    .venv/bin/python models/demo/train.py --evaluate-only # figures of the checkpoint in --out

Recipe (SantaCoder-style, scaled down to a 2-core CPU: 50 minutes of training,
8 of evaluation):
- Data: the .py files of the running interpreter's standard library (no
  site-packages, no generated encodings/ tables), split by file into train and
  held-out (a hash of the path, so the split is fixed). The test suites
  (test/, tests/, idle_test/: two thirds of the code) are always trained on,
  never held out, so the held-out figures are about library code. Files are
  cut at line ends into chunks of at most context - CHUNK_MARGIN tokens, so
  that one chunk with its FIM tokens fills the context: a FIM middle is then
  trained at every position the server's prompts (up to the window less the
  new tokens) put it at. Training makes two passes over the chunks, each with
  its own FIM draws.
- Size: a small model (3.9M parameters) with a 256-token context sees twice as
  many tokens, and four times as many FIM examples, in the same time as a
  9.4M one with 512 tokens; the larger one never learned to use the suffix
  (engine/demo_model/README.md, Limits).
- Tokenizer: byte-level BPE trained with `tokenizers` on the training files,
  special tokens in the StarCoder spelling.
- Fill-in-the-middle on half of the training chunks (SantaCoder: fim_rate 0.5),
  three quarters of them in the SPM layout, the one the server builds for
  this model. A quarter have SantaCoder's split points, drawn uniformly over
  characters; three quarters a middle of 1 to 4 whole lines,
  cut just before line breaks, which is what an editor asks for on an empty
  line once the prompt builder has moved the trailing whitespace into the
  middle (engine/prompt.py):
    PSM: <fim_prefix>P<fim_suffix>S<fim_middle>M<|endoftext|>
    SPM: <fim_prefix><fim_suffix>S<fim_middle>PM<|endoftext|>   (variant 2 of
         Bavarian et al. 2022, the one engine/prompt.py builds)
  Other chunks are plain text followed by <|endoftext|>. The loss covers every token.
- Model: our own engine.architectures.gpt_bigcode.GPTBigCode (multi-query), trained with
  cache=None (batched causal attention) under bfloat16 autocast (float32 master
  weights; 1.5x the float32 speed on a 2-core AMD EPYC, 2x on an Intel CPU
  with AMX); AdamW, linear warmup then cosine decay, fixed seed. Weights are saved in float16 (the engine casts to float32 on CPU).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.config import ModelConfig  # noqa: E402
from engine.architectures.gpt_bigcode import GPTBigCode  # noqa: E402
from engine.paths import DEMO_MODEL_DIR  # noqa: E402

EOS, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD = "<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"
SPECIAL_TOKENS = [EOS, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD]  # ids 0..4
SKIP_DIRS = {"site-packages", "__pycache__", "encodings"}  # encodings/: generated tables
TEST_DIRS = {"test", "tests", "idle_test"}  # trained on, never held out: the figures are about library code
MAX_FILE_BYTES = 200_000  # skips a few generated tables (pydoc_data/topics.py, ...)
HELD_OUT_PER_20 = 1  # 1 file in 20 is held out
# Chunks leave this many tokens of the context free: counted line by line (a
# chunk's own tokenization differs by a few tokens), a chunk, its FIM tokens
# and <|endoftext|> fit the context.
CHUNK_MARGIN = 32


# ---------------------------------------------------------------- data

def stdlib_files() -> tuple[list[Path], list[Path]]:
    """(train, held_out) .py files of this interpreter's standard library, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    train, held_out = [], []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if SKIP_DIRS & set(rel.parts[:-1]) or path.stat().st_size > MAX_FILE_BYTES:
            continue
        bucket = hashlib.sha1(rel.as_posix().encode()).digest()[0] % 20
        is_test = bool(TEST_DIRS & set(rel.parts[:-1]))
        (held_out if bucket < HELD_OUT_PER_20 and not is_test else train).append(path)
    return train, held_out


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def chunks_of(text: str, count_tokens, limit: int) -> list[str]:
    """Consecutive pieces of text, cut at line ends, each of at most `limit` tokens (unless one line is longer).

    count_tokens: list of lines -> their token counts.
    """
    lines = text.splitlines(keepends=True)
    pieces, current, size = [], "", 0
    for line, n in zip(lines, count_tokens(lines)):
        if current and size + n > limit:
            pieces.append(current)
            current, size = "", 0
        current += line
        size += n
    if current.strip():
        pieces.append(current)
    return pieces


def fim_pieces(chunk: str, rng: random.Random, fim_rate: float, spm_rate: float, line_rate: float) -> list[str]:
    """The chunk as a list of texts and special tokens: plain, PSM or SPM (see the module docstring)."""
    if rng.random() >= fim_rate:
        return [chunk, EOS]
    line_ends = [i for i, ch in enumerate(chunk) if ch == "\n"]
    if rng.random() < line_rate and len(line_ends) >= 2:
        # 1 to 4 whole lines, cut just before line breaks: the prompt builder
        # ends the prefix at the last non-blank character before the cursor.
        first = rng.randrange(len(line_ends) - 1)
        a, b = line_ends[first], line_ends[min(len(line_ends) - 1, first + rng.randint(1, 4))]
        a = len(chunk[:a].rstrip())  # blank lines before the cursor go to the middle too
    else:  # SantaCoder: two split points uniform over characters
        a, b = sorted(rng.randint(0, len(chunk)) for _ in range(2))
    prefix, middle, suffix = chunk[:a], chunk[a:b], chunk[b:]
    if rng.random() < spm_rate:
        return [FIM_PREFIX, FIM_SUFFIX, suffix, FIM_MIDDLE, prefix, middle, EOS]
    return [FIM_PREFIX, prefix, FIM_SUFFIX, suffix, FIM_MIDDLE, middle, EOS]


def encode_pieces(tokenizer: Tokenizer, docs: list[list[str]]) -> tuple[list[int], list[int]]:
    """One token stream for all docs, and the offset where each doc starts.

    Each text piece is encoded on its own, as the editor's prompt builder does
    with a prefix and a suffix, so split points fall on token boundaries.
    """
    special = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    texts = [p for doc in docs for p in doc if p not in special and p]
    encoded = iter(e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False))
    stream, starts = [], []
    for doc in docs:
        starts.append(len(stream))
        for piece in doc:
            if piece in special:
                stream.append(special[piece])
            elif piece:
                stream.extend(next(encoded))
    return stream, starts


def train_tokenizer(files: list[Path], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((t for t in map(read_text, files) if t), trainer=trainer)
    return tokenizer


# ---------------------------------------------------------------- model

def model_config(args, vocab_size: int) -> dict:
    """config.json in the layout transformers' GPTBigCodeConfig writes."""
    return {
        "architectures": ["GPTBigCodeForCausalLM"], "model_type": "gpt_bigcode",
        "vocab_size": vocab_size, "n_positions": args.context, "n_embd": args.n_embd, "n_layer": args.n_layer,
        "n_head": args.n_head, "n_inner": 4 * args.n_embd, "multi_query": True,
        "activation_function": "gelu_pytorch_tanh", "layer_norm_epsilon": 1e-5, "scale_attn_weights": True,
        "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0, "initializer_range": 0.02,
        "bos_token_id": 0, "eos_token_id": 0, "tie_word_embeddings": True, "dtype": "float16",
    }


def init_weights(model: GPTBigCode, n_layer: int) -> None:
    """GPT-2 initialization; residual projections scaled down by depth; lm_head tied to wte."""
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            torch.nn.init.zeros_(p)
        elif "ln" in name:
            torch.nn.init.ones_(p)
        else:
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
            torch.nn.init.normal_(p, 0.0, std)
    model.lm_head.weight = model.transformer.wte.weight


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_at(stream: torch.Tensor, starts: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of context+1 tokens from each start: inputs and next-token targets."""
    rows = torch.stack([stream[s : s + context + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]


def save_checkpoint(out: Path, model: GPTBigCode, config: dict, tokenizer: Tokenizer) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": config["n_positions"],
        "bos_token": EOS, "eos_token": EOS, "unk_token": EOS, "clean_up_tokenization_spaces": False,
        "additional_special_tokens": SPECIAL_TOKENS[1:],
        # codegen-lsp's fim = "auto" builds SPM prompts for this model: it fills
        # far better after SPM than after PSM (figures in README.md).
        "fim_layout": "spm",
        "languages": ["python"],  # trained on Python only: lsp_server/languages.py reads it
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def train(args) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    train_files, held_out = stdlib_files()
    print(f"stdlib {sysconfig.get_paths()['stdlib']}: {len(train_files)} train files, {len(held_out)} held out", flush=True)
    tokenizer = train_tokenizer(train_files, args.vocab_size)
    rng = random.Random(args.seed)
    def count_tokens(lines: list[str]) -> list[int]:
        return [len(e.ids) for e in tokenizer.encode_batch(lines, add_special_tokens=False)]

    chunks = [c for t in map(read_text, train_files) if t for c in chunks_of(t, count_tokens, args.context - CHUNK_MARGIN)]
    # Each pass over the chunks draws its own FIM transformations (and order),
    # so a chunk seen again teaches a different split.
    epochs = math.ceil(args.steps * args.batch / len(chunks))
    docs = [fim_pieces(c, rng, args.fim_rate, args.fim_spm_rate, args.fim_line_rate) for _ in range(epochs) for c in chunks]
    stream, starts = encode_pieces(tokenizer, docs)
    stream.extend([tokenizer.token_to_id(EOS)] * (args.context + 1))  # the last chunks' rows end in padding
    stream, starts = torch.tensor(stream), torch.tensor(starts)
    n_fim = sum(d[0] == FIM_PREFIX for d in docs)
    lengths = (starts[1:] - starts[:-1]).tolist()
    print(f"tokenizer {tokenizer.get_vocab_size()} ids; {len(chunks)} chunks x {epochs} passes ({n_fim} FIM), "
          f"{len(stream) / 1e6:.2f}M tokens, {epochs * sum(map(len, chunks)) / len(stream):.2f} chars/token, "
          f"chunks of {sum(lengths) / len(lengths):.0f} tokens on average, "
          f"{sum(n > args.context + 1 for n in lengths)} longer than the context; "
          f"{time.time() - t0:.0f}s", flush=True)

    config = model_config(args, tokenizer.get_vocab_size())
    model = GPTBigCode(ModelConfig.from_dict(config))
    init_weights(model, args.n_layer)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, n_embd {args.n_embd}, {args.n_layer} layers, "
          f"{args.n_head} heads (multi-query), context {args.context}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "wpe" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95),
    )
    steps = args.probe or args.steps
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.cat([e * len(chunks) + torch.randperm(len(chunks), generator=generator) for e in range(epochs)])
    input_pos = torch.arange(args.context)
    model.train()
    t_train, smoothed = time.time(), None
    for step in range(steps):
        picks = order[(torch.arange(args.batch) + step * args.batch) % len(order)]
        x, y = batch_at(stream, starts[picks], args.context)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(x, input_pos, cache=None)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        smoothed = loss.item() if smoothed is None else 0.95 * smoothed + 0.05 * loss.item()
        if step % args.log_every == 0 or step == steps - 1:
            elapsed = time.time() - t_train
            tok_s = (step + 1) * args.batch * args.context / elapsed
            print(f"step {step:5d}  loss {loss.item():.3f}  smoothed {smoothed:.3f}  lr {lr_at(step, args):.2e}  "
                  f"{tok_s:,.0f} tok/s  {elapsed / 60:.1f} min", flush=True)
    if args.probe:
        return
    out = Path(args.out)
    save_checkpoint(out, model, config, tokenizer)
    print(f"wrote {out} ({sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 1e6:.1f} MB) "
          f"after {(time.time() - t0) / 60:.1f} min", flush=True)
    if not args.no_eval:
        evaluate(args)


# ---------------------------------------------------------------- evaluation

def evaluate(args) -> dict:
    """Held-out figures of the checkpoint in args.out, through the engine's own loading and generation."""
    from evaluate import evaluate_checkpoint  # models/demo/evaluate.py, beside this file

    figures = evaluate_checkpoint(Path(args.out), n_lines=args.eval_lines, threads=args.threads, seed=args.seed)
    print(json.dumps(figures, indent=2), flush=True)
    (Path(args.out) / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DEMO_MODEL_DIR))
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--context", type=int, default=256, help="training context = n_positions")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=4500)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--fim-rate", type=float, default=0.5)
    p.add_argument("--fim-spm-rate", type=float, default=0.75, help="share of FIM chunks in the SPM layout")
    p.add_argument("--fim-line-rate", type=float, default=0.75, help="share of FIM chunks split at line ends")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32 (no bfloat16 autocast)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-lines", type=int, default=1000)
    p.add_argument("--probe", type=int, default=0, help="time this many steps; write nothing")
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--evaluate-only", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    args = parse_args()
    evaluate(args) if args.evaluate_only else train(args)
