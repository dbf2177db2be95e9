"""Sessions: reuse never changes results, exact reuse counts per edit, eviction,
cancellation, typeahead and the prompt window while typing."""

import threading
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import engine.session as session_module
from engine.generate import SamplingParams, generate
from engine.loading import load_model
from engine.completion import DocumentState, complete
from engine.errors import EngineError
from engine.session import Cancelled, Session, SessionStore

LINES = ["import os\n", "x = 1\n", "y = x + 2\n", "def f(a):\n", "z = [1, 2, 3]\n", "print(z)\n"]


@pytest.fixture(scope="module")
def codegen(codegen_dir):
    return load_model(str(codegen_dir), device="cpu", dtype="float32", compile="false")


@pytest.fixture(scope="module")
def bigcode(bigcode_mq_dir):
    return load_model(str(bigcode_mq_dir), device="cpu", dtype="float32", compile="false")


def fresh_logits(lm, ids):
    logits, reused = Session(lm).prefill(ids)
    assert reused == 0
    return logits


edit = st.tuples(st.floats(0, 1), st.integers(0, 12), st.text("abc xyz()=:\n    ", max_size=12))


@pytest.mark.parametrize("model", ["codegen", "bigcode"])
def test_reuse_never_changes_logits(request, model, stdlib_code, monkeypatch):
    """After any sequence of insertions and deletions, the session's logits equal a fresh prefill's."""
    lm = request.getfixturevalue(model)
    monkeypatch.setattr(session_module, "PREFILL_CHUNK", 48)  # several chunks per prefill
    base = stdlib_code[:400]

    @settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(edit, min_size=1, max_size=4))
    def check(edits):
        session, text = Session(lm), base
        session.prefill(lm.tokenizer.encode(text))
        for where, delete, insert in edits:
            at = int(where * len(text))
            text = text[:at] + insert + text[at + delete :]
            ids = lm.tokenizer.encode(text)[:160] or [0]
            logits, reused = session.prefill(ids)
            assert session.ids == ids
            torch.testing.assert_close(logits, fresh_logits(lm, ids), rtol=1e-5, atol=1e-4)

    check()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_full_cache_and_one_with_room_hold_the_same_keys(codegen, dtype):
    # KVCache.update writes an eager forward's keys by position range, and a call that fills the cache
    # to its capacity by index (as a compiled step does): both in chunks must store the same numbers.
    from engine.kv_cache import KVCache

    ids = torch.randint(0, codegen.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(1))
    caches = {capacity: KVCache(codegen.config, capacity, "cpu", dtype) for capacity in (40, 64)}
    with torch.inference_mode():
        for capacity, cache in caches.items():
            for start, end in ((0, 17), (17, 39), (39, 40)):
                codegen.model(ids[:, start:end], torch.arange(start, end), cache, kv_len=end)
            assert cache.k[:, :, :, 40:].count_nonzero() == 0  # nothing written past the tokens
    full, roomy = caches[40], caches[64]
    assert torch.equal(full.k, roomy.k[:, :, :, :40]) and torch.equal(full.v, roomy.v[:, :, :, :40])
    assert full.k[:, :, :, 39].count_nonzero() > 0


def encode_lines(tok, lines):
    """Token ids of the lines, checking they tokenize independently (so counts are exact)."""
    ids = [tok.encode(line) for line in lines]
    assert sum(ids, []) == tok.encode("".join(lines))
    return ids


def test_exact_reuse_counts_per_edit(codegen):
    tok = codegen.tokenizer
    session = Session(codegen)
    params = SamplingParams(max_new_tokens=4)
    lines = LINES * 3
    per_line = encode_lines(tok, lines)
    n = sum(len(x) for x in per_line)

    def run(text):
        stats = generate(session, tok.encode(text), params).stats
        return stats.reused_tokens, stats.prefilled_tokens

    text = "".join(lines)
    assert run(text) == (0, n)
    # Typing at the end: a new line's first token follows the cached prompt (generated tokens are dropped).
    assert tok.encode(text + "w") == tok.encode(text) + tok.encode("w")
    assert run(text + "w") == (n, 1)
    # Typing in the middle: everything before the edited line is reused.
    k = 7
    before = sum(len(x) for x in per_line[:k])
    typed = "".join(lines[:k]) + "q" + "".join(lines[k:])
    assert run(typed) == (before, len(tok.encode(typed)) - before)
    # Deleting what was typed: back to the original text.
    assert run(text) == (before, n - before)
    # Deleting the last line: the prompt is a prefix of the cache; only its last token is encoded again.
    shorter = "".join(lines[:-1])
    assert run(shorter) == (n - len(per_line[-1]) - 1, 1)
    # Pasting a block after line k.
    block = "".join(LINES)
    pasted = "".join(lines[:k]) + block + "".join(lines[k:-1])
    assert run(pasted) == (before, len(tok.encode(pasted)) - before)
    # Undo the paste: back to `shorter`; the lines before the paste point are still cached.
    assert run(shorter) == (before, len(tok.encode(shorter)) - before)
    # Generated tokens stay in the cache: asking again for the same prompt plus what was generated reuses it all.
    result = generate(session, tok.encode(shorter), params)
    assert result.finish_reason == "length"
    again = generate(session, tok.encode(shorter) + result.token_ids, params).stats
    assert again.prefilled_tokens == 1  # the last sampled token was never encoded
    assert again.reused_tokens == len(tok.encode(shorter)) + len(result.token_ids) - 1


def test_typing_past_the_window_keeps_reuse_high(codegen, stdlib_code):
    session = Session(codegen)
    state = DocumentState()
    params = SamplingParams(max_new_tokens=2)
    text = stdlib_code
    prompt_total = reused_total = full_prefills = 0
    for end in range(900, 1300, 2):  # 200 keystrokes, the window (96 tokens) is full all along
        stats = complete(session, state, text[:end], "", params, max_prompt_tokens=96, typeahead=False).stats
        assert stats.prompt_tokens <= 96
        prompt_total += stats.prompt_tokens
        reused_total += stats.reused_tokens
        full_prefills += stats.reused_tokens == 0
    assert reused_total / prompt_total > 0.85
    assert 1 <= full_prefills <= 8


def test_eviction_under_a_small_budget(codegen):
    store = SessionStore(codegen, cache_memory_mb=1)
    one = Session(codegen)
    one.prefill([1, 2, 3])
    per_session = one.nbytes
    fits = 2**20 // per_session
    assert fits >= 2
    keys = [f"doc{i}" for i in range(fits + 2)]
    sessions = {}
    for key in keys:
        sessions[key] = store.get(key)
        sessions[key].prefill([5, 6, 7])
        assert store.nbytes <= 2**20
    assert store.keys() == keys[2:]  # the two least recently used went
    for key in keys[:2]:
        assert sessions[key].cache is None and sessions[key].ids == []
    # get() touches: doc2 becomes most recent, so the next new document evicts doc3.
    assert store.get(keys[2]) is sessions[keys[2]]
    store.get("new").prefill([1])
    assert keys[3] not in store and keys[2] in store and sessions[keys[3]].cache is None
    store.drop(keys[2])
    assert keys[2] not in store and sessions[keys[2]].cache is None


class CancelAfter(threading.Event):
    """A cancel event that reads as set from its n-th check on (a deterministic 'user typed again')."""

    def __init__(self, checks: int):
        super().__init__()
        self.remaining = checks

    def is_set(self) -> bool:
        self.remaining -= 1
        return self.remaining < 0 or super().is_set()


def test_cancel_mid_decode_leaves_a_consistent_session(codegen, stdlib_code):
    tok = codegen.tokenizer
    prompt = tok.encode(stdlib_code)[:120]
    session = Session(codegen)
    result = generate(session, prompt, SamplingParams(max_new_tokens=20), cancel=CancelAfter(3))
    assert result.finish_reason == "cancelled"
    # Checks: one before the prefill's only chunk, then one before each decode step;
    # the third check stops it after the third token was sampled (and never encoded).
    assert len(result.token_ids) == 3
    assert session.ids == prompt + result.token_ids[:-1]
    # The encoded tokens stay usable: the same request again reuses them and gives the same tokens.
    full = generate(session, prompt + result.token_ids, SamplingParams(max_new_tokens=4))
    assert full.stats.reused_tokens == len(prompt) + 2 and full.stats.prefilled_tokens == 1
    reference = generate(Session(codegen), prompt, SamplingParams(max_new_tokens=7))
    assert result.token_ids + full.token_ids == reference.token_ids


def test_a_token_past_the_embedding_is_refused_and_the_session_kept(codegen):
    """A tokenizer with more ids than the model's embedding rows (a mismatched checkpoint): one clear
    error for that prompt, not an IndexError from inside the model, and what is cached stays."""
    session = Session(codegen)
    session.prefill([1, 2, 3, 4])
    with pytest.raises(EngineError, match=f"token id {codegen.config.vocab_size} is outside"):
        session.prefill([1, 2, 3, codegen.config.vocab_size, 5])
    assert session.ids == [1, 2, 3, 4]
    logits, reused = session.prefill([1, 2, 3, 4, 5])
    assert reused == 4
    torch.testing.assert_close(logits, fresh_logits(codegen, [1, 2, 3, 4, 5]), rtol=1e-5, atol=1e-4)


def test_generation_never_grows_the_cache_while_decoding(codegen, stdlib_code, monkeypatch):
    """The prefill reserves room for the tokens to come: a generation that crosses a growth step
    grows the cache once, before its first token, and yields what growing mid-decode yielded."""
    monkeypatch.setattr(session_module, "CACHE_STEP", 32)
    prompt = codegen.tokenizer.encode(stdlib_code)[:60]  # capacity 64 for the prompt alone
    grown_at: list[int] = []
    session = Session(codegen)
    session.on_grow = lambda s: grown_at.append(len(s.ids))
    result = generate(session, prompt, SamplingParams(max_new_tokens=40))
    assert len(result.token_ids) == 40 and result.finish_reason == "length"
    assert grown_at == [0] and session.cache.capacity == 128  # 60 + 40 positions, in steps of 32
    step_by_step = Session(codegen)
    logits, _ = step_by_step.prefill(prompt)
    assert step_by_step.cache.capacity == 64
    tokens = [int(torch.argmax(logits))]
    for _ in range(39):
        tokens.append(int(torch.argmax(step_by_step.step(tokens[-1]))))
    assert step_by_step.cache.capacity == 128 and tokens == result.token_ids


def test_cancel_between_prefill_chunks(codegen, stdlib_code, monkeypatch):
    monkeypatch.setattr(session_module, "PREFILL_CHUNK", 32)
    prompt = codegen.tokenizer.encode(stdlib_code)[:150]
    session = Session(codegen)
    with pytest.raises(Cancelled):
        session.prefill(prompt, cancel=CancelAfter(2))
    assert session.ids == prompt[:64]
    logits, reused = session.prefill(prompt)
    assert reused == 64
    torch.testing.assert_close(logits, fresh_logits(codegen, prompt), rtol=1e-5, atol=1e-4)


def test_cancel_from_another_thread(codegen, stdlib_code):
    prompt = codegen.tokenizer.encode(stdlib_code)[:100]
    session, cancel = Session(codegen), threading.Event()

    def user_types_again():  # once decoding is under way
        while len(session.ids) < len(prompt) + 5:
            time.sleep(0.001)
        cancel.set()

    thread = threading.Thread(target=user_types_again)
    thread.start()
    result = generate(session, prompt, SamplingParams(max_new_tokens=400), cancel=cancel)
    thread.join()
    assert result.finish_reason == "cancelled" and 6 <= len(result.token_ids) < 400
    assert session.ids == prompt + result.token_ids[:-1]


def test_typeahead_hit_miss_and_continuation(codegen):
    session = Session(codegen)
    state = DocumentState()
    params = SamplingParams(max_new_tokens=6)
    prefix = "def add(a, b):\n    return"
    first = complete(session, state, prefix, "", params)
    assert first.finish_reason == "length" and len(first.text) >= 2 and first.stats.generated_tokens == 6
    assert not first.stats.typeahead

    hit = complete(session, state, prefix + first.text[:1], "", params)
    assert hit.text == first.text[1:]
    assert hit.stats.typeahead and hit.stats.prefilled_tokens == 0 and hit.stats.generated_tokens == 0

    hit2 = complete(session, state, prefix + first.text[:2], "", params)
    assert hit2.text == first.text[2:] and hit2.stats.typeahead

    # The whole suggestion typed: decoding goes on from its end, whose tokens are cached.
    more = complete(session, state, prefix + first.text, "", params)
    assert not more.stats.typeahead and more.stats.prefilled_tokens == 1
    longer = generate(Session(codegen), codegen.tokenizer.encode(prefix), SamplingParams(max_new_tokens=12))
    assert first.text + more.text == longer.text

    # A character that does not match the suggestion, or a changed suffix, asks the model.
    typed = prefix + first.text + more.text
    wrong = "#" if not more.text.startswith("#") else "@"
    complete(session, state, typed, "", params)  # refresh the suggestion
    miss = complete(session, state, typed + wrong, "", params)
    assert not miss.stats.typeahead and miss.stats.generated_tokens > 0
    again = complete(session, state, typed + wrong, "\n", params)
    assert not again.stats.typeahead and again.stats.generated_tokens > 0


def test_fim_completion_runs_on_both_layouts(bigcode):
    session = Session(bigcode)
    state = DocumentState()
    params = SamplingParams(max_new_tokens=3)
    prefix, suffix = "def add(a, b):\n    return", "\n\nprint(add(1, 2))\n"
    psm = complete(session, state, prefix, suffix, params, fim="psm")
    assert psm.stats.prompt_tokens == len(bigcode.tokenizer.encode(prefix)) + len(bigcode.tokenizer.encode(suffix)) + 3
    spm = complete(session, state, prefix, suffix, params, fim="spm")
    assert spm.stats.reused_tokens == 1  # only <fim_prefix> is shared by the two layouts
    typed = complete(session, state, prefix + " a", suffix, params, fim="spm", typeahead=False)
    # SPM: the suffix and the untouched prefix tokens stay encoded; only the end changes.
    assert typed.stats.prefilled_tokens <= 3


@pytest.mark.parametrize("prefix, blanks", [("def add(a, b):\n    ", "\n    "), ("x =\t ", "\t "), ("y = 1\n", "\n")])
def test_trailing_whitespace_is_spelled_by_the_model_not_the_prompt(codegen, prefix, blanks):
    session = Session(codegen)
    state = DocumentState()
    tok = codegen.tokenizer
    result = complete(session, state, prefix, "", SamplingParams(max_new_tokens=6))
    assert result.stats.prompt_tokens == len(tok.encode(prefix[: -len(blanks)]))
    spelled = tok.decode(result.token_ids)
    assert spelled.startswith(blanks) and result.text == spelled[len(blanks):]
    # What the cursor sees is unchanged for typeahead: typing the suggestion's start is a hit.
    if len(result.text) > 1:
        hit = complete(session, state, prefix + result.text[:1], "", SamplingParams(max_new_tokens=6))
        assert hit.stats.typeahead and hit.text == result.text[1:]


def test_healing_tokens_spell_the_blanks_and_never_indent_past_them():
    from engine.tokenizer import Spellings

    vocabulary = ["\n", "\n   ", "\n    ", "\n        ", "\n    x", " ", "x", "\n\n", "", "\n \t", "\n\tx"]
    spellings = Spellings(vocabulary)
    assert [vocabulary[i] for i in spellings.ids("\n    ", len(vocabulary))] == ["\n", "\n   ", "\n    ", "\n    x"]
    # Half spelled: the rest of the indentation, alone or with code after it.
    assert [vocabulary[i] for i in spellings.ids(" ", len(vocabulary))] == [" "]
    assert spellings.ids("\n    ", 3).tolist() == [0, 1, 2]  # only ids below `allowed`


def test_healing_lookup_agrees_with_a_scan_of_a_real_vocabulary(codegen_dir):
    from engine.tokenizer import load_tokenizer

    tok = load_tokenizer(codegen_dir)
    texts = tok.token_texts

    def scan(pending: str, allowed: int) -> list[int]:  # the definition, one token at a time
        return [i for i, t in enumerate(texts[:allowed])
                if t and (pending.startswith(t) or (t.startswith(pending) and not t[len(pending)].isspace()))]

    for pending in [" ", "  ", "\n", "\n    ", "\n\n", "\t", "\n\t\t", " \n", "\r\n  ", "        "]:
        for allowed in (len(texts), 1000):
            expected = scan(pending, allowed)
            assert tok.spelling(pending, allowed).tolist() == expected, repr(pending)
    assert len(scan(" ", len(texts))) > 1000  # the comparison covers large sets too


def test_one_window_cut_whose_offsets_are_the_documents(codegen_dir, stdlib_code):
    """The server hands the engine the whole document; the engine's cut points are offsets into
    it, so they stay meaningful while the user types through a large file."""
    from lsp_server.pool import ModelPool
    from lsp_server.settings import Settings, apply
    from lsp_server.suggest import suggest

    settings, _ = apply(Settings(), {"model": str(codegen_dir), "max_prompt_tokens": 128, "max_new_tokens": 2}, "test")
    served = ModelPool._load_blocking(settings)
    text = stdlib_code * 200  # ~400 KB
    middle = len(text) // 2
    prompt = reused = 0
    for end in range(middle, middle + 600, 6):  # 100 keystrokes
        result = suggest(served, "doc", text[:end], end, "python", settings)
        state = served.documents["doc"]
        assert 0 < state.prefix_start <= end and text[state.prefix_start - 1] == "\n"
        assert len(served.lm.tokenizer.encode(text[state.prefix_start : end].rstrip())) <= 128
        prompt += result.stats.prompt_tokens
        reused += result.stats.reused_tokens
    assert reused / prompt > 0.85
