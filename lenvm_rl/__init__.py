"""lenvm_rl: Length Value Model (LenVM) critics for RL fine-tuning of language models.

Public API: the pure length math (``length_to_value`` … ``potential_shaping``) and the critic model
(``LengthValueModel``, ``LengthValueConfig``). See the README for a tour.
"""

from .length_math import (
    check_completion_mask,
    check_gamma,
    choose_gamma,
    completion_lengths,
    discounted_cumsum,
    length_advantages,
    length_returns,
    length_td_residuals,
    length_to_value,
    masked_mean,
    masked_var,
    masked_whiten,
    potential_shaping,
    task_gae,
    value_targets,
    value_to_length,
)
from .modeling import (
    LengthValueConfig,
    LengthValueModel,
    LengthValueOutput,
    add_lora,
    check_tokenizer,
    merge_lora,
    unwrap_critic,
)
from .signals import LengthCritic, LengthSignals

__version__ = "0.1.0"

__all__ = [
    "LengthCritic",
    "LengthSignals",
    "LengthValueConfig",
    "LengthValueModel",
    "LengthValueOutput",
    "add_lora",
    "check_completion_mask",
    "check_gamma",
    "check_tokenizer",
    "choose_gamma",
    "completion_lengths",
    "discounted_cumsum",
    "length_advantages",
    "task_gae",
    "length_returns",
    "length_td_residuals",
    "length_to_value",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "merge_lora",
    "potential_shaping",
    "unwrap_critic",
    "value_targets",
    "value_to_length",
]
