"""Trainers: the LenVM critic's ``transformers.Trainer`` and thin subclasses of TRL's GRPO trainer (GRPO with a
LenVM length term, critic-based PPO). No trainer imports the CLI or a job."""

from .critic import LenVMConfig, LenVMDataCollator, LenVMTrainer, length_regression_loss, prepare_critic_dataset
from .grpo import LenVMGRPOConfig, LenVMGRPOTrainer
from .ppo import LenVMPPOConfig, LenVMPPOTrainer

__all__ = [
    "LenVMConfig",
    "LenVMDataCollator",
    "LenVMGRPOConfig",
    "LenVMGRPOTrainer",
    "LenVMPPOConfig",
    "LenVMPPOTrainer",
    "LenVMTrainer",
    "length_regression_loss",
    "prepare_critic_dataset",
]
