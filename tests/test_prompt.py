"""Prompt layouts (FIM for both spellings, left to right) and the token budget."""

import json

import pytest

from engine.errors import EngineError
from engine.prompt import build_prompt, cut_left
from engine.tokenizer import load_tokenizer

PREFIX = "def add(a, b):\n    return"
SUFFIX = "\n\nprint(add(1, 2))\n"


@pytest.fixture(scope="module")
def starcoder_tok(bigcode_mq_dir):
    return load_tokenizer(bigcode_mq_dir)


@pytest.fixture(scope="module")
def santacoder_tok(bigcode_mh_dir):
    return load_tokenizer(bigcode_mh_dir)


@pytest.fixture(scope="module")
def codegen_tok(codegen_dir):
    return load_tokenizer(codegen_dir)


def special_ids(directory, names):
    added = json.loads((directory / "tokenizer.json").read_text())["added_tokens"]
    by_name = {t["content"]: t["id"] for t in added}
    return [by_name[n] for n in names]


@pytest.mark.parametrize("fixture, spelling", [("bigcode_mq_dir", "_"), ("bigcode_mh_dir", "-")])
def test_fim_layouts_are_exact(request, fixture, spelling):
    directory = request.getfixturevalue(fixture)
    tok = load_tokenizer(directory)
    pre, suf, mid = special_ids(directory, [f"<fim{spelling}{n}>" for n in ("prefix", "suffix", "middle")])
    assert len({pre, suf, mid}) == 3 and min(pre, suf, mid) >= 50257  # added after GPT-2's vocabulary
    p_ids, s_ids = tok.encode(PREFIX), tok.encode(SUFFIX)

    psm = build_prompt(tok, PREFIX, SUFFIX, max_prompt_tokens=256)
    assert psm.layout == "psm"
    assert psm.ids == [pre, *p_ids, suf, *s_ids, mid]
    assert build_prompt(tok, PREFIX, SUFFIX, max_prompt_tokens=256, fim="psm").ids == psm.ids

    spm = build_prompt(tok, PREFIX, SUFFIX, max_prompt_tokens=256, fim="spm")
    assert spm.layout == "spm"
    assert spm.ids == [pre, suf, *s_ids, mid, *p_ids]

    off = build_prompt(tok, PREFIX, SUFFIX, max_prompt_tokens=256, fim="off")
    assert off.layout == "prefix" and off.ids == p_ids


def test_user_text_spelling_fim_tokens_is_not_a_special_token(starcoder_tok):
    prompt = build_prompt(starcoder_tok, "x = '<fim_middle>'", "", max_prompt_tokens=64)
    assert prompt.ids.count(starcoder_tok.fim.middle) == 1  # only the layout's own


def test_codegen_gets_the_prefix_only(codegen_tok):
    assert codegen_tok.fim is None
    for fim in ("auto", "psm", "spm", "off"):
        prompt = build_prompt(codegen_tok, PREFIX, SUFFIX, max_prompt_tokens=256, fim=fim)
        assert prompt.layout == "prefix"
        assert prompt.ids == codegen_tok.encode(PREFIX)
        assert prompt.suffix_tokens == 0


def test_empty_prefix_starts_from_the_document_start_token(codegen_tok):
    assert build_prompt(codegen_tok, "", "x", max_prompt_tokens=16).ids == [codegen_tok.eos_id]


def test_bad_settings_are_clear_errors(codegen_tok):
    with pytest.raises(EngineError, match="unknown fim"):
        build_prompt(codegen_tok, "x", "", max_prompt_tokens=16, fim="middle")
    with pytest.raises(EngineError, match="too small"):
        build_prompt(codegen_tok, "x", "", max_prompt_tokens=0)


def test_budget_split_and_cut_points(starcoder_tok, stdlib_code):
    tok = starcoder_tok
    middle = len(stdlib_code) // 2
    prefix, suffix = stdlib_code[:middle], stdlib_code[middle:]
    prompt = build_prompt(tok, prefix, suffix, max_prompt_tokens=200, suffix_share=0.25)
    assert len(prompt.ids) <= 200
    assert prompt.suffix_tokens <= 50
    # The prefix takes the rest, less at most one cut step (default max_prompt_tokens // 2 chars).
    assert prompt.prefix_tokens + prompt.suffix_tokens + 3 >= 200 - len(tok.encode(prefix[prompt.prefix_start - 100 : prompt.prefix_start]))
    assert len(tok.encode(prefix)) > 200
    # Suffix cut on the right at a line end, prefix cut on the left at a line start.
    assert suffix[prompt.suffix_end - 1] == "\n"
    assert prefix[prompt.prefix_start - 1] == "\n"
    kept_prefix, kept_suffix = prefix[prompt.prefix_start :], suffix[: prompt.suffix_end]
    assert prompt.ids == [tok.fim.prefix, *tok.encode(kept_prefix), tok.fim.suffix, *tok.encode(kept_suffix), tok.fim.middle]
    # A short suffix leaves its share to the prefix.
    short = build_prompt(tok, prefix, "\n", max_prompt_tokens=200)
    assert short.prefix_tokens > prompt.prefix_tokens


@pytest.mark.parametrize("family", ["deepseek", "codellama"])
def test_the_bos_is_first_in_every_layout_and_counted_in_the_budget(family, family_checkpoint, stdlib_code):
    tok = load_tokenizer(family_checkpoint(family))
    bos, f = tok.bos_id, tok.fim
    assert tok.start_ids == [bos]
    middle = len(stdlib_code) // 2
    prefix, suffix = stdlib_code[:middle].rstrip(), stdlib_code[middle:]
    for fim, specials in (("psm", [bos, f.prefix]), ("spm", [bos, f.prefix, f.suffix]), ("off", [bos])):
        prompt = build_prompt(tok, prefix, suffix, max_prompt_tokens=100, fim=fim)
        assert prompt.ids[: len(specials)] == specials and prompt.ids.count(bos) == 1
        assert len(prompt.ids) <= 100
        assert len(prompt.ids) == 1 + (3 if fim != "off" else 0) + prompt.prefix_tokens + prompt.suffix_tokens
    assert build_prompt(tok, "", "x", max_prompt_tokens=16, fim="off").ids == [bos]  # nothing before the cursor
    # bos and three FIM tokens leave no room for text in 4.
    with pytest.raises(EngineError, match="too small"):
        build_prompt(tok, "def", "", max_prompt_tokens=4)
    assert len(tok.encode("def")) == 1
    assert build_prompt(tok, "def", "", max_prompt_tokens=5).ids == [bos, f.prefix, *tok.encode("def"), f.suffix, f.middle]


def test_prefix_window_moves_rarely_and_in_large_steps(codegen_tok, stdlib_code):
    """Typing at the end past the budget: the cut moves a few times, by >= step chars, always to a line start."""
    text = stdlib_code * 2
    base = 1200
    starts = [None]
    for end in range(base, base + 600):  # 600 keystrokes
        prompt = build_prompt(
            codegen_tok, text[:end], "", max_prompt_tokens=128, cut_step_chars=200, previous_prefix_start=starts[-1]
        )
        assert len(prompt.ids) <= 128
        assert prompt.prefix_start == 0 or text[prompt.prefix_start - 1] == "\n"
        starts.append(prompt.prefix_start)
    starts = starts[1:]
    moves = [b - a for a, b in zip(starts, starts[1:]) if b != a]
    assert all(m >= 200 - 80 for m in moves)  # anchors are >= step apart (minus a line's slack)
    assert 1 <= len(moves) <= 600 // 150
    assert all(b >= a for a, b in zip(starts, starts[1:]))  # typing never moves the window back
    # Deleting back under the budget: the whole prefix again, whatever the previous cut was.
    short = build_prompt(codegen_tok, text[:300], "", max_prompt_tokens=128, previous_prefix_start=starts[-1])
    assert short.prefix_start == 0


def test_cut_left_fallback_for_one_huge_line(codegen_tok):
    ids, start = cut_left(codegen_tok, "x" * 5000, budget=100, step=256)
    assert start == 0 and 75 <= len(ids) <= 100


def test_trailing_whitespace_is_left_to_heal(codegen_tok, starcoder_tok):
    prompt = build_prompt(codegen_tok, "def f():\n    ", "", max_prompt_tokens=100)
    assert prompt.heal == "\n    " and prompt.ids == codegen_tok.encode("def f():")
    assert build_prompt(codegen_tok, "x = \t", "", max_prompt_tokens=100).heal == " \t"
    assert build_prompt(codegen_tok, "x = 1\n\n", "", max_prompt_tokens=100).heal == "\n\n"
    assert build_prompt(codegen_tok, "x = 1", "", max_prompt_tokens=100).heal == ""
    f = starcoder_tok.fim
    psm = build_prompt(starcoder_tok, "def f():\n    ", "\n", max_prompt_tokens=100, fim="psm")
    assert psm.heal == "\n    " and psm.ids[: psm.prefix_tokens + 2] == [f.prefix, *starcoder_tok.encode("def f():"), f.suffix]
    spm = build_prompt(starcoder_tok, "def f():\n    ", "\n", max_prompt_tokens=100, fim="spm")
    assert spm.heal == "\n    " and spm.ids[-spm.prefix_tokens :] == starcoder_tok.encode("def f():")


def test_a_checkpoint_may_name_the_layout_auto_builds(bigcode_mq_dir, tmp_path):
    import shutil

    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (bigcode_mq_dir / name).is_file():
            shutil.copy(bigcode_mq_dir / name, tmp_path / name)
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    config_path.write_text(json.dumps({**config, "fim_layout": "spm"}))
    tok = load_tokenizer(tmp_path)
    assert tok.fim.layout == "spm"
    auto = build_prompt(tok, PREFIX, SUFFIX, max_prompt_tokens=256)
    assert auto.layout == "spm" and auto.ids == build_prompt(tok, PREFIX, SUFFIX, max_prompt_tokens=256, fim="spm").ids
    assert build_prompt(tok, PREFIX, SUFFIX, max_prompt_tokens=256, fim="psm").layout == "psm"  # a setting still wins

    config_path.write_text(json.dumps({**config, "fim_layout": "mps"}))
    with pytest.raises(EngineError, match="fim_layout must be one of psm, spm, got 'mps'"):
        load_tokenizer(tmp_path)
