"""Our engine against transformers on the same checkpoints: logits, greedy tokens, tokenizer ids."""

import pytest
import torch

import checkpoints
from engine.generate import SamplingParams, generate
from engine.loading import load_model
from engine.session import Session
from engine import session as session_module
from engine.kv_cache import KVCache

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
    ours, ref = models
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
    return out[: out.index(tokenizer.eos_id)] if tokenizer.eos_id in out else out


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


@pytest.mark.parametrize("family", list(FAMILY_FIM))
def test_each_family_gets_psm_prompts_in_its_fim_tokens(family, family_checkpoint):
    from engine.prompt import build_prompt
    from engine.tokenizer import load_tokenizer

    tok = load_tokenizer(family_checkpoint(family))
    prefix, suffix, middle, end = (tok.token_id(t) if t else None for t in FAMILY_FIM[family])
    prompt = build_prompt(tok, "def f(", ")\n", max_prompt_tokens=64)
    assert prompt.ids == [prefix, *tok.encode("def f("), suffix, *tok.encode(")\n"), middle]
    assert end is None or end in tok.special_ids  # generation stops there
