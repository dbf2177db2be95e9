"""engine/stops.py: the within-line repetition stop and the confidence stop, on token ids and
logits made by hand, and through generate() on a real (tiny) model."""

from __future__ import annotations

import math

import torch

from engine.stops import Stopper, cut_unsure, first_repeat, repeat_at_end, smallest_period, unsure_cut


def test_smallest_period():
    assert smallest_period([1, 2, 3]) == 3
    assert smallest_period([1, 2, 1, 2]) == 2
    assert smallest_period([7, 7, 7]) == 1


def test_repeat_of_three_tokens_or_more_is_found_where_the_second_copy_starts():
    assert repeat_at_end([9, 1, 2, 3, 1, 2, 3]) == 4
    assert first_repeat([9, 1, 2, 3, 1, 2, 3, 1, 2, 3, 8]) == 4
    assert first_repeat([5, 1, 2, 3, 4, 1, 2, 3, 4]) == 5  # a longer chunk


def test_short_or_non_primitive_repeats_are_left_alone():
    assert first_repeat([1, 2, 1, 2, 1, 2, 1, 2]) is None  # `0, 0, 0, 0`: a 2-token period
    assert first_repeat([4, 4, 4, 4, 4, 4]) is None
    assert first_repeat([1, 2, 3, 4, 1, 2, 3, 5]) is None  # not consecutive copies


def test_allowed_filters_chunks():
    assert repeat_at_end([1, 2, 3, 1, 2, 3], allowed=lambda chunk: 2 not in chunk) is None


def logits_for(token: int, p: float, vocab: int = 8) -> torch.Tensor:
    """Logits giving `token` probability p and the rest the remaining mass evenly."""
    probs = torch.full((vocab,), (1 - p) / (vocab - 1))
    probs[token] = p
    return probs.log()


TEXT = {1: "a", 2: " list", 3: " of", 4: "\n", 5: "x", 6: "y"}


def decode(ids):
    return "".join(TEXT[i] for i in ids)


def run(stopper: Stopper, tokens: list[tuple[int, float]], heal: int = 0) -> str:
    generated = []
    for token, p in tokens:
        generated.append(token)
        text = decode(generated)
        cut = stopper.step(generated, logits_for(token, p), text, heal)
        if cut is not None:
            return text[heal:cut]
    return decode(generated)[heal:]


def test_stopper_cuts_a_within_line_repeat_before_the_second_copy():
    stopper = Stopper(decode, 8, min_logprob=None, min_line_logprob=None)
    assert run(stopper, [(1, 0.9), (2, 0.9), (3, 0.9)] * 3) == "a list of"
    assert stopper.reason == "repeat"
    # A repeat that spans a line break is a repeated line: left to postprocessing.
    stopper = Stopper(decode, 8, min_logprob=None, min_line_logprob=None)
    assert run(stopper, [(5, 0.9), (6, 0.9), (4, 0.9)] * 2) == "xy\nxy\n"


def test_stopper_ends_before_an_unsure_token_on_the_first_line():
    stopper = Stopper(decode, 8, min_logprob=math.log(0.3), min_line_logprob=None)
    assert run(stopper, [(5, 0.9), (6, 0.6), (5, 0.1), (6, 0.9)]) == "xy"
    assert stopper.reason == "unsure"
    assert [round(math.exp(r.logprob), 2) for r in stopper.records] == [0.9, 0.6, 0.1]


def test_later_lines_are_shown_whole_or_not_at_all():
    stopper = Stopper(decode, 8, min_logprob=None, min_line_logprob=math.log(0.5))
    tokens = [(5, 0.9), (4, 0.9), (6, 0.9), (4, 0.9), (5, 0.9), (6, 0.2)]
    assert run(stopper, tokens) == "x\ny"  # the third line had an unsure token: dropped with its line break
    assert stopper.reason == "unsure line"


def test_healed_whitespace_is_not_judged_and_offsets_leave_it_out():
    stopper = Stopper(decode, 8, min_logprob=math.log(0.5), min_line_logprob=math.log(0.5))
    # "\n" spells the healed whitespace (its distribution was constrained: low p says nothing).
    assert run(stopper, [(4, 0.01), (5, 0.9), (6, 0.1)], heal=1) == "x"
    assert stopper.records[0].start < 0 and stopper.records[1].start == 0


def test_cut_unsure_replays_other_thresholds():
    stopper = Stopper(decode, 8, min_logprob=None, min_line_logprob=None)
    text = run(stopper, [(5, 0.9), (6, 0.3), (4, 0.9), (5, 0.4)])
    assert text == "xy\nx"
    assert cut_unsure(stopper.records, text, math.log(0.5), None) == "x"
    assert cut_unsure(stopper.records, text, math.log(0.2), math.log(0.5)) == "xy"
    assert cut_unsure(stopper.records, text, None, None) == text
    assert unsure_cut("ab\ncd", 4, -5.0, None, -1.0) == 2


def test_generate_asks_the_stopper(codegen_dir):
    from engine.generate import SamplingParams, generate
    from engine.loading import load_model
    from engine.session import Session

    lm = load_model(str(codegen_dir))
    prompt = lm.tokenizer.encode("def f(x):\n    return")
    free = generate(Session(lm), prompt, SamplingParams(max_new_tokens=12))
    stopper = Stopper(lm.tokenizer.decode, lm.tokenizer.vocab_size, min_logprob=0.0, min_line_logprob=0.0)
    stopped = generate(Session(lm), prompt, SamplingParams(max_new_tokens=12, stopper=stopper))
    # A threshold of probability 1 stops before the first token; the free run is unchanged by stoppers.
    assert stopped.text == "" and stopped.finish_reason == "stop" and len(stopper.records) == 1
    assert len(free.token_ids) > 0


def test_repeat_cut_of_text_finds_the_rule_in_text_without_tokens():
    """A remote server sends text: it is tokenized again, and cut where a decode would have been."""
    from engine.paths import DEMO_MODEL_DIR
    from engine.stops import repeat_cut_of_text
    from engine.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(DEMO_MODEL_DIR)
    encode = lambda text: tokenizer.encode(text, continuation=True)  # noqa: E731
    decode = lambda ids: tokenizer.decode(ids, continuation=True)  # noqa: E731
    text = "x = compute(a, b) + compute(a, b) + compute(a, b) + compute(a, b)"
    assert text[: repeat_cut_of_text(text, encode, decode)] == "x = compute(a, b) +"
    assert repeat_cut_of_text("x = compute(a, b)\nx = compute(a, b)\n", encode, decode) is None  # across lines
