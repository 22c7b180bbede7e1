"""The built-in instruction prompt set (lenvm_rl.instructions) and the files generated from it under
recipes/smollm2/data: deterministic, as committed, disjoint where it matters, answers right."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from lenvm_rl.instructions import (
    CATEGORIES,
    INSTRUCTION_FILES,
    make_arithmetic_problems,
    make_instructions,
    write_instruction_files,
)

DATA = Path(__file__).resolve().parent.parent / "recipes" / "smollm2" / "data"


def test_generator_is_deterministic_and_seeded():
    assert make_instructions(64, seed=0) == make_instructions(64, seed=0)
    assert make_instructions(64, seed=0) != make_instructions(64, seed=1)
    assert make_arithmetic_problems(50, seed=3) == make_arithmetic_problems(50, seed=3)


def test_committed_files_are_the_generator_output(tmp_path):
    written = write_instruction_files(tmp_path)
    assert sorted(written) == sorted(INSTRUCTION_FILES)
    for name, path in written.items():
        assert (DATA / name).read_text() == path.read_text(), "regenerate with: python -m lenvm_rl.instructions"


def test_categories_counts_and_grouping():
    rows = make_instructions(64, seed=0)
    counts = Counter(row["category"] for row in rows)
    assert counts == {category: 64 for category in CATEGORIES}
    assert len({row["prompt"] for row in rows}) == len(rows)
    # grouped by category, in CATEGORIES order (rollout batches then hold similar answer lengths)
    order = [row["category"] for row in rows]
    assert order == sorted(order, key=CATEGORIES.index)
    assert all(row["answer"] == "" for row in rows if row["category"] != "arithmetic")
    lists = [row["prompt"] for row in rows if row["category"] == "list"]
    assert {int(re.search(r"\d+", p).group()) for p in lists} >= {2, 5, 10}
    with pytest.raises(ValueError, match="unknown categories"):
        make_instructions({"poems": 3})
    with pytest.raises(ValueError, match="kinds must be a non-empty subset"):
        make_arithmetic_problems(3, kinds=("exponentiate",))


def _solve(prompt: str) -> int:
    """An independent solver for the six problem templates."""
    numbers = [int(n) for n in re.findall(r"\d+", prompt)]
    if "gets" in prompt and "more. How many" in prompt:
        return numbers[0] + numbers[1]
    if "gave" in prompt:
        return numbers[0] - numbers[1]
    if "boxes with" in prompt:
        return numbers[0] * numbers[1]
    if "equally among" in prompt:
        return numbers[0] // numbers[1]
    if "loses" in prompt:
        return numbers[0] + numbers[1] - numbers[2]
    if "packs of" in prompt:
        return numbers[0] * numbers[1]
    raise AssertionError(f"unknown template: {prompt}")


def test_arithmetic_answers_are_right_and_the_sets_disjoint():
    def load(name):
        return [json.loads(line) for line in (DATA / name).read_text().splitlines()]

    instructions, train, held_out = (load(n) for n in
                                     ("instructions.jsonl", "arithmetic_train.jsonl", "arithmetic_eval.jsonl"))
    assert (len(instructions), len(train), len(held_out)) == (384, 256, 128)
    for row in train + held_out:
        (message,) = row["prompt"]
        assert message["role"] == "user"
        assert "boxes with" in message["content"]  # GRPO_ARITHMETIC_KINDS: one-step multiplication only
        assert int(row["answer"]) == _solve(message["content"]) >= 0
    for row in instructions:
        if row["category"] == "arithmetic":
            assert int(row["answer"]) == _solve(row["prompt"])
    texts = [{r["prompt"] for r in instructions}, {r["prompt"][0]["content"] for r in train},
             {r["prompt"][0]["content"] for r in held_out}]
    assert not texts[0] & texts[1] and not texts[0] & texts[2] and not texts[1] & texts[2]
    assert sum(path.stat().st_size for path in DATA.iterdir()) < 1_000_000


def _solve_chain(prompt: str) -> tuple[int, int]:
    """An independent solver for the multi-step problems: (answer, operations), sentence by sentence."""
    sentences = [s.strip() for s in prompt.split(".") if s.strip()]
    count = int(re.search(r"has (\d+)", sentences[0]).group(1))
    operations = 0
    for sentence in sentences[1:]:
        if sentence.startswith("How many"):
            break
        numbers = [int(n) for n in re.findall(r"\d+", sentence)]
        operations += 1
        if " buys " in sentence:
            count += numbers[0] * numbers[1]
        elif " more " in sentence:
            count += numbers[0]
        elif " loses " in sentence or re.search(r"gives \d+ \w+ to", sentence):
            count -= numbers[0]
        else:
            raise AssertionError(f"unknown step: {sentence}")
        assert count >= 0, prompt
    return count, operations


def test_reasoning_problems_are_right_multi_step_and_disjoint():
    from lenvm_rl.instructions import make_reasoning_problems

    def load(name):
        return [json.loads(line) for line in (DATA / name).read_text().splitlines()]

    train, held_out = load("reasoning_train.jsonl"), load("reasoning_eval.jsonl")
    assert (len(train), len(held_out)) == (512, 192)
    for row in train + held_out:
        (message,) = row["prompt"]
        answer, operations = _solve_chain(message["content"])
        assert (str(answer), operations) == (row["answer"], row["steps"]) and operations in (2, 3)
    assert Counter(row["steps"] for row in held_out).keys() == {2, 3}
    texts = {name: {row["prompt"][0]["content"] for row in load(name)} for name in
             ("reasoning_train.jsonl", "reasoning_eval.jsonl", "arithmetic_train.jsonl", "arithmetic_eval.jsonl")}
    assert not texts["reasoning_train.jsonl"] & texts["reasoning_eval.jsonl"]
    assert len(texts["reasoning_eval.jsonl"]) == 192  # distinct
    assert make_reasoning_problems(20, seed=5) == make_reasoning_problems(20, seed=5)
    assert all(row["steps"] == 4 for row in make_reasoning_problems(10, seed=1, steps=(4,)))
    with pytest.raises(ValueError, match="steps must be positive whole numbers"):
        make_reasoning_problems(3, steps=(0,))
