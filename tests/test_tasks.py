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


# ---------------------------------------------------------------------------------------------------- checked chains


def test_chains_are_seeded_evaluate_left_to_right_and_parse_back():
    from lenvm_rl.tasks import Chain, format_chain_prompt, make_chains, parse_prompt

    chain = Chain(3, (("+", 5), ("*", 2), ("+", 4)))
    assert chain.answer == ((3 + 5) * 2 + 4) % 7 == 6 and chain.difficulty == 4
    assert format_chain_prompt(chain) == "calc 3 +5 *2 +4"
    assert parse_prompt([{"role": "user", "content": "calc 3 +5 *2 +4"}]) == chain
    chains = make_chains(300, seed=2)
    assert chains == make_chains(300, seed=2) and chains != make_chains(300, seed=3)
    assert {c.difficulty for c in chains} == {2, 3, 4, 5, 6}
    assert all(parse_prompt(format_chain_prompt(c)) == c for c in chains)
    assert len({c.answer for c in chains}) == 7  # invertible operations: no collapse onto a few answers
    for bad in ("add 3 5", "calc 3 -5", "calc x +1", "calc 3"):
        with pytest.raises(ValueError, match="not a chain prompt"):
            parse_prompt(bad)


def test_checked_chain_completions_and_their_answer():
    from lenvm_rl.tasks import (
        Chain,
        checked_chain_correctness,
        completion_structure,
        first_answer,
        format_completion,
        ideal_completion,
    )

    chain = Chain(3, (("+", 5), ("*", 2), ("+", 4)))
    assert format_completion(chain, trace=False, check=False) == "=6"
    assert format_completion(chain, trace=True, check=False) == "1 *2 +4, 2 +4, 6 =6"
    assert format_completion(chain, trace=True, check=True) == "1 *2 +4, 2 +4, 6 =6 check 3+5*2+4=6"
    for trace in (False, True):
        for check in (False, True):
            text = format_completion(chain, trace, check)
            assert first_answer(text) == 6
            assert completion_structure(text) == {"trace": trace, "check": check}
    # the check cannot change the answer: the first standalone =N counts, whatever follows
    assert first_answer("=6 check 3+5*2+4=5") == 6
    assert first_answer("1 *2 +4, 2 +4, 6") is None and first_answer("3+5=8") is None
    assert checked_chain_correctness(["=6 check junk", "=5", "6", [{"content": "=6"}]], answer=["6"] * 4) == [
        1.0, 0.0, 0.0, 1.0]
    assert ideal_completion(Chain(3, (("+", 5),))) == "=1"
    assert ideal_completion(chain) == "1 *2 +4, 2 +4, 6 =6"


def test_warmup_rates_and_the_oracle_expected_remaining_length():
    from lenvm_rl.tasks import Chain, expected_remaining, format_completion, warmup_probabilities

    chain = Chain(3, (("+", 5), ("*", 2)))
    assert warmup_probabilities(chain) == pytest.approx({"trace": 0.35, "check": 0.6})
    assert warmup_probabilities(Chain(2, (("+", 5),)))["check"] == pytest.approx(0.2)
    gamma = 0.9
    # right after the answer only "stop" (EOS, 1 token) or the check (+ EOS) remain, at the check rate
    check = len(format_completion(chain, False, True)) - len("=2")
    expected = gamma ** 1 * 0.4 + gamma ** (check + 1) * 0.6
    assert expected_remaining(chain, "=2", len, gamma) == pytest.approx(math.log(expected) / math.log(gamma))
    assert expected_remaining(chain, "=2 check 3+5*2=2", len, gamma) == pytest.approx(1.0)
    assert expected_remaining(chain, "=3", len, gamma) is None  # off the warm-up data's grammar
