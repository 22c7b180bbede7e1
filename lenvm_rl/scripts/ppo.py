"""``lenvm-rl ppo``: critic-based PPO (task-critic GAE) with an optional LenVM length term, from a TRL-style recipe.

Same data and reward options as ``lenvm-rl grpo`` (:class:`~lenvm_rl.scripts.grpo.GRPOScriptArguments`), with
:class:`~lenvm_rl.trainer.ppo.LenVMPPOConfig` for the trainer.
"""

from __future__ import annotations

from typing import Any

from trl import ModelConfig

from ..trainer.ppo import TASK_CRITIC_DIR, LenVMPPOConfig, LenVMPPOTrainer
from ._common import end_job
from .grpo import GRPOScriptArguments, run_grpo

__all__ = ["main"]

DATACLASSES = (GRPOScriptArguments, LenVMPPOConfig, ModelConfig)


def main(script_args: GRPOScriptArguments, args: LenVMPPOConfig, model_args: Any) -> None:
    trainer = run_grpo(script_args, args, model_args, trainer_class=LenVMPPOTrainer)
    trainer.accelerator.print(f"policy saved to {args.output_dir}, task critic to {args.output_dir}/{TASK_CRITIC_DIR}")
    end_job(trainer)
