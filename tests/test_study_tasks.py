"""The study's tasks: the registry, and the long multi-decision task (rewards, segments, ideal policy, oracle)."""

from __future__ import annotations

import itertools
import math

import pytest

from lenvm_rl.study.tasks import StudyTask, get_task, register_task, task_names
from lenvm_rl.study.tasks.multi_parity import (
    format_completion,
    multi_parity_correctness,
    parse_prompt,
    split_parts,
)
from lenvm_rl.tasks import warmup_probabilities

PROMPT = [{"role": "user", "content": "parities a:10110 b:011"}]


def test_the_built_in_tasks_are_registered_by_name():
    assert {"checked_parity", "multi_parity"} <= set(task_names())
    assert get_task("multi_parity").reward_func.endswith(":multi_parity_correctness")
    assert type(get_task("lenvm_rl.study.tasks.checked_parity:CheckedParity")).__name__ == "CheckedParity"


@pytest.mark.parametrize("name, message", [
    ("no_such_task", "unknown study task 'no_such_task'; registered: "),
    ("lenvm_rl.tasks:make_bits", "is not a StudyTask subclass"),
    ("lenvm_rl.nowhere:Task", "cannot import 'Task' from 'lenvm_rl.nowhere'"),
])
def test_an_unknown_task_is_named(name, message):
    with pytest.raises(ValueError, match=message):
        get_task(name)


def test_a_second_task_under_a_taken_name_is_refused():
    class Impostor(StudyTask):
        name = "multi_parity"
        reward_func = "x:y"

    with pytest.raises(ValueError, match="already registered"):
        register_task(Impostor)
    with pytest.raises(TypeError, match="must set the class attributes name and reward_func"):
        register_task(type("Nameless", (StudyTask,), {}))


def test_the_study_refuses_an_unknown_task_before_anything_else(tmp_path):
    from lenvm_rl.study.runner import StudyConfig

    with pytest.raises(ValueError, match="unknown study task 'parity_typo'"):
        StudyConfig(output_dir=str(tmp_path), task="parity_typo")
    assert StudyConfig(output_dir=str(tmp_path), task="multi_parity").reward_funcs == [
        "lenvm_rl.study.tasks.multi_parity:multi_parity_correctness"]
    with pytest.raises(ValueError, match="reward_funcs: name the correctness reward of dataset"):
        StudyConfig(output_dir=str(tmp_path), dataset=str(tmp_path / "prompts.jsonl"))


@pytest.mark.parametrize("completion, reward", [
    ("a:10110 1110 010 10 1 =1 check 10110 ; b:011 =0", 1.0),
    ("a:10110 =1 ; b:011 11 0 =0 check 011 and whatever follows", 1.0),
    ("a:10110 =1 ; b:011 =1", 0.0),          # the second part is wrong
    ("a:10110 =1", 0.0),                     # a part is missing
    ("a:10110 =1 ; b:01 =0", 0.0),           # the second string is restated wrong
    ("a:10110 =1 ; c:011 =0", 0.0),          # under the wrong key
    ("=1 ; =0", 0.0),                        # no restated strings
    ("a:10110 1110 =0 =1 ; b:011 =0", 0.0),  # the first standalone answer counts
])
def test_multi_parity_pays_only_when_every_part_is_restated_and_right(completion, reward):
    assert multi_parity_correctness([completion], ["10"], prompts=[PROMPT]) == [reward]
    chat = [{"role": "assistant", "content": completion}]
    assert multi_parity_correctness([chat], ["10"], prompts=[PROMPT]) == [reward]


def test_segments_are_counted_per_part_where_they_pay_and_where_they_are_waste():
    task = get_task("multi_parity")
    found = task.structure("a:10110 1110 010 10 1 =1 check 10110 ; b:011 11 0 =0 ; c:1101 =1 check 1101")
    assert found == {"trace_long": 0.5, "trace_short": 1.0, "check": pytest.approx(2 / 3)}
    assert math.isnan(task.structure("a:010 =1")["trace_long"])


def test_the_ideal_completion_traces_exactly_the_long_strings_and_never_checks():
    task = get_task("multi_parity")
    assert task.ideal_completion({"prompt": [{"role": "user", "content": "parities a:10110 b:011 c:1101"}]}) == (
        "a:10110 1110 010 10 1 =1 ; b:011 =0 ; c:1101 001 01 1 =1")


def test_prompts_hold_three_to_five_strings_and_their_parities():
    task = get_task("multi_parity")
    rows = task.rows(200, seed=0)
    assert rows == task.rows(200, seed=0) and rows != task.rows(200, seed=1)
    for row in rows:
        problem = parse_prompt(row["prompt"])
        assert 3 <= len(problem.parts) <= 5 and all(2 <= len(p.bits) <= 8 for p in problem.parts)
        assert row["answer"] == "".join(str(p.bits.count("1") % 2) for p in problem.parts)
        assert row["difficulty"] == sum(len(p.bits) >= 4 for p in problem.parts)
    warm = task.warmup_rows(400, seed=1)
    lengths = [len(r["completion"][0]["content"]) + 1 for r in warm]
    assert 60 < sum(lengths) / len(lengths) < 160 and max(lengths) > 200  # a long task, as the issue asks
    assert all(multi_parity_correctness([r["completion"][0]["content"]], [parse_prompt(r["prompt"]).answer],
                                        prompts=[r["prompt"]]) == [1.0] for r in warm)


def _enumerated_remaining(prompt: str, prefix: str, gamma: float) -> float:
    """The warm-up policy's ln E[γ^R]/ln γ by brute force: every combination of per-part decisions, weighted, among
    the completions that start with the prefix."""
    problem = parse_prompt(prompt)
    rates = [warmup_probabilities(part) for part in problem.parts]
    total = expectation = 0.0
    for decisions in itertools.product((False, True), repeat=2 * len(problem.parts)):
        traces, checks = decisions[::2], decisions[1::2]
        weight = math.prod((r["trace"] if t else 1 - r["trace"]) * (r["check"] if c else 1 - r["check"])
                           for r, t, c in zip(rates, traces, checks, strict=True))
        text = format_completion(problem, traces, checks)
        if text.startswith(prefix):
            total += weight
            expectation += weight * gamma ** (len(text) - len(prefix) + 1)
    return math.log(expectation / total) / math.log(gamma)


def test_the_oracle_remaining_length_matches_brute_force_at_every_decision_state():
    task = get_task("multi_parity")
    prompt = "parities a:10110 b:011 c:1101001"
    completion = "a:10110 1110 010 10 1 =1 check 10110 ; b:011 =0 ; c:1101001 =0"
    states = task.decision_states(prompt, completion)
    assert [name for name, _ in states] == ["first token"] + ["after an answer"] * 3
    assert [prefix for _, prefix in states][1:] == ["a:10110 1110 010 10 1 =1", "a:10110 1110 010 10 1 =1 check "
                                                    "10110 ; b:011 =0", completion]
    for gamma in (0.9, 0.99):
        for _, prefix in states:
            assert task.expected_remaining(prompt, prefix, len, gamma) == pytest.approx(
                _enumerated_remaining(prompt, prefix, gamma), rel=1e-9)
    assert task.expected_remaining(prompt, "a:10110 11", len, 0.9) is None  # mid-trace: not a decision state


def test_parts_keep_their_offsets():
    text = "a:10110 =1 check 10110 ; b:011 11 0 =0"
    parts = split_parts(text)
    assert [(offset, header, answer) for offset, header, answer, _, _ in parts] == [(0, "a:10110", "1"),
                                                                                    (25, "b:011", "0")]
    assert text[parts[1][0]:].startswith("b:011")


def test_the_oracle_skips_prefixes_the_warm_up_policy_never_writes():
    task = get_task("multi_parity")
    assert task.expected_remaining("parities a:10110 b:011", "a:10111 =1", len, 0.9) is None
    assert task.expected_remaining("parities a:10110 b:011", "a:10110 =1", len, 0.9) is not None


@pytest.mark.parametrize("prompt", ["parities b:01 a:10", "parities a:012", "parities", "parity a:0110",
                                    "parities a:01 b:10 c:11 d:00 e:01 f:10"])
def test_a_malformed_multi_parity_prompt_is_named(prompt):
    with pytest.raises(ValueError, match="not a multi-parity prompt"):
        parse_prompt(prompt)
