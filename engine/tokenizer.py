"""Tokenizers of the checkpoints we run, through the `tokenizers` library.

Two layouts are accepted: `tokenizer.json`, or the older `vocab.json` +
`merges.txt` + `added_tokens.json` of the published Salesforce/codegen-* repos.
"""

from __future__ import annotations

import bisect
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, processors

from engine.architectures import fim_spellings
from engine.errors import EngineError
from engine.files import TOKENIZER_FILE_LIMIT, check_regular, read_json_object, read_text
from engine.options import FIM_LAYOUTS

@dataclass(frozen=True)
class FimTokens:
    """The ids of a vocabulary's FIM tokens (spelled as one of the architectures declares, engine/architectures/)."""

    prefix: int
    suffix: int
    middle: int
    pad: int | None
    layout: str  # what fim = "auto" builds (see _fim_layout)
    end: int | None = None  # ends an infill where it is not eos (CodeLlama)
    file_separator: int | None = None  # repository-level prompts (StarCoder2, Qwen2.5-Coder)
    repo_name: int | None = None
    suffix_without_leading_space: bool = False  # the suffix is encoded as a continuation (CodeLlama)


class Tokenizer:
    def __init__(self, tokenizer: HFTokenizer, eos_token: str | None, bos_token: str | None, fim_layout: str):
        self._tok = tokenizer
        # Text from the user's files is never parsed into special tokens: a
        # file that contains "<fim_prefix>" must not change the prompt layout.
        self._tok.encode_special_tokens = True
        # For text that goes on from other text: no space before it (see _without_leading_space).
        self._continuation = _without_leading_space(tokenizer)
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_id = tokenizer.token_to_id(eos_token) if eos_token else None
        self.bos_id = tokenizer.token_to_id(bos_token) if bos_token else None
        # What the tokenizer puts before every text: DeepSeek-Coder's and CodeLlama's bos, [] for most.
        # The models were trained on sequences that start with it, so every prompt does (engine/prompt.py).
        self.start_ids = _start_ids(tokenizer)
        self.fim = _find_fim(tokenizer, fim_layout)
        # Generation stops at these: special tokens, and the FIM tokens that end an infill or a file.
        ends = [] if self.fim is None else [self.fim.end, self.fim.file_separator, self.fim.repo_name]
        self.special_ids = frozenset(
            [i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special] + [i for i in ends if i is not None]
        )

    def encode(self, text: str, *, continuation: bool = False) -> list[int]:
        """The ids of text (without start_ids). continuation: text that goes on from other text, without
        the space a sentencepiece tokenizer puts before a text (the same ids for byte-level BPE)."""
        return (self._continuation if continuation else self._tok).encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], *, continuation: bool = False) -> str:
        """The text of ids; continuation: ids that go on from other ids (generated ones), whose leading
        space is part of the text, not the one a sentencepiece tokenizer put before a text."""
        return (self._continuation if continuation else self._tok).decode(ids, skip_special_tokens=True)

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def token(self, token_id: int) -> str | None:
        """The vocabulary's spelling of one id (special tokens as written, e.g. "<fim_prefix>")."""
        return self._tok.id_to_token(token_id)

    def spelling(self, pending: str, allowed: int) -> torch.Tensor:
        """Ids below `allowed` that can go on spelling `pending` (token healing, engine/generate.py)."""
        return self._spellings.ids(pending, allowed)

    @functools.cached_property
    def token_texts(self) -> list[str]:
        """The text of every id on its own, as generated after other text ("" for special tokens;
        partial UTF-8 decodes to U+FFFD)."""
        return self._continuation.decode_batch([[i] for i in range(self.vocab_size)], skip_special_tokens=True)

    @functools.cached_property
    def _spellings(self) -> "Spellings":
        return Spellings(self.token_texts)


class Spellings:
    """Which tokens can go on spelling a text, found by binary search in the sorted token texts.

    A token may spell part of the text, or all of it and go on with code; not all of it and more
    whitespace: that would indent past the cursor. (A scan of a 50k vocabulary per lookup took
    ~50 ms in Python, and healing looks up every run of blanks the suggestion is still to spell.)
    """

    def __init__(self, token_texts: list[str]):
        order = sorted((i for i, t in enumerate(token_texts) if t), key=token_texts.__getitem__)
        self._texts = [token_texts[i] for i in order]
        self._ids = torch.tensor(order, dtype=torch.long)
        self._blanks = sorted(c for c in set().union(*self._texts) if c.isspace())  # that follow a text in some token

    def ids(self, pending: str, allowed: int) -> torch.Tensor:
        """The ids below `allowed` whose text can go on spelling `pending`, in increasing order."""
        if not pending:
            return torch.empty(0, dtype=torch.long)
        parts = [self._range(pending[:n]) for n in range(1, len(pending))]  # the tokens spelling part of it
        start, end = self._range(pending, starting=True)  # all of it, and maybe more
        for blank in self._blanks:  # ... but not more whitespace
            skip_start, skip_end = self._range(pending + blank, starting=True)
            parts += [(start, skip_start)]
            start = max(start, skip_end)
        parts.append((start, end))
        ids = torch.cat([self._ids[a:b] for a, b in parts]).sort().values
        return ids[ids < allowed]

    def _range(self, text: str, starting: bool = False) -> tuple[int, int]:
        """Where the texts equal to `text` (or, `starting`, that start with it) lie in the sorted texts."""
        start = bisect.bisect_left(self._texts, text)
        after = text[:-1] + chr(ord(text[-1]) + 1) if starting else text + "\0"
        return start, bisect.bisect_left(self._texts, after, lo=start)


def _find_fim(tokenizer: HFTokenizer, layout: str) -> FimTokens | None:
    """The FIM tokens of the first spelling the vocabulary has; of spellings sharing prefix, suffix and
    middle (StarCoder's and StarCoder2's), the one with the most of its other tokens in the vocabulary."""
    found = []
    for spelling in fim_spellings():
        ids = [tokenizer.token_to_id(t) for t in (spelling.prefix, spelling.suffix, spelling.middle)]
        if None not in ids:
            optional = {key: tokenizer.token_to_id(t) if t else None for key, t in (
                ("pad", spelling.pad), ("end", spelling.end), ("file_separator", spelling.file_separator),
                ("repo_name", spelling.repo_name))}
            found.append(FimTokens(
                *ids, layout=layout, suffix_without_leading_space=spelling.suffix_without_leading_space, **optional
            ))  # fmt: skip
    if not found:
        return None
    same = [f for f in found if (f.prefix, f.suffix, f.middle) == (found[0].prefix, found[0].suffix, found[0].middle)]
    return max(same, key=lambda f: sum(i is not None for i in (f.pad, f.end, f.file_separator, f.repo_name)))


def load_tokenizer(directory: Path, eos_token_id: int | None = None) -> Tokenizer:
    directory = Path(directory)
    config_path = directory / "tokenizer_config.json"
    config = read_json_object(config_path) if config_path.exists() else {}
    specials = _special_tokens(directory, config)
    if (directory / "tokenizer.json").exists():
        text = read_text(directory / "tokenizer.json", TOKENIZER_FILE_LIMIT)
        try:
            tokenizer = HFTokenizer.from_str(text)
        except Exception as exc:  # the library raises plain Exception on bad JSON
            raise EngineError(f"cannot read {directory / 'tokenizer.json'}: {_first_line(exc)}") from None
    elif (directory / "vocab.json").exists() and (directory / "merges.txt").exists():
        tokenizer = _from_vocab_and_merges(directory)
        bos = specials.get("bos_token")
        if config.get("add_bos_token") is True and bos is not None and tokenizer.token_to_id(bos) is not None:
            # What transformers builds for this layout (with a tokenizer.json it ignores the key).
            tokenizer.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", special_tokens=[(bos, tokenizer.token_to_id(bos))]
            )
    else:
        raise EngineError(f"no tokenizer in {directory}: expected tokenizer.json, or vocab.json and merges.txt")

    # Declared special tokens are matched whole, never split by BPE.
    declared = [t for t in specials.values() if tokenizer.token_to_id(t) is not None]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in declared])
    eos = specials.get("eos_token")
    if eos is None and eos_token_id is not None:
        eos = tokenizer.id_to_token(eos_token_id)
    if eos is None and tokenizer.token_to_id("<|endoftext|>") is not None:
        eos = "<|endoftext|>"
    return Tokenizer(tokenizer, eos_token=eos, bos_token=specials.get("bos_token"), fim_layout=_fim_layout(config, config_path))


def _start_ids(tokenizer: HFTokenizer) -> list[int]:
    """The ids the post-processor puts before a text, as transformers' tokenizer does: tokenizer.json's
    decides. (transformers 5 reads tokenizer_config.json's add_bos_token only when there is no
    tokenizer.json; the published DeepSeek-Coder and CodeLlama files say bos in both.)"""
    probe = "a"
    bare = tokenizer.encode(probe, add_special_tokens=False).ids
    full = tokenizer.encode(probe, add_special_tokens=True).ids
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start]
    return []


def _without_leading_space(tokenizer: HFTokenizer) -> HFTokenizer:
    """The tokenizer without the space a sentencepiece tokenizer puts before a text (its "dummy prefix",
    so that a text's first word is spelled as after a space) and takes off again when decoding: for text
    that goes on from other text, such as a FIM suffix or generated tokens. The tokenizer itself when it
    has no such space (byte-level BPE).

    tokenizer.json spells that space as a Prepend("▁") normalizer (the older conversions, CodeLlama's)
    or a Metaspace pre-tokenizer that prepends, and its removal as a decoder's Strip of one space or
    a Metaspace decoder that prepends.
    """
    parts = {
        "normalizer": tokenizer.normalizer, "pre_tokenizer": tokenizer.pre_tokenizer, "decoder": tokenizer.decoder,
    }
    states = {key: json.loads(part.__getstate__()) if part is not None else None for key, part in parts.items()}
    bare = {key: _drop_leading_space(state) for key, state in states.items()}
    if bare == states:
        return tokenizer
    data = json.loads(tokenizer.to_str())
    data.update(bare)
    continuation = HFTokenizer.from_str(json.dumps(data))
    continuation.encode_special_tokens = True
    return continuation


def _drop_leading_space(part: dict | None) -> dict | None:
    """One tokenizer.json component (a normalizer, pre-tokenizer or decoder) without the steps that put a
    space before a text or take it off."""
    if part is None:
        return None
    kind = part.get("type")
    if kind == "Prepend" and part.get("prepend") == "▁":
        return None
    if kind == "Strip" and part.get("content") == " " and part.get("start", 0) > 0 and part.get("stop", 0) == 0:
        return None
    if kind == "Metaspace":  # as the installed tokenizers library writes it back, whatever the file's version
        return {**part, "prepend_scheme": "never"}
    for key in ("normalizers", "pretokenizers", "decoders"):  # a Sequence's members
        if kind == "Sequence" and isinstance(part.get(key), list):
            return {**part, key: [p for p in map(_drop_leading_space, part[key]) if p is not None]}
    return part


def _from_vocab_and_merges(directory: Path) -> HFTokenizer:
    """Rebuild GPT-2-style byte-level BPE plus the added tokens, as CodeGen's repos ship it."""
    for name in ("vocab.json", "merges.txt"):
        if check_regular(directory / name).st_size > TOKENIZER_FILE_LIMIT:
            raise EngineError(f"{directory / name} is larger than a tokenizer file can be")
    try:
        bpe = models.BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt"))
    except Exception as exc:
        raise EngineError(f"cannot read vocab.json / merges.txt in {directory}: {_first_line(exc)}") from None
    tokenizer = HFTokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    added_path = directory / "added_tokens.json"
    if added_path.exists():
        added = read_json_object(added_path)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in added.values()):
            raise EngineError(f"{added_path}: every added token needs a whole-number id")
        # Added in id order so each gets the id the file gives it; the
        # tokenizer matches them before byte-level splitting, longest first.
        for content, token_id in sorted(added.items(), key=lambda item: item[1]):
            if tokenizer.token_to_id(content) is not None:
                continue
            if token_id != tokenizer.get_vocab_size(with_added_tokens=True):
                raise EngineError(f"{added_path}: token id {token_id} leaves a gap after the vocabulary")
            tokenizer.add_tokens([AddedToken(content, normalized=False)])
    return tokenizer


def _special_tokens(directory: Path, config: dict) -> dict[str, str]:
    """bos/eos/unk/pad tokens declared by special_tokens_map.json or tokenizer_config.json (`config`, read
    by the caller), the latter winning."""
    found: dict[str, str] = {}
    map_path = directory / "special_tokens_map.json"
    for data in (read_json_object(map_path) if map_path.exists() else {}, config):
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = data.get(key)
            if isinstance(value, dict):  # {"content": "<|endoftext|>", ...}
                value = value.get("content")
            if isinstance(value, str) and value:
                found[key] = value
    return found


def _fim_layout(config: dict, path: Path) -> str:
    """PSM, unless tokenizer_config.json (`config`, read from `path`) names the layout the model was found
    to fill better ("fim_layout", our key; transformers loads it and leaves it unused)."""
    layout = config.get("fim_layout", "psm")
    if layout not in FIM_LAYOUTS:
        raise EngineError(f"{path}: fim_layout must be one of {', '.join(FIM_LAYOUTS)}, got {layout!r}")
    return layout


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
