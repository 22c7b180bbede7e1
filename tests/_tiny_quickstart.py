"""The README's tiny critic quick start, run once per test session through the real CLI and shared by the tests
that need a prompt-dependent tiny policy and a critic trained on it (tests/test_tiny_recipe.py,
tests/test_custom_loop.py). Each of those copies what it needs; nothing here is modified after the run."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Exactly the README's quick-start commands, in order.
QUICKSTART = (
    ("make-tiny-model", "--config", "recipes/tiny/policy.yaml"),
    ("rollout", "--config", "recipes/tiny/rollout.yaml"),
    ("train-critic", "--config", "recipes/tiny/train_critic.yaml"),
    ("eval-critic", "--critic", "runs/tiny-critic", "--rollouts", "runs/tiny-rollouts", "--output_dir",
     "runs/tiny-eval"),
)


@functools.cache
def run_tiny_quickstart() -> Path:
    """Run :data:`QUICKSTART` in a fresh directory holding a copy of ``recipes/``; returns that directory (with
    ``runs/tiny-policy``, ``runs/tiny-rollouts``, ``runs/tiny-critic``, ``runs/tiny-eval``).

    One torch thread: the tiny models gain nothing from more, and on a machine shared with other jobs two threads
    per process made this run several times slower (spinning threads compete for the same cores)."""
    import torch

    from lenvm_rl.cli import main

    work = Path(tempfile.mkdtemp(prefix="lenvm-quickstart-"))
    atexit.register(shutil.rmtree, work, True)
    shutil.copytree(ROOT / "recipes", work / "recipes")
    previous, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(work)
    torch.set_num_threads(1)
    try:
        for argv in QUICKSTART:
            code = main(list(argv))
            if code != 0:
                raise RuntimeError(f"`lenvm-rl {' '.join(argv)}` exited with {code}")
    finally:
        torch.set_num_threads(threads)
        os.chdir(previous)
    return work
