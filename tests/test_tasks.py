"""The built-in arithmetic task: generator, traces and the answer checker."""

import math

import pytest

from lenvm_rl.tasks import (
    Problem,
    arithmetic_correctness,
    format_prompt,
    format_trace,
    gsm8k_correctness,
    make_problems,
    parse_answer,
)


def test_generator_is_seeded_and_spans_difficulties():
    problems = make_problems(200, min_terms=2, max_terms=6, seed=3)
    assert problems == make_problems(200, min_terms=2, max_terms=6, seed=3)
    assert problems != make_problems(200, min_terms=2, max_terms=6, seed=4)
    assert {p.difficulty for p in problems} == {2, 3, 4, 5, 6}
    assert all(1 <= t <= 9 for p in problems for t in p.terms)
    with pytest.raises(ValueError, match="min_terms"):
        make_problems(3, min_terms=1)


def test_traces():
    problem = Problem((3, 5, 7, 2))
    assert format_prompt(problem) == "add 3 5 7 2"
    assert format_trace(problem, verbose=False) == "=17"
    assert format_trace(problem, verbose=True) == "3+5=8 8+7=15 15+2=17 =17"
    assert parse_answer(format_trace(problem, verbose=True)) == 17
    assert len(format_trace(problem, True)) > len(format_trace(problem, False))


@pytest.mark.parametrize(
    "completion, expected",
    [("=17", 17), ("3+5=8 =8", 8), ("=17 ", 17), ("17", None), ("=", None), ("", None), ("=1x", None),
     ("=12 and more", None), (None, None)],
)
def test_parse_answer(completion, expected):
    assert parse_answer(completion) == expected


def test_correctness_reward_scores_wrong_malformed_and_empty_as_zero():
    completions = ["=17", "=16", "seventeen", "", [{"role": "assistant", "content": "3+5=8 8+9=17 =17"}]]
    assert arithmetic_correctness(completions, answer=["17"] * 5) == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_gsm8k_correctness():
    rewards = gsm8k_correctness(["so \\boxed{72}", "the answer is 1,200.", "no number", ""],
                                answer=["x #### 72", "y #### 1200", "z #### 3", "w #### 0"])
    assert rewards == [1.0, 1.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------------- checked parity


def test_bit_strings_are_seeded_and_parse_back():
    from lenvm_rl.tasks import Bits, format_parity_prompt, make_bits, parse_prompt

    problem = Bits("10110")
    assert problem.answer == "1" and problem.difficulty == 5 and Bits("1001").answer == "0"
    assert format_parity_prompt(problem) == "parity 10110"
    assert parse_prompt([{"role": "user", "content": "parity 10110"}]) == problem
    problems = make_bits(300, seed=2)
    assert problems == make_bits(300, seed=2) and problems != make_bits(300, seed=3)
    assert {p.difficulty for p in problems} == set(range(2, 9))
    assert {p.answer for p in problems} == {"0", "1"}
    assert all(parse_prompt(format_parity_prompt(p)) == p for p in problems)
    for bad in ("add 3 5", "parity 10a", "parity 1", "parity"):
        with pytest.raises(ValueError, match="not a parity prompt"):
            parse_prompt(bad)


def test_checked_parity_completions_and_their_answer():
    from lenvm_rl.tasks import (
        Bits,
        checked_parity_correctness,
        completion_structure,
        first_answer,
        format_completion,
        format_reduction,
        ideal_completion,
    )

    problem = Bits("10110")
    assert format_reduction(problem) == "1110 010 10 1"
    assert format_completion(problem, trace=False, check=False) == "=1"
    assert format_completion(problem, trace=True, check=False) == "1110 010 10 1 =1"
    assert format_completion(problem, trace=True, check=True) == "1110 010 10 1 =1 check 10110"
    for trace in (False, True):
        for check in (False, True):
            text = format_completion(problem, trace, check)
            assert first_answer(text) == "1"
            assert completion_structure(text) == {"trace": trace, "check": check}
    # the check cannot change the answer: the first standalone =x counts, whatever follows
    assert first_answer("=1 check 10110 =0") == "1"
    assert first_answer("1110 010 10 1") is None
    assert checked_parity_correctness(["=1 check junk", "=0", "1", [{"content": "=1"}]], answer=["1"] * 4) == [
        1.0, 0.0, 0.0, 1.0]
    assert ideal_completion(Bits("10")) == "=1"
    assert ideal_completion(problem) == "1110 010 10 1 =1"


def test_warmup_rates_and_the_oracle_expected_remaining_length():
    from lenvm_rl.tasks import Bits, expected_remaining, format_completion, warmup_probabilities

    problem = Bits("101")
    assert warmup_probabilities(problem) == pytest.approx({"trace": 0.25 + 0.4 / 6, "check": 0.6})
    assert warmup_probabilities(Bits("01"))["check"] == pytest.approx(0.2)
    gamma = 0.9
    # right after the answer only "stop" (EOS, 1 token) or the check (+ EOS) remain, at the check rate
    check = len(format_completion(problem, False, True)) - len("=0")
    expected = gamma ** 1 * 0.4 + gamma ** (check + 1) * 0.6
    assert expected_remaining(problem, "=0", len, gamma) == pytest.approx(math.log(expected) / math.log(gamma))
    assert expected_remaining(problem, "=0 check 101", len, gamma) == pytest.approx(1.0)
    assert expected_remaining(problem, "=1", len, gamma) is None  # off the warm-up data's grammar
