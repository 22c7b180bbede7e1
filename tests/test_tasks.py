"""The built-in arithmetic task: generator, traces and the answer checker."""

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
