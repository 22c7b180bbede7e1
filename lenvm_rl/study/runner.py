"""The study runner: a fair, powered comparison of length methods that any task can plug into.

From one starting policy (a path, or the built-in warm-up on one of the study tasks of :mod:`lenvm_rl.study.tasks`),
with one LenVM critic trained on that policy's rollouts (or given), every (method variant, coefficient, seed) of the
recipe gets the same RL budget (steps, prompts and samples per step, learning rate) and the same evaluation
(held-out prompts × samples at temperature 1, plus greedy). Each run's result is saved the moment it finishes, and a
rerun skips finished runs, so a crash or a stop loses at most one run. Several processes may run the same recipe on
one output directory at once (one per core, or per machine over a shared disk): the shared stages run once while
the others wait, and each run is claimed by the process that starts it (:mod:`lenvm_rl.study.claims`). At the end
(and with ``report_only``) it writes ``results.jsonl``, ``report.md`` (headline, frontier tables with 95% bootstrap
intervals, matched-accuracy token ratios, the sequence-level ablation) and PNG plots (:mod:`lenvm_rl.study.report`).

A recipe names the methods as variants: ``label: {method: <name>, grid: [coefficients], options: {config fields}}``
(method names in :data:`lenvm_rl.study.methods.METHODS`). Task rewards are import paths ``module:function``; the first
one defines correctness (accuracy and the LenVM gate). The ``lenvm-rl study`` job (:mod:`lenvm_rl.scripts.study`)
parses a recipe into :class:`StudyConfig` and calls :func:`run_study`.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..io import write_text_atomically
from .claims import acquire, claim, describe, held, holder, release
from .tasks import StudyTask, get_task

__all__ = ["StudyConfig", "run_study", "load_results", "print_summary", "DEFAULT_METHODS", "CONFIG_FILE", "RESULT_FILE"]

logger = logging.getLogger(__name__)

BUILTIN = "builtin"
CONFIG_FILE = "study_config.json"
RESULT_FILE = "result.json"
# claims (lenvm_rl.study.claims): the shared stages' in the output directory, each run's in its run directory
SETUP_CLAIM, RUN_CLAIM = ".setup.claim", ".claim"

# The variants a study runs when its recipe names none: a compact table, not a measured one. Its grids are geometric
# with one ratio (2) for every coefficient method, and each GRPO variant runs under every normalization in
# StudyConfig.normalizations. The studies the project reports use the recipes in recipes/study/ (sweep.yaml picks the
# pre-registered pair, confirmatory.yaml compares it); docs/study/README.md says how their grids were chosen.
DEFAULT_METHODS: dict[str, dict[str, Any]] = {
    "none": {"method": "none"},
    "linear": {"method": "linear", "grid": [0.1, 0.2, 0.4, 0.8]},
    "kimi": {"method": "kimi", "grid": [0.05, 0.1, 0.2, 0.4]},
    "budget": {"method": "budget", "grid": [48, 32, 21, 14]},
    "gated_self_normalized": {"method": "gated_self_normalized", "grid": [0.05, 0.1, 0.2, 0.4]},
    "lenvm": {"method": "lenvm", "grid": [0.0625, 0.125, 0.25, 0.5]},
    "lenvm_seq": {"method": "lenvm_seq", "grid": [0.0625, 0.125, 0.25, 0.5]},
    "ppo_none": {"method": "ppo_none"},
    "ppo_lenvm": {"method": "ppo_lenvm", "grid": [0.0625, 0.125, 0.25, 0.5]},
}

# Fields that change what a run computes: results made under other values are not comparable.
_RUN_FIELDS = ("task", "policy", "dataset", "eval_dataset", "train_split", "eval_split", "prompt_column",
               "reward_funcs", "success_threshold",
               "warmup_hidden_size", "warmup_layers", "warmup_problems", "warmup_steps", "warmup_learning_rate",
               "critic", "critic_rollout_prompts", "critic_rollout_samples", "critic_steps", "critic_learning_rate",
               "critic_trainable_top_layers",
               "task_critic_steps", "task_critic_learning_rate",
               "train_prompts", "rl_steps", "rl_prompts_per_step", "rl_generations", "rl_learning_rate",
               "rl_temperature", "rl_beta", "max_completion_length", "eval_prompts", "eval_samples",
               "eval_temperature", "eval_greedy", "eval_guided", "budget_column", "data_seed",
               "tokenizer_name_or_path", "top_p",
               "use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "bf16", "use_vllm",
               "compact_generation")
# the LoRA options a study ignores without use_peft
_LORA_FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")


@dataclass
class StudyConfig:
    """Compare length methods fairly: every (method, coefficient, seed) with one RL budget and one evaluation."""

    output_dir: str = field(default="runs/study", metadata={"help": "Where runs, results.jsonl, report.md go."})
    task: str = field(
        default="checked_parity",
        metadata={"help": "The study task (registered name in lenvm_rl.study.tasks, e.g. checked_parity or "
                          "multi_parity, or module:Class) whose prompts, warm-up policy, reward and diagnostics "
                          "'builtin' stands for."},
    )
    policy: str = field(
        default=BUILTIN,
        metadata={"help": "Starting policy: a local directory (causal LM + tokenizer), or 'builtin' (a tiny Llama "
                          "warmed up with TRL's SFTTrainer on the task's warm-up data)."},
    )
    dataset: str = field(
        default=BUILTIN,
        metadata={"help": "Prompts: 'builtin' (the task's, generated) or a save_to_disk directory / json(l) / "
                          "parquet file with train and eval splits (a single file: its first eval_prompts rows are "
                          "held out)."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer (and chat template) of the policy; default: the policy's own."}
    )
    use_peft: bool = field(
        default=False, metadata={"help": "Train every RL run as a LoRA adapter on the policy (TRL's peft_config)."}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (use_peft)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (use_peft)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (use_peft)."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules LoRA adapts (use_peft); default: peft's choice for the architecture."}
    )
    bf16: bool = field(default=False, metadata={"help": "Train in bf16 (a GPU)."})
    use_vllm: bool = field(default=False, metadata={"help": "Generate RL rollouts with vLLM (where installed)."})
    compact_generation: bool = field(
        default=False,
        metadata={"help": "Decode RL completions and sampled evaluations with lenvm_rl.sampling.decode_compacted: a "
                          "completion leaves the batch when it ends instead of being computed until the longest one "
                          "does (the same distribution, another random stream). A run setting."})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in the RL backward pass (TRL's GRPOConfig default, to save GPU "
                          "memory; off here, since a study's policies are small and it costs a forward pass). "
                          "Not a run setting: it changes speed and memory, not the result."})
    eval_dataset: str | None = field(
        default=None,
        metadata={"help": "Held-out evaluation prompts in a file or directory of their own (its eval_split when it has "
                          "splits); default: the dataset's eval split, or a single file's first eval_prompts rows."},
    )
    train_split: str = field(default="train", metadata={"help": "Split of RL prompts."})
    eval_split: str = field(default="eval", metadata={"help": "Split of held-out evaluation prompts."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompts."})
    difficulty_column: str | None = field(
        default="difficulty", metadata={"help": "Optional column to break results down by (None: no breakdown)."}
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Task rewards as import paths module:function (or built-in names); the first one defines "
                          "correctness (accuracy and the LenVM gate). Default: the task's correctness reward."},
    )
    success_threshold: float = field(default=1.0, metadata={"help": "Correctness reward that counts as correct."})
    methods: dict | None = field(
        default=None,
        metadata={"help": "Variants to run: label → {method, grid, options}. Default: DEFAULT_METHODS, a compact "
                          "table (the reported studies use recipes/study/)."},
    )
    normalizations: list[str] | None = field(
        default_factory=lambda: ["group", "batch", "none"],
        metadata={"help": "TRL scale_rewards values every GRPO variant with a coefficient runs under: a variant whose "
                          "options do not fix scale_rewards becomes <label>/<normalization> for each (null: no "
                          "expansion)."},
    )
    only: list[str] | None = field(default=None, metadata={"help": "Run only these variant labels (and 'none')."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "RL and evaluation seeds."})
    data_seed: int = field(default=0, metadata={"help": "Seed of the built-in data, warm-up and critic."})
    warmup_hidden_size: int = field(default=128, metadata={"help": "Built-in policy: hidden size."})
    warmup_layers: int = field(default=4, metadata={"help": "Built-in policy: decoder layers."})
    warmup_problems: int = field(default=6000, metadata={"help": "Built-in policy: supervised examples."})
    warmup_steps: int = field(default=1200, metadata={"help": "Built-in policy: SFT steps (batch 32)."})
    warmup_learning_rate: float = field(default=2e-3, metadata={"help": "Built-in policy: SFT learning rate."})
    critic: str = field(
        default="train", metadata={"help": "'train' (rollouts of the starting policy → train-critic) or a critic dir."}
    )
    critic_rollout_prompts: int = field(default=512, metadata={"help": "Prompts rolled out for critic training."})
    critic_rollout_samples: int = field(default=8, metadata={"help": "Samples per rollout prompt."})
    critic_steps: int = field(default=600, metadata={"help": "Critic training steps (batch 32)."})
    critic_learning_rate: float = field(default=2e-3, metadata={"help": "Critic learning rate."})
    critic_trainable_top_layers: int | None = field(
        default=None,
        metadata={"help": "Train only the critic's top N decoder layers, final norm and value head (a real model: "
                          "the frozen layers need no backward pass); None: all of it."},
    )
    task_critic_steps: int = field(
        default=300, metadata={"help": "Steps of the task critic pretrained for PPO variants that ask for one."}
    )
    task_critic_learning_rate: float = field(default=1e-3, metadata={"help": "Its learning rate (batch 32)."})
    train_prompts: int = field(default=4096, metadata={"help": "Built-in dataset: RL prompts generated."})
    rl_steps: int = field(default=60, metadata={"help": "Optimizer steps of every RL run."})
    rl_prompts_per_step: int = field(default=8, metadata={"help": "Prompts per step (each sampled rl_generations×)."})
    rl_generations: int = field(default=4, metadata={"help": "Completions per prompt (GRPO group size)."})
    rl_learning_rate: float = field(default=5e-5, metadata={"help": "Policy learning rate of every RL run."})
    rl_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature during RL."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling top_p, in RL and in sampled evaluation."})
    rl_beta: float = field(default=0.0, metadata={"help": "KL coefficient of every RL run."})
    max_completion_length: int = field(default=64, metadata={"help": "Token limit (RL and evaluation)."})
    eval_prompts: int = field(default=400, metadata={"help": "Held-out prompts evaluated."})
    eval_samples: int = field(default=4, metadata={"help": "Samples per evaluation prompt."})
    eval_temperature: float = field(default=1.0, metadata={"help": "Evaluation sampling temperature."})
    eval_greedy: bool = field(default=True, metadata={"help": "Also evaluate greedy decoding (an extra column)."})
    budget_column: str | None = field(
        default=None,
        metadata={"help": "A dataset recipe's column holding each prompt's token budget N (the prompt renders it, "
                          "e.g. 'Answer within N tokens.'): budget methods, budget metrics and eval_guided read it. "
                          "Built-in budget tasks name their own; None: no budgets."})
    eval_guided: bool = field(
        default=False,
        metadata={"help": "On a budget task: also evaluate every policy, the starting one included, with value-guided "
                          "decoding under each prompt's budget (the at_most target, the study's LenVM critic); the "
                          "report's ', guided' rows."})
    bootstrap_samples: int = field(default=1000, metadata={"help": "Bootstrap replicates (prompts × seeds)."})
    headline_method: str = field(default="lenvm/group", metadata={"help": "Variant label of the token-level method."})
    comparator_method: str | None = field(
        default=None,
        metadata={"help": "Variant label of the pre-registered sequence-level comparator: the headline is "
                          "headline_method ÷ this variant. None: ÷ the best sequence-level variant of each bootstrap "
                          "replicate (a minimum over noisy variants, biased toward the baselines; exploratory only)."},
    )
    ablation_method: str = field(
        default="lenvm_seq/group", metadata={"help": "Variant label of its sequence ablation."}
    )
    preregistration: dict | None = field(
        default=None,
        metadata={"help": "The pre-registration this study confirms (written by `lenvm-rl preregister` from a sweep): "
                          "rule, sweep directory and seeds, chosen pair and grids. Its seeds may not be reused here."},
    )
    rerun_stale: bool = field(
        default=False,
        metadata={"help": "Rerun finished runs whose method, options or coefficient differ from the recipe's (default: "
                          "refuse, naming the field)."},
    )
    eval_at_steps: list[int] | None = field(
        default=None,
        metadata={"help": "Also evaluate every run (sampled, on the same prompts) after these optimizer steps, for "
                          "sample-efficiency curves; the random state is restored after each, so training is "
                          "unchanged. Not a run setting: runs made without them simply have no curve."},
    )
    accuracy_drops: list[float] = field(
        default_factory=lambda: [0.01, 0.02, 0.05],
        metadata={"help": "Matched accuracies: no-length-term accuracy minus these (the first is the headline)."},
    )
    threads: int = field(default=2, metadata={"help": "torch threads (set it; two jobs × all cores thrash)."})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when available), cpu or cuda."})
    report_only: bool = field(default=False, metadata={"help": "Write the report from finished runs; run nothing."})
    stop_by: str | None = field(
        default=None,
        metadata={"help": "Start no run expected to end after this time: a local ISO 8601 time (2026-12-03T16:05) "
                          "or +MINUTES from now (+150). A run is expected to take as long as the longest finished "
                          "run of its variant and coefficient, else of all (with none finished, it starts while the "
                          "time is not past). The shared stages always run. Runs left out stay pending for the next "
                          "invocation; the report is written as usual."})
    status: bool = field(
        default=False, metadata={"help": "Print where the study stands (each run finished, running in which process, "
                                         "or pending) and exit; runs nothing and writes nothing."})
    smoke: bool = field(
        default=False, metadata={"help": "Mark the report as a smoke test whose numbers mean nothing."}
    )
    command: str | None = field(default=None, metadata={"help": "The command line recorded in the report."})

    def __post_init__(self) -> None:
        from .methods import METHODS, check_method_options

        self.study_task()  # an unknown task is named before anything else
        if self.methods is None:
            self.methods = json.loads(json.dumps(DEFAULT_METHODS))
        if not isinstance(self.methods, dict) or not self.methods:
            raise ValueError("methods must be a mapping of variant label → {method, grid, options}; it is empty")
        for label, variant in self.methods.items():
            where = f"methods.{label}"
            if not isinstance(variant, dict) or "method" not in variant:
                raise ValueError(f"{where} must be a mapping with a 'method' key, got {variant!r}")
            unknown = sorted(set(variant) - {"method", "grid", "options"})
            if unknown:
                raise ValueError(f"{where}: unknown keys {unknown}; use method, grid and options")
            check_method_options(variant["method"], variant.get("options") or {}, where)
            spec = METHODS[variant["method"]]
            if spec.uses_coef:
                grid = variant.get("grid")
                if not isinstance(grid, list) or not grid:
                    raise ValueError(f"{where}: grid is empty; give the coefficients to run, e.g. [0.1, 0.2, 0.4]")
                if any(not isinstance(c, (int, float)) or not math.isfinite(c) for c in grid):
                    raise ValueError(f"{where}: grid must hold finite numbers, got {grid}")
                if any(c <= 0 for c in grid):
                    raise ValueError(f"{where}: grid {grid} holds coefficients ≤ 0; a negative coefficient makes a "
                                     "length method reward length (and 0 is the 'none' variant); every study "
                                     "coefficient must be > 0")
            elif variant.get("grid") not in (None, [0], [0.0]):
                raise ValueError(f"{where}: method {variant['method']!r} has no coefficient; drop its grid")
        from .methods import expand_normalizations, normalization_gaps

        self.methods = expand_normalizations(self.methods, self.normalizations)
        gaps = normalization_gaps(self.methods)
        if gaps:
            logger.warning("not every method runs under every normalization of this study (%s): their comparison "
                           "is not like for like", "; ".join(f"{m} lacks {', '.join(g)}" for m, g in gaps.items()))
        if "none" not in {v["method"] for v in self.methods.values()}:
            raise ValueError("methods must include a 'none' variant: every frontier starts at no length term")
        if self.only:
            missing = sorted(set(self.only) - set(self.methods))
            if missing:
                raise ValueError(f"only: {missing} are not variants of this study ({sorted(self.methods)})")
        if not self.seeds:
            raise ValueError("seeds is empty; give at least one seed")
        self._deadline = _parse_stop_by(self.stop_by)
        if self._deadline is not None and self._deadline <= time.time():
            logger.warning("stop_by %s is past: no run will start", self.stop_by)
        if self.comparator_method is not None and self.comparator_method not in self.methods:
            raise ValueError(f"comparator_method {self.comparator_method!r} is not a variant of this study "
                             f"({sorted(self.methods)})")
        if self.preregistration is not None:
            self._check_preregistration()
        if self.reward_funcs is None:
            if self.dataset != BUILTIN:
                raise ValueError(f"reward_funcs: name the correctness reward of dataset {self.dataset!r} (import "
                                 "path module:function); only the built-in task's dataset has a default")
            self.reward_funcs = [self.study_task().reward_func]
        if not self.reward_funcs:
            raise ValueError("reward_funcs is empty; the first reward function defines correctness")
        for name in ("rl_steps", "rl_prompts_per_step", "rl_generations", "eval_prompts", "eval_samples",
                     "max_completion_length", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        from ..data import resolve_device

        self.device = resolve_device(self.device).type
        if self.rl_generations < 2:
            raise ValueError("rl_generations must be ≥ 2: GRPO normalizes within groups of completions")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if not self.use_peft:
            defaults = {f.name: f.default for f in fields(StudyConfig)}
            ignored = [name for name in _LORA_FIELDS if getattr(self, name) != defaults[name]]
            if ignored:
                raise ValueError(f"{ignored} are LoRA options and use_peft is false: set use_peft: true or drop them")
        if self.eval_dataset is not None and self.dataset == BUILTIN:
            raise ValueError("eval_dataset holds the held-out prompts of a dataset of your own; the built-in task "
                             "generates its own (drop eval_dataset or set dataset)")
        if self.tokenizer_name_or_path is not None:
            from ..data import check_local_path

            check_local_path(self.tokenizer_name_or_path, "tokenizer_name_or_path", check_hub=False)
        task = self.builtin_task()
        if task is not None and self.budget_column is not None:
            raise ValueError(f"budget_column is for dataset recipes; the built-in task {self.task!r} names its own "
                             f"({task.budget_column!r})")
        budget_column = self.budget_column_name()
        if budget_column is None:
            from .methods import BUDGET_METHODS

            needing = sorted(label for label, variant in self.methods.items() if variant["method"] in BUDGET_METHODS)
            if needing:
                raise ValueError(f"methods {needing} read each prompt's token budget: use a budget task (e.g. task: "
                                 "checked_parity_budget) or name the dataset's budget column (budget_column)")
        if self.eval_guided and budget_column is None:
            raise ValueError(f"eval_guided decodes under each prompt's token budget: use a budget task (e.g. task: "
                             f"checked_parity_budget) or a dataset with a budget_column, not {self.task!r}")

    def _check_preregistration(self) -> None:
        record = self.preregistration or {}
        missing = sorted({"rule", "sweep_seeds", "token_level", "comparator"} - set(record))
        if missing:
            raise ValueError(f"preregistration lacks {missing}; write it with `lenvm-rl preregister`")
        reused = sorted(set(self.seeds) & set(record["sweep_seeds"]))
        if reused:
            raise ValueError(f"seeds {reused} were used by the sweep that chose this pair (preregistration."
                             "sweep_seeds); a confirmatory study needs seeds of its own")
        for role, field_name in (("token_level", "headline_method"), ("comparator", "comparator_method")):
            if getattr(self, field_name) != record[role]:
                raise ValueError(f"{field_name} is {getattr(self, field_name)!r} but the pre-registered {role} is "
                                 f"{record[role]!r}")

    def variants(self) -> list[tuple[str, str, float]]:
        """``(label, method, coefficient)`` of every run per seed, in run order."""
        from .methods import METHODS

        runs = []
        for label, variant in self.methods.items():
            if self.only and label not in self.only and variant["method"] != "none":
                continue
            grid = variant.get("grid") if METHODS[variant["method"]].uses_coef else [0.0]
            runs.extend((label, variant["method"], float(coef)) for coef in grid)
        return runs

    def study_task(self) -> StudyTask:
        """The :class:`~lenvm_rl.study.tasks.StudyTask` named by ``task``."""
        return get_task(self.task)

    def builtin_task(self) -> StudyTask | None:
        """The task whose prompts the study runs on (``dataset: builtin``), else ``None``."""
        return self.study_task() if self.dataset == BUILTIN else None

    def budget_column_name(self) -> str | None:
        """The column holding each prompt's token budget: the built-in task's, else ``budget_column``."""
        task = self.builtin_task()
        return self.budget_column if task is None else task.budget_column

    def fingerprint(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _RUN_FIELDS}


# ---------------------------------------------------------------------------------------------------- progress


class StageClock:
    """An outer progress bar over weighted stages (its ETA weighs each stage by its expected cost), with the wall
    time of every stage kept for the report. Inner bars (the Trainer's steps) show under it."""

    def __init__(self, stages: list[tuple[str, float]], done: set[str]):
        from tqdm.auto import tqdm

        self.weights = dict(stages)
        self.seconds: dict[str, float] = {}
        total = sum(self.weights.values())
        already = sum(w for name, w in stages if name in done)
        self.bar = tqdm(total=total, initial=already, desc="study", unit="run",
                        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} run-equivalents [{elapsed}<{remaining}] "
                                   "{postfix}", position=0)
        self.count, self.total_count = len(done), len(stages)

    def start(self, name: str) -> float:
        self.bar.set_postfix_str(f"stage {self.count + 1}/{self.total_count}: {name}")
        return time.time()

    def finish(self, name: str, started: float) -> None:
        self.seconds[name] = time.time() - started
        self.count += 1
        self.bar.update(self.weights.get(name, 0.0))

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------------------------------------------- data


def _load_splits(config: StudyConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, eval rows)."""
    task = config.builtin_task()
    if task is not None:
        seed = config.data_seed
        return task.rows(config.train_prompts, seed + 4), task.rows(config.eval_prompts, seed + 3)
    from datasets import DatasetDict, load_from_disk

    from ..data import load_prompt_dataset

    path = Path(config.dataset)
    if config.eval_dataset is not None:
        train = load_prompt_dataset(config.dataset, config.train_split, config.prompt_column)
        held_out = load_prompt_dataset(config.eval_dataset, config.eval_split, config.prompt_column)
        overlap = set(map(json.dumps, held_out[config.prompt_column])) & set(map(json.dumps,
                                                                                 train[config.prompt_column]))
        if overlap:
            raise ValueError(f"{config.eval_dataset}: {len(overlap)} evaluation prompts are also training prompts of "
                             f"{config.dataset} (e.g. {sorted(overlap)[0][:80]}); held-out prompts must be held out")
    elif path.is_dir() and (path / "dataset_dict.json").exists():
        splits = load_from_disk(str(path))
        assert isinstance(splits, DatasetDict)
        for name in (config.train_split, config.eval_split):
            if name not in splits:
                raise ValueError(f"{config.dataset}: no split {name!r}; have {sorted(splits)}")
        train = load_prompt_dataset(config.dataset, config.train_split, config.prompt_column)
        held_out = load_prompt_dataset(config.dataset, config.eval_split, config.prompt_column)
    else:
        rows = load_prompt_dataset(config.dataset, config.train_split, config.prompt_column)
        if len(rows) <= config.eval_prompts:
            raise ValueError(f"{config.dataset}: {len(rows)} rows cannot give {config.eval_prompts} held-out "
                             "evaluation prompts and a training set; lower eval_prompts or give an eval split")
        held_out, train = rows.select(range(config.eval_prompts)), rows.select(range(config.eval_prompts, len(rows)))
    if config.difficulty_column and config.difficulty_column not in held_out.column_names:
        raise ValueError(f"{config.dataset}: difficulty_column {config.difficulty_column!r} not found; columns: "
                         f"{held_out.column_names} (set difficulty_column: null for no breakdown)")
    if config.budget_column is not None:
        held_out_file = config.eval_dataset or config.dataset
        for name, split, source in (("training", train, config.dataset), ("evaluation", held_out, held_out_file)):
            if config.budget_column not in split.column_names:
                raise ValueError(f"{source}: budget_column {config.budget_column!r} not in the {name} rows; columns: "
                                 f"{split.column_names}")
            bad = next((value for value in split[config.budget_column]
                        if not isinstance(value, int) or isinstance(value, bool) or value < 1), None)
            if bad is not None:
                raise ValueError(f"{source}: budget_column {config.budget_column!r} holds {bad!r} in the {name} rows; "
                                 "every budget must be a whole number of tokens ≥ 1")
    return train.to_list(), held_out.select(range(min(config.eval_prompts, len(held_out)))).to_list()


# ---------------------------------------------------------------------------------------------------- stages


def _warm_up(config: StudyConfig, out: Path) -> Path:
    """The built-in starting policy: a tiny Llama fitted with TRL's SFTTrainer on the task's warm-up completions
    (:meth:`~lenvm_rl.study.tasks.StudyTask.warmup_rows`, written at the task's prompt-dependent rates)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from ..tiny import save_tiny_causal_lm

    policy = out / "policy"
    if (policy / "config.json").exists():
        return policy
    task = config.study_task()
    rows = task.warmup_rows(config.warmup_problems, seed=config.data_seed + 1)
    initial = save_tiny_causal_lm(out / "policy-init", "llama", seed=config.data_seed,
                                  hidden_size=config.warmup_hidden_size, num_layers=config.warmup_layers)
    args = SFTConfig(output_dir=str(out / "sft"), max_steps=config.warmup_steps, per_device_train_batch_size=32,
                     learning_rate=config.warmup_learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05,
                     weight_decay=0.0, use_cpu=config.device == "cpu", bf16=False, report_to="none",
                     logging_steps=max(1, config.warmup_steps // 10), save_strategy="no", seed=config.data_seed,
                     max_length=task.warmup_max_length)
    trainer = SFTTrainer(model=str(initial), args=args, train_dataset=Dataset.from_list(rows))
    trainer.train()
    trainer.save_model(str(out / "policy.tmp"))
    os.replace(out / "policy.tmp", policy)
    shutil.rmtree(out / "sft", ignore_errors=True)
    shutil.rmtree(initial, ignore_errors=True)
    return policy


def _weights_digest(model_dir: Path) -> str:
    """SHA-256 (16 hex digits) of a saved model's safetensors files, in name order."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")):
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _checked_critic_digest(critic: Path, recorded_in: Path) -> str:
    """The critic's weights digest; says so when it differs from the one recorded in ``recorded_in`` (a critic
    rebuilt from a fresh clone, where only the study's small files were kept, is compared with the one the finished
    runs used: rollouts and training are seeded, so on the same software they match)."""
    digest = _weights_digest(critic)
    recorded = json.loads(recorded_in.read_text()).get("weights_sha256") if recorded_in.exists() else None
    if recorded is not None and recorded != digest:
        _say(f"warning: the critic in {critic} (weights {digest}) is not the one {recorded_in} records ({recorded}): "
             "finished runs used that one; runs from now on use this one")
    return digest


def _train_critic(config: StudyConfig, policy: Path, train_rows: list[dict[str, Any]], out: Path) -> tuple[str, dict]:
    """Rollouts of the starting policy → a LenVM critic (γ auto) → its held-out metrics (``lenvm-rl fit-critic``
    on a sample of the training prompts)."""
    from ..scripts.fit_critic import FitCriticArguments, fit_critic

    critic, metrics_file = out / "critic", out / "critic-eval" / "metrics.json"
    if (critic / "config.json").exists() and metrics_file.exists():
        return str(critic), json.loads(metrics_file.read_text())
    prompts_file = out / "data" / "critic_prompts.jsonl"
    rng = random.Random(config.data_seed + 2)
    rows = rng.sample(train_rows, min(config.critic_rollout_prompts, len(train_rows)))
    write_text_atomically(prompts_file, "".join(json.dumps(row) + "\n" for row in rows))
    return fit_critic(FitCriticArguments(
        policy=str(policy), dataset=str(prompts_file), output_dir=str(out), prompt_column=config.prompt_column,
        num_samples=config.critic_rollout_samples, max_new_tokens=config.max_completion_length, eval_fraction=0.25,
        temperature=config.rl_temperature, top_p=config.top_p, prompts_per_batch=64, max_steps=config.critic_steps,
        batch_size=32, learning_rate=config.critic_learning_rate,
        trainable_top_layers=config.critic_trainable_top_layers, seed=config.data_seed, device=config.device),
        training_overrides={"logging_steps": max(1, config.critic_steps // 5)}, eval_dir="critic-eval")


def _pretrain_task_critic(config: StudyConfig, policy: Path, out: Path) -> dict[str, float]:
    """The task critic PPO variants ask for (``task_critic_model_name_or_path: pretrained``) and the task-credit
    variants read: the starting policy's backbone with a new head, fitted to the correctness of the critic's
    rollouts of the starting policy (``lenvm-rl fit-task-critic``), as the LenVM critic is fitted to their lengths."""
    from ..scripts.fit_task_critic import FitTaskCriticArguments, fit_task_critic

    if not (out / "rollouts").exists():
        raise ValueError("a pretrained task critic is fitted to the study's rollouts of the starting policy; they "
                         "exist only with critic: train")
    return fit_task_critic(FitTaskCriticArguments(
        policy=str(policy), rollouts=str(out / "rollouts"), dataset=str(out / "data" / "critic_prompts.jsonl"),
        output_dir=str(out / "task-critic"), reward_funcs=config.reward_funcs[:1], prompt_column=config.prompt_column,
        max_steps=config.task_critic_steps, learning_rate=config.task_critic_learning_rate, seed=config.data_seed,
        device=config.device))


def _evaluate(config: StudyConfig, model: Any, tokenizer: Any, rows: list[dict[str, Any]],
              correctness: Callable[..., Any], seed: int, critic: str | None = None) -> dict[str, list[float]]:
    from .evaluate import evaluate_policy

    task = config.builtin_task()
    structure = task.structure if task is not None and task.segments else None
    common = {"max_new_tokens": config.max_completion_length, "prompt_column": config.prompt_column,
              "threshold": config.success_threshold, "structure": structure,
              "budget_column": config.budget_column_name(), "compact": config.compact_generation}
    sampled = evaluate_policy(model, tokenizer, rows, correctness, num_samples=config.eval_samples,
                              temperature=config.eval_temperature, seed=seed, top_p=config.top_p, **common)
    result = {key: value.tolist() for key, value in sampled.items()}
    if config.eval_greedy:
        greedy = evaluate_policy(model, tokenizer, rows, correctness, num_samples=1, temperature=0.0, seed=seed,
                                 **common)
        result.update({f"greedy_{key}": value.tolist() for key, value in greedy.items()})
    if config.eval_guided:
        from ..modeling import LengthValueModel

        guide = LengthValueModel.from_pretrained(critic).to(config.device)
        guided = evaluate_policy(model, tokenizer, rows, correctness, num_samples=config.eval_samples,
                                 temperature=config.eval_temperature, seed=seed, critic=guide, top_p=config.top_p,
                                 **common)
        result.update({f"guided_{key}": value.tolist() for key, value in guided.items()})
    return result


def _tokenizer_path(config: StudyConfig, policy: Path) -> str:
    return config.tokenizer_name_or_path or str(policy)


def _peft_config(config: StudyConfig) -> Any:
    """TRL's ``get_peft_config`` of the study's LoRA fields (None without ``use_peft``)."""
    if not config.use_peft:
        return None
    from trl import ModelConfig, get_peft_config

    return get_peft_config(ModelConfig(use_peft=True, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
                                       lora_dropout=config.lora_dropout,
                                       lora_target_modules=config.lora_target_modules))


def inner_eval_steps(eval_at_steps: list[int] | None, rl_steps: int) -> list[int]:
    """The steps of ``eval_at_steps`` evaluated during training (a run's final evaluation is its own)."""
    return [step for step in eval_at_steps or [] if 0 < step < rl_steps]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # the library's own logger is silenced during a study


def _run_dir(out: Path, label: str, coef: float, seed: int) -> Path:
    safe = label.replace("/", "-")
    return out / "runs" / safe / f"coef={coef:g}" / f"seed={seed}"


def _rl_run(config: StudyConfig, label: str, method: str, coef: float, seed: int, policy: Path, critic: str | None,
            train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]], task_rewards: list[Callable[..., Any]],
            out: Path) -> dict[str, Any]:
    from datasets import Dataset

    from .evaluate import EvaluateAtSteps
    from .methods import plan_run, reads_pretrained_task_critic

    variant = config.methods[label]
    options = dict(variant.get("options") or {})
    if reads_pretrained_task_critic(variant):
        options["task_critic_model_name_or_path"] = str(out / "task-critic")
    budget_column = config.budget_column_name()
    plan = plan_run(method, coef, task_rewards, config.max_completion_length, critic, options,
                    success_threshold=config.success_threshold, budget_column=budget_column)
    run_dir = _run_dir(out, label, coef, seed)
    args = plan.config_class(
        output_dir=str(run_dir / "trainer"), max_steps=config.rl_steps,
        per_device_train_batch_size=config.rl_prompts_per_step * config.rl_generations,
        num_generations=config.rl_generations, max_completion_length=config.max_completion_length,
        temperature=config.rl_temperature, top_p=config.top_p, learning_rate=config.rl_learning_rate,
        beta=config.rl_beta, use_cpu=config.device == "cpu", bf16=config.bf16, use_vllm=config.use_vllm,
        compact_generation=config.compact_generation, gradient_checkpointing=config.gradient_checkpointing,
        report_to="none", logging_steps=max(1, config.rl_steps // 10), save_strategy="no", seed=seed,
        disable_tqdm=False,  # the step bar under the study bar (quiet transformers logging would turn it off)
        **plan.overrides)
    started = time.time()
    from transformers import AutoTokenizer

    trainer = plan.trainer_class(model=str(policy), reward_funcs=plan.reward_funcs, args=args,
                                 train_dataset=Dataset.from_list(train_rows),
                                 processing_class=AutoTokenizer.from_pretrained(_tokenizer_path(config, policy)),
                                 peft_config=_peft_config(config))
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    logger.info("%s coef=%g seed=%d: %d of %d parameters trainable (%.2f%%)", label, coef, seed, trainable, total,
                100 * trainable / total)
    curve = EvaluateAtSteps(
        inner_eval_steps(config.eval_at_steps, config.rl_steps), eval_rows, task_rewards[0],
        num_samples=config.eval_samples, temperature=config.eval_temperature, seed=seed,
        max_new_tokens=config.max_completion_length, prompt_column=config.prompt_column,
        threshold=config.success_threshold, budget_column=budget_column, top_p=config.top_p,
        compact=config.compact_generation)
    trainer.add_callback(curve)
    trainer.train()
    train_seconds = time.time() - started - curve.seconds
    evaluation = _evaluate(config, trainer.model, trainer.processing_class, eval_rows, task_rewards[0], seed, critic)
    log = [{key: float(value) for key, value in entry.items() if isinstance(value, (int, float))}
           for entry in trainer.state.log_history]
    del trainer
    gc.collect()
    shutil.rmtree(run_dir / "trainer", ignore_errors=True)
    return {"label": label, "method": method, "coef": coef, "seed": seed, "train_seconds": train_seconds,
            "trainable_parameters": trainable, "parameters": total,
            "seconds": time.time() - started, "eval": evaluation, "eval_at_steps": curve.results, "train_log": log}


def _write_json(path: Path, payload: Any) -> None:
    write_text_atomically(path, json.dumps(payload, indent=1) + "\n")


def _check_settings(config: StudyConfig, out: Path) -> None:
    """Refuse an output directory whose finished runs were made under other run settings."""
    saved = out / CONFIG_FILE
    if not saved.exists():
        return
    previous = json.loads(saved.read_text()).get("fingerprint", {})
    current = json.loads(json.dumps(config.fingerprint()))
    defaults = {f.name: f.default for f in fields(StudyConfig)}
    # a run setting added after the directory was made counts as unchanged while it keeps its default
    differ = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k)
                    and not (k not in previous and current.get(k) == defaults.get(k)))
    if differ:
        details = ", ".join(f"{k}: {previous.get(k)!r} → {current.get(k)!r}" for k in differ)
        raise ValueError(f"{out} holds runs made with other settings ({details}); use another output_dir or remove "
                         "it (methods, seeds and report settings may change between reruns, run settings not)")


def _finished_runs(config: StudyConfig, out: Path, runs: list[tuple[str, str, float, int]]
                   ) -> set[tuple[str, str, float, int]]:
    """The runs of ``runs`` whose result exists and was made as the recipe asks (method, options, coefficient).

    A result made under another method or options with the same label is refused, naming the field, unless
    ``rerun_stale`` is set (then it is deleted and run again)."""
    from .methods import run_fingerprint

    finished = set()
    for run in runs:
        path = _run_dir(out, run[0], run[2], run[3]) / RESULT_FILE
        if not path.exists():
            continue
        saved = json.loads(path.read_text()).get("run")
        wanted = json.loads(json.dumps(run_fingerprint(config.methods[run[0]], run[2])))
        if saved != wanted:
            differ = sorted(k for k in set(wanted) | set(saved or {}) if (saved or {}).get(k) != wanted.get(k))
            if not config.rerun_stale:
                details = ("it records no method/options (made before runs were fingerprinted)" if saved is None
                           else ", ".join(f"{k}: {saved.get(k)!r} → {wanted.get(k)!r}" for k in differ))
                raise ValueError(f"{path}: the finished run of variant {run[0]!r} was made differently from what the "
                                 f"recipe asks ({details}); give the variant a new label, remove the run, or set "
                                 "rerun_stale: true")
            logger.warning("%s was made with other %s; running it again", path.parent, differ)
            path.unlink()
            continue
        finished.add(run)
    return finished


def load_results(out: Path) -> list[dict[str, Any]]:
    """Every finished run under ``out/runs`` (one ``result.json`` each)."""
    return [json.loads(path.read_text()) for path in sorted((out / "runs").rglob(RESULT_FILE))]


def _parse_stop_by(stop_by: str | None, now: float | None = None) -> float | None:
    """``stop_by`` as seconds since the epoch: ``+MINUTES`` counts from ``now``, anything else is a local ISO 8601
    time."""
    if stop_by is None:
        return None
    now = time.time() if now is None else now
    text = stop_by.strip()
    if text.startswith("+"):
        try:
            minutes = float(text[1:])
        except ValueError:
            minutes = float("nan")
        if not math.isfinite(minutes) or minutes < 0:
            raise ValueError(f"stop_by: {stop_by!r} is not +MINUTES (a number ≥ 0 of minutes from now, e.g. +150)")
        return now + 60 * minutes
    from datetime import datetime

    try:  # Python 3.10's fromisoformat does not read a trailing Z
        return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text).timestamp()
    except ValueError:
        raise ValueError(f"stop_by: {stop_by!r} is neither a local ISO 8601 time (e.g. 2026-12-03T16:05) nor "
                         "+MINUTES from now") from None


def _expected_seconds(results: list[dict[str, Any]], label: str, coef: float, longest: bool = False
                      ) -> float | None:
    """What a run of (``label``, ``coef``) is expected to take: the mean (or, with ``longest``, the longest) of the
    finished runs of that variant and coefficient, else of all finished runs; None when none has finished."""
    timed = [r for r in results if r.get("seconds") is not None]
    same = [r["seconds"] for r in timed if r.get("label") == label and float(r.get("coef", "nan")) == float(coef)]
    pool = same or [r["seconds"] for r in timed]
    if not pool:
        return None
    return float(max(pool) if longest else np.mean(pool))


def _policy_dir(config: StudyConfig, out: Path) -> Path:
    return out / "policy" if config.policy == BUILTIN else Path(config.policy)


def _independent_runs(config: StudyConfig, out: Path, runs: list[tuple[str, str, float, int]]
                      ) -> list[tuple[str, str, float, int]]:
    """The pending runs of ``runs`` that need no shared stage still to come: no critic, no pretrained task critic,
    no guided evaluation, and a starting policy already on disk. Only when the settings the shared stages' holder
    recorded are the recipe's (it records them first); otherwise none."""
    from .methods import METHODS, reads_pretrained_task_critic

    policy_ready = (_policy_dir(config, out) / "config.json").exists()
    if config.eval_guided or not (out / CONFIG_FILE).exists() or not policy_ready:
        return []
    _check_settings(config, out)
    finished = _finished_runs(config, out, runs)  # a stale result is refused now, not after the runs meanwhile
    return [run for run in runs if not METHODS[run[1]].uses_critic
            and not reads_pretrained_task_critic(config.methods[run[0]]) and run not in finished
            and not (_run_dir(out, run[0], run[2], run[3]) / RESULT_FILE).exists()]


def run_study(config: StudyConfig) -> dict[str, Any]:
    """Run every missing (variant, coefficient, seed) of ``config``, then write the report. Returns the report's
    numbers (also in ``report.json``)."""
    import torch

    from ..rewards import resolve_reward_functions
    from .report import write_report

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(config, out)
    task_rewards = resolve_reward_functions(config.reward_funcs)
    if config.report_only:
        _write_json(out / CONFIG_FILE, {"config": asdict(config), "fingerprint": config.fingerprint()})
        return write_report(config, out, load_results(out), stage_seconds={})
    # the data is checked before the settings are recorded: a rejected column must not pin a bad fingerprint
    train_rows, eval_rows = _load_splits(config)
    torch.set_num_threads(config.threads)
    for noisy in ("transformers", "trl", "datasets", "accelerate", "lenvm_rl"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    runs = [(label, method, coef, seed) for seed in config.seeds for label, method, coef in config.variants()]
    run_names = {run: f"{run[0]} {run[2]:g} seed {run[3]}" for run in runs}
    from .methods import METHODS, reads_pretrained_task_critic, run_fingerprint

    critic_digests: dict[str, str] = {}

    def _run_each(selected: list[tuple[str, str, float, int]], finished: set[tuple[str, str, float, int]],
                  clock: StageClock, policy: Path, critic: str | None) -> int:
        """Every run of ``selected`` that is not finished, that no other process holds and (under ``stop_by``)
        that is expected to end in time, one claim each. Returns how many it left for ``stop_by``."""
        left_for_later = 0
        for run in selected:
            label, method, coef, seed = run
            run_dir = _run_dir(out, label, coef, seed)
            # another process on the same directory may have finished it meanwhile, or be running it now
            if run in finished or (run_dir / RESULT_FILE).exists():
                continue
            if config._deadline is not None and holder(run_dir / RUN_CLAIM) is None:
                # the longest finished run of its kind: a mean would let about half the runs started late overrun
                expected = _expected_seconds(load_results(out), label, coef, longest=True)
                if time.time() + (expected or 0.0) >= config._deadline:
                    clock.bar.write(f"{run_names[run]}: not started, stop_by ({config.stop_by}) is "
                                    f"{max(0.0, config._deadline - time.time()) / 60:.0f} min away"
                                    + (f" and it may take {expected / 60:.0f} min" if expected else "")
                                    + "; it stays pending")
                    left_for_later += 1
                    continue
            if not claim(run_dir / RUN_CLAIM):
                clock.bar.write(f"{run_names[run]}: skipped, {describe(holder(run_dir / RUN_CLAIM))} runs it "
                                f"({run_dir / RUN_CLAIM}; delete that file if the process is gone)")
                continue
            try:
                if (run_dir / RESULT_FILE).exists():  # finished between the look and the claim
                    continue
                name = run_names[run]
                started = clock.start(name)
                result = _rl_run(config, label, method, coef, seed, policy, critic, train_rows, eval_rows,
                                 task_rewards, out)
                result["fingerprint"] = hashlib.sha256(json.dumps(config.fingerprint(), sort_keys=True).encode()
                                                       ).hexdigest()[:16]
                result["run"] = run_fingerprint(config.methods[label], coef)
                # which critic the run read, so runs made with a critic rebuilt elsewhere (float-level differences
                # on another CPU) can be told apart
                reads_critic = critic is not None and (METHODS[method].uses_critic or config.eval_guided)
                if reads_critic and critic not in critic_digests:
                    critic_digests[critic] = _weights_digest(Path(critic))
                result["critic_weights_sha256"] = critic_digests[critic] if reads_critic else None
                _write_json(run_dir / RESULT_FILE, result)
                clock.finish(name, started)
                _write_results_jsonl(config, out)
            finally:
                release(run_dir / RUN_CLAIM)
        return left_for_later

    # another process on this directory may be running the shared stages: meanwhile, run what needs none of them
    # (no critic, no task critic, a policy that exists), then wait, check the settings against what it recorded and
    # see what it left done
    meanwhile_seconds: dict[str, float] = {}
    if not claim(out / SETUP_CLAIM):
        independent = _independent_runs(config, out, runs)
        if independent:
            _say(f"shared stages: {describe(holder(out / SETUP_CLAIM))} holds {out / SETUP_CLAIM}; meanwhile running "
                 f"the {len(independent)} pending run(s) that need none of them")
            clock = StageClock([(run_names[run], 1.0) for run in independent], set())
            try:
                _run_each(independent, set(), clock, _policy_dir(config, out), None)
            finally:
                clock.close()
                meanwhile_seconds = clock.seconds
        acquire(out / SETUP_CLAIM, "shared stages", _say)
    try:
        _check_settings(config, out)
        _write_json(out / CONFIG_FILE, {"config": asdict(config), "fingerprint": config.fingerprint()})
        finished = _finished_runs(config, out, runs)
        weight = {run: (1.6 if METHODS[run[1]].trainer == "ppo" else 1.0) for run in runs}
        stages = [("warm-up", 0.0 if config.policy != BUILTIN else config.warmup_steps / 150),
                  ("task critic", config.task_critic_steps / 300),
                  ("critic", 0.0 if config.critic != "train" else 1.0 + config.critic_steps / 400),
                  ("starting policy", 0.3)] + [(run_names[run], weight[run]) for run in runs]
        done = {run_names[run] for run in finished}
        if (out / "policy" / "config.json").exists() or config.policy != BUILTIN:
            done.add("warm-up")
        if (out / "critic-eval" / "metrics.json").exists() or config.critic != "train":
            done.add("critic")
        if (out / "start.json").exists():
            done.add("starting policy")
        needs_task_critic = not (out / "task-critic" / "config.json").exists() and any(
            reads_pretrained_task_critic(config.methods[run[0]]) for run in runs)
        if not needs_task_critic:
            done.add("task critic")
        clock = StageClock(stages, done)
        clock.seconds.update(meanwhile_seconds)
    except BaseException:  # a refused rerun must not leave the shared stages claimed
        release(out / SETUP_CLAIM)
        raise
    try:
        started = clock.start("warm-up")
        policy = _warm_up(config, out) if config.policy == BUILTIN else _policy_dir(config, out)
        if config.policy != BUILTIN and not (policy / "config.json").exists():
            raise FileNotFoundError(f"policy {policy} does not exist (expected a directory with config.json)")
        if "warm-up" not in done:
            clock.finish("warm-up", started)

        needs_critic = any(METHODS[run[1]].uses_critic for run in runs) or config.eval_guided
        critic, critic_metrics = None, None
        if needs_critic or config.critic == "train":
            started = clock.start("critic")
            if config.critic == "train":
                critic, critic_metrics = _train_critic(config, policy, train_rows, out)
            else:
                critic = config.critic
            if "critic" not in done:
                clock.finish("critic", started)
            if critic_metrics is not None:
                task = config.builtin_task()
                if task is not None and "decisions" not in critic_metrics:
                    critic_metrics["decisions"] = _critic_at_decisions(task, critic, out / "rollouts")
                critic_metrics["weights_sha256"] = _checked_critic_digest(Path(critic), out / "critic_metrics.json")
                critic_digests[critic] = critic_metrics["weights_sha256"]  # what each run records: hashed once
                _write_json(out / "critic_metrics.json", critic_metrics)

        if needs_task_critic:
            started = clock.start("task critic")
            _write_json(out / "task_critic_metrics.json", _pretrain_task_critic(config, policy, out))
            clock.finish("task critic", started)

        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(_tokenizer_path(config, policy))
        if not (out / "start.json").exists():
            started = clock.start("starting policy")
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(policy).to(config.device)
            start = _evaluate(config, model, tokenizer, eval_rows, task_rewards[0], config.data_seed, critic)
            forced = _forced_decisions(config, model, tokenizer, eval_rows)
            if forced is not None:
                start["forced"] = forced
            _write_json(out / "start.json", start)
            clock.finish("starting policy", started)
            del model
        if not (out / "eval_prompts.json").exists():
            _write_json(out / "eval_prompts.json", _prompt_table(config, eval_rows, tokenizer))
        release(out / SETUP_CLAIM)

        left_for_later = _run_each(runs, finished, clock, policy, critic)
        if left_for_later:
            _say(f"stop_by {config.stop_by}: {left_for_later} run(s) not started; rerun the command to run them")
    finally:
        release(out / SETUP_CLAIM)
        clock.close()
    # under the shared claim, from the results as they are now: a process that finishes later reads more of them, so
    # the report on disk never goes back to fewer runs
    with held(out / SETUP_CLAIM, "report", _say):
        return write_report(config, out, load_results(out), stage_seconds=clock.seconds)


def _prompt_table(config: StudyConfig, rows: list[dict[str, Any]], tokenizer: Any) -> dict[str, Any]:
    """Per evaluation prompt: its difficulty (when the dataset has one) and, for a built-in task, the exact token
    length of its ideal completion (EOS counted), with the task's segment and ideal-row descriptions."""
    table: dict[str, Any] = {}
    if config.difficulty_column:
        table["difficulty"] = [row[config.difficulty_column] for row in rows]
    task = config.builtin_task()
    budget_column = config.budget_column_name()
    if budget_column is not None:
        table["budget"] = [row[budget_column] for row in rows]
    if task is not None:
        ideal = [task.ideal_completion(row) for row in rows]
        if all(text is not None for text in ideal):
            table["ideal_tokens"] = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
                                     for text in ideal]
            table["ideal_note"] = task.ideal_note
            table["ideal_structure"] = task.ideal_structure()
        table["segments"] = dict(task.segments)
    return table


def _forced_decisions(config: StudyConfig, model: Any, tokenizer: Any, rows: list[dict[str, Any]]
                      ) -> dict[str, Any] | None:
    """The task's forced-decision diagnostic of the starting policy (where reasoning pays), evaluated with the
    study's sampling settings."""
    from .evaluate import evaluate_policy

    task = config.builtin_task()
    if task is None:
        return None
    common = {"num_samples": config.eval_samples, "temperature": config.eval_temperature,
              "max_new_tokens": config.max_completion_length, "seed": config.data_seed,
              "prompt_column": config.prompt_column, "threshold": config.success_threshold}

    def evaluate(prefix: Callable[[dict[str, Any]], str], correctness: Callable[..., Any]) -> dict[str, Any]:
        return evaluate_policy(model, tokenizer, rows, correctness, prefix=prefix, **common)

    return task.forced_decisions(evaluate, rows)


def _critic_at_decisions(task: StudyTask, critic_path: str, rollouts: Path) -> dict[str, dict[str, float]]:
    """The critic's error where the task decides its length (:meth:`~lenvm_rl.study.tasks.StudyTask.decision_states`),
    on held-out rollouts of the starting policy, compared with the warm-up policy's own expected remaining length
    there (:meth:`~lenvm_rl.study.tasks.StudyTask.expected_remaining`, value space), which an oracle critic of the
    starting policy would predict. States the task cannot compute are skipped."""
    import torch
    from transformers import AutoTokenizer

    from ..data import pad_prompt_completion_batch
    from ..length_math import value_to_length
    from ..modeling import LengthValueModel
    from ..rollout import load_rollouts

    critic = LengthValueModel.from_pretrained(critic_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(critic_path)
    gamma = critic.gamma
    splits, _ = load_rollouts(rollouts)
    rows = [row for row in splits["eval" if "eval" in splits else "train"] if row["terminated"]]

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    errors: dict[str, list[tuple[float, float]]] = {}
    for start in range(0, len(rows), 64):
        chunk = rows[start:start + 64]
        tensors = pad_prompt_completion_batch(chunk, tokenizer.pad_token_id)
        with torch.no_grad():
            values = critic.values_for_completions(*tensors).double()
        for index, row in enumerate(chunk):
            prompt = tokenizer.decode(row["prompt_ids"], skip_special_tokens=True)
            text = tokenizer.decode(row["completion_ids"], skip_special_tokens=True)
            for name, prefix in task.decision_states(prompt, text):
                oracle = task.expected_remaining(prompt, prefix, count, gamma)
                column = count(prefix)
                if oracle is None or column > len(row["completion_ids"]):
                    continue
                predicted = float(value_to_length(values[index, column], gamma))
                errors.setdefault(name, []).append((predicted, oracle))
    summary = {}
    for name, pairs in errors.items():
        predicted, oracle = (np.asarray(v) for v in zip(*pairs, strict=True))
        summary[name] = {"states": len(pairs), "predicted": float(predicted.mean()), "oracle": float(oracle.mean()),
                         "relative_error": float(np.mean(np.abs(predicted - oracle) / np.maximum(oracle, 1.0)))}
    return summary


def _write_results_jsonl(config: StudyConfig, out: Path) -> None:
    """One summary line per finished run (method, coef, seed, accuracy, mean tokens, greedy, by difficulty)."""
    table_path = out / "eval_prompts.json"
    prompt_table = json.loads(table_path.read_text()) if table_path.exists() else {}
    difficulty = prompt_table.get("difficulty")
    segments = prompt_table.get("segments", {"trace": "", "check": ""})
    lines = []
    for result in load_results(out):
        evaluation = result["eval"]
        row = {"variant": result["label"], "method": result["method"], "coef": result["coef"],
               "seed": result["seed"], "accuracy": float(np.mean(evaluation["correct"])),
               "mean_tokens": float(np.mean(evaluation["tokens"])), "seconds": round(result["seconds"], 1)}
        if "greedy_correct" in evaluation:
            row["greedy_accuracy"] = float(np.mean(evaluation["greedy_correct"]))
            row["greedy_mean_tokens"] = float(np.mean(evaluation["greedy_tokens"]))
        for key in segments:
            rates = np.asarray(evaluation.get(key, []), dtype=np.float64)
            if np.isfinite(rates).any():  # a segment no prompt can hold (no short string, say) has no rate
                row[f"{key}_rate"] = float(np.nanmean(rates))
        budgets = prompt_table.get("budget")
        if budgets and "within_budget" in evaluation:
            row["within_budget"] = float(np.mean(evaluation["within_budget"]))
            row["budget_error"] = float(np.mean(evaluation["budget_error"]))
            row["truncated_accuracy"] = float(np.mean(evaluation["truncated_correct"]))
            row["by_budget"] = {str(budget): {key: float(np.mean([evaluation[key][i] for i, b in enumerate(budgets)
                                                                   if b == budget]))
                                              for key in ("correct", "tokens", "within_budget", "budget_error")}
                                for budget in sorted(set(budgets))}
        if difficulty:
            by = {}
            for level in sorted(set(difficulty)):
                index = [i for i, d in enumerate(difficulty) if d == level]
                by[str(level)] = {"accuracy": float(np.mean([evaluation["correct"][i] for i in index])),
                                  "mean_tokens": float(np.mean([evaluation["tokens"][i] for i in index]))}
            row["by_difficulty"] = by
        lines.append(json.dumps(row))
    write_text_atomically(out / "results.jsonl", "\n".join(lines) + ("\n" if lines else ""))


def study_status(config: StudyConfig) -> list[dict[str, Any]]:
    """Each run of ``config`` (in run order) as ``{"run", "state", "minutes", "owner", "expected_minutes"}``:
    ``finished`` (with its RL and evaluation minutes), ``running`` (the live process holding its claim, and for how
    long) or ``pending``, the unfinished ones with the minutes the finished runs predict (:func:`_expected_seconds`;
    None before any finished); first a ``shared stages`` row (``done`` once the starting policy is evaluated). Reads
    the output directory only."""
    from .claims import _mine

    out = Path(config.output_dir)
    results = load_results(out) if (out / "runs").exists() else []
    finished = {(r["label"], float(r["coef"]), r["seed"]): r for r in results}
    rows = []
    owner = holder(out / SETUP_CLAIM)
    rows.append({"run": "shared stages", "owner": owner, "minutes": None, "expected_minutes": None,
                 "state": "done" if (out / "eval_prompts.json").exists() else "running" if owner else "pending"})
    for seed in config.seeds:
        for label, _, coef in config.variants():
            run_dir = _run_dir(out, label, coef, seed)
            name = f"{label} {coef:g} seed {seed}"
            if (label, float(coef), seed) in finished:
                seconds = finished[(label, float(coef), seed)].get("seconds")
                rows.append({"run": name, "state": "finished", "owner": None, "expected_minutes": None,
                             "minutes": seconds / 60 if seconds is not None else None})
                continue
            expected = _expected_seconds(results, label, coef)
            owner = holder(run_dir / RUN_CLAIM)
            state = "pending" if owner is None else "running" if _mine(owner) else "running?"
            if owner is None and (run_dir / RUN_CLAIM).exists():
                state = "pending (stale claim: its process is gone)"
            rows.append({"run": name, "state": state, "owner": owner,
                         "minutes": (time.time() - owner["since"]) / 60 if owner and "since" in owner else None,
                         "expected_minutes": expected / 60 if expected is not None else None})
    return rows


def print_status(config: StudyConfig) -> None:
    """Print :func:`study_status` as a table and a count per state."""
    rows = study_status(config)
    width = max(len(row["run"]) for row in rows)
    print(f"{'run':<{width}}  {'state':<8}  process, minutes ('running?': claimed on another machine, not checked)")
    for row in rows:
        detail = ""
        if row["owner"]:
            detail = f"pid {row['owner'].get('pid')} on {row['owner'].get('host')}"
        if row["minutes"] is not None:
            detail += f"{', ' if detail else ''}{row['minutes']:.1f} min"
        print(f"{row['run']:<{width}}  {row['state']:<8}  {detail}".rstrip())
    runs = rows[1:]
    counts = {state: sum(row["state"].startswith(state) for row in runs) for state in ("finished", "running",
                                                                                     "pending")}
    print(f"{len(runs)} runs: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
    left = [row for row in runs if row["state"] != "finished"]
    if left and all(row["expected_minutes"] is not None for row in left):
        # a running run has done part of its expected time already
        minutes = sum(max(0.0, row["expected_minutes"] - (row["minutes"] or 0.0)) for row in left)
        print(f"left: about {minutes:.0f} min of runs (divide by the processes sharing them), each as long as the "
              "finished runs of its variant and coefficient took on average (else of all)")


def print_summary(config: StudyConfig, report: dict[str, Any], minutes: float) -> None:
    """Print the report and the stage wall times (what the job shows at the end)."""
    out = Path(config.output_dir)
    print((out / "report.md").read_text())
    print(f"study finished in {minutes:.1f} min; report.md, results.jsonl and plots in {out}")
    if report.get("stage_seconds"):
        print("stage wall times:")
        for name, seconds in report["stage_seconds"].items():
            print(f"  {name:<48} {seconds:8.1f} s")
