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
