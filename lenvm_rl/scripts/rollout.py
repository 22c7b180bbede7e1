"""``lenvm-rl rollout``: sample completions from a policy for critic training (resumable, split by prompt)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..rollout import ROLLOUT_INFO_FILE, RolloutConfig, generate_rollouts

__all__ = ["main"]

DATACLASSES = (RolloutConfig,)


def main(config: RolloutConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    splits = generate_rollouts(config)
    info = json.loads((Path(config.output_dir) / ROLLOUT_INFO_FILE).read_text())
    print(f"rollouts saved to {config.output_dir}: " + ", ".join(f"{k}={len(v)}" for k, v in splits.items())
          + f" (terminated {100 * info['terminated_fraction']:.1f}%)")
