"""A built-in instruction prompt set whose natural answer length varies a lot, for real instruct models.

Everything is generated here, deterministically from a seed (no download). Categories, from short to long answers:

- ``one_word``: questions with a one-word answer ("What is the capital of Japan? Answer with one word.");
- ``one_sentence``: "In one sentence, explain what photosynthesis is.";
- ``list``: "List 7 fruits." (``n`` from 2 to 10: the answer grows with ``n``);
- ``explanation``: "Briefly explain how a rainbow forms.";
- ``story``: "Write a short story (four or five sentences) about a lighthouse keeper.";
- ``arithmetic``: one- or two-step word problems with a whole-number answer in ``answer`` (checkable with
  :func:`lenvm_rl.tasks.gsm8k_correctness`, which reads the last number of a completion).

:func:`make_instructions` returns rows ``{"prompt", "category", "answer"}`` (``answer`` is ``""`` where there is no
checkable answer), grouped by category so that a rollout batch holds prompts of similar answer lengths (HF
``generate`` runs every row of a batch until the longest finishes). :func:`make_arithmetic_problems` gives
disjoint train/eval arithmetic sets for RL, :func:`make_length_control_prompts` open-ended prompts for
length-constrained generation. :func:`make_reasoning_problems` gives two- and three-step word problems (a chain of
operations on one quantity), the real-model study's task where a short chain of steps can help a small model.
:func:`write_instruction_files` writes the files under ``recipes/smollm2/data``::

    python -m lenvm_rl.instructions recipes/smollm2/data
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .io import write_text_atomically

__all__ = [
    "CATEGORIES",
    "make_instructions",
    "make_arithmetic_problems",
    "make_length_control_prompts",
    "make_reasoning_problems",
    "ARITHMETIC_KINDS",
    "GRPO_ARITHMETIC_KINDS",
    "write_instruction_files",
    "INSTRUCTION_FILES",
]

CATEGORIES = ("one_word", "one_sentence", "list", "explanation", "story", "arithmetic")

_ONE_WORD = (
    "What is the capital of {x}?",
)
_COUNTRIES = ("France", "Japan", "Italy", "Spain", "Germany", "Egypt", "Canada", "Kenya", "Peru", "Norway",
              "Greece", "Russia", "China", "Portugal", "Ireland", "Austria")
_ONE_WORD_FACTS = (
    "What color is the sky on a clear day?", "What color is grass?", "What color is a ripe banana?",
    "What is the largest planet in our solar system?", "What is the closest star to Earth?",
    "What do bees make?", "What animal is known as the king of the jungle?", "What is frozen water called?",
    "Which season comes after winter?", "Which season comes after summer?", "What is the opposite of hot?",
    "What is the opposite of up?", "What is the opposite of happy?", "What is the opposite of early?",
    "What is the opposite of fast?", "What metal is liquid at room temperature?",
    "What gas do plants absorb from the air?", "What is the largest ocean on Earth?",
    "How many legs does a spider have?", "What language is spoken in Brazil?",
    "What is the chemical symbol for gold?", "Which organ pumps blood through the body?",
    "What do caterpillars turn into?", "What is the tallest animal?", "What instrument has 88 keys?",
    "What is the main ingredient of guacamole?", "Which planet is known as the red planet?",
    "What is the hardest natural substance?", "What do you call a baby dog?", "What do you call a baby cat?",
    "What is the fastest land animal?", "Which bird is a symbol of peace?", "What shape has three sides?",
    "What day comes after Monday?", "What month comes after March?",
)
_ONE_WORD_SUFFIXES = ("Answer with one word.", "Reply with a single word.", "One word only.")

_CONCEPTS = ("photosynthesis", "gravity", "democracy", "inflation", "a volcano", "an atom", "the internet",
             "a black hole", "evolution", "a vaccine", "climate change", "a computer virus", "the moon",
             "electricity", "a rainbow", "friction", "an ecosystem", "a galaxy", "recycling", "a budget",
             "a metaphor", "an earthquake", "a glacier", "the immune system", "a battery", "a password",
             "a library", "a bridge", "a telescope", "a hurricane", "machine learning", "a calendar")
_ONE_SENTENCE = ("In one sentence, explain what {x} is.", "Describe {x} in one sentence.",
                 "What is {x}? Answer in one sentence.")

_LIST_THINGS = ("fruits", "vegetables", "animals that live in the ocean", "countries in Europe", "colors",
                "musical instruments", "sports played with a ball", "kitchen tools", "things you can find in a "
                "classroom", "jobs that help people", "birds", "flowers", "board games", "ways to save energy",
                "tips for staying healthy", "hobbies you can do at home", "things to pack for a beach trip",
                "famous scientists", "planets", "types of weather", "mammals", "programming languages",
                "things that are cold", "breakfast foods", "ways to be kind to others")
_LIST_TEMPLATES = ("List {n} {x}.", "Name {n} {x}.", "Give me a list of {n} {x}.")

_PROCESSES = ("a rainbow forms", "plants grow from seeds", "the heart pumps blood", "a refrigerator keeps food "
              "cold", "rain forms", "a bicycle works", "the seasons change", "a plane stays in the air",
              "tides happen", "a compass points north", "bread rises", "the moon changes shape",
              "vaccines protect us", "a camera takes a picture", "soap cleans dirt", "bees make honey",
              "a thermometer works", "sound travels", "a battery stores energy", "wind is created",
              "a volcano erupts", "clouds float", "a microwave heats food", "leaves change color in autumn",
              "a lock and key work", "fish breathe underwater")
_EXPLANATIONS = ("Briefly explain how {x}.", "Explain in a short paragraph how {x}.",
                 "Can you explain how {x}?", "Explain to a child how {x}.")

_STORY_SUBJECTS = ("a lighthouse keeper", "a lost puppy", "a robot learning to paint", "a dragon who is afraid "
                   "of fire", "a girl who finds a map", "a talking tree", "a boy and his kite", "an astronaut "
                   "far from home", "a cat who wants to fly", "a baker in a small town", "a friendly ghost",
                   "a turtle who wins a race", "two friends on a rainy day", "a magic pencil",
                   "a squirrel preparing for winter", "a princess who becomes a pirate", "a clock that runs "
                   "backwards", "a fisherman and a whale", "a mouse in a museum", "a snowman in spring",
                   "a train that can talk", "a garden at night", "a shy giant", "a penguin on holiday",
                   "a detective duck", "an old umbrella")
_STORY_TEMPLATES = ("Write a short story (four or five sentences) about {x}.", "Tell a very short story about {x}.",
                    "Write a short story about {x}.", "Write a bedtime story about {x}.")

_NAMES = ("Tom", "Sara", "Ali", "Mia", "Ben", "Lena", "Omar", "Ana", "Sam", "Emma", "Leo", "Zoe", "Raj", "Nina")
_ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells", "cards", "balloons")


ARITHMETIC_KINDS = ("add", "subtract", "multiply", "divide", "two_step", "price")


def _arithmetic_problem(rng: random.Random, kinds: Sequence[str] | None = None) -> tuple[str, int]:
    """One word problem and its whole-number answer (one or two steps, small numbers), of one of ``kinds``
    (:data:`ARITHMETIC_KINDS`; all of them when ``None``)."""
    name, other = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    kind = rng.randrange(6) if kinds is None else ARITHMETIC_KINDS.index(rng.choice(list(kinds)))
    if kind == 0:
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b
    if kind == 1:
        a = rng.randint(10, 40)
        b = rng.randint(2, a - 1)
        return f"{name} had {a} {item} and gave {b} to {other}. How many {item} does {name} have left?", a - b
    if kind == 2:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return f"{name} has {a} boxes with {b} {item} in each box. How many {item} are there in total?", a * b
    if kind == 3:
        b = rng.randint(2, 6)
        answer = rng.randint(2, 9)
        a = b * answer
        return (f"{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?",
                answer)
    if kind == 4:
        a, b = rng.randint(5, 20), rng.randint(5, 20)
        c = rng.randint(1, a + b - 1)
        return (f"{name} has {a} {item}. {other} gives {name} {b} more, and then {name} loses {c}. "
                f"How many {item} does {name} have now?", a + b - c)
    a, b = rng.randint(2, 12), rng.randint(2, 6)
    return (f"{name} buys {a} packs of {item} for {b} dollars each. How many dollars does {name} spend?", a * b)


def _pick(rng: random.Random, count: int, build: Callable[[random.Random], str]) -> list[str]:
    """``count`` distinct prompts drawn from ``build`` (gives up after many repeats)."""
    seen: dict[str, None] = {}
    attempts = 0
    while len(seen) < count and attempts < 100 * count:
        seen.setdefault(build(rng), None)
        attempts += 1
    if len(seen) < count:
        raise ValueError(f"could draw only {len(seen)} distinct prompts of the {count} asked for")
    return list(seen)


def make_instructions(per_category: int | dict[str, int] = 64, seed: int = 0) -> list[dict[str, str]]:
    """The instruction prompt set: ``per_category`` distinct prompts of each of :data:`CATEGORIES` (an int for all
    or a dict per category), grouped by category in :data:`CATEGORIES` order.

    Returns rows ``{"prompt": str, "category": str, "answer": str}``; ``answer`` is the whole-number answer of an
    arithmetic problem as a string, ``""`` otherwise. Deterministic in ``seed``.
    """
    counts = {c: per_category for c in CATEGORIES} if isinstance(per_category, int) else dict(per_category)
    unknown = sorted(set(counts) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"unknown categories {unknown}; known: {CATEGORIES}")
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"counts must be ≥ 0, got {counts}")
    rng = random.Random(seed)
    builders: dict[str, Callable[[random.Random], str]] = {
        "one_word": lambda r: (r.choice(_ONE_WORD).format(x=r.choice(_COUNTRIES)) if r.random() < 0.3
                               else r.choice(_ONE_WORD_FACTS)) + " " + r.choice(_ONE_WORD_SUFFIXES),
        "one_sentence": lambda r: r.choice(_ONE_SENTENCE).format(x=r.choice(_CONCEPTS)),
        "list": lambda r: r.choice(_LIST_TEMPLATES).format(n=r.randint(2, 10), x=r.choice(_LIST_THINGS)),
        "explanation": lambda r: r.choice(_EXPLANATIONS).format(x=r.choice(_PROCESSES)),
        "story": lambda r: r.choice(_STORY_TEMPLATES).format(x=r.choice(_STORY_SUBJECTS)),
    }
    rows: list[dict[str, str]] = []
    for category in CATEGORIES:
        count = counts.get(category, 0)
        if category == "arithmetic":
            rows.extend({"prompt": p, "category": category, "answer": a}
                        for p, a in make_arithmetic_problems(count, seed=rng.randrange(2**31)))
        else:
            rows.extend({"prompt": p, "category": category, "answer": ""}
                        for p in _pick(rng, count, builders[category]))
    return rows


def make_arithmetic_problems(count: int, seed: int = 0, exclude: set[str] | None = None,
                             kinds: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``count`` distinct arithmetic word problems ``(prompt, answer)`` (answer a whole number as a string), none of
    them in ``exclude``, of the given ``kinds`` (:data:`ARITHMETIC_KINDS`, default all). Deterministic in ``seed``."""
    unknown = sorted(set(kinds or ()) - set(ARITHMETIC_KINDS))
    if unknown or (kinds is not None and not kinds):
        raise ValueError(f"kinds must be a non-empty subset of {ARITHMETIC_KINDS}, got {kinds}")
    rng = random.Random(seed)
    exclude = exclude or set()
    problems: dict[str, str] = {}
    attempts = 0
    while len(problems) < count and attempts < 100 * max(count, 1):
        prompt, answer = _arithmetic_problem(rng, kinds)
        if prompt not in exclude:
            problems.setdefault(prompt, str(answer))
        attempts += 1
    if len(problems) < count:
        raise ValueError(f"could draw only {len(problems)} distinct arithmetic problems of the {count} asked for")
    return list(problems.items())


_CONTAINERS = ("bags", "boxes", "packs", "jars", "baskets")


def _reasoning_problem(rng: random.Random, steps: int) -> tuple[str, int]:
    """One word problem of ``steps`` operations on one person's count of one item, and its whole-number answer: a
    start count, then ``steps`` of buying containers of several items (× then +), getting more (+), giving some away
    (−) and losing some (−), never going below zero."""
    name, other = rng.sample(_NAMES, 2)
    item, container = rng.choice(_ITEMS), rng.choice(_CONTAINERS)
    count = rng.randint(3, 20)
    sentences = [f"{name} has {count} {item}."]
    for index in range(steps):
        then = "Then " if index else ""
        kinds = ["buy", "get"] + (["give", "lose"] if count >= 2 else [])
        kind = rng.choice(kinds)
        if kind == "buy":
            packs, each = rng.randint(2, 6), rng.randint(2, 9)
            count += packs * each
            sentences.append(f"{then}{name} buys {packs} {container} with {each} {item} in each.")
        elif kind == "get":
            more = rng.randint(2, 15)
            count += more
            sentences.append(f"{then}{other} gives {name} {more} more {item}.")
        else:
            fewer = rng.randint(1, count - 1)
            count -= fewer
            sentences.append(f"{then}{name} gives {fewer} {item} to {other}." if kind == "give"
                             else f"{then}{name} loses {fewer} {item}.")
    sentences.append(f"How many {item} does {name} have now?")
    return " ".join(sentences), count


def make_reasoning_problems(count: int, seed: int = 0, steps: Sequence[int] = (2, 3),
                            exclude: set[str] | None = None) -> list[dict[str, Any]]:
    """``count`` distinct multi-step word problems ``{"prompt", "answer", "steps"}`` (answer a whole number as a
    string; ``steps`` operations, drawn from ``steps``), none of them in ``exclude``. Deterministic in ``seed``."""
    if not steps or any(not isinstance(k, int) or k < 1 for k in steps):
        raise ValueError(f"steps must be positive whole numbers of operations, got {steps}")
    rng = random.Random(seed)
    exclude = exclude or set()
    problems: dict[str, dict[str, Any]] = {}
    attempts = 0
    while len(problems) < count and attempts < 100 * max(count, 1):
        length = rng.choice(list(steps))
        prompt, answer = _reasoning_problem(rng, length)
        if prompt not in exclude:
            problems.setdefault(prompt, {"prompt": prompt, "answer": str(answer), "steps": length})
        attempts += 1
    if len(problems) < count:
        raise ValueError(f"could draw only {len(problems)} distinct reasoning problems of the {count} asked for")
    return list(problems.values())


def make_length_control_prompts() -> list[str]:
    """Open-ended prompts with no natural length, for length-constrained generation (the constraint is added by
    ``lenvm-rl eval-length-control``'s ``instruction_template``)."""
    return [f"Write about {topic}." for topic in (
        "the ocean", "your favorite season", "how to make a cup of tea", "a walk in the forest", "the city at night",
        "why people enjoy music", "a day at the beach", "learning a new language", "the history of bicycles",
        "a rainy afternoon", "friendship", "the night sky", "cooking with vegetables", "a busy train station",
        "the life of a honeybee", "winter mornings",
    )]


# The GRPO recipes train on one kind of problem: "N boxes with M items in each box" is the kind SmolLM2-135M-Instruct
# solves most often (about 39% of its sampled answers in the instruction-set rollouts, against 0-13% for the others),
# so most groups of 4 completions hold both right and wrong answers, and often several right ones to compare by length.
GRPO_ARITHMETIC_KINDS = ("multiply",)

# file name → what it holds; written by write_instruction_files
INSTRUCTION_FILES = {
    "instructions.jsonl": "the instruction set (64 per category, 384 prompts) for rollouts and critic training",
    "arithmetic_train.jsonl": "256 one-step multiplication word problems for GRPO (none in the instruction set), "
                              "as chat messages",
    "arithmetic_eval.jsonl": "128 held-out multiplication word problems (in neither file above), as chat messages",
    "length_control.jsonl": "16 open-ended prompts for eval-length-control",
    "reasoning_train.jsonl": "512 two- and three-step word problems for the real-model study (answer and steps "
                             "columns), as chat messages",
    "reasoning_eval.jsonl": "192 held-out two- and three-step word problems (in no file above)",
    "arithmetic_budget_train.jsonl": "arithmetic_train.jsonl's problems, each asking for a token budget (a budget "
                                     "column and a 'within N tokens' line), for the budget-following study",
    "arithmetic_budget_eval.jsonl": "arithmetic_eval.jsonl's problems with budgets, held out",
}
# the budgets of the SmolLM2 budget files, cycling over the rows (tightest first; completion tokens, EOS counted):
# the starting policy answers these problems in about 50 tokens, so the tight ones ask for a third of that
SMOLLM2_BUDGETS = (16, 24, 32, 48, 64)


def _user(text: str) -> list[dict[str, str]]:
    # conversational, so that TRL's GRPO renders it with the chat template (it passes plain strings through raw)
    return [{"role": "user", "content": text}]


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_instruction_files(directory: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """Write the files of :data:`INSTRUCTION_FILES` to ``directory`` (atomically, one by one). Returns their paths."""
    directory = Path(directory)
    instructions = make_instructions(64, seed=seed)
    used = {row["prompt"] for row in instructions}
    train = make_arithmetic_problems(256, seed=seed + 1, exclude=used, kinds=GRPO_ARITHMETIC_KINDS)
    used |= {prompt for prompt, _ in train}
    held_out = make_arithmetic_problems(128, seed=seed + 2, exclude=used, kinds=GRPO_ARITHMETIC_KINDS)
    contents = {
        "instructions.jsonl": instructions,
        "arithmetic_train.jsonl": [{"prompt": _user(p), "answer": a} for p, a in train],
        "arithmetic_eval.jsonl": [{"prompt": _user(p), "answer": a} for p, a in held_out],
        "length_control.jsonl": [{"prompt": p} for p in make_length_control_prompts()],
    }
    used |= {prompt for prompt, _ in held_out}
    reasoning_train = make_reasoning_problems(512, seed=seed + 3, exclude=used)
    used |= {row["prompt"] for row in reasoning_train}
    reasoning_eval = make_reasoning_problems(192, seed=seed + 4, exclude=used)
    contents["reasoning_train.jsonl"] = [{**row, "prompt": _user(row["prompt"])} for row in reasoning_train]
    contents["reasoning_eval.jsonl"] = [{**row, "prompt": _user(row["prompt"])} for row in reasoning_eval]
    from .data import render_budget

    for name, rows in (("arithmetic_budget_train.jsonl", train), ("arithmetic_budget_eval.jsonl", held_out)):
        contents[name] = [{"prompt": _user(render_budget(p, budget)), "answer": a, "budget": budget}
                          for (p, a), budget in zip(rows, itertools.cycle(SMOLLM2_BUDGETS))]
    paths = {}
    for name, rows in contents.items():
        paths[name] = directory / name
        write_text_atomically(paths[name], _jsonl(rows))
    return paths


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "recipes/smollm2/data"
    for name, path in write_instruction_files(target).items():
        print(f"{path}: {INSTRUCTION_FILES[name]}")
