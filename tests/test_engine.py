"""Our engine against transformers on the same checkpoints: logits, greedy tokens, tokenizer ids."""

import json

import pytest
import torch

import checkpoints
from engine.architectures.gpt_bigcode import GPTBigCodeBlock
from engine.generate import SamplingParams, generate
from engine.loading import load_model
from engine.session import Session
from engine import session as session_module
from engine.kv_cache import KVCache
from greedy import greedy_with_logits

PROMPTS = ["def fibonacci(n):\n", "import os\nimport sys\n\nclass Config:\n    def __init__(self"]


@pytest.fixture(scope="session")
def models(any_checkpoint):
    return load_model(str(any_checkpoint), device="cpu"), checkpoints.hf_model(any_checkpoint)


def test_logits_equal_transformers_on_full_prompt(models, stdlib_code):
    ours, ref = models
    ids = ours.tokenizer.encode(stdlib_code)[:300]
    expected = ref(torch.tensor([ids])).logits
    cache = KVCache(ours.config, 512, "cpu", torch.float32)
    actual = ours.model(torch.tensor([ids]), torch.arange(len(ids)), cache, kv_len=len(ids))
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_logits_equal_transformers_when_fed_in_chunks(models, stdlib_code, monkeypatch):
    chunks_equal_transformers(*models, stdlib_code, monkeypatch)


def test_logits_equal_transformers_through_our_prefill_attention(models, stdlib_code, monkeypatch):
    """The same with our prefill attention kernel (engine/kernels/cpu_matvec.cpp) forced for the
    model's shape: these small models' load-time measurement may keep SDPA."""
    from engine import cpu_kernels
    from engine.kv_cache import PREFILL_ATTENTION, attention_shape
    from engine.paths import cache_dir

    ours, _ = models
    if not cpu_kernels.compiled_kernels(cache_dir() / "kernels") or ours.config.head_dim % 16:
        pytest.skip("our CPU kernels are not built here, or the head dim is no multiple of 16")
    monkeypatch.setitem(PREFILL_ATTENTION, (*attention_shape(ours.config), torch.float32), torch.ops.codegen_lsp_cpu.isas().split()[0])
    chunks_equal_transformers(*models, stdlib_code, monkeypatch)


def chunks_equal_transformers(ours, ref, stdlib_code, monkeypatch):
    ids = ours.tokenizer.encode(stdlib_code)[:200]
    expected = ref(torch.tensor([ids])).logits[0]
    monkeypatch.setattr(session_module, "PREFILL_CHUNK", 37)  # uneven chunks over a growing cache
    monkeypatch.setattr(session_module, "CACHE_STEP", 64)
    session = Session(ours)
    for n in (50, 120, 200):
        logits, _ = session.prefill(ids[:n])
        torch.testing.assert_close(logits, expected[n - 1], atol=1e-4, rtol=1e-4)
    # One token at a time through the decode path.
    for n in range(150, 160):
        logits, reused = session.prefill(ids[:n])
        torch.testing.assert_close(logits, expected[n - 1], atol=1e-4, rtol=1e-4)


def _reference_greedy(ref, tokenizer, ids, steps):
    allowed = tokenizer.vocab_size
    suppress = list(range(allowed, ref.config.vocab_size)) or None
    out = ref.generate(
        torch.tensor([ids]), max_new_tokens=steps, do_sample=False, suppress_tokens=suppress,
        eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.eos_id,
    )[0, len(ids):].tolist()
    # Our generation stops at eos and at every special token (the FIM tokens that end an infill, the bos).
    stops = [i for i, token in enumerate(out) if token == tokenizer.eos_id or token in tokenizer.special_ids]
    return out[: stops[0]] if stops else out


def test_greedy_tokens_equal_transformers_generate(models, stdlib_code):
    ours, ref = models
    prompts = [ours.tokenizer.encode(p) for p in PROMPTS] + [ours.tokenizer.encode(stdlib_code)[:300]]
    assert len(prompts[-1]) == 300
    for ids in prompts:
        result = generate(Session(ours), ids, SamplingParams(max_new_tokens=32))
        assert result.token_ids == _reference_greedy(ref, ours.tokenizer, ids, 32)
        assert result.stats.prompt_tokens == len(ids)
        assert result.stats.generated_tokens == len(result.token_ids)


def test_ids_past_the_tokenizer_are_never_emitted(codegen_dir):
    lm = load_model(str(codegen_dir), device="cpu")
    assert lm.config.vocab_size == 50400 and lm.tokenizer.vocab_size == 50295
    lm.model.lm_head.bias[50295:] = 1e4  # the padded rows now win every argmax and nearly all mass
    for params in (SamplingParams(max_new_tokens=8), SamplingParams(max_new_tokens=8, temperature=1.0, seed=3)):
        result = generate(Session(lm), lm.tokenizer.encode("x = "), params)
        assert result.token_ids and max(result.token_ids) < 50295


@pytest.mark.parametrize("fixture", ["codegen_dir", "codegen_bin_dir", "bigcode_mq_dir"])
def test_tokenizer_ids_equal_transformers(fixture, request, stdlib_code):
    directory = request.getfixturevalue(fixture)
    ours = load_model(str(directory), device="cpu").tokenizer
    ref = checkpoints.hf_tokenizer(directory)
    for text in (stdlib_code, "\tif x:\n\t\t\treturn  {'a':  1}\n", "    " * 9 + "deep()\n"):
        assert ours.encode(text) == ref(text, add_special_tokens=False)["input_ids"]
        assert ours.decode(ours.encode(text)) == text


def test_fim_tokens_found_in_both_spellings(bigcode_mq_dir, bigcode_mh_dir, codegen_dir):
    starcoder = load_model(str(bigcode_mq_dir), device="cpu").tokenizer
    santacoder = load_model(str(bigcode_mh_dir), device="cpu").tokenizer
    assert starcoder.fim.prefix == starcoder.token_id("<fim_prefix>")
    assert santacoder.fim.middle == santacoder.token_id("<fim-middle>")
    assert load_model(str(codegen_dir), device="cpu").tokenizer.fim is None
    # File text that spells a special token stays plain text.
    assert starcoder.fim.prefix not in starcoder.encode("x = '<fim_prefix>'")


def test_sampling_is_reproducible_with_a_seed(bigcode_mq_dir):
    lm = load_model(str(bigcode_mq_dir), device="cpu")
    ids = lm.tokenizer.encode(PROMPTS[1])
    params = SamplingParams(max_new_tokens=16, temperature=1.5, top_p=0.95, seed=7)
    first, second = (generate(Session(lm), ids, params).token_ids for _ in range(2))
    assert first == second
    greedy = generate(Session(lm), ids, SamplingParams(max_new_tokens=16)).token_ids
    # top_p this small keeps only the most likely token: the same as greedy.
    tiny_p = generate(Session(lm), ids, SamplingParams(max_new_tokens=16, temperature=1.0, top_p=1e-6, seed=1))
    assert tiny_p.token_ids == greedy


def test_stop_strings_cut_the_text(bigcode_mq_dir):
    lm = load_model(str(bigcode_mq_dir), device="cpu")
    ids = lm.tokenizer.encode(PROMPTS[0])
    full = generate(Session(lm), ids, SamplingParams(max_new_tokens=12))
    assert full.finish_reason == "length" and len(full.text) > 4
    stop = full.text[3:5]
    cut = generate(Session(lm), ids, SamplingParams(max_new_tokens=12, stop=(stop,)))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_stays_close_to_float32(codegen_dir, dtype):
    full = load_model(str(codegen_dir), device="cpu")
    half = load_model(str(codegen_dir), device="cpu", dtype=dtype)
    assert next(half.model.parameters()).dtype == getattr(torch, dtype)
    ids = full.tokenizer.encode(PROMPTS[1])
    a, _ = Session(full).prefill(ids)
    b, _ = Session(half).prefill(ids)
    assert torch.isfinite(b).all()
    assert (a - b).abs().max() < 0.1 * a.abs().max()


def test_modules_assigned_after_the_lookup_shortcut_take_effect(bigcode_mq_dir):
    """load_model puts submodules and parameters in their parents' __dict__ (decoder.py's
    speed_up_attribute_lookups); a module or parameter assigned afterwards must still be the one used."""
    lm = load_model(str(bigcode_mq_dir), device="cpu", compile="false")
    block = lm.model.transformer.h[0]
    assert block.__dict__["mlp"] is block._modules["mlp"] and "weight" in block.ln_1.__dict__
    ids = lm.tokenizer.encode(PROMPTS[1])
    before, _ = Session(lm).prefill(ids)
    block.mlp.c_fc = torch.nn.Linear(block.mlp.c_fc.in_features, block.mlp.c_fc.out_features)
    block.ln_1.weight = torch.nn.Parameter(torch.zeros_like(block.ln_1.weight))
    assert block.mlp.c_fc is block.mlp._modules["c_fc"] and block.ln_1.weight is block.ln_1._parameters["weight"]
    after, _ = Session(lm).prefill(ids)
    assert not torch.allclose(before, after)
    assert lm.model.state_dict()["transformer.h.0.ln_1.weight"].abs().sum() == 0


def test_a_loaded_models_modules_call_their_forward_directly(bigcode_mq_dir):
    """load_model gives each module of an eager model a subclass whose __call__ is its forward
    (decoder.py's call_forward_directly): the same modules, names and numbers, without nn.Module's
    hook machinery on every call."""
    lm = load_model(str(bigcode_mq_dir), device="cpu", compile="false")
    plain = load_model(str(bigcode_mq_dir), device="cpu", compile="false")
    for module in plain.model.modules():  # back to their own classes: nn.Module.__call__
        module.__class__ = type(module).__mro__[1]
    block = lm.model.transformer.h[0]
    assert type(block).__call__ is type(block).forward and isinstance(block, GPTBigCodeBlock)
    assert type(plain.model.transformer.h[0]) is GPTBigCodeBlock
    assert list(lm.model.state_dict()) == list(plain.model.state_dict())
    ids = lm.tokenizer.encode(PROMPTS[1])
    assert torch.equal(Session(lm).prefill(ids)[0], Session(plain).prefill(ids)[0])
    assert greedy_with_logits(lm, ids, 8)[0] == greedy_with_logits(plain, ids, 8)[0]


def test_codegen_keeps_its_cache_in_float32(codegen_dir, bigcode_mq_dir):
    # CodeGen attends in float32: a 16-bit cache would be cast whole on every step.
    codegen = Session(load_model(str(codegen_dir), device="cpu", dtype="bfloat16"))
    bigcode = Session(load_model(str(bigcode_mq_dir), device="cpu", dtype="bfloat16"))
    for session in (codegen, bigcode):
        session.prefill([1, 2, 3])
    assert codegen.cache.k.dtype == codegen.cache.v.dtype == torch.float32
    assert bigcode.cache.k.dtype == torch.bfloat16


# Each family's FIM tokens (prefix, suffix, middle) and its token that ends a file or an infill.
FAMILY_FIM = {
    "starcoder2": ("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>"),
    "deepseek": ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", None),
    "codellama": ("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"),
    "qwen2": ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_sep|>"),
}


# The families whose tokenizer files put a bos before every text (checkpoints.FAMILIES).
BOS_FAMILIES = ["deepseek", "codellama"]
PREFIX = "def add(a, b):\n    return a"  # no blanks at its end: all of it goes in the prompt (no healing)
SUFFIXES = [")\n", " + b\n\nprint(add(1, 2))\n"]


def reference_tokenizer(checkpoint: str, directory):
    """transformers' tokenizer of the checkpoint's files. For model_type qwen2 AutoTokenizer builds Qwen's
    own pre-tokenizer whatever the files say, and the test checkpoint's files hold GPT-2's BPE: those are
    loaded as they are."""
    if checkpoint == "qwen2":
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(directory)
    return checkpoints.hf_tokenizer(directory)


def fim_reference(family: str, directory, prefix: str, suffix: str, layout: str = "psm") -> list[int]:
    """A family's FIM prompt as its own reference builds it, with transformers' tokenizer of the same files:
    the model card's text with the FIM tokens spelled out, tokenized whole (with the bos the tokenizer adds);
    for CodeLlama, Meta's infilling_prompt_tokens (codellama's generation.py), whose suffix has no leading
    space (its encode_infilling; transformers' CodeLlamaTokenizer puts one there)."""
    ref = reference_tokenizer(family, directory)
    pre, suf, mid, _ = FAMILY_FIM[family]
    if family != "codellama":
        assert layout == "psm"
        return ref(f"{pre}{prefix}{suf}{suffix}{mid}").input_ids
    encode = lambda text: ref.encode(text, add_special_tokens=False)  # noqa: E731
    infill = encode("☺" + suffix)[2:]  # the suffix after "▁" and "☺": without the dummy prefix
    pre, suf, mid = ref.convert_tokens_to_ids([pre, suf, mid])
    if layout == "spm":
        return [ref.bos_token_id, pre, suf, *infill, mid, *encode(prefix)]
    return [ref.bos_token_id, pre, *encode(prefix), suf, *infill, mid]


@pytest.mark.parametrize("family", list(FAMILY_FIM))
def test_each_family_fim_prompt_equals_its_reference(family, family_checkpoint):
    from engine.prompt import build_prompt
    from engine.tokenizer import load_tokenizer

    directory = family_checkpoint(family)
    tok = load_tokenizer(directory)
    for suffix in SUFFIXES:
        prompt = build_prompt(tok, PREFIX, suffix, max_prompt_tokens=256)
        assert prompt.ids == fim_reference(family, directory, PREFIX, suffix)
        assert prompt.ids[0] == tok.bos_id if family in BOS_FAMILIES else tok.bos_id not in prompt.ids
        if family == "codellama":
            spm = build_prompt(tok, PREFIX, suffix, max_prompt_tokens=256, fim="spm")
            assert spm.ids == fim_reference(family, directory, PREFIX, suffix, "spm")
    end = FAMILY_FIM[family][3]
    assert end is None or tok.token_id(end) in tok.special_ids  # generation stops there


@pytest.mark.parametrize("checkpoint", ["codegen", "bigcode_mq", *checkpoints.FAMILIES])
def test_left_to_right_prompts_equal_transformers_tokenizer(checkpoint, request, family_checkpoint, stdlib_code):
    from engine.prompt import build_prompt
    from engine.tokenizer import load_tokenizer

    directory = family_checkpoint(checkpoint) if checkpoint in checkpoints.FAMILIES else request.getfixturevalue(f"{checkpoint}_dir")
    tok, ref = load_tokenizer(directory), reference_tokenizer(checkpoint, directory)
    assert tok.start_ids == ([tok.bos_id] if checkpoint in BOS_FAMILIES else [])
    # Texts that start with a word: transformers' CodeLlamaTokenizer rebuilds the tokenizer with a Metaspace
    # pre-tokenizer, which puts no space before a text that starts with one (sentencepiece does).
    for text in (PREFIX, stdlib_code.strip()):
        assert build_prompt(tok, text, "", max_prompt_tokens=2048, fim="off").ids == ref(text).input_ids


@pytest.mark.parametrize("add_bos_token", [True, None, False])
@pytest.mark.parametrize("post_processor_bos", [True, False])
def test_the_bos_comes_from_the_tokenizer_files(add_bos_token, post_processor_bos, tmp_path, family_checkpoint):
    """tokenizer.json's post-processor decides, as in transformers (which reads tokenizer_config.json's
    add_bos_token only for a tokenizer without a tokenizer.json)."""
    from engine.tokenizer import load_tokenizer

    (tmp_path / "config.json").write_text((family_checkpoint("deepseek") / "config.json").read_text())
    checkpoints.write_deepseek_tokenizer(tmp_path, list(FAMILY_FIM["deepseek"][:3]), add_bos_token, post_processor_bos)
    tok, ref = load_tokenizer(tmp_path), checkpoints.hf_tokenizer(tmp_path)
    assert tok.start_ids == ([tok.bos_id] if post_processor_bos else [])
    assert tok.start_ids + tok.encode(PREFIX) == ref(PREFIX).input_ids


@pytest.mark.parametrize("add_bos_token", [True, None])
def test_a_vocab_and_merges_tokenizer_puts_bos_first_when_its_config_says_so(add_bos_token, codegen_bin_dir, tmp_path):
    import shutil

    from engine.tokenizer import load_tokenizer

    for name in ("config.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json"):
        shutil.copy(codegen_bin_dir / name, tmp_path)
    config = json.loads((codegen_bin_dir / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": add_bos_token}))
    tok, ref = load_tokenizer(tmp_path), checkpoints.hf_tokenizer(tmp_path)
    assert tok.start_ids == ([tok.bos_id] if add_bos_token else [])
    assert tok.start_ids + tok.encode(PREFIX) == ref(PREFIX).input_ids


@pytest.mark.parametrize("legacy", [True, False])
def test_sentencepiece_continuations_have_no_leading_space(legacy, tmp_path):
    """CodeLlama's FIM suffix and generated text go on from other text: no dummy-prefix space goes before
    them, in both layouts of a sentencepiece tokenizer.json (CodeLlama's normalizer, the newer Metaspace)."""
    from engine.tokenizer import load_tokenizer

    checkpoints.write_codellama_tokenizer(tmp_path, list(FAMILY_FIM["codellama"]), legacy=legacy)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    tok, ref = load_tokenizer(tmp_path), checkpoints.hf_tokenizer(tmp_path)
    for text in (*SUFFIXES, "\n    x = 1", "  two spaces"):
        ids = tok.encode(text, continuation=True)
        assert ids == ref.encode("☺" + text, add_special_tokens=False)[2:]  # Meta's encode_infilling
        assert tok.decode(ids, continuation=True) == text
    assert tok.encode("return") == ref.encode("return", add_special_tokens=False)  # "▁return": the dummy prefix
    assert tok.decode(tok.encode("return")) == "return"
    assert tok.token_texts[tok.encode("return")[0]] == " return"  # as generated after other text


def test_generated_text_keeps_its_leading_space_after_a_sentencepiece_prompt(family_checkpoint):
    """The blank before the cursor is left to the model (healing, engine/prompt.py), so the first token it
    may take spells a space: "▁..." pieces, whose space is the text's, not a dummy prefix to take off."""
    from engine.completion import DocumentState, complete

    directory = family_checkpoint("codellama")
    lm, ref = load_model(str(directory), device="cpu"), checkpoints.hf_tokenizer(directory)
    for prefix, suffix in (("x = 1 +", ""), ("def add(a, b):\n    return a +", SUFFIXES[0])):
        result = complete(Session(lm), DocumentState(), prefix + " ", suffix, SamplingParams(max_new_tokens=8))
        assert result.token_ids and lm.tokenizer.token(result.token_ids[0]).startswith("▁")
        # Meta's decode_infilling: the text of ids that go on from other ids.
        assert " " + result.text == ref.decode([ref.convert_tokens_to_ids("☺"), *result.token_ids])[1:]


@pytest.mark.parametrize("family", BOS_FAMILIES)
@pytest.mark.parametrize("suffix", [None, SUFFIXES[1]])  # left to right, FIM
def test_completion_from_text_equals_transformers_greedy_from_reference_ids(family, suffix, family_checkpoint):
    """End to end: our completion at a cursor, from the document's text, is transformers' greedy
    continuation of the prompt ids its own tokenizer builds (bos first)."""
    from engine.completion import DocumentState, complete

    directory = family_checkpoint(family)
    ours, ref = load_model(str(directory), device="cpu"), checkpoints.hf_model(directory)
    if suffix is None:
        ids = checkpoints.hf_tokenizer(directory)(PREFIX).input_ids
        result = complete(Session(ours), DocumentState(), PREFIX, "", SamplingParams(max_new_tokens=16), fim="off")
    else:
        ids = fim_reference(family, directory, PREFIX, suffix)
        result = complete(Session(ours), DocumentState(), PREFIX, suffix, SamplingParams(max_new_tokens=16))
    assert ids[0] == ours.tokenizer.bos_id and result.stats.prompt_tokens == len(ids)
    assert result.token_ids == _reference_greedy(ref, ours.tokenizer, ids, 16)
    assert result.text == ours.tokenizer.decode(result.token_ids, continuation=True)


@pytest.mark.parametrize("family", BOS_FAMILIES)
def test_typing_keeps_the_bos_first_within_the_budget_and_the_cache_reused(family, family_checkpoint, stdlib_code):
    from engine.completion import DocumentState, complete
    from engine.prompt import build_prompt

    lm = load_model(str(family_checkpoint(family)), device="cpu")
    session, state, params = Session(lm), DocumentState(), SamplingParams(max_new_tokens=2)
    prompt_total = reused_total = 0
    for end in range(900, 1100, 2):  # 100 keystrokes, the window (96 tokens) full all along
        previous = state.prefix_start
        stats = complete(session, state, stdlib_code[:end], "", params, max_prompt_tokens=96, fim="off", typeahead=False).stats
        prompt = build_prompt(lm.tokenizer, stdlib_code[:end], "", max_prompt_tokens=96, fim="off", previous_prefix_start=previous)
        assert prompt.ids[0] == lm.tokenizer.bos_id and stats.prompt_tokens == len(prompt.ids) <= 96
        assert stats.reused_tokens >= 1 or end == 900  # the bos at least, even when the window moves
        prompt_total += stats.prompt_tokens
        reused_total += stats.reused_tokens
    assert reused_total / prompt_total > 0.85
