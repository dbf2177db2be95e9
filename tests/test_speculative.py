"""Speculative decoding (engine/speculative.py): greedy output identical to plain decoding over many
prompts and models, exact draft and acceptance counts on copies, the session invariant after
rejected drafts and cancellation, and cache reuse after them."""

import json
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import engine.speculative as speculative
from engine import cpu_kernels
from engine.generate import SamplingParams, generate
from engine.loading import load_model
from engine.session import Session
from engine.speculative import NgramIndex, Speculator


@pytest.fixture(scope="module")
def demo_models():
    return {q: load_model(None, device="cpu", dtype="float32", quantization=q, compile="false") for q in ("none", "int8", "int4")}


@pytest.fixture(scope="module")
def tiny_models(codegen_dir, bigcode_mh_dir):
    return [load_model(str(d), device="cpu", dtype="float32", compile="false") for d in (codegen_dir, bigcode_mh_dir)]


def run(lm, prompt, mode, n=40, session=None, **kw):
    return generate(session or Session(lm), prompt, SamplingParams(max_new_tokens=n, speculative=mode, **kw))


# A prompt of pieces of real code, some repeated: what makes drafts (and rejections) happen.
pieces = st.lists(st.tuples(st.integers(0, 1500), st.integers(5, 60)), min_size=1, max_size=5)


def prompt_of(lm, code, spans):
    ids = lm.tokenizer.encode(code)
    out = []
    for start, length in spans:
        out += ids[start : start + length]
    return out[-200:] or ids[:10]


@pytest.mark.parametrize("quantization", ["none", "int8", "int4"])
def test_greedy_ids_identical_on_the_demo_model(demo_models, stdlib_code, quantization):
    lm = demo_models[quantization]

    @settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(pieces, st.integers(1, 48))
    def check(spans, n):
        prompt = prompt_of(lm, stdlib_code, spans)
        off, on = run(lm, prompt, "off", n), run(lm, prompt, "ngram", n)
        assert on.token_ids == off.token_ids and on.finish_reason == off.finish_reason
        assert off.stats.draft_tokens == 0 and on.stats.accepted_draft_tokens <= on.stats.draft_tokens

    check()


def test_greedy_ids_identical_on_tiny_models(tiny_models, stdlib_code):
    @settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(pieces)
    def check(spans):
        for lm in tiny_models:
            prompt = prompt_of(lm, stdlib_code, spans)
            assert run(lm, prompt, "ngram").token_ids == run(lm, prompt, "off").token_ids

    check()


def test_a_copied_block_is_mostly_drafted(demo_models, stdlib_code):
    """The block the model writes is in the prompt: most tokens come from accepted drafts."""
    lm = demo_models["none"]
    block = lm.tokenizer.encode(stdlib_code)[:120]
    prompt = block + block[:40]
    off, on = run(lm, prompt, "off", 48), run(lm, prompt, "ngram", 48)
    assert on.token_ids == off.token_ids
    if off.token_ids[:8] == block[40:48]:  # the model does copy (it does, on the shipped weights)
        assert on.stats.accepted_draft_tokens >= 8


@pytest.mark.compiled  # `make test-compiled`: the demo model compiled, ~35 s on 2 cores
def test_drafts_beside_a_compiled_decode_step_change_no_token(stdlib_code, tmp_path, monkeypatch):
    """compile = true: steps run the compiled graph and a verify runs eagerly (rows closer than
    TIE_MARGIN are decided by a compiled step); a copy is drafted and the ids are plain decoding's."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    lm = load_model(None, device="cpu", dtype="float32", quantization="int8", compile="true")
    assert lm.decode_step is not None
    block = lm.tokenizer.encode(stdlib_code)[:120]
    for prompt in (block + block[:40], block[60:] + block[:90]):
        off, on = run(lm, prompt, "off", 40), run(lm, prompt, "ngram", 40)
        assert on.token_ids == off.token_ids and on.stats.accepted_draft_tokens > 0


class CopyModel:
    """A stand-in session whose model always predicts `next_of(context)`; counts its forwards."""

    def __init__(self, prompt, next_of, vocab=32):
        self.ids, self.next_of, self.vocab, self.forwards = list(prompt), next_of, vocab, 0

    def _row(self, context):
        row = torch.zeros(self.vocab)
        row[self.next_of(context)] = 1.0
        return row

    def verify(self, tokens):
        self.forwards += 1
        base = len(self.ids)
        self.ids += tokens
        return torch.stack([self._row(self.ids[: base + i + 1]) for i in range(len(tokens))])

    def step(self, token):
        self.forwards += 1
        self.ids.append(token)
        return self._row(self.ids)

    def truncate(self, length):
        del self.ids[length:]


def test_exact_draft_and_acceptance_counts_on_a_copy():
    cycle = list(range(1, 11))
    prompt = cycle + [1, 2]
    session = CopyModel(prompt, lambda ctx: ctx[-1] % 10 + 1)  # the model goes on counting 1..10
    spec = Speculator(session, prompt, 0.0, 32, None)
    spec.observe(3)  # the first token, sampled from the prompt's logits
    assert spec.draft(100) == [4, 5, 6, 7]  # after the latest earlier (1, 2, 3), 4 drafts at first
    assert [t for t, _ in spec.verify(3, [4, 5, 6, 7], None)] == [4, 5, 6, 7, 8]
    assert session.ids == prompt + [3, 4, 5, 6, 7] and session.forwards == 1
    for token in [4, 5, 6, 7, 8]:
        spec.observe(token)
    assert spec.draft(100) == [9, 10, 1, 2, 3, 4]  # grown by 2 after a full accept
    assert spec.draft_tokens == 4 and spec.accepted_draft_tokens == 4

    # Now the model breaks the cycle after 10: 9 and 10 are accepted, 1 is not.
    session.next_of = lambda ctx: 0 if ctx[-1] == 10 else ctx[-1] % 10 + 1
    assert [t for t, _ in spec.verify(8, [9, 10, 1, 2, 3, 4], None)] == [9, 10, 0]
    assert session.ids == prompt + [3, 4, 5, 6, 7, 8, 9, 10]  # the rejected drafts are gone
    assert (spec.draft_tokens, spec.accepted_draft_tokens, spec.k) == (10, 6, 3)


def test_a_wholly_rejected_draft_pauses_drafting():
    index = NgramIndex([5, 6, 7, 5, 6])
    assert index.draft(3) == [7, 5, 6]
    spec = Speculator(CopyModel([5, 6, 7, 5, 6], lambda ctx: 1), [5, 6, 7, 5, 6], 0.0, 32, None)
    assert [t for t, _ in spec.verify(9, [7], None)] == [1] and spec.accepted_draft_tokens == 0
    assert spec.pause == 1 and spec.draft(4) == []


def test_near_ties_are_decided_by_a_decode_step(demo_models, stdlib_code, monkeypatch):
    """With every row 'too close', each verify falls back to a step: output still identical."""
    lm = demo_models["none"]
    monkeypatch.setattr(speculative, "TIE_MARGIN", float("inf"))
    prompt = prompt_of(lm, stdlib_code, [(0, 80), (0, 30)])
    assert run(lm, prompt, "ngram").token_ids == run(lm, prompt, "off").token_ids


class CancelAfter(threading.Event):
    def __init__(self, checks):
        super().__init__()
        self.remaining = checks

    def is_set(self):
        self.remaining -= 1
        return self.remaining < 0 or super().is_set()


@pytest.mark.parametrize("checks", [2, 5, 9, 14])
def test_cancel_keeps_the_invariant_and_the_cache_reusable(demo_models, stdlib_code, checks):
    lm = demo_models["int8"]
    block = lm.tokenizer.encode(stdlib_code)[:100]
    prompt = block + block[:30]
    session = Session(lm)
    cut = generate(session, prompt, SamplingParams(max_new_tokens=40, speculative="ngram"), cancel=CancelAfter(checks))
    assert cut.finish_reason == "cancelled"
    assert session.ids == prompt + cut.token_ids[:-1]
    rest = run(lm, prompt + cut.token_ids, "ngram", 40 - len(cut.token_ids), session=session)
    assert rest.stats.reused_tokens == len(prompt) + len(cut.token_ids) - 1
    assert cut.token_ids + rest.token_ids == run(lm, prompt, "off", 40).token_ids


def test_cancel_during_a_verify(demo_models, stdlib_code, monkeypatch):
    """A cancel that arrives while a verify runs stops generation right after it, consistently."""
    lm = demo_models["none"]
    block = lm.tokenizer.encode(stdlib_code)[:100]
    prompt = block + block[:30]
    session, cancel = Session(lm), threading.Event()
    verify = session.verify

    def verify_then_cancel(tokens):
        logits = verify(tokens)
        cancel.set()
        return logits

    monkeypatch.setattr(session, "verify", verify_then_cancel)
    result = generate(session, prompt, SamplingParams(max_new_tokens=40, speculative="ngram"), cancel=cancel)
    assert result.finish_reason == "cancelled" and result.stats.draft_tokens > 0
    assert session.ids == prompt + result.token_ids[:-1]


def test_kv_reuse_after_rejected_drafts(demo_models, stdlib_code):
    """After verifies with rejections, what the session holds equals what plain decoding of the
    same tokens leaves (a fresh prefill of it would round activations as prefill does: int4 to
    8 bits a group, where decode keeps 16)."""
    lm = demo_models["int4"]
    prompt = prompt_of(lm, stdlib_code, [(0, 60), (200, 40), (0, 25)])
    session = Session(lm)
    first = run(lm, prompt, "ngram", 48, session=session)
    assert first.stats.accepted_draft_tokens < first.stats.draft_tokens  # something was rejected
    context = prompt + first.token_ids
    logits, reused = session.prefill(context)
    assert reused == len(context) - 1
    plain = Session(lm)
    plain.prefill(prompt)
    for token in first.token_ids:
        expected = plain.step(token)
    # Where the load-time benchmark picks PyTorch's packed int4 kernel (bfloat16 activations), a
    # row of a many-row call differs from a one-row call by up to ~4e-3; a stale row, far more.
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-2)


def test_sampling_with_drafts_runs_and_keeps_the_invariant(demo_models, stdlib_code):
    lm = demo_models["none"]
    block = lm.tokenizer.encode(stdlib_code)[:100]
    prompt = block + block[:30]
    session = Session(lm)
    result = run(lm, prompt, "ngram", 40, session=session, temperature=0.7, top_p=0.9, seed=1)
    assert result.stats.draft_tokens > 0
    assert session.ids == prompt + result.token_ids[: len(session.ids) - len(prompt)]
    assert len(session.ids) >= len(prompt) + len(result.token_ids) - 1


@pytest.mark.parametrize("quantization", ["int8", "int4"])
@pytest.mark.parametrize("attention", ["sdpa", "ours"])
def test_verify_rows_equal_decode_steps_bit_for_bit(demo_models, stdlib_code, quantization, attention, monkeypatch):
    """With row-exact linear kernels, a verify's logits are those of one decode step per token, with
    either attention (ours takes all the rows in one call)."""
    from engine import cpu_kernels
    from engine.kv_cache import DECODE_ATTENTION, attention_shape
    from engine.paths import cache_dir

    lm = demo_models[quantization]
    shape = attention_shape(lm.config)
    if attention == "ours" and not cpu_kernels.compiled_kernels(cache_dir() / "kernels"):
        pytest.skip("our CPU kernels could not be built here")
    if attention == "ours":
        monkeypatch.setitem(DECODE_ATTENTION, shape, torch.ops.codegen_lsp_cpu.isas().split()[0])
    else:
        monkeypatch.delitem(DECODE_ATTENTION, shape, raising=False)
    ids = lm.tokenizer.encode(stdlib_code)[:120]
    session = Session(lm)
    session.prefill(ids[:100])
    rows = session.verify(ids[100:117])
    session.truncate(100)
    steps = torch.stack([session.step(token) for token in ids[100:117]])
    assert torch.equal(rows, steps)


def test_expected_tokens_of_a_verify():
    assert speculative.expected_tokens(0) == 1  # no drafts: the one token a step decides
    assert speculative.expected_tokens(4, 1.0) == 5 and speculative.expected_tokens(4, 0.0) == 1
    assert speculative.expected_tokens(2, 0.5) == pytest.approx(1 + 0.5 + 0.25)


def test_auto_drafts_only_where_a_verify_was_measured_to_pay(tmp_path, monkeypatch, stdlib_code):
    """load_model measures once per machine whether a verify of a first draft costs less than the
    tokens it decides, and saves the answer beside the kernel choices; auto follows it, ngram drafts
    either way, and the tokens are those of plain decoding."""
    monkeypatch.setenv("CODEGEN_LSP_CACHE", str(tmp_path))
    lm = load_model(None, device="cpu", quantization="int8")
    path = tmp_path / "quantized" / cpu_kernels.CHOICES_FILE
    saved = json.loads(path.read_text())
    (name,) = [name for name in saved["choices"] if name.startswith("drafting ")]
    assert lm.drafts_pay is saved["choices"][name]
    block = lm.tokenizer.encode(stdlib_code)[:120]
    prompt = block + block[:40]  # the model copies the block on: drafts are found
    for pays in (False, True):  # as if measured so: a saved valid choice is used as it is
        path.write_text(json.dumps({**saved, "choices": {**saved["choices"], name: pays}}))
        lm = load_model(None, device="cpu", quantization="int8")
        assert lm.drafts_pay is pays
        off, auto, ngram = (run(lm, prompt, mode, 24) for mode in ("off", "auto", "ngram"))
        assert (auto.stats.draft_tokens > 0) is pays and ngram.stats.draft_tokens > 0
        assert auto.token_ids == ngram.token_ids == off.token_ids
