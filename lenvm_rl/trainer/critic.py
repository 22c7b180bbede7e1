"""Critic training on rollouts: ``LenVMConfig`` (a ``TrainingArguments``), ``LenVMTrainer`` (a ``Trainer``) used by the
``lenvm-rl train-critic`` job (:mod:`lenvm_rl.scripts.train_critic`).

Targets come from realized lengths: for a terminated rollout of length ``L`` (EOS counted), position ``P-1+t`` of
``prompt ⊕ completion`` (``t = 0 … L``; ``P-1`` is the last prompt token, ``P-1+L`` the EOS) is supervised with
``G_t = -(1 - γ^(L-t))`` (0 at EOS). The loss is the squared error summed over all supervised tokens of the whole
optimizer step — across gradient accumulation and across processes — divided by their count (never averaged per
sequence first, which would weight tokens by ``1/L`` and change the regression target).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..length_math import check_gamma, choose_gamma, length_to_value
from ..modeling import unwrap_critic

__all__ = [
    "LenVMConfig",
    "LenVMTrainer",
    "LenVMDataCollator",
    "length_regression_loss",
    "prepare_critic_dataset",
    "resolve_gamma",
    "freeze_lower_layers",
]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class LenVMConfig(TrainingArguments):
    """``TrainingArguments`` plus the LenVM-specific options. Defaults differ from ``TrainingArguments`` where the
    critic needs it: raw rollout columns are kept (``remove_unused_columns=False``) and ``labels`` holds the
    per-token remaining lengths."""

    gamma: str = field(
        default="auto",
        metadata={
            "help": "Discount γ in (0, 1), or 'auto': choose_gamma(train lengths, gamma_quantile, gamma_coverage)."
        },
    )
    gamma_quantile: float = field(default=0.99, metadata={"help": "Length quantile used by gamma 'auto'."})
    gamma_coverage: float = field(
        default=0.99, metadata={"help": "gamma 'auto' maps the quantile length to value -coverage."}
    )
    truncated_rollouts: str = field(
        default="drop",
        metadata={
            "help": "What to do with rollouts that hit the token limit (no EOS, unknown length): 'drop' them with a "
            "warning counting them, or 'error'. They are never labelled as if they ended there."
        },
    )
    max_length: int | None = field(
        default=None, metadata={"help": "Drop rollouts whose prompt + completion exceed this many tokens."}
    )
    head_hidden_size: int | None = field(
        default=None, metadata={"help": "Width of the value head's hidden layer for a new critic (default: H)."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom modeling code from the hub for the critic backbone."}
    )
    trainable_top_layers: int | None = field(
        default=None,
        metadata={
            "help": "Train only the top k decoder layers of the backbone, its final norm and the value head; the "
            "embeddings and lower layers stay frozen, so backpropagation stops at layer L-k (cheap on CPU). "
            "None trains everything; 0 trains the head and the final norm. Not combined with LoRA (use_peft)."
        },
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "Initial learning rate (AdamW)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep rollout columns; the collator builds the model inputs."}
    )
    label_names: list[str] | None = field(
        default_factory=lambda: ["labels"], metadata={"help": "The remaining-length labels built by the collator."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.truncated_rollouts not in ("drop", "error"):
            raise ValueError(f"truncated_rollouts must be 'drop' or 'error', got {self.truncated_rollouts!r}")
        if str(self.gamma) != "auto":
            self.gamma = str(check_gamma(self.gamma))
        if self.trainable_top_layers is not None and self.trainable_top_layers < 0:
            raise ValueError(f"trainable_top_layers must be ≥ 0 or None, got {self.trainable_top_layers}")


def length_regression_loss(
    values: Tensor, labels: Tensor, gamma: float, num_items_in_batch: Tensor | int | None = None
) -> Tensor:
    """Squared error of the values against ``G = length_to_value(labels, γ)`` at supervised positions.

    Args:
        values: ``(B, S)`` predicted values.
        labels: ``(B, S)`` remaining lengths ``L - t`` (≥ 0) at supervised positions, ``-100`` elsewhere.
        gamma: the critic's discount.
        num_items_in_batch: supervised tokens in the whole optimizer step (all micro-batches, all processes when
            gathered); ``None`` divides by this batch's own count.

    Returns:
        scalar ``Σ (V - G)² / num_items`` in float32.
    """
    supervised = labels != IGNORE_INDEX
    targets = length_to_value(labels.clamp(min=0).to(torch.float32), gamma)
    squared = (values.float() - targets) ** 2 * supervised
    count = supervised.sum() if num_items_in_batch is None else num_items_in_batch
    if torch.is_tensor(count):
        count = count.to(squared.device, torch.float32)
    return squared.sum() / count


@dataclass
class LenVMDataCollator:
    """Turn rollout rows into ``input_ids``/``attention_mask`` (right-padded ``prompt ⊕ completion``) and ``labels``
    holding the remaining length ``L - t`` at positions ``P-1+t``, ``t = 0 … L``, and ``-100`` elsewhere."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Tensor]:
        sequences = [list(f["prompt_ids"]) + list(f["completion_ids"]) for f in features]
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        for row, (feature, sequence) in enumerate(zip(features, sequences, strict=True)):
            prompt_length, length = len(feature["prompt_ids"]), len(feature["completion_ids"])
            input_ids[row, : len(sequence)] = torch.tensor(sequence)
            attention_mask[row, : len(sequence)] = 1
            labels[row, prompt_length - 1 : prompt_length + length] = torch.arange(length, -1, -1)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def prepare_critic_dataset(
    split: Dataset, truncated_rollouts: str = "drop", max_length: int | None = None, name: str = "train"
) -> Dataset:
    """Keep what the critic can learn from: terminated rollouts with a non-empty prompt (and within ``max_length``).

    Truncated rollouts have no known length; with ``truncated_rollouts='drop'`` they are removed with a warning that
    counts them, with ``'error'`` their presence is an error. No terminated rollout at all is always an error.
    """
    if len(split) == 0:
        raise ValueError(f"the {name} split is empty")
    terminated = split["terminated"]
    num_truncated = len(terminated) - sum(terminated)
    if num_truncated:
        if truncated_rollouts == "error":
            raise ValueError(
                f"{num_truncated} of {len(split)} {name} rollouts are truncated (no EOS) and truncated_rollouts='error'"
            )
        warnings.warn(
            f"dropping {num_truncated} of {len(split)} {name} rollouts that hit the token limit without EOS "
            "(their length is unknown)",
            stacklevel=2,
        )
    if num_truncated == len(split):
        raise ValueError(
            f"none of the {len(split)} {name} rollouts terminated with EOS; raise max_new_tokens when rolling out"
        )
    kept = split.filter(lambda row: row["terminated"] and len(row["prompt_ids"]) > 0)
    if max_length is not None:
        before = len(kept)
        kept = kept.filter(lambda row: len(row["prompt_ids"]) + len(row["completion_ids"]) <= max_length)
        if len(kept) < before:
            warnings.warn(f"dropping {before - len(kept)} {name} rollouts longer than max_length={max_length}",
                          stacklevel=2)
        if len(kept) == 0:
            raise ValueError(f"no {name} rollout fits in max_length={max_length}")
    return kept


def _decoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's stack of decoder layers: the first ``ModuleList`` holding ``num_hidden_layers`` modules
    (``layers`` for Llama/Qwen2, ``h`` for GPT-2)."""
    config = getattr(backbone, "config", None)
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (count is None or len(module) == count):
            return module
    raise ValueError(f"cannot find the decoder layers of {type(backbone).__name__} (no ModuleList of {count} layers)")


def freeze_lower_layers(critic: Any, trainable_top_layers: int) -> dict[str, int]:
    """Freeze a :class:`~lenvm_rl.modeling.LengthValueModel`'s backbone except its top ``k`` decoder layers.

    Trainable afterwards: the last ``k`` decoder layers, the backbone's parameters outside the layer stack that are
    not embeddings (the final norm), and the whole value head. Frozen: the embeddings (and so a tied LM head, which
    the critic does not have anyway) and layers ``0 … L-k-1``. Since no frozen parameter needs a gradient and the
    inputs are token ids, autograd stops at layer ``L-k``: the backward pass costs about ``k/L`` of a full one.

    Returns ``{"trainable": n, "frozen": m}`` parameter counts. ``k`` larger than the number of layers is an error.
    """
    critic = unwrap_critic(critic)
    layers = _decoder_layers(critic.backbone)
    if not 0 <= trainable_top_layers <= len(layers):
        raise ValueError(f"trainable_top_layers must lie in [0, {len(layers)}] for this backbone, "
                         f"got {trainable_top_layers}")
    in_layers = {id(p) for p in layers.parameters()}
    top = {id(p) for layer in list(layers)[len(layers) - trainable_top_layers:] for p in layer.parameters()}
    embeddings = {id(p) for m in critic.backbone.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    for parameter in critic.backbone.parameters():
        key = id(parameter)
        parameter.requires_grad_(key in top or (key not in in_layers and key not in embeddings))
    for parameter in critic.head.parameters():
        parameter.requires_grad_(True)
    counts = {"trainable": 0, "frozen": 0}
    for parameter in critic.parameters():
        counts["trainable" if parameter.requires_grad else "frozen"] += parameter.numel()
    return counts


class _TrainingClock(TrainerCallback):
    """Accumulates the wall and process-CPU seconds spent inside optimizer steps (evaluation excluded), so that
    evaluation metrics can be read against training cost (``train_seconds``, ``train_cpu_seconds``)."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self._start: tuple[float, float] | None = None

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._start is not None:
            self.wall += time.perf_counter() - self._start[0]
            self.cpu += time.process_time() - self._start[1]
            self._start = None


def resolve_gamma(gamma: str | float, lengths: list[int], quantile: float = 0.99, coverage: float = 0.99) -> float:
    """``gamma`` as a float; ``'auto'`` applies :func:`choose_gamma` to the terminated training lengths."""
    if str(gamma) == "auto":
        return choose_gamma(lengths, quantile=quantile, coverage=coverage)
    return check_gamma(gamma)


class LenVMTrainer(Trainer):
    """A ``transformers.Trainer`` for LenVM critics with the token-level loss of the module docstring.

    The model is a :class:`LengthValueModel` (or a LoRA-wrapped one) whose config holds γ. ``evaluate`` adds the
    critic metrics of :func:`lenvm_rl.evaluation.critic_metrics` (prompt-boundary MRE against the value-space ground
    truth and a constant baseline, relative remaining-length error at 0/25/50/75% of each completion) and the
    training cost so far: ``train_seconds`` (wall) and ``train_cpu_seconds`` (process CPU time) spent inside
    optimizer steps, evaluation excluded, so that runs can be compared by quality per CPU-minute.
    """

    def __init__(self, model: Any, args: LenVMConfig | TrainingArguments | None = None, *,
                 data_collator: Any = None, processing_class: Any = None,
                 baseline_value: float | None = None, **kwargs: Any):
        critic = unwrap_critic(model)
        self.gamma = critic.gamma
        if data_collator is None:
            if processing_class is None:
                raise ValueError("LenVMTrainer needs a processing_class (the tokenizer) or a data_collator")
            data_collator = LenVMDataCollator(pad_token_id=processing_class.pad_token_id)
        self.baseline_value = baseline_value
        super().__init__(model=model, args=args, data_collator=data_collator, processing_class=processing_class,
                         **kwargs)
        self.training_clock = _TrainingClock()
        self.add_callback(self.training_clock)
        # compute_loss divides by the step's supervised-token count, which the Trainer computes from `labels`
        # (and gathers across processes) only for models that accept loss kwargs.
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model: Any, inputs: dict[str, Tensor], return_outputs: bool = False,
                     num_items_in_batch: Tensor | int | None = None) -> Tensor | tuple[Tensor, Any]:
        labels = inputs["labels"]
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        loss = length_regression_loss(outputs.value, labels, self.gamma, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # DDP averages gradients over processes; the count is already global, so undo that average.
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, eval_dataset: Dataset | None = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        from ..evaluation import critic_metrics

        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, Dataset) and len(dataset):
            was_training = self.model.training
            self.model.eval()
            extra = critic_metrics(
                self.model, dataset, self.gamma, pad_token_id=self.data_collator.pad_token_id,
                baseline_value=self.baseline_value, batch_size=self.args.per_device_eval_batch_size,
            )
            self.model.train(was_training)
            extra = {f"{metric_key_prefix}_{key}": value for key, value in extra.scalars().items()}
            extra[f"{metric_key_prefix}_train_seconds"] = round(self.training_clock.wall, 3)
            extra[f"{metric_key_prefix}_train_cpu_seconds"] = round(self.training_clock.cpu, 3)
            self.log(extra)
            metrics.update(extra)
        return metrics
