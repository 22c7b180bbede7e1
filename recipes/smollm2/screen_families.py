"""Write the candidate word-problem families screened for the real-model study's reasoning task (docs/real_model.md):
32 problems each of three families easier than ``make_reasoning_problems``' two- and three-step ones, with a
``family`` column for ``eval_arithmetic.py --group_column family``:

- ``small2``: a start count of 2-9, then two steps of getting 1-9 more or losing some (addition and subtraction only);
- ``twobox``: boxes and bags of 2-6 items each, the total (two products and a sum);
- ``buy1``: a start count of 2-9 plus 2-5 boxes of 2-6 items (one product and a sum).

    python recipes/smollm2/screen_families.py /tmp/screen/families.jsonl
    OMP_NUM_THREADS=1 python recipes/smollm2/eval_arithmetic.py --policy runs/smollm2-135m-instruct \\
        --prompts /tmp/screen/families.jsonl --num_prompts 96 --num_samples 1 --prompts_per_batch 32 \\
        --max_new_tokens 160 --group_column family --output docs/real_model/family_screen.json
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

NAMES = ["Ben", "Ava", "Leo", "Mia", "Sam", "Zoe", "Raj", "Nina", "Tom", "Ali"]
ITEMS = ["apples", "pencils", "stickers", "books", "shells", "marbles", "cards", "stamps"]


def problem(rng: random.Random, family: str) -> tuple[str, int]:
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    if family == "small2":
        count = rng.randint(2, 9)
        sentences = [f"{name} has {count} {item}."]
        for step in range(2):
            then = "Then " if step else ""
            if rng.random() < 0.5 or count < 2:
                more = rng.randint(1, 9)
                count += more
                sentences.append(f"{then}{other} gives {name} {more} more {item}.")
            else:
                fewer = rng.randint(1, count - 1)
                count -= fewer
                sentences.append(f"{then}{name} loses {fewer} {item}.")
        sentences.append(f"How many {item} does {name} have now?")
        return " ".join(sentences), count
    if family == "twobox":
        boxes, per_box, bags, per_bag = (rng.randint(2, 6) for _ in range(4))
        return (f"{name} has {boxes} boxes with {per_box} {item} in each box and {bags} bags with {per_bag} {item} "
                f"in each bag. How many {item} does {name} have in total?", boxes * per_box + bags * per_bag)
    count, boxes, each = rng.randint(2, 9), rng.randint(2, 5), rng.randint(2, 6)
    return (f"{name} has {count} {item}. {name} buys {boxes} boxes with {each} {item} in each box. How many {item} "
            f"does {name} have now?", count + boxes * each)


def main(path: str) -> None:
    rng = random.Random(7)
    rows = []
    for family in ("small2", "twobox", "buy1"):
        seen: set[str] = set()
        while len(seen) < 32:
            prompt, answer = problem(rng, family)
            if prompt not in seen:
                seen.add(prompt)
                rows.append({"prompt": [{"role": "user", "content": prompt}], "answer": str(answer),
                             "family": family})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(rows)} problems to {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "families.jsonl")
