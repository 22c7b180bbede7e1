"""Evaluating a policy for the study: sampled (and greedy) completions on held-out prompts, scored by the task's
correctness reward, with per-prompt accuracy and length (tokens, EOS counted; a truncated completion counts its
full token limit)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from ..data import render_prompt
from ..rollout import _eos_ids, _split_completion, sample_completions

__all__ = ["evaluate_policy", "sample_within_budgets", "EvaluateAtSteps"]


@torch.no_grad()
def evaluate_policy(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    correctness: Callable[..., Sequence[float | None]],
    num_samples: int = 4,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    prompt_column: str = "prompt",
    threshold: float = 1.0,
    batch_size: int = 256,
    prefix: Callable[[dict[str, Any]], str] | None = None,
    structure: Callable[[str], dict[str, bool]] | None = None,
    budget_column: str | None = None,
    critic: Any | None = None,
    guided_top_k: int = 8,
    top_p: float = 1.0,
    compact: bool = False,
) -> dict[str, np.ndarray]:
    """Per-prompt metrics of ``model`` on ``rows`` (each a dataset row holding ``prompt_column`` and the columns the
    reward function reads, passed to it as keyword lists the way TRL does).

    Returns ``(P,)`` arrays: ``correct`` (fraction of the ``num_samples`` completions whose correctness reward is
    ``≥ threshold``), ``tokens`` (their mean length), ``terminated`` (fraction that ended with EOS), and for every key
    ``k`` that ``structure(text)`` reports, ``k`` (the fraction of completions that hold it). ``temperature=0`` is
    greedy (then use ``num_samples=1``); ``top_p`` is nucleus sampling; ``compact`` decodes with
    :func:`~lenvm_rl.sampling.decode_compacted`. ``prefix(row)``, when given, is text forced
    at the start of every completion (it counts toward the completion, its tokens toward the length).

    With ``budget_column`` (rows holding a token budget ``N``), also: ``within_budget`` (fraction with ``L ≤ N``),
    ``budget_error`` (mean ``|L − N| / N``), and the same samples under hard truncation at ``N``,
    ``truncated_correct`` and ``truncated_tokens`` (a completion longer than ``N`` is cut to its first ``N`` tokens
    and scored as such; cutting after sampling is exactly what a hard limit of ``N`` new tokens would sample).
    With a LenVM ``critic`` as well, completions are drawn by value-guided decoding under each row's budget
    (:func:`~lenvm_rl.decoding.guided.guided_generate` with the ``at_most`` target ``N`` and ``guided_top_k``
    candidates): the critic steers every token toward an ending within ``N``, which is then never exceeded.
    """
    if critic is not None and budget_column is None:
        raise ValueError("guided decoding under a budget needs budget_column (each row's token budget)")
    if num_samples < 1:
        raise ValueError(f"num_samples must be ≥ 1, got {num_samples}")
    model.eval()
    prompts_per_call = max(1, batch_size // num_samples)
    correct, tokens, terminated = [], [], []
    structures: dict[str, list[float]] = {}
    budgeted: dict[str, list[float]] = {"within_budget": [], "budget_error": [], "truncated_correct": [],
                                        "truncated_tokens": []}
    if budget_column is not None:
        missing = [index for index, row in enumerate(rows) if not isinstance(row.get(budget_column), (int, float))
                   or row[budget_column] < 1]
        if missing:
            raise ValueError(f"budget_column {budget_column!r}: row {missing[0]} has no budget ≥ 1 "
                             f"({rows[missing[0]].get(budget_column)!r})")
    for start in range(0, len(rows), prompts_per_call):
        chunk = list(rows[start:start + prompts_per_call])
        prompt_ids, forced = [], []
        for row in chunk:
            text, templated = render_prompt(tokenizer, row[prompt_column])
            forced_text = prefix(row) if prefix is not None else ""
            forced_ids = tokenizer(forced_text, add_special_tokens=False)["input_ids"] if forced_text else []
            prompt_ids.append(tokenizer(text, add_special_tokens=not templated)["input_ids"] + forced_ids)
            forced.append(forced_ids)
        if critic is not None:
            samples = sample_within_budgets(model, critic, tokenizer, prompt_ids,
                                            [int(row[budget_column]) for row in chunk], num_samples=num_samples,
                                            temperature=temperature, max_new_tokens=max_new_tokens,
                                            seed=seed + start, top_k=guided_top_k, top_p=top_p)
        else:
            samples = sample_completions(model, tokenizer, prompt_ids, num_samples=num_samples,
                                         temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                         seed=seed + start, compact=compact)
        texts, lengths, ended, fulls = [], [], [], []
        for index, (ids, done) in enumerate(samples):
            full = forced[index // num_samples] + list(ids)
            fulls.append(full)
            texts.append(tokenizer.decode(full, skip_special_tokens=True))
            lengths.append(len(full))
            ended.append(done)
        columns = {key: [row[key] for row in chunk for _ in range(num_samples)]
                   for key in chunk[0] if key != prompt_column}
        repeated_prompts = [row[prompt_column] for row in chunk for _ in range(num_samples)]
        scores = correctness(prompts=repeated_prompts, completions=texts,
                             completion_ids=[list(ids) for ids, _ in samples], **columns)
        passed = [score is not None and score >= threshold for score in scores]
        if budget_column is not None:
            budgets = [int(row[budget_column]) for row in chunk for _ in range(num_samples)]
            # only the completions past their budget change when cut: score just those again
            over = [i for i, (full, budget) in enumerate(zip(fulls, budgets, strict=True)) if len(full) > budget]
            cut_passed = list(passed)
            if over:
                cut = [fulls[i][:budgets[i]] for i in over]
                cut_scores = correctness(prompts=[repeated_prompts[i] for i in over],
                                         completions=[tokenizer.decode(ids, skip_special_tokens=True) for ids in cut],
                                         completion_ids=cut, **{key: [values[i] for i in over]
                                                                for key, values in columns.items()})
                for i, score in zip(over, cut_scores, strict=True):
                    cut_passed[i] = score is not None and score >= threshold
        for index in range(len(chunk)):
            span = slice(index * num_samples, (index + 1) * num_samples)
            correct.append(float(np.mean(passed[span])))
            tokens.append(float(np.mean(lengths[span])))
            terminated.append(float(np.mean(ended[span])))
            if budget_column is not None:
                budget = float(chunk[index][budget_column])
                budgeted["within_budget"].append(float(np.mean([n <= budget for n in lengths[span]])))
                budgeted["budget_error"].append(float(np.mean([abs(n - budget) / budget for n in lengths[span]])))
                budgeted["truncated_correct"].append(float(np.mean(cut_passed[span])))
                budgeted["truncated_tokens"].append(float(np.mean([min(n, budget) for n in lengths[span]])))
            if structure is not None:
                found = [structure(text) for text in texts[span]]
                for key in found[0]:
                    structures.setdefault(key, []).append(float(np.mean([f[key] for f in found])))
    out = {"correct": np.asarray(correct), "tokens": np.asarray(tokens), "terminated": np.asarray(terminated)}
    out.update({key: np.asarray(values) for key, values in structures.items()})
    if budget_column is not None:
        out.update({key: np.asarray(values) for key, values in budgeted.items()})
    return out


@torch.no_grad()
def sample_within_budgets(model: Any, critic: Any, tokenizer: Any, prompt_ids: list[list[int]], budgets: list[int],
                          num_samples: int = 1, temperature: float = 1.0, max_new_tokens: int = 512, seed: int = 0,
                          top_k: int = 8, top_p: float = 1.0) -> list[tuple[list[int], bool]]:
    """Like :func:`~lenvm_rl.rollout.sample_completions` (prompt-major ``(completion_ids, terminated)``), but each
    prompt's samples are decoded under the ``at_most`` target of its budget (EOS counted) with the LenVM ``critic``
    guiding every token; ``temperature=0`` takes the guided argmax."""
    from ..decoding.guided import LengthTarget, guided_generate

    if len(budgets) != len(prompt_ids):
        raise ValueError(f"{len(budgets)} budgets for {len(prompt_ids)} prompts")
    eos_ids = _eos_ids(tokenizer, getattr(model, "generation_config", None))
    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": prompt_ids}, padding=True, return_tensors="pt")
    device = next(model.parameters()).device
    input_ids = batch["input_ids"].repeat_interleave(num_samples, dim=0).to(device)
    attention_mask = batch["attention_mask"].repeat_interleave(num_samples, dim=0).to(device)
    target = LengthTarget("at_most", torch.tensor(budgets).repeat_interleave(num_samples).tolist())
    torch.manual_seed(seed)
    critic.eval()
    output = guided_generate(model, critic, input_ids, attention_mask, top_k=top_k, top_p=top_p,
                             temperature=max(temperature, 1e-6),
                             target=target, tokenizer=tokenizer, eos_token_id=sorted(eos_ids),
                             do_sample=temperature > 0, max_new_tokens=max_new_tokens)
    generated = output[:, input_ids.shape[1]:].tolist()
    return [_split_completion(tokens, eos_ids) for tokens in generated]


class EvaluateAtSteps(TrainerCallback):
    """Evaluates the policy being trained (sampled, with :func:`evaluate_policy`) after each optimizer step in
    ``steps``, for sample-efficiency curves: ``results[str(step)]`` holds the per-prompt ``correct`` and ``tokens``
    (and ``within_budget`` where ``budget_column`` is given). The random state (Python, NumPy, torch, CUDA) is
    saved and restored around each evaluation, so a run trains exactly as it would without them; ``seconds`` is
    the time they took. ``kwargs`` go to :func:`evaluate_policy`."""

    def __init__(self, steps: Sequence[int], rows: Sequence[dict[str, Any]],
                 correctness: Callable[..., Sequence[float | None]], **kwargs: Any):
        self.steps = sorted(set(int(s) for s in steps))
        self.rows, self.correctness, self.kwargs = rows, correctness, kwargs
        self.results: dict[str, dict[str, list[float]]] = {}
        self.seconds = 0.0

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, processing_class: Any = None,
                    **kwargs: Any) -> None:
        if state.global_step not in self.steps or str(state.global_step) in self.results:
            return
        started = time.time()
        saved = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
                 torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
        was_training = model.training
        try:
            sampled = evaluate_policy(model, processing_class, self.rows, self.correctness, **self.kwargs)
        finally:
            model.train(was_training)
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])
            if saved[3] is not None:
                torch.cuda.set_rng_state_all(saved[3])
        kept = ("correct", "tokens", "within_budget")
        self.results[str(state.global_step)] = {key: sampled[key].tolist() for key in kept if key in sampled}
        self.seconds += time.time() - started
