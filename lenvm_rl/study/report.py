"""The length-method study's report: ``report.md`` (headline first), ``report.json`` and ``accuracy_vs_tokens.png``.

Every number comes from the finished runs' per-prompt results: points are means over seeds and prompts, intervals are
95% percentile intervals of a paired bootstrap over prompts and seeds (:func:`lenvm_rl.study.stats.paired_bootstrap`),
and matched-accuracy comparisons interpolate along each variant's Pareto frontier, which always includes the
no-length-term point (coefficient 0 of every method).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import write_text_atomically
from ..tasks import TRACE_PAYS_FROM
from .methods import METHODS, SEQUENCE_LEVEL, STRICTER_WHEN_SMALLER
from .stats import (
    accuracy_at_tokens,
    jackknife_interval,
    paired_bootstrap,
    pareto_frontier,
    percentile_interval,
    tokens_at_accuracy,
)

__all__ = ["StudyTable", "collect", "write_report", "sample_efficiency", "budget_table", "adherence_by_step",
           "samples_ratio", "TOKEN_FRACTIONS"]

# matched-token comparisons at these fractions of the no-length-term policy's mean tokens
TOKEN_FRACTIONS = (0.5, 0.67, 0.8)


class StudyTable:
    """The finished runs as ``(C, S, P)`` arrays: configurations (variant, coef) × seeds × evaluation prompts."""

    def __init__(self, results: Sequence[dict[str, Any]], variants: dict[str, dict[str, Any]]):
        if not results:
            raise ValueError("no finished runs to report on")
        self.variants = variants
        order = {label: index for index, label in enumerate(variants)}
        keys = sorted({(r["label"], float(r["coef"])) for r in results if r["label"] in variants},
                      key=lambda key: (order[key[0]], self._sort_coef(key[0], key[1])))
        self.configs: list[tuple[str, float]] = keys
        self.seeds = sorted({int(r["seed"]) for r in results})
        prompts = {len(r["eval"]["correct"]) for r in results}
        if len(prompts) != 1:
            raise ValueError(f"runs were evaluated on different numbers of prompts: {sorted(prompts)}")
        self.prompts = prompts.pop()
        metric_names = [k for k in results[0]["eval"] if isinstance(results[0]["eval"][k], list)]
        self.metrics = {name: np.full((len(keys), len(self.seeds), self.prompts), np.nan) for name in metric_names}
        for r in results:
            key = (r["label"], float(r["coef"]))
            if key not in keys:
                continue
            c, s = keys.index(key), self.seeds.index(int(r["seed"]))
            for name in metric_names:
                if name in r["eval"]:
                    self.metrics[name][c, s] = np.asarray(r["eval"][name], dtype=np.float64)
        self.count = {key: sum(1 for r in results if (r["label"], float(r["coef"])) == key) for key in keys}

    def _sort_coef(self, label: str, coef: float) -> float:
        # a token budget gets stricter as it shrinks: order grids from weakest to strongest
        return -coef if self.variants[label]["method"] in STRICTER_WHEN_SMALLER else coef

    def method(self, label: str) -> str:
        return self.variants[label]["method"]

    def none_index(self) -> int:
        for index, (label, _) in enumerate(self.configs):
            if self.method(label) == "none":
                return index
        raise ValueError("no finished 'none' run: every comparison is relative to no length term")

    def anchor_index(self, label: str) -> int | None:
        """The no-length-term point a variant's frontier starts from: its own trainer family's. GRPO variants start
        at ``none``; critic-PPO variants at the ``ppo_none`` variant with the same task critic (None when the study
        has none: then the frontier is the variant's own points only); the anchors themselves at nothing."""
        variant = self.variants[label]
        if variant["method"] in ("none", "ppo_none"):
            return None
        if METHODS[variant["method"]].trainer != "ppo":
            return self.none_index()
        task_critic = (variant.get("options") or {}).get("task_critic_model_name_or_path")
        for index, (name, _) in enumerate(self.configs):
            other = self.variants[name]
            if other["method"] == "ppo_none" and (other.get("options") or {}).get(
                    "task_critic_model_name_or_path") == task_critic:
                return index
        return None

    def labels(self) -> list[str]:
        return list(dict.fromkeys(label for label, _ in self.configs))

    def indices(self, label: str) -> list[int]:
        return [i for i, (name, _) in enumerate(self.configs) if name == label]


def collect(results: Sequence[dict[str, Any]], variants: dict[str, dict[str, Any]]) -> StudyTable:
    return StudyTable(results, variants)


def _frontier(table: StudyTable, label: str, accuracy: np.ndarray, tokens: np.ndarray) -> list[tuple[float, float]]:
    points = [(tokens[i], accuracy[i]) for i in table.indices(label)]
    anchor = table.anchor_index(label)
    if anchor is not None:
        points.append((tokens[anchor], accuracy[anchor]))
    return pareto_frontier(points)


def _comparisons(table: StudyTable, head: str | None, ablation: str | None, baselines: list[str],
                 drops: Sequence[float], accuracy: np.ndarray, tokens: np.ndarray,
                 comparator: str | None = None) -> dict[str, float]:
    """Every headline number for one (bootstrap replicate, or seed, of the) table of ``(C,)`` means.

    ``ratio@-d`` is the token-level variant ÷ the pre-registered ``comparator`` when there is one, else ÷ the best
    sequence-level variant of this replicate; ``ratio_vs_best@-d`` is always the latter (secondary: a minimum over
    ``len(baselines)`` noisy variants, biased toward them)."""
    none = table.none_index()
    out: dict[str, float] = {"none_accuracy": accuracy[none], "none_tokens": tokens[none]}
    frontiers = {label: _frontier(table, label, accuracy, tokens) for label in table.labels()}
    for drop in drops:
        target = accuracy[none] - drop
        needed = {label: tokens_at_accuracy(frontier, target) for label, frontier in frontiers.items()}
        for label, value in needed.items():
            out[f"tokens@-{drop:g}/{label}"] = value
        usable = [needed[b] for b in baselines if math.isfinite(needed[b])]
        best = min(usable) if usable else float("nan")
        out[f"tokens@-{drop:g}/best_baseline"] = best
        if head is not None:
            out[f"ratio_vs_best@-{drop:g}"] = needed[head] / best if usable else float("nan")
            out[f"ratio@-{drop:g}"] = (needed[head] / needed[comparator] if comparator is not None
                                       else out[f"ratio_vs_best@-{drop:g}"])
            if ablation is not None:
                out[f"ablation_ratio@-{drop:g}"] = needed[head] / needed[ablation]
    for fraction in TOKEN_FRACTIONS:
        budget = fraction * tokens[none]
        reached = {label: accuracy_at_tokens(frontier, budget) for label, frontier in frontiers.items()}
        for label, value in reached.items():
            out[f"accuracy@{fraction:g}/{label}"] = value
        usable = [reached[b] for b in baselines if math.isfinite(reached[b])]
        best = max(usable) if usable else float("nan")
        out[f"accuracy@{fraction:g}/best_baseline"] = best
        if head is not None:
            out[f"accuracy_gain@{fraction:g}"] = (reached[head] - reached[comparator] if comparator is not None
                                                  else reached[head] - best if usable else float("nan"))
            if ablation is not None:
                out[f"ablation_accuracy_gain@{fraction:g}"] = reached[head] - reached[ablation]
    return out


def _fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _interval(samples: np.ndarray | None, digits: int = 3) -> str:
    if samples is None:
        return "–"
    low, high = percentile_interval(samples)
    return "–" if not math.isfinite(low) else f"{low:.{digits}f}–{high:.{digits}f}"


def write_report(config: Any, out: Path, results: Sequence[dict[str, Any]],
                 stage_seconds: dict[str, float]) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and the plot for the finished ``results``; returns ``report.json``."""
    out = Path(out)
    # runs of variants the recipe no longer names (a label dropped between reruns) are left out of every number
    results = [r for r in results if r["label"] in config.methods]
    table = collect(results, config.methods)
    accuracy = np.nanmean(table.metrics["correct"], axis=(1, 2))
    tokens = np.nanmean(table.metrics["tokens"], axis=(1, 2))
    labels = table.labels()
    head = config.headline_method if config.headline_method in labels else None
    ablation = config.ablation_method if config.ablation_method in labels else None
    baselines = [label for label in labels if table.method(label) in SEQUENCE_LEVEL]
    drops = list(config.accuracy_drops)

    lenvm_variants = [label for label in labels if METHODS[table.method(label)].uses_critic]
    comparator = getattr(config, "comparator_method", None)
    comparator = comparator if comparator in labels else None

    def statistic(means: dict[str, np.ndarray]) -> dict[str, float]:
        values = _comparisons(table, head, ablation, baselines, drops, means["correct"], means["tokens"], comparator)
        for label in lenvm_variants:
            for drop in drops:
                values[f"ratio@-{drop:g}/{label}"] = (values[f"tokens@-{drop:g}/{label}"]
                                                     / values[f"tokens@-{drop:g}/best_baseline"])
        values.update({f"accuracy/{i}": means["correct"][i] for i in range(len(table.configs))})
        values.update({f"tokens/{i}": means["tokens"][i] for i in range(len(table.configs))})
        return values

    point = statistic({"correct": accuracy, "tokens": tokens})
    boot = paired_bootstrap({"correct": table.metrics["correct"], "tokens": table.metrics["tokens"]}, statistic,
                            samples=config.bootstrap_samples, seed=0)
    per_seed = _per_seed(table, statistic, "correct", "tokens")
    seed_ci = _seed_intervals(point, _per_seed(table, statistic, "correct", "tokens", leave_one_out=True))
    deployed = None
    if "greedy_correct" in table.metrics and "greedy_tokens" in table.metrics:
        def greedy_statistic(means: dict[str, np.ndarray]) -> dict[str, float]:
            return _comparisons(table, head, ablation, baselines, drops, means["correct"], means["tokens"],
                                comparator)

        greedy_means = {"correct": np.nanmean(table.metrics["greedy_correct"], axis=(1, 2)),
                        "tokens": np.nanmean(table.metrics["greedy_tokens"], axis=(1, 2))}
        greedy_point = greedy_statistic(greedy_means)
        deployed = (greedy_point,
                    paired_bootstrap({"correct": table.metrics["greedy_correct"],
                                      "tokens": table.metrics["greedy_tokens"]}, greedy_statistic,
                                     samples=config.bootstrap_samples, seed=1),
                    _seed_intervals(greedy_point, _per_seed(table, greedy_statistic, "greedy_correct",
                                                            "greedy_tokens", leave_one_out=True)))
    start = json.loads((out / "start.json").read_text()) if (out / "start.json").exists() else None
    prompt_table = json.loads((out / "eval_prompts.json").read_text()) if (out / "eval_prompts.json").exists() else {}
    critic = json.loads((out / "critic_metrics.json").read_text()) if (out / "critic_metrics.json").exists() else None

    lines = []
    if config.smoke:  # first, before any number that could be read as a result
        lines += ["> **SMOKE TEST.** This run is sized to exercise every stage in minutes; its policies are barely "
                  "trained and its numbers mean nothing. Run the studies in `recipes/study/` or the demo for "
                  "results.", ""]
    preregistered = bool(getattr(config, "preregistration", None))
    budgets = None
    if prompt_table.get("budget") and "within_budget" in table.metrics:
        pair = (head, comparator) if head is not None and comparator is not None else None
        budgets = budget_table(table, start, prompt_table["budget"], samples=config.bootstrap_samples, pair=pair)
        budgets["adherence_by_step"] = adherence_by_step(results, config.rl_steps,
                                                         config.rl_prompts_per_step * config.rl_generations,
                                                         comparator)
        if pair is not None and budgets["adherence_by_step"] is not None:
            budgets["samples_ratio"] = samples_ratio(budgets["adherence_by_step"], *pair)
    budget_headline = _budget_headline(budgets, preregistered) if budgets is not None else None
    lines += [budget_headline or _headline(point, boot, seed_ci, head, comparator, len(baselines), drops,
                                           preregistered), ""]
    stage_seconds = _merged_stage_seconds(out, stage_seconds)
    total_runs = len(config.variants()) * len(config.seeds)
    seconds = sum(r["seconds"] for r in results)
    lines += [f"Command: `{config.command or 'lenvm-rl study'}`. {len(results)} of {total_runs} runs finished "
              f"({seconds / 60:.1f} min of RL and evaluation; seeds {table.seeds}).", "",
              f"Setup: every run starts from the same policy (`{config.policy}`), trains {config.rl_steps} steps × "
              f"{config.rl_prompts_per_step} prompts × {config.rl_generations} samples at learning rate "
              f"{config.rl_learning_rate:g} (β = {config.rl_beta:g}), and is evaluated on {table.prompts} held-out "
              f"prompts × {config.eval_samples} samples at temperature {config.eval_temperature:g}"
              f"{' plus greedy' if config.eval_greedy else ''}. Intervals: "
              + (f"the seed-level jackknife around each point (the statistic recomputed with each of the "
                 f"{len(table.seeds)} seeds left out, t with {len(table.seeds) - 1} df; the interval claims rest on)"
                 if len(table.seeds) > 1 else "no seed-level interval with one seed (–)")
              + f" and a paired two-level bootstrap over seeds and prompts ({config.bootstrap_samples} replicates), "
              "both 95%. Every frontier includes its trainer "
              "family's no-length-term point (`none` for GRPO, `ppo_none` with the same task critic for critic "
              "PPO).", ""]
    lines += _preregistration_section(config, table.seeds, head, comparator, baselines, lenvm_variants)
    lines += (_budget_targets_section(budgets) if budget_headline is not None else
              _targets_section(point, seed_ci, head, ablation, drops))
    lines += _matched_sections(point, boot, seed_ci, head, ablation, baselines, drops, comparator)
    if deployed is not None:
        lines += _deployed_section(*deployed, head, comparator, drops)
    lines += _variants_section(point, boot, lenvm_variants, drops)
    lines += _runs_section(table, accuracy, tokens, boot, start, prompt_table)
    lines += _normalization_section(table, point, baselines, drops)
    efficiency = sample_efficiency(results, config.methods, config.rl_steps,
                                   config.rl_prompts_per_step * config.rl_generations,
                                   point["none_accuracy"] - drops[0] if drops else None, comparator)
    if efficiency is not None:
        lines += _sample_efficiency_section(efficiency, comparator, drops[0])
    if critic:
        lines += ["## Critic", "",
                  f"Held-out rollouts of the starting policy: prompt-boundary MRE {_fmt(critic.get('prompt_mre'))} vs "
                  f"{_fmt(critic.get('constant_mre'))} for a constant prediction (ratio "
                  f"{_fmt(critic.get('mre_vs_constant'), 2)}); relative remaining-length error at 0/25/50/75% of a "
                  "completion: " + ", ".join(_fmt(critic.get(f"rel_err_at_{p}pct")) for p in (0, 25, 50, 75))
                  + f"; γ = {_fmt(critic.get('gamma'), 4)}.", ""]
        decisions = critic.get("decisions") or {}
        if decisions:
            lines += ["Where the length is decided (the starting policy's own expected remaining length there is what "
                      "an oracle critic would predict):", "",
                      "| decision state | states | critic's remaining tokens | oracle | mean relative error |",
                      "|---|---|---|---|---|"]
            lines += [f"| {name} | {d['states']} | {d['predicted']:.1f} | {d['oracle']:.1f} | "
                      f"{d['relative_error']:.3f} |" for name, d in decisions.items()]
            lines += [""]
    lines += _task_critic_section(config.methods, out)
    if start and "forced" in start:
        lines += _forced_section(start, prompt_table.get("difficulty"))
    if budgets is not None:
        lines += _budget_section(budgets)
    if stage_seconds:
        lines += ["## Stage wall times", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {name} | {value:.0f} |" for name, value in stage_seconds.items()]
        lines += [""]
    lines += ["Plot: `accuracy_vs_tokens.png` (left: every run with 95% intervals, labelled by coefficient; right: "
              "each variant's Pareto frontier).", ""]
    write_text_atomically(out / "report.md", "\n".join(lines))
    report = {"headline": next(line for line in lines if line.startswith("Headline")), "point": point,
              "intervals": {key: list(percentile_interval(value)) for key, value in boot.items()},
              "per_seed": {key: value.tolist() for key, value in per_seed.items() if "ratio" in key},
              "seed_intervals": {key: list(value) for key, value in seed_ci.items() if "ratio" in key},
              "greedy_point": deployed[0] if deployed else None,
              "configs": [list(c) for c in table.configs], "seeds": table.seeds, "stage_seconds": stage_seconds,
              "sample_efficiency": efficiency, "budgets": budgets}
    write_text_atomically(out / "report.json", json.dumps(report, indent=1, default=float) + "\n")
    _plot(out, table, accuracy, tokens, boot, start, prompt_table,
          target=point["none_accuracy"] - drops[0] if drops else None)
    if efficiency is not None:
        _plot_sample_efficiency(out, efficiency, comparator)
    if budgets is not None:
        _plot_budgets(out, budgets)
    return report


def sample_efficiency(results: Sequence[dict[str, Any]], variants: dict[str, dict[str, Any]], rl_steps: int,
                      samples_per_step: int, target: float | None, comparator: str | None) -> dict[str, Any] | None:
    """Frontiers at several RL budgets, from the evaluations each run made inside its training
    (``eval_at_steps``) and its final one: for each step, each variant's tokens at ``target`` accuracy on its
    frontier at that step (anchored at its family's no-length-term run *at the same step*), and, per variant, the
    RL samples (completions) it needed until its frontier first reached the comparator's final point (its tokens at
    ``target`` after all ``rl_steps``). Points are means over seeds and prompts; steps where not every configuration
    has an evaluation are left out. ``None`` when no run has intermediate evaluations."""
    steps = sorted({int(step) for r in results for step in r.get("eval_at_steps") or {}})
    if not steps or target is None:
        return None
    configs = {(r["label"], float(r["coef"]), int(r["seed"])) for r in results if r["label"] in variants}
    tokens_at: dict[str, dict[int, float]] = {}
    kept = []
    for step in [*steps, rl_steps]:
        at = [{**r, "eval": r["eval"] if step == rl_steps else (r.get("eval_at_steps") or {}).get(str(step))}
              for r in results if r["label"] in variants]
        at = [r for r in at if r["eval"] is not None]
        if {(r["label"], float(r["coef"]), int(r["seed"])) for r in at} != configs:
            continue
        table = StudyTable(at, variants)
        accuracy = np.nanmean(table.metrics["correct"], axis=(1, 2))
        tokens = np.nanmean(table.metrics["tokens"], axis=(1, 2))
        kept.append(step)
        for label in table.labels():
            if table.anchor_index(label) is None:
                continue
            tokens_at.setdefault(label, {})[step] = tokens_at_accuracy(_frontier(table, label, accuracy, tokens),
                                                                        target)
    if len(kept) < 2:
        return None
    reference = tokens_at.get(comparator, {}).get(rl_steps) if comparator else None
    reached: dict[str, float] = {}
    for label, curve in tokens_at.items():
        first = next((step for step in kept if reference is not None and math.isfinite(reference)
                      and curve.get(step, math.inf) <= reference), None)
        reached[label] = float(first * samples_per_step) if first is not None else math.inf
    ratio = {label: (value / reached[comparator] if comparator in reached and math.isfinite(reached[comparator])
                     else math.nan) for label, value in reached.items()}
    return {"steps": kept, "samples_per_step": samples_per_step, "target_accuracy": float(target),
            "comparator": comparator, "reference_tokens": reference,
            "tokens_at_target": {label: {str(k): float(v) for k, v in curve.items()} for label, curve in
                                 tokens_at.items()},
            "samples_to_reference": reached, "samples_ratio": ratio}


def _sample_efficiency_section(efficiency: dict[str, Any], comparator: str | None, drop: float) -> list[str]:
    steps = efficiency["steps"]
    reference = efficiency["reference_tokens"]
    lines = ["## Sample efficiency", "",
             f"Tokens at the headline accuracy ({efficiency['target_accuracy']:.3f}, no length term after the full "
             f"budget − {drop:g}) on each variant's frontier after each number of RL steps "
             f"({efficiency['samples_per_step']} completions per step), anchored at the no-length-term run at the "
             "same step; – where the frontier does not reach it yet. Points are means over seeds and prompts (no "
             "interval)."]
    if comparator and reference is not None:
        lines[-1] += (f" Last columns: RL samples until the variant's frontier first reached the comparator "
                      f"`{comparator}`'s final point ({_fmt(reference, 1)} tokens), and that ÷ the comparator's own.")
    lines += ["", "| variant | " + " | ".join(f"step {s}" for s in steps) + " | samples to reach | ÷ comparator |",
              "|---|" + "---|" * (len(steps) + 2)]
    for label, curve in efficiency["tokens_at_target"].items():
        samples = efficiency["samples_to_reference"][label]
        lines.append(f"| {label} | " + " | ".join(_fmt(curve.get(str(s), math.nan), 1) for s in steps)
                     + f" | {_fmt(samples, 0)} | {_fmt(efficiency['samples_ratio'][label], 2)} |")
    return lines + ["", "Plot: `sample_efficiency.png`.", ""]


def _plot_sample_efficiency(out: Path, efficiency: dict[str, Any], comparator: str | None) -> None:
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..evaluation import save_figure

    fig, ax = plt.subplots(figsize=(8, 5))
    per_step = efficiency["samples_per_step"]
    for color, (label, curve) in enumerate(efficiency["tokens_at_target"].items()):
        steps = [int(s) for s in curve if math.isfinite(curve[s])]
        ax.plot([s * per_step for s in steps], [curve[str(s)] for s in steps], "-o", markersize=3,
                color=f"C{color % 10}", label=label, linewidth=2.5 if label == comparator else 1.2)
    if efficiency["reference_tokens"] is not None and math.isfinite(efficiency["reference_tokens"]):
        ax.axhline(efficiency["reference_tokens"], color="grey", linestyle=":", label="comparator's final point")
    ax.set_xlabel("RL samples (completions)")
    ax.set_ylabel(f"tokens at accuracy {efficiency['target_accuracy']:.3f}")
    ax.set_title("sample efficiency: tokens at matched accuracy by RL budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "sample_efficiency.png")


def _task_critic_section(variants: dict[str, dict[str, Any]], out: Path) -> list[str]:
    """The held-out error of every frozen task critic the task-credit variants read (``fit-task-critic``'s
    ``metrics.json``): a critic no better than a constant makes their task credit a worse baseline, not a signal."""
    paths = sorted({(v.get("options") or {}).get("task_critic_model_name_or_path") or "pretrained"
                    for v in variants.values() if METHODS[v["method"]].uses_task_critic})
    rows = []
    for path in paths:
        metrics_file = (out / "task-critic" if path == "pretrained" else Path(path)) / "metrics.json"
        if metrics_file.exists():
            metrics = json.loads(metrics_file.read_text())
            rows.append(f"| `{path}` | {_fmt(metrics.get('eval_mse'), 4)} | {_fmt(metrics.get('constant_mse'), 4)} | "
                        f"{_fmt(metrics.get('mse_vs_constant'), 2)} |")
    if not rows:
        return []
    return ["## Task critic", "",
            "The frozen task critic(s) of the task-credit variants, on held-out rollouts of the starting policy: "
            "token-level squared error against the reward, and a constant's (the mean training reward).", "",
            "| task critic | held-out MSE | constant's | ratio |", "|---|---|---|---|", *rows, ""]


def _merged_stage_seconds(out: Path, stage_seconds: dict[str, float]) -> dict[str, float]:
    """Every stage's wall time over all invocations of the study (``stage_seconds.json``): a rerun that skips
    finished stages keeps their times in the report."""
    path = out / "stage_seconds.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(stage_seconds)
    if stage_seconds:
        write_text_atomically(path, json.dumps(merged, indent=1) + "\n")
    return merged


def _headline(point: dict[str, float], boot: dict[str, np.ndarray], seed_ci: dict[str, tuple[float, float]],
              head: str | None, comparator: str | None, baselines: int, drops: Sequence[float],
              preregistered: bool = False) -> str:
    if head is None or not drops:
        return "Headline: no token-level LenVM run finished; nothing to compare yet."
    key = f"ratio@-{drops[0]:g}"
    ratio = point.get(key, float("nan"))
    kind = "pre-registered comparator" if preregistered else "comparator"
    against = (f"the {kind} `{comparator}`" if comparator is not None else
               f"the best of {baselines} sequence-level variants per replicate (exploratory: no comparator was "
               "pre-registered, and that minimum favours the baselines)")
    if not math.isfinite(ratio):
        return (f"Headline: at the no-length-term accuracy minus {100 * drops[0]:g} point(s), `{head}` or {against} "
                "is off its frontier; no matched-accuracy ratio.")
    b_low, b_high = percentile_interval(boot[key])
    return (f"Headline: `{head}` uses {ratio:.2f}× the tokens of {against} at matched accuracy "
            f"(−{100 * drops[0]:g} pt; 95% CI over seeds {_seed_interval(seed_ci, key)}; "
            f"bootstrap {b_low:.2f}–{b_high:.2f})")


def _preregistration_section(config: Any, seeds: list[int], head: str | None, comparator: str | None,
                             baselines: list[str], token_variants: list[str]) -> list[str]:
    record = getattr(config, "preregistration", None)
    lines = ["## Pre-registration", ""]
    if not record:
        lines += [f"None: this study is exploratory. Its headline compares `{head}` with the best of "
                  f"{len(baselines)} sequence-level variants per replicate, and any variant read from it is selected "
                  f"from {len(token_variants)} token-level and {len(baselines)} sequence-level variants. Use it to "
                  "choose a pair (`lenvm-rl preregister`), not to claim one.", ""]
        return lines
    lines += [f"The headline pair was chosen on the sweep `{record.get('sweep', '?')}` (seeds "
              f"{record['sweep_seeds']}), by a rule written down before this study ran, and is compared here on "
              f"seeds {seeds} that the sweep never used:", "",
              f"- rule: {record['rule']}"]
    if "coefficients" in record:  # the budget rule: one coefficient per budget method
        lines += [f"- token-level: `{record['token_level']}`; comparator: `{record['comparator']}`",
                  "- coefficients: " + ", ".join(f"`{label}` {coef:g} (sweep adherence "
                                                 f"{record['sweep_adherence'][label]:.3f})"
                                                 for label, coef in record["coefficients"].items()), ""]
    else:
        lines += [f"- token-level: `{record['token_level']}`, grid {record.get('token_level_grid')}",
                  f"- comparator: `{record['comparator']}`, grid {record.get('comparator_grid')}",
                  f"- picked from {record.get('token_level_candidates', '?')} token-level and "
                  f"{record.get('comparator_candidates', '?')} sequence-level variants of the sweep", ""]
    lines += ["Every other number below is secondary: a comparison with the best of several variants is a minimum "
              "over noisy estimates, and says so.", ""]
    return lines


def _targets_section(point: dict[str, float], seed_ci: dict[str, tuple[float, float]], head: str | None,
                     ablation: str | None, drops: Sequence[float]) -> list[str]:
    if head is None or not drops:
        return []
    lines = ["## Targets", ""]
    key = f"ratio@-{drops[0]:g}"
    ratio = point.get(key, float("nan"))
    _, high = seed_ci.get(key, (math.nan, math.nan))
    met = math.isfinite(ratio) and ratio <= 0.85 and math.isfinite(high) and high < 1.0
    lines.append(f"- `{head}` at ≤ 0.85× the tokens of the comparator at matched accuracy (no length term − "
                 f"{100 * drops[0]:g} point), seed-level interval excluding 1.0: "
                 f"**{'met' if met else 'missed'}** (ratio {_fmt(ratio, 2)}, 95% CI over seeds "
                 f"{_seed_interval(seed_ci, key)}).")
    if ablation is not None:
        key = f"ablation_ratio@-{drops[0]:g}"
        ratio = point.get(key, float("nan"))
        _, high = seed_ci.get(key, (math.nan, math.nan))
        met = math.isfinite(high) and high < 1.0
        lines.append(f"- Ahead of its own sequence-level ablation (`{ablation}`, which broadcasts each completion's "
                     f"normalized length outcome to every token as GRPO does) by a margin outside seed noise: "
                     f"**{'met' if met else 'missed'}** (token ratio {_fmt(ratio, 2)}, 95% CI over seeds "
                     f"{_seed_interval(seed_ci, key)}).")
    return lines + [""]


def _per_seed(table: StudyTable, statistic: Any, correct: str, tokens: str,
              leave_one_out: bool = False) -> dict[str, np.ndarray]:
    """name → ``(S,)``: the statistic computed on each seed's runs alone (the replication unit of an RL study), or,
    with ``leave_one_out``, on every seed's runs but that one (the jackknife's replicates)."""
    out: dict[str, list[float]] = {}
    for index in range(len(table.seeds)):
        seeds = np.arange(len(table.seeds)) != index if leave_one_out else np.arange(len(table.seeds)) == index
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a configuration missing these seeds is NaN
            means = {"correct": np.nanmean(table.metrics[correct][:, seeds], axis=(1, 2)),
                     "tokens": np.nanmean(table.metrics[tokens][:, seeds], axis=(1, 2))}
        for name, value in statistic(means).items():
            out.setdefault(name, []).append(float(value))
    return {name: np.asarray(values) for name, values in out.items()}


def _seed_intervals(point: dict[str, float], leave_one_out: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """name → the seed-level 95% interval of ``point[name]`` (:func:`~lenvm_rl.study.stats.jackknife_interval`; ratios
    on the log scale)."""
    return {name: jackknife_interval(point.get(name, math.nan), values, log_scale="ratio" in name)
            for name, values in leave_one_out.items()}


def _seed_interval(seed_ci: dict[str, tuple[float, float]], key: str, digits: int = 2) -> str:
    low, high = seed_ci.get(key, (math.nan, math.nan))
    return "–" if not math.isfinite(low) else f"{low:.{digits}f}–{high:.{digits}f}"


def _deployed_section(point: dict[str, float], boot: dict[str, np.ndarray], seed_ci: dict[str, tuple[float, float]],
                      head: str | None, comparator: str | None, drops: Sequence[float]) -> list[str]:
    """The matched-accuracy comparison at the temperature users deploy (greedy): a method that only sharpens the
    policy gains sampled accuracy at T = 1 without being a better length method, and this is where that shows."""
    if head is None:
        return []
    lines = ["## At the deployed temperature (greedy)", "",
             f"The same comparison on greedy decoding (no-length-term greedy accuracy {_fmt(point['none_accuracy'])} "
             f"at {_fmt(point['none_tokens'], 1)} tokens). Where every run's greedy accuracy is near 1, sampled "
             "accuracy at T = 1 is partly a measure of entropy; read the two tables together.", "",
             f"| accuracy target | `{head}` | {f'`{comparator}`' if comparator else 'best sequence-level'} | ratio "
             "(95% CI over seeds; bootstrap) |", "|---|---|---|---|"]
    for drop in drops:
        key = f"ratio@-{drop:g}"
        other = point.get(f"tokens@-{drop:g}/{comparator}" if comparator else f"tokens@-{drop:g}/best_baseline",
                          math.nan)
        lines.append(f"| {point['none_accuracy'] - drop:.3f} (−{100 * drop:g} pt) | "
                     f"{_fmt(point.get(f'tokens@-{drop:g}/{head}', math.nan), 1)} | {_fmt(other, 1)} | "
                     f"{_fmt(point.get(key, math.nan), 2)} ({_seed_interval(seed_ci, key)}; "
                     f"{_interval(boot.get(key), 2)}) |")
    return lines + [""]


def _matched_sections(point: dict[str, float], boot: dict[str, np.ndarray], seed_ci: dict[str, tuple[float, float]],
                      head: str | None, ablation: str | None, baselines: list[str], drops: Sequence[float],
                      comparator: str | None = None) -> list[str]:
    against = f"the comparator `{comparator}`" if comparator else "the best sequence-level variant of each replicate"
    lines = ["## Tokens at matched accuracy", "",
             "Tokens each frontier needs to reach the no-length-term accuracy minus 1, 2 and 5 points (interpolated; "
             f"– where a frontier does not reach it). Ratio: `{head}` ÷ {against}; intervals: over seeds "
             f"(jackknife), then bootstrap. Last column (secondary): ÷ the best of {len(baselines)} sequence-level "
             "variants per replicate.", "",
             "| accuracy target | token-level | comparator | ratio (95% CI seeds; bootstrap) | ablation "
             "| ÷ ablation (95% CI seeds; bootstrap) | ÷ best of all (bootstrap) |",
             "|---|---|---|---|---|---|---|"]
    none_accuracy = point["none_accuracy"]
    for drop in drops:
        best_label = comparator or min(baselines, key=lambda b: point.get(f"tokens@-{drop:g}/{b}", math.inf)
                                       if math.isfinite(point.get(f"tokens@-{drop:g}/{b}", math.nan)) else math.inf,
                                       default=None)
        lenvm = point.get(f"tokens@-{drop:g}/{head}", math.nan) if head else math.nan
        best = point.get(f"tokens@-{drop:g}/{comparator}" if comparator else f"tokens@-{drop:g}/best_baseline",
                         math.nan)
        abl = point.get(f"tokens@-{drop:g}/{ablation}", math.nan) if ablation else math.nan
        lines.append(
            f"| {none_accuracy - drop:.3f} (−{100 * drop:g} pt) | {_fmt(lenvm, 1)} | {_fmt(best, 1)}"
            f"{f' ({best_label})' if best_label and math.isfinite(best) else ''} | "
            f"{_fmt(point.get(f'ratio@-{drop:g}', math.nan), 2)} ({_seed_interval(seed_ci, f'ratio@-{drop:g}')}; "
            f"{_interval(boot.get(f'ratio@-{drop:g}'), 2)}) | "
            f"{_fmt(abl, 1)} | {_fmt(point.get(f'ablation_ratio@-{drop:g}', math.nan), 2)} "
            f"({_seed_interval(seed_ci, f'ablation_ratio@-{drop:g}')}; "
            f"{_interval(boot.get(f'ablation_ratio@-{drop:g}'), 2)}) | "
            f"{_fmt(point.get(f'ratio_vs_best@-{drop:g}', math.nan), 2)} "
            f"({_interval(boot.get(f'ratio_vs_best@-{drop:g}'), 2)}) |")
    lines += ["", "## Accuracy at matched tokens", "",
              f"Accuracy each frontier reaches within a fraction of the no-length-term policy's "
              f"{point['none_tokens']:.1f} tokens.", "",
              "| token budget | token-level | comparator | difference (95% CI) | ablation | − ablation "
              "(95% CI) |", "|---|---|---|---|---|---|"]
    other = comparator or "best_baseline"
    for fraction in TOKEN_FRACTIONS:
        lines.append(
            f"| {fraction:g} × ({fraction * point['none_tokens']:.1f}) | "
            f"{_fmt(point.get(f'accuracy@{fraction:g}/{head}', math.nan))} | "
            f"{_fmt(point.get(f'accuracy@{fraction:g}/{other}', math.nan))} | "
            f"{_point_and_interval(point, boot, f'accuracy_gain@{fraction:g}')} | "
            f"{_fmt(point.get(f'accuracy@{fraction:g}/{ablation}', math.nan))} | "
            f"{_point_and_interval(point, boot, f'ablation_accuracy_gain@{fraction:g}')} |")
    return lines + [""]


def _point_and_interval(point: dict[str, float], boot: dict[str, np.ndarray], key: str) -> str:
    """``value (interval)``, or ``–`` alone where the point itself is undefined (a frontier does not reach it: the
    replicates that do would describe another quantity)."""
    value = point.get(key, math.nan)
    return "–" if not math.isfinite(value) else f"{_fmt(value)} ({_interval(boot.get(key))})"


def _variants_section(point: dict[str, float], boot: dict[str, np.ndarray], variants: list[str],
                      drops: Sequence[float]) -> list[str]:
    """Every LenVM variant's tokens at matched accuracy ÷ the best sequence-level variant's (per replicate)."""
    if not variants or not drops:
        return []
    lines = ["## Every LenVM variant against the best sequence-level variant", "",
             "Tokens at matched accuracy ÷ the best sequence-level variant's at the same accuracy (below 1: fewer "
             "tokens; – where the variant's frontier does not reach the target).", "",
             "| variant | " + " | ".join(f"−{100 * d:g} pt (95% CI)" for d in drops) + " |",
             "|---|" + "---|" * len(drops)]
    for label in variants:
        cells = [f"{_fmt(point.get(f'ratio@-{d:g}/{label}', math.nan), 2)} "
                 f"({_interval(boot.get(f'ratio@-{d:g}/{label}'), 2)})" for d in drops]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def _by_difficulty(values: np.ndarray, difficulty: list[Any] | None) -> list[str]:
    if not difficulty:
        return []
    levels = sorted(set(difficulty))
    return [_fmt(float(np.nanmean(values[..., [i for i, d in enumerate(difficulty) if d == level]])), 1)
            for level in levels]


def _runs_section(table: StudyTable, accuracy: np.ndarray, tokens: np.ndarray, boot: dict[str, np.ndarray],
                  start: dict[str, Any] | None, prompt_table: dict[str, Any]) -> list[str]:
    difficulty = prompt_table.get("difficulty")
    levels = sorted(set(difficulty)) if difficulty else []
    # the task's segments (runs made before tasks were objects: checked parity's)
    segments = prompt_table.get("segments") or ({"trace": "", "check": ""} if "trace" in table.metrics else {})
    structure = [key for key in segments if key in table.metrics]
    greedy = "greedy_correct" in table.metrics
    header = ["variant", "coef", "runs", "accuracy (95% CI)", "tokens (95% CI)"]
    header += ["greedy acc", "greedy tokens"] if greedy else []
    header += [f"{key.replace('_', ' ')} rate" for key in structure]
    header += [f"tokens d={d}" for d in levels]
    described = "; ".join(f"{key.replace('_', ' ')}: {text}" for key, text in segments.items() if text)
    lines = ["## Every configuration", "", "Means over seeds and prompts."
             + (f" Rates — {described}." if described else
                " Rates: fraction of sampled completions that write the trace / the check (checked-parity task).")
             if structure else "Means over seeds and prompts.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(name: str, coef: str, runs: str, metrics: dict[str, np.ndarray], acc_ci: str, tok_ci: str) -> str:
        cells = [name, coef, runs, f"{float(np.nanmean(metrics['correct'])):.3f} ({acc_ci})",
                 f"{float(np.nanmean(metrics['tokens'])):.1f} ({tok_ci})"]
        if greedy:
            cells += [_fmt(float(np.nanmean(metrics["greedy_correct"]))) if "greedy_correct" in metrics else "–",
                      _fmt(float(np.nanmean(metrics["greedy_tokens"])), 1) if "greedy_tokens" in metrics else "–"]
        cells += [_fmt(float(np.nanmean(metrics[k]))) if k in metrics and np.isfinite(metrics[k]).any() else "–"
                  for k in structure]
        cells += _by_difficulty(np.asarray(metrics["tokens"]), difficulty)
        return "| " + " | ".join(cells) + " |"

    if start:
        lines.append(row("starting policy", "–", "1", {k: np.asarray(v) for k, v in start.items()
                                                        if isinstance(v, list)}, "–", "–"))
    if prompt_table.get("ideal_tokens"):
        ideal = np.asarray(prompt_table["ideal_tokens"], dtype=np.float64)
        cells = ["ideal (analytic)", "–", "–", "1.000 (exact)", f"{ideal.mean():.1f} (exact)"]
        cells += ["1.000", f"{ideal.mean():.1f}"] if greedy else []
        ideal_structure = prompt_table.get("ideal_structure", {"check": 0.0})
        cells += [_fmt(ideal_structure[k]) if k in ideal_structure else "–" for k in structure]
        cells += _by_difficulty(ideal, difficulty)
        lines.append("| " + " | ".join(cells) + " |")
    for index, (label, coef) in enumerate(table.configs):
        metrics = {name: array[index] for name, array in table.metrics.items()}
        lines.append(row(label, "–" if not METHODS[table.method(label)].uses_coef else f"{coef:g}",
                         str(table.count[(label, coef)]), metrics, _interval(boot.get(f"accuracy/{index}")),
                         _interval(boot.get(f"tokens/{index}"), 1)))
    if prompt_table.get("ideal_tokens"):
        note = prompt_table.get("ideal_note") or (
            f"the policy that writes the reduction trace only from {TRACE_PAYS_FROM} bits on (where a small model "
            "needs it), never the check, and is always right (`lenvm_rl.tasks.ideal_completion`); columns d=k: mean "
            "tokens on k-bit strings")
        lines += ["", f"The ideal row is computed, not trained: {note}."]
    return lines + [""]


def _normalization_section(table: StudyTable, point: dict[str, float], baselines: list[str],
                           drops: Sequence[float]) -> list[str]:
    families: dict[str, list[str]] = {}
    for label in baselines:
        families.setdefault(table.method(label), []).append(label)
    if not families or not drops:
        return []
    lines = ["## Group vs batch normalization of the sequence-level rewards", "",
             f"Tokens at the no-length-term accuracy − {100 * drops[0]:g} point; the better variant of each family "
             "is the one the comparison above can pick.", "", "| family | variant | tokens |", "|---|---|---|"]
    for family, members in families.items():
        for label in members:
            lines.append(f"| {family} | {label} | {_fmt(point.get(f'tokens@-{drops[0]:g}/{label}', math.nan), 1)} |")
    return lines + [""]


def _forced_section(start: dict[str, Any], difficulty: list[Any] | None) -> list[str]:
    forced = start["forced"]
    # runs made before tasks were objects hold no level of their own: it was the prompt's difficulty (bits)
    level_of = forced.get("level", difficulty)
    if not level_of:
        return []
    levels = sorted(set(level_of))
    lines = ["## Where the trace pays (starting policy, first decision forced)", "",
             f"| {forced.get('level_name', 'bits')} | accuracy, answer at once | accuracy, trace | tokens, at once | "
             "tokens, trace |", "|---|---|---|---|---|"]
    for level in levels:
        index = [i for i, d in enumerate(level_of) if d == level]
        mean = {key: float(np.mean([forced[key][i] for i in index])) for key in
                ("direct_correct", "trace_correct", "direct_tokens", "trace_tokens")}
        lines.append(f"| {level} | {mean['direct_correct']:.3f} | {mean['trace_correct']:.3f} | "
                     f"{mean['direct_tokens']:.1f} | {mean['trace_tokens']:.1f} |")
    return lines + [""]


def _plot(out: Path, table: StudyTable, accuracy: np.ndarray, tokens: np.ndarray, boot: dict[str, np.ndarray],
          start: dict[str, Any] | None, prompt_table: dict[str, Any], target: float | None = None) -> None:
    try:
        import matplotlib
    except ImportError:  # the report is complete without the picture
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..evaluation import save_figure

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6), sharey=True)
    none = table.none_index()
    for ax in (left, right):
        ax.scatter([tokens[none]], [accuracy[none]], marker="D", s=70, color="black", zorder=5,
                   label="no length term")
        if start:
            ax.scatter([np.mean(start["tokens"])], [np.mean(start["correct"])], marker="*", s=160, color="grey",
                       zorder=5, label="starting policy")
        if prompt_table.get("ideal_tokens"):
            ax.scatter([np.mean(prompt_table["ideal_tokens"])], [1.0], marker="*", s=200, color="gold",
                       edgecolor="black", zorder=5, label="ideal (analytic)")
    for color, label in enumerate(table.labels()):
        if table.method(label) == "none":
            continue
        indices = table.indices(label)
        xerr = np.array([[tokens[i] - percentile_interval(boot[f"tokens/{i}"])[0] for i in indices],
                         [percentile_interval(boot[f"tokens/{i}"])[1] - tokens[i] for i in indices]])
        yerr = np.array([[accuracy[i] - percentile_interval(boot[f"accuracy/{i}"])[0] for i in indices],
                         [percentile_interval(boot[f"accuracy/{i}"])[1] - accuracy[i] for i in indices]])
        style = "-" if table.method(label) not in SEQUENCE_LEVEL else "--"
        left.errorbar(tokens[indices], accuracy[indices], xerr=np.abs(xerr), yerr=np.abs(yerr), fmt="o",
                      color=f"C{color % 10}", markersize=4, capsize=2, label=label)
        for k, i in enumerate(indices):  # alternate the label side so neighbouring points do not overprint
            left.annotate(f"{table.configs[i][1]:g}", (tokens[i], accuracy[i]), fontsize=6,
                          xytext=(4 if k % 2 == 0 else -4, 4 if (k + color) % 2 == 0 else -8),
                          ha="left" if k % 2 == 0 else "right", textcoords="offset points", color=f"C{color % 10}")
        frontier = _frontier(table, label, accuracy, tokens)
        right.plot([p[0] for p in frontier], [p[1] for p in frontier], style, marker="o", markersize=3,
                   color=f"C{color % 10}", label=label)
    left.set_title("every run (95% CI), labelled by coefficient")
    right.set_title("Pareto frontier of each variant (dashed: sequence-level)")
    for ax in (left, right):
        ax.set_xlabel("mean completion tokens (held-out prompts, sampled)")
        ax.grid(alpha=0.3)
    left.set_ylabel("accuracy")
    if target is not None:
        for ax in (left, right):
            ax.axhline(target, color="grey", linestyle=":", linewidth=1,
                       label="headline accuracy (no length term − drop)")
    # below the axes: inside, a legend covers the frontiers whenever every point sits in one corner
    for ax in (left, right):
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    fig.tight_layout()
    save_figure(fig, out / "accuracy_vs_tokens.png")


# the adherence bar for "follows the budget", and its bar on RL samples to the comparator's adherence
ADHERENCE_BAR = 0.95
SAMPLES_BAR = 0.6


def budget_table(table: StudyTable, start: dict[str, Any] | None, budgets: list[int], samples: int = 1000,
                 pair: tuple[str, str] | None = None) -> dict[str, Any]:
    """Per budget ``N`` of a budget task: every system's accuracy, adherence (``L ≤ N``) and ``|L − N| / N`` on the
    prompts that ask for ``N``, with 95% paired-bootstrap intervals over prompts and seeds for the trained runs.
    Systems: each (variant, coefficient), plain and (with ``eval_guided``) decoded under value guidance toward
    ``N``, and the starting policy plain, guided, and under hard truncation at ``N`` (one
    evaluation: no seed interval, the bootstrap is over prompts). ``target`` holds the issue's test at the tightest
    budget: the most accurate system at adherence ≥ :data:`ADHERENCE_BAR` ÷ the truncated starting policy.

    ``pair = (token_level, comparator)``, variant labels of one coefficient each (a confirmatory study): ``comparison``
    holds ``token_level − comparator`` of accuracy and adherence at the tightest budget and over all budgets, each a
    point and the 95% interval of the same paired replicates (prompts and seeds drawn together)."""
    budgets_array = np.asarray(budgets)
    levels = sorted(set(budgets))
    keys = ("correct", "within_budget", "budget_error")
    # plain sampling, and value-guided decoding under the budget where the study evaluated it (eval_guided)
    decodings = [("", "")] + ([("guided_", ", guided")] if "guided_within_budget" in table.metrics else [])
    metrics = {}
    for prefix, _ in decodings:
        for level in levels:
            outside = budgets_array != level
            for key in keys:
                array = table.metrics[prefix + key].copy()
                array[..., outside] = np.nan
                metrics[f"{prefix}{key}@{level}"] = array
    for key in ("correct", "within_budget"):
        metrics[f"{key}@all"] = table.metrics[key]

    def statistic(means: dict[str, np.ndarray]) -> dict[str, float]:
        return {f"{key}/{index}": float(value[index]) for key, value in means.items()
                for index in range(len(table.configs))}

    point = statistic({key: np.nanmean(value, axis=(1, 2)) for key, value in metrics.items()})
    with warnings.catch_warnings():  # a replicate that draws no prompt of some budget is NaN there, and dropped
        warnings.simplefilter("ignore", RuntimeWarning)
        boot = paired_bootstrap(metrics, statistic, samples=samples, seed=2)
    systems: dict[str, dict[str, Any]] = {}
    for prefix, suffix in decodings:
        for index, (label, coef) in enumerate(table.configs):
            systems[f"{label} {coef:g}{suffix}"] = {
                str(level): {key: [point[f"{prefix}{key}@{level}/{index}"],
                                   *percentile_interval(boot[f"{prefix}{key}@{level}/{index}"])] for key in keys}
                for level in levels}
    if start is not None and "within_budget" in start:
        rng = np.random.default_rng(3)
        starts = [("starting policy", "", False), ("starting policy, truncated at N", "truncated_", True)]
        if "guided_within_budget" in start:
            starts.append(("starting policy, guided", "guided_", False))
        for name, prefix, truncated in starts:
            entry = {}
            for level in levels:
                rows = np.flatnonzero(budgets_array == level)

                def column(key: str, rows: np.ndarray = rows) -> np.ndarray:
                    return np.asarray(start[key], dtype=np.float64)[rows]

                if truncated:  # the plain samples cut at N: within N by construction
                    values = {"correct": column("truncated_correct"), "within_budget": np.ones(len(rows)),
                              "budget_error": np.abs(column("truncated_tokens") - level) / level}
                else:
                    values = {key: column(prefix + key) for key in keys}
                draws = rng.integers(0, len(rows), size=(samples, len(rows)))
                entry[str(level)] = {key: [float(v.mean()), *percentile_interval(v[draws].mean(axis=1))]
                                     for key, v in values.items()}
            systems[name] = entry
    tightest = str(levels[0])
    target = None
    truncated = systems.get("starting policy, truncated at N")
    eligible = {name: cells[tightest] for name, cells in systems.items()
                if cells[tightest]["within_budget"][0] >= ADHERENCE_BAR and name != "starting policy, truncated at N"}
    if truncated is not None and eligible:
        best = max(eligible, key=lambda name: eligible[name]["correct"][0])
        base = truncated[tightest]["correct"][0]
        target = {"budget": levels[0], "system": best, "accuracy": eligible[best]["correct"][0],
                  "adherence": eligible[best]["within_budget"][0], "truncated_accuracy": base,
                  "ratio": eligible[best]["correct"][0] / base if base > 0 else math.inf}
    comparison = None
    # a pair of one coefficient each, finished on the same seeds (a partial report of a confirmatory study that
    # runs as several processes would otherwise compare different seed sets)
    if (pair is not None and all(len(table.indices(label)) == 1 for label in pair)
            and len({table.count[table.configs[table.indices(label)[0]]] for label in pair}) == 1):
        head, other = (table.indices(label)[0] for label in pair)
        comparison = {f"{key}@{level}": [point[f"{key}@{level}/{head}"] - point[f"{key}@{level}/{other}"],
                                         *percentile_interval(boot[f"{key}@{level}/{head}"]
                                                              - boot[f"{key}@{level}/{other}"])]
                      for key in ("correct", "within_budget") for level in (levels[0], "all")}
        comparison["pair"] = list(pair)
    return {"budgets": levels, "systems": systems, "target": target, "comparison": comparison}


def adherence_by_step(results: Sequence[dict[str, Any]], rl_steps: int, samples_per_step: int,
                      comparator: str | None = None) -> dict[str, Any] | None:
    """Adherence (fraction of sampled completions within their prompt's budget, over every budget) of each
    (variant, coefficient) after each RL step it was evaluated at (``eval_at_steps`` and the final evaluation),
    mean over seeds and prompts, and the RL samples until it first reached ``reference``: the final adherence of
    the ``comparator`` variant (a confirmatory study's pre-registered one), or else the highest final adherence of
    any sequence-level budget method. With a ``comparator``, ``samples_to_reference_by_seed`` also holds, per seed,
    the samples until each run reached the comparator's final adherence on that same seed (inf: never).
    ``None`` without intermediate evaluations of adherence."""
    curves: dict[str, dict[int, list[float]]] = {}
    by_seed: dict[str, dict[int, dict[int, float]]] = {}
    for result in results:
        evaluations = {int(step): evaluation for step, evaluation in (result.get("eval_at_steps") or {}).items()}
        evaluations[rl_steps] = result["eval"]
        name = f"{result['label']} {float(result['coef']):g}"
        for step, evaluation in evaluations.items():
            if "within_budget" in evaluation:
                value = float(np.mean(evaluation["within_budget"]))
                curves.setdefault(name, {}).setdefault(step, []).append(value)
                by_seed.setdefault(name, {}).setdefault(int(result["seed"]), {})[step] = value
    if not any(len(curve) > 1 for curve in curves.values()):
        return None
    means = {name: {step: float(np.mean(values)) for step, values in sorted(curve.items())}
             for name, curve in curves.items()}
    names = {f"{r['label']} {float(r['coef']):g}": r for r in results}
    # the comparator's final adherence is the reference only when it names one system (one coefficient)
    candidates = [name for name, r in names.items() if r["label"] == comparator and name in means]
    reference_name = candidates[0] if len(candidates) == 1 else None
    if reference_name is not None:
        reference = means[reference_name].get(rl_steps)
    else:
        sequence = [name for name, r in names.items() if r["method"] in SEQUENCE_LEVEL and name in means]
        reference = max((means[name][rl_steps] for name in sequence if rl_steps in means[name]), default=None)

    def first_reaching(curve: dict[int, float], level: float | None) -> float:
        first = next((step for step, value in sorted(curve.items()) if level is not None and value >= level), None)
        return float(first * samples_per_step) if first is not None else math.inf

    reached = {name: first_reaching(curve, reference) for name, curve in means.items()}
    curve = {"steps": sorted({step for curve in means.values() for step in curve}), "adherence": means,
             "reference": reference, "reference_system": reference_name, "samples_to_reference": reached,
             "samples_per_step": samples_per_step}
    if reference_name is not None:
        seeds = by_seed[reference_name]
        curve["samples_to_reference_by_seed"] = {
            name: {str(seed): first_reaching(runs[seed], seeds[seed].get(rl_steps)) for seed in sorted(runs)
                   if seed in seeds} for name, runs in by_seed.items()}
    return curve


def samples_ratio(curve: dict[str, Any], head: str, other: str) -> dict[str, Any] | None:
    """RL samples until ``head`` first reached the comparator ``other``'s final adherence ÷ the samples ``other``
    needed, from :func:`adherence_by_step`'s ``curve`` (mean curves, and per seed where it holds them). The
    evaluation steps bound where each crossing happened: ``head_steps`` / ``other_steps`` are the last step below the
    reference and the first at or above it (0 before the first evaluation), so with adherence still rising at the
    comparator's last step the ratio lies in ``bounds``. ``None`` when either label is missing from the curves."""
    matches = {label: [name for name in curve["adherence"] if name.startswith(f"{label} ")] for label in (head, other)}
    if any(len(found) != 1 for found in matches.values()) or not curve.get("reference_system"):
        return None  # a label with several coefficients names no single system
    names = {label: found[0] for label, found in matches.items()}

    def crossing(name: str) -> list[float]:
        steps = sorted(curve["adherence"][name])
        first = next((k for k, step in enumerate(steps) if curve["adherence"][name][step] >= curve["reference"]),
                     None)
        if first is None:
            return [float(steps[-1]), math.inf]
        return [float(steps[first - 1]) if first > 0 else 0.0, float(steps[first])]

    needed = [curve["samples_to_reference"][names[label]] for label in (head, other)]
    seeds = curve.get("samples_to_reference_by_seed") or {}
    per_seed = [seeds[names[head]][seed] / seeds[names[other]][seed]
                for seed in seeds.get(names[other], {}) if seed in seeds.get(names[head], {})
                and math.isfinite(seeds[names[other]][seed]) and seeds[names[other]][seed] > 0]
    head_steps, other_steps = crossing(names[head]), crossing(names[other])
    finite = math.isfinite(needed[1]) and needed[1] > 0
    last = max(curve["adherence"][names[other]])
    # the comparator first at its own final adherence at its last evaluation, and rising into it: if it rises
    # monotonically it got there only at the end, which pins its crossing
    rising = other_steps[1] == last and other_steps[0] > 0 and (
        curve["adherence"][names[other]][int(other_steps[0])] < curve["reference"])
    bounds = ([head_steps[0] / other_steps[1], head_steps[1] / other_steps[0] if other_steps[0] > 0 else math.inf]
              if finite else [math.nan] * 2)
    return {"pair": [head, other], "reference": curve["reference"],
            "ratio": needed[0] / needed[1] if finite else math.nan, "per_seed": per_seed,
            "seeds": len(seeds.get(names[other], {})), "head_steps": head_steps, "other_steps": other_steps,
            "bounds": bounds,
            "bounds_if_monotone": [head_steps[0] / other_steps[1], head_steps[1] / other_steps[1]]
            if finite and rising else None}


def _crossing_note(ratio: dict[str, Any]) -> str:
    head_steps, other_steps = ratio["head_steps"], ratio["other_steps"]
    if not math.isfinite(head_steps[1]) or not math.isfinite(other_steps[1]):
        return ""
    note = (f"Read on the evaluation grid: the token-level run first crossed between steps {head_steps[0]:g} and "
            f"{head_steps[1]:g}, the comparator between {other_steps[0]:g} and {other_steps[1]:g}, so the ratio "
            f"lies in ({ratio['bounds'][0]:.2f}, {ratio['bounds'][1]:.2f}]")
    monotone = ratio.get("bounds_if_monotone")
    if monotone is not None:
        note += (f"; the comparator reaches its final adherence only at its last step if its adherence rises "
                 f"monotonically, and then the ratio lies in ({monotone[0]:.2f}, {monotone[1]:.2f}]")
    return note + "."


def _budget_headline(budgets: dict[str, Any], preregistered: bool) -> str | None:
    """A budget study's headline: the pre-registered pair's RL samples to the comparator's final adherence, and what
    the token-level side pays for it in accuracy and gains in adherence (``None`` without a pair to compare)."""
    ratio, comparison = budgets.get("samples_ratio"), budgets.get("comparison")
    if ratio is None or comparison is None:
        return None
    head, other = ratio["pair"]
    kind = "pre-registered comparator" if preregistered else "comparator"

    def difference(key: str) -> str:
        value, low, high = comparison[f"{key}@all"]
        return f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"

    if not math.isfinite(ratio["ratio"]):
        reached = "never reaches" if ratio["head_steps"][1] == math.inf else "reaches"
        return (f"Headline: `{head}` {reached} the {kind} `{other}`'s final adherence ({ratio['reference']:.3f}) "
                f"within the run; accuracy {difference('correct')}, adherence {difference('within_budget')} over all "
                "budgets (paired bootstrap)")
    values = ratio["per_seed"]
    finite = sorted(value for value in values if math.isfinite(value))
    if not values:
        seeds = "no per-seed data"
    else:
        spread = (f"{finite[0]:.2f}" if finite and finite[0] == finite[-1] else
                  f"{finite[0]:.2f}–{finite[-1]:.2f}" if finite else "")
        seeds = (f"{spread} on {len(finite)} of {ratio['seeds']} seeds" if finite else "no seed reaches it")
        if len(finite) < len(values):
            seeds += f", never on {len(values) - len(finite)}"
    bounds = ratio.get("bounds_if_monotone") or ratio["bounds"]
    grid = (f"evaluation grid: ({bounds[0]:.2f}, {bounds[1]:.2f}]"
            + (" if the comparator's adherence rises monotonically" if ratio.get("bounds_if_monotone") else ""))
    return (f"Headline: `{head}` reaches the {kind} `{other}`'s final adherence ({ratio['reference']:.3f}) in "
            f"{ratio['ratio']:.2f}× its RL samples ({seeds}; {grid}), at accuracy {difference('correct')} and "
            f"adherence {difference('within_budget')} over all budgets (`{head}` − `{other}`, paired bootstrap over "
            "prompts and seeds)")


def _budget_targets_section(budgets: dict[str, Any]) -> list[str]:
    """The budget issue's targets, judged on the pre-registered pair: RL samples to the comparator's final adherence
    (≤ 0.6×, on the mean curves and on every seed), accuracy at equal adherence (a paired difference whose interval
    excludes 0, read only where the adherence difference's interval holds 0), and the best system at the tightest
    budget against hard truncation (≥ 5× at ≥ 95% adherence)."""
    ratio, comparison, target = budgets["samples_ratio"], budgets["comparison"], budgets["target"]
    head, other = ratio["pair"]
    per_seed = ratio["per_seed"]
    met = (math.isfinite(ratio["ratio"]) and ratio["ratio"] <= SAMPLES_BAR and bool(per_seed)
           and all(value <= SAMPLES_BAR for value in per_seed))
    bounds = ratio.get("bounds_if_monotone") or ratio["bounds"]
    lines = ["## Targets", "",
             f"- `{head}` reaches `{other}`'s final adherence with ≤ {SAMPLES_BAR:g}× its RL samples, on the mean "
             f"curves and on every seed: **{'met' if met else 'missed'}** (ratio "
             f"{'never' if ratio['ratio'] == math.inf else _fmt(ratio['ratio'], 2)}; per seed "
             + (", ".join("never" if v == math.inf else _fmt(v, 2) for v in per_seed) or "–")
             + f"; on the evaluation grid ({bounds[0]:.2f}, {bounds[1]:.2f}]"
             + (", if the comparator's adherence rises monotonically" if ratio.get("bounds_if_monotone") else "")
             + ")."]
    accuracy, adherence = comparison["correct@all"], comparison["within_budget@all"]
    if adherence[1] <= 0.0 <= adherence[2]:
        verdict = "met" if accuracy[1] > 0 else "missed"
        lines.append(f"- … or more accurate at equal adherence, interval excluding 0: **{verdict}** (accuracy "
                     f"{accuracy[0]:+.3f} [{accuracy[1]:+.3f}, {accuracy[2]:+.3f}] at adherence {adherence[0]:+.3f} "
                     f"[{adherence[1]:+.3f}, {adherence[2]:+.3f}], all budgets).")
    else:
        lines.append(f"- … or more accurate at equal adherence: **not at equal adherence** (adherence "
                     f"{adherence[0]:+.3f} [{adherence[1]:+.3f}, {adherence[2]:+.3f}], accuracy {accuracy[0]:+.3f} "
                     f"[{accuracy[1]:+.3f}, {accuracy[2]:+.3f}], all budgets).")
    if target is None:
        lines.append(f"- ≥ 5× hard truncation's accuracy at the tightest budget, ≥ {ADHERENCE_BAR:.0%} adherence: "
                     "**missed** (no system within the bar).")
    else:
        lines.append(f"- ≥ 5× hard truncation's accuracy at the tightest budget (N = {target['budget']}), ≥ "
                     f"{ADHERENCE_BAR:.0%} adherence: **{'met' if target['ratio'] >= 5 else 'missed'}** "
                     f"(`{target['system']}` {target['accuracy']:.3f} ÷ {target['truncated_accuracy']:.3f} = "
                     f"{_fmt(target['ratio'], 2)}×).")
    return lines + [""]


def _samples(value: float) -> str:
    """RL samples to a reference: "never" when the run did not get there, "–" when there is no run."""
    return "never" if value == math.inf else _fmt(value, 0)


def _budget_section(budgets: dict[str, Any]) -> list[str]:
    levels = budgets["budgets"]

    def cell(values: list[float], digits: int = 2) -> str:
        return f"{values[0]:.{digits}f} [{values[1]:.{digits}f}, {values[2]:.{digits}f}]"

    lines = ["## Budgets", "",
             "Each prompt asks for a token budget N (EOS counted); each column holds the prompts that ask for it. "
             "Cells: accuracy / adherence (fraction with L ≤ N), each with its 95% bootstrap interval over prompts "
             "and seeds. The truncated starting policy is the same samples cut at N tokens; `, guided` rows decode "
             "with the study's LenVM critic guiding every token under the at_most target N (`eval_guided`).", "",
             "| system | " + " | ".join(f"N = {n}" for n in levels) + " |", "|---|" + "---|" * len(levels)]
    for name, cells in budgets["systems"].items():
        lines.append(f"| {name} | " + " | ".join(f"{cell(cells[str(n)]['correct'])} / "
                                                 f"{cell(cells[str(n)]['within_budget'])}" for n in levels) + " |")
    lines += ["", "Mean |L − N| / N:", "", "| system | " + " | ".join(f"N = {n}" for n in levels) + " |",
              "|---|" + "---|" * len(levels)]
    for name, cells in budgets["systems"].items():
        lines.append(f"| {name} | " + " | ".join(f"{cells[str(n)]['budget_error'][0]:.2f}" for n in levels) + " |")
    target = budgets["target"]
    if target is None:
        lines += ["", f"At the tightest budget (N = {levels[0]}) no system reaches {ADHERENCE_BAR:.0%} adherence"
                  " (or the starting policy's truncation was not evaluated)."]
    else:
        lines += ["", f"At the tightest budget (N = {target['budget']}) the most accurate system with adherence ≥ "
                  f"{ADHERENCE_BAR:.0%} is `{target['system']}`: accuracy {target['accuracy']:.3f} at adherence "
                  f"{target['adherence']:.3f}, {_fmt(target['ratio'], 2)}× the truncated starting policy's "
                  f"{target['truncated_accuracy']:.3f} (target: ≥ 5×)."]
    curve = budgets.get("adherence_by_step")
    if curve is not None:
        steps = curve["steps"]
        lines += ["", f"Adherence after each number of RL steps ({curve['samples_per_step']} completions per step), "
                  "mean over seeds and prompts; the last column: RL samples until the run first reached "
                  + (f"the pre-registered comparator's (`{curve['reference_system']}`) final adherence"
                     if curve.get("reference_system") else "the best final adherence of a sequence-level budget "
                     "method") + f" ({_fmt(curve['reference'])}).", "",
                  "| system | " + " | ".join(f"step {step}" for step in steps) + " | samples to reach |",
                  "|---|" + "---|" * (len(steps) + 1)]
        for name, values in curve["adherence"].items():
            lines.append(f"| {name} | " + " | ".join(_fmt(values.get(step, math.nan)) for step in steps)
                         + f" | {_samples(curve['samples_to_reference'][name])} |")
        per_seed = curve.get("samples_to_reference_by_seed")
        if per_seed:
            reference = per_seed[curve["reference_system"]]
            lines += ["", "Per seed, RL samples until each run reached the comparator's final adherence on the same "
                      "seed (inf: never, within the run):", "",
                      "| system | " + " | ".join(f"seed {seed}" for seed in reference) + " |",
                      "|---|" + "---|" * len(reference)]
            for name, seeds in per_seed.items():
                lines.append(f"| {name} | " + " | ".join(_samples(seeds.get(seed, math.nan)) for seed in reference)
                             + " |")
    comparison = budgets.get("comparison")
    if comparison:
        head, other = comparison["pair"]
        lines += ["", f"Pre-registered pair: `{head}` − `{other}`, point and 95% paired-bootstrap interval over "
                  "prompts and seeds:", "", "| difference | at N = " + f"{levels[0]} | all budgets |", "|---|---|---|"]
        for key, name in (("correct", "accuracy"), ("within_budget", "adherence")):
            lines.append(f"| {name} | " + " | ".join(
                f"{comparison[f'{key}@{level}'][0]:+.3f} [{comparison[f'{key}@{level}'][1]:+.3f}, "
                f"{comparison[f'{key}@{level}'][2]:+.3f}]" for level in (levels[0], "all")) + " |")
        ratio = budgets.get("samples_ratio")
        if ratio is not None:
            lines += ["", f"RL samples to the comparator's final adherence, `{head}` ÷ `{other}`: "
                      f"{'never' if ratio['ratio'] == math.inf else _fmt(ratio['ratio'], 2)} on the mean curves "
                      "(target ≤ 0.6); per seed "
                      + (", ".join("never" if value == math.inf else _fmt(value, 2) for value in ratio["per_seed"])
                         or "–") + f". {_crossing_note(ratio)}"]
    return lines + ["", "Plot: `budgets.png` (accuracy and adherence against the budget).", ""]


def _plot_budgets(out: Path, budgets: dict[str, Any]) -> None:
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..evaluation import save_figure

    levels = budgets["budgets"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(16, 6), sharex=True)
    # a system keeps its colour in every decoding: plain solid, guided dashed, the starting policy dotted/black
    colors: dict[str, str] = {}
    for name, cells in budgets["systems"].items():
        system = name.removesuffix(", guided")
        if name.startswith("starting policy"):
            color = {"starting policy": "black", "starting policy, truncated at N": "grey"}.get(name, "black")
            style = ":" if name != "starting policy, guided" else "--"
        else:
            color = colors.setdefault(system, f"C{len(colors) % 10}")
            style = "--" if name.endswith(", guided") else "-"
        for ax, key in ((left, "correct"), (right, "within_budget")):
            ax.plot(levels, [cells[str(n)][key][0] for n in levels], style, marker="o", markersize=3,
                    color=color, label=name)
    right.axhline(ADHERENCE_BAR, color="grey", linestyle="--", linewidth=1)
    left.set_ylabel("accuracy")
    right.set_ylabel("adherence (fraction with L ≤ N)")
    for ax in (left, right):
        ax.set_xlabel("token budget N")
        ax.grid(alpha=0.3)
    # one legend beside both panels: with every run plain and guided it would cover either of them
    handles, names = left.get_legend_handles_labels()
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(0.79, 0.5), fontsize=6, ncol=1 + len(names) // 40)
    fig.tight_layout(rect=(0, 0, 0.78, 1))
    save_figure(fig, out / "budgets.png")
