"""``lenvm-rl preregister``: pick a confirmatory study's headline pair from a finished sweep, by a fixed rule.

Reads the sweep's ``study_config.json`` and finished runs, applies :data:`lenvm_rl.study.preregister.RULE`, and
writes the confirmatory recipe: the sweep's run settings, its starting policy and critic (by path), the pair on its
grids (plus the token-level variant's ablation, secondary), seeds the sweep never used, and the pre-registration
record that the study refuses to contradict. Nothing is trained here.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import write_text_atomically

__all__ = ["PreregisterArguments", "preregister", "main"]

# settings a confirmatory study must share with its sweep for the choice to carry over
_SHARED = ("task", "dataset", "train_split", "eval_split", "prompt_column", "difficulty_column", "reward_funcs",
           "success_threshold", "data_seed", "train_prompts", "rl_steps", "rl_prompts_per_step", "rl_generations",
           "rl_learning_rate", "rl_temperature", "rl_beta", "max_completion_length", "eval_temperature",
           "eval_greedy", "accuracy_drops", "threads", "eval_dataset", "tokenizer_name_or_path", "top_p", "use_peft",
           "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "bf16", "use_vllm", "eval_guided",
           "budget_column", "compact_generation", "gradient_checkpointing")


@dataclass
class PreregisterArguments:
    """Pick the pre-registered pair from a sweep and write the confirmatory recipe."""

    sweep: str = field(default="runs/study-sweep", metadata={"help": "Output directory of the finished sweep."})
    output: str = field(default="recipes/study/confirmatory.yaml", metadata={"help": "Recipe to write."})
    output_dir: str = field(default="runs/study-confirmatory", metadata={"help": "output_dir of that recipe."})
    seeds: list[int] = field(default_factory=lambda: [200, 201, 202, 203, 204],
                             metadata={"help": "Confirmatory seeds (≥ 5, none of the sweep's)."})
    drop: float | None = field(default=None, metadata={"help": "Accuracy drop the pair is picked at (default: the "
                                                                   "sweep's first accuracy_drops entry)."})
    eval_prompts: int = field(default=400, metadata={"help": "Held-out prompts of the confirmatory evaluation."})
    eval_samples: int = field(default=4, metadata={"help": "Samples per prompt (≥ 4 at T = 1)."})
    bootstrap_samples: int = field(default=1000, metadata={"help": "Bootstrap replicates of its report."})
    token_level_methods: list[str] | None = field(
        default=None, metadata={"help": "Only these methods are token-level candidates (e.g. the v3 ones); "
                                        "recorded in the pre-registration. Default: every token-level method."})
    secondary: list[str] | None = field(
        default=None, metadata={"help": "Sweep variant labels to carry as secondary rows, each on the rule's grid."})
    grid_points: int = field(
        default=4, metadata={"help": "Points of each confirmatory grid (4: c* × (1/4, 1/2, 1, 2); 3: "
                                     "c* × (1/2, 1, 2)); fix it with the rule, before the sweep runs."})
    eval_at_steps: list[int] | None = field(
        default=None, metadata={"help": "Inner evaluation steps of the confirmatory runs (sample efficiency)."})
    eval_greedy: bool | None = field(
        default=None, metadata={"help": "Evaluate greedy decoding too (default: as the sweep did; a sweep may skip it "
                                        "to save time, since the rule reads only the sampled frontier)."})


DATACLASSES = (PreregisterArguments,)


def preregister(args: PreregisterArguments) -> dict:
    """Write ``args.output`` and return the recipe it holds."""
    import yaml

    from ..study.report import collect
    from ..study.runner import CONFIG_FILE, load_results

    sweep = Path(args.sweep)
    saved = sweep / CONFIG_FILE
    if not saved.exists():
        raise FileNotFoundError(f"{saved} not found: --sweep must be the output_dir of a finished `lenvm-rl study`")
    config = json.loads(saved.read_text())["config"]
    if len(args.seeds) < 5:
        raise ValueError(f"seeds: a confirmatory study needs ≥ 5 seeds, got {args.seeds}")
    reused = sorted(set(args.seeds) & set(config["seeds"]))
    if reused:
        raise ValueError(f"seeds {reused} were used by the sweep {sweep}; the confirmatory study needs its own")
    results = load_results(sweep)
    if not results:
        raise ValueError(f"{sweep} has no finished runs")
    table = collect(results, config["methods"])
    policy = str(sweep / "policy") if config["policy"] == "builtin" else config["policy"]
    critic = str(sweep / "critic") if config["critic"] == "train" else config["critic"]
    prompts = sweep / "eval_prompts.json"
    budgets = json.loads(prompts.read_text()).get("budget") if prompts.exists() else None
    if budgets:
        given = [flag for flag, value in (("--drop", args.drop), ("--token_level_methods", args.token_level_methods),
                                          ("--secondary", args.secondary),
                                          ("--grid_points", None if args.grid_points == 4 else args.grid_points))
                 if value is not None]
        if given:
            raise ValueError(f"{sweep} is a budget sweep: its rule picks one coefficient per budget method, so "
                             f"{', '.join(given)} (options of the frontier-pair rule) do not apply")
        methods, record = _budget_choice(table, config, budgets, sweep)
    else:
        methods, record = _pair_choice(table, args, sweep, config)
    # the confirmatory runs read the sweep's task critic (they have no rollouts of their own to fit one on)
    from ..study.methods import reads_pretrained_task_critic

    for variant in methods.values():
        if reads_pretrained_task_critic(variant):
            variant["options"] = {**(variant.get("options") or {}),
                                  "task_critic_model_name_or_path": str(sweep / "task-critic")}
    ablation = next((label for label in methods if methods[label]["method"] == "lenvm_seq"), None)
    eval_at_steps = args.eval_at_steps or (config.get("eval_at_steps") if budgets else None)
    recipe = {"output_dir": args.output_dir, "policy": policy, "critic": critic,
              **{key: config[key] for key in _SHARED if key in config},
              "seeds": list(args.seeds), "eval_prompts": args.eval_prompts, "eval_samples": args.eval_samples,
              "bootstrap_samples": args.bootstrap_samples, "normalizations": None,
              **({"eval_at_steps": list(eval_at_steps)} if eval_at_steps else {}),
              **({"eval_greedy": args.eval_greedy} if args.eval_greedy is not None else {}),
              "headline_method": record["token_level"], "comparator_method": record["comparator"],
              **({"ablation_method": ablation} if ablation else {}),
              "methods": methods, "preregistration": record}
    header = (f"# Confirmatory study, pre-registered from the sweep {sweep} (seeds {config['seeds']}) by "
              "`lenvm-rl preregister`;\n# its headline compares exactly the pair below on seeds the sweep never "
              f"used.\n# Run:  OMP_NUM_THREADS=1 lenvm-rl study --config {args.output}\n")
    notes = [f"Needs the sweep's critic at {critic}: on a fresh clone rerun the sweep's command first (with its runs "
             "committed it retrains only the critic, from its rollouts)."] if config["critic"] == "train" else []
    notes.append(_expected_wall_time(results, config, recipe))
    header += "".join(textwrap.fill(note, 118, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)
                      + "\n" for note in notes)
    class _NoAliases(yaml.SafeDumper):  # a recipe is read by people: write shared grids out, no &id anchors
        def ignore_aliases(self, data: object) -> bool:
            return True

    text = yaml.dump(recipe, Dumper=_NoAliases, sort_keys=False, allow_unicode=True, width=110)
    write_text_atomically(Path(args.output), header + text)
    return recipe


def _expected_wall_time(sweep_results: list[dict], sweep_config: dict, recipe: dict) -> str:
    """The recipe's header note on its expected wall time, from the sweep's measured runs.

    A run costs its training plus its evaluations; each evaluation pass costs what the sweep's final one did per
    completion: ``minutes = runs × (train + eval × passes / sweep_passes)``, with ``passes`` counted in completions
    (``prompts × samples``, ``+ prompts`` with greedy, the sampled set again at each inner step)."""
    from ..study.runner import inner_eval_steps

    def completions(settings: dict) -> int:
        sampled = settings["eval_prompts"] * settings["eval_samples"]
        inner = inner_eval_steps(settings.get("eval_at_steps"), settings["rl_steps"])
        return sampled * (1 + len(inner)) + (settings["eval_prompts"] if settings.get("eval_greedy") else 0)

    train = float(np.mean([r["train_seconds"] for r in sweep_results])) / 60
    evaluation = float(np.mean([r["seconds"] - r["train_seconds"] for r in sweep_results])) / 60
    per_run = train + evaluation * completions(recipe) / completions(sweep_config)
    runs = len(recipe["seeds"]) * sum(len(variant.get("grid") or [0]) for variant in recipe["methods"].values())
    return (f"Expected wall time: about {round(runs * per_run)} minutes on one process ({runs} runs × about "
            f"{per_run:.0f} min: the sweep's mean run, with this recipe's evaluations); about "
            f"{round(runs * per_run / 2)} with the command run in two shells, one per core. Resumable across "
            "sessions.")


def _pair_choice(table, args: PreregisterArguments, sweep: Path, config: dict) -> tuple[dict, dict]:
    """The frontier pair (:data:`~lenvm_rl.study.preregister.RULE`): its variants and its record."""
    from ..study.preregister import RULE, choose_pair, confirmatory_methods

    if args.drop is None and not config["accuracy_drops"]:
        raise ValueError(f"{sweep} has no accuracy_drops: give --drop")
    drop = float(args.drop if args.drop is not None else config["accuracy_drops"][0])

    if args.token_level_methods:
        from ..study.methods import TOKEN_LEVEL

        unknown = sorted(set(args.token_level_methods) - set(TOKEN_LEVEL))
        if unknown:
            raise ValueError(f"token_level_methods: {unknown} are not token-level methods ({list(TOKEN_LEVEL)})")
    choice = choose_pair(table, drop, args.token_level_methods, args.grid_points)
    record = {"rule": RULE.format(drop=drop, points=args.grid_points), "sweep": str(sweep),
              "sweep_seeds": config["seeds"],
              "token_level": choice.token_level, "comparator": choice.comparator,
              "token_level_grid": choice.token_level_grid, "comparator_grid": choice.comparator_grid,
              "token_level_candidates": choice.token_level_candidates,
              "comparator_candidates": choice.comparator_candidates,
              **({"token_level_methods": list(args.token_level_methods)} if args.token_level_methods else {}),
              "sweep_target_accuracy": round(choice.target_accuracy, 4),
              "sweep_tokens_at_target": {k: (round(v, 2) if v != float("inf") else "unreached")
                                         for k, v in choice.tokens.items()}}
    return confirmatory_methods(table, choice, args.secondary or (), args.grid_points), record


def _budget_choice(table, config: dict, budgets: list[int], sweep: Path) -> tuple[dict, dict]:
    """A budget task's sweep (:data:`~lenvm_rl.study.preregister.BUDGET_RULE`): every budget variant at its chosen
    coefficient, the anchors, and the record."""
    from ..study.methods import METHODS, TOKEN_LEVEL
    from ..study.preregister import BUDGET_RULE, choose_budget_coefficients
    from ..study.report import ADHERENCE_BAR

    choice = choose_budget_coefficients(table, budgets)
    headline = config["headline_method"]
    if headline not in choice.coefficients or table.method(headline) not in TOKEN_LEVEL:
        raise ValueError(f"headline_method {headline!r} of the sweep is not a finished token-level budget variant "
                         f"({sorted(label for label in choice.coefficients if table.method(label) in TOKEN_LEVEL)})")
    methods: dict = {label: dict(variant) for label, variant in config["methods"].items()
                     if variant["method"] in ("none", "ppo_none")}
    for label, coef in choice.coefficients.items():
        variant = {key: value for key, value in config["methods"][label].items() if key != "grid"}
        if METHODS[variant["method"]].uses_coef:
            variant["grid"] = [coef]
        methods[label] = variant
    record = {"rule": BUDGET_RULE.format(tightest=choice.tightest, bar=ADHERENCE_BAR, headline=headline),
              "sweep": str(sweep), "sweep_seeds": config["seeds"], "token_level": headline,
              "comparator": choice.comparator, "coefficients": choice.coefficients,
              "sweep_adherence": {k: round(v, 4) for k, v in choice.adherence.items()},
              f"sweep_accuracy_at_{choice.tightest}": {k: round(v, 4) for k, v in choice.tightest_accuracy.items()}}
    return methods, record


def main(args: PreregisterArguments) -> None:
    recipe = preregister(args)
    record = recipe["preregistration"]
    if "coefficients" in record:  # a budget sweep: one coefficient per budget variant
        for label, coef in record["coefficients"].items():
            print(f"{label}: coef {coef:g} (sweep adherence {record['sweep_adherence'][label]:.3f})")
        print(f"token-level: {record['token_level']}; comparator: {record['comparator']}")
    else:
        print(f"token-level: {record['token_level']} grid {record['token_level_grid']} "
              f"(of {record['token_level_candidates']} candidates)")
        print(f"comparator:  {record['comparator']} grid {record['comparator_grid']} "
              f"(of {record['comparator_candidates']} candidates)")
    print(f"wrote {args.output}")
