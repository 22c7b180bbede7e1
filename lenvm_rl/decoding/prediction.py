"""Prompt-boundary length prediction with a LenVM critic.

:func:`predict_length` reads ``V(s_0)`` at the prompt boundary of text prompts. Being the
inverse of a mean *value*, it estimates the value-space length ``ln(E[γ^L]) / ln γ``, which sits below the mean raw
length when lengths vary (Jensen); compare it with the value-space ground truth ``ln(1 - mean_i(1 - γ^{L_i})) / ln γ``
(``lenvm_rl.evaluation.value_space_length``), not with the mean of the raw lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .scoring import _critic_device_dtype

__all__ = ["tokenize_prompts", "predict_length"]


def tokenize_prompts(
    tokenizer: Any, prompts: Sequence[str] | Sequence[Sequence[dict]], use_chat_template: bool | None = None
) -> tuple[Tensor, Tensor]:
    """Left-padded ``(B, P)`` ``input_ids`` and ``attention_mask`` for text or conversational prompts.

    ``use_chat_template=None`` applies the tokenizer's chat template when it has one (a string becomes one user
    turn; a list of ``{"role", "content"}`` messages is used as is) and adds the generation prompt, so the last
    prompt token is where the assistant's completion starts — the state ``s_0`` the critic was trained on.
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if use_chat_template is None:
        use_chat_template = has_template
    if use_chat_template and not has_template:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template")
    texts = []
    for prompt in prompts:
        if use_chat_template:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            texts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        elif isinstance(prompt, str):
            texts.append(prompt)
        else:
            raise ValueError("conversational prompts (lists of messages) need a tokenizer with a chat template")
    # The chat template already wrote any BOS it wants; adding special tokens again would double it.
    encoded = tokenizer(
        texts, padding=True, padding_side="left", add_special_tokens=not use_chat_template, return_tensors="pt"
    )
    if encoded["input_ids"].shape[1] == 0 or not bool(encoded["attention_mask"].any(dim=1).all()):
        raise ValueError("every prompt must tokenize to at least one token")
    return encoded["input_ids"], encoded["attention_mask"]


@torch.no_grad()
def predict_length(
    critic: Any,
    tokenizer: Any,
    prompts: Sequence[str] | Sequence[Sequence[dict]],
    batch_size: int = 16,
    use_chat_template: bool | None = None,
) -> Tensor:
    """Predicted completion length (tokens, EOS included) of each text prompt: ``ln(1 + V(s_0)) / ln γ``.

    Args:
        critic: a :class:`~lenvm_rl.modeling.LengthValueModel` with γ in its config.
        tokenizer: the critic's (= the policy's) tokenizer.
        prompts: ``N`` strings, or ``N`` message lists for a chat tokenizer.
        batch_size: prompts per forward pass.
        use_chat_template: see :func:`tokenize_prompts` (``None``: apply it when the tokenizer has one).

    Returns:
        ``(N,)`` float32 lengths. This is the *value-space* length ``ln(E[γ^L]) / ln γ``, below the mean raw length
        when lengths vary; evaluate it against ``lenvm_rl.evaluation.value_space_length`` of sampled lengths.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    prompts = list(prompts)
    device, _ = _critic_device_dtype(critic)
    lengths = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = tokenize_prompts(tokenizer, prompts[start : start + batch_size], use_chat_template)
        lengths.append(critic.predict_length(ids.to(device), mask.to(device)).float().cpu())
    if not lengths:
        raise ValueError("no prompts given")
    return torch.cat(lengths)
