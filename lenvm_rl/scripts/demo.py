"""``lenvm-rl demo``: the concise-reasoning demo, a small fixed instance of ``lenvm-rl study``.

The built-in checked-parity task (:mod:`lenvm_rl.tasks`): a tiny policy is warmed up with TRL's SFTTrainer, a LenVM
critic is trained on its rollouts, and GRPO runs from the same start under no length term and the study's
pre-registered pair — the Kimi group length reward and token-level LenVM, both under batch normalization — with
LenVM's sequence-level ablation, each at two coefficients, one seed. The report, plots and ``results.jsonl`` are the
study's. ``--quick`` is a smoke test of every stage in a couple of minutes whose numbers mean nothing, and its report
says so. The full comparison is the study in ``recipes/study/`` (sweep, ``lenvm-rl preregister``, confirmatory study).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .study import StudyConfig
from .study import main as study_main

__all__ = ["DemoArguments", "demo_config", "main"]


@dataclass
class DemoArguments:
    """Run the concise-reasoning demo: warm-up, critic, GRPO under every method family, report and plots."""

    out: str = field(default="runs/demo", metadata={"help": "Output directory (report.md, results.jsonl, plots)."})
    seed: int = field(default=0, metadata={"help": "Seed of the RL runs and the evaluation."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda."})
    quick: bool = field(default=False, metadata={"help": "A smoke test of every stage; its numbers mean nothing."})
    threads: int = field(default=2, metadata={"help": "torch threads (keep ≤ the free cores)."})


DATACLASSES = (DemoArguments,)

# the pre-registered pair of the study (recipes/study/confirmatory.yaml) and the ablation, at the two middle points
# of its grids (ratio 2), one seed: a fixed, small instance whose report reads like the study's
DEMO_METHODS = {
    "none": {"method": "none"},
    "kimi/batch": {"method": "kimi", "grid": [0.8, 1.6], "options": {"scale_rewards": "batch"}},
    "lenvm/batch": {"method": "lenvm", "grid": [1.0, 2.0], "options": {"scale_rewards": "batch"}},
    "lenvm_seq/batch": {"method": "lenvm_seq", "grid": [1.0, 2.0], "options": {"scale_rewards": "batch"}},
}


def demo_config(args: DemoArguments) -> StudyConfig:
    """The demo's study configuration (the quick one when ``args.quick``)."""
    command = f"lenvm-rl demo --seed {args.seed} --out {args.out}" + (" --quick" if args.quick else "")
    common = {"output_dir": args.out, "seeds": [args.seed], "device": args.device, "threads": args.threads,
              "command": command, "normalizations": None, "headline_method": "lenvm/batch",
              "comparator_method": "kimi/batch", "ablation_method": "lenvm_seq/batch"}
    if not args.quick:
        return StudyConfig(**common, methods=DEMO_METHODS, eval_prompts=400, eval_samples=4, bootstrap_samples=500)
    return StudyConfig(**common, smoke=True, warmup_problems=400, warmup_steps=40, warmup_hidden_size=64,
                       warmup_layers=2, critic_rollout_prompts=32, critic_rollout_samples=4, critic_steps=20,
                       train_prompts=64, rl_steps=2, rl_prompts_per_step=2, eval_prompts=40, eval_samples=2,
                       bootstrap_samples=100,
                       methods={label: {**variant, "grid": variant["grid"][:1]} if "grid" in variant else variant
                                for label, variant in DEMO_METHODS.items()})


def main(args: DemoArguments) -> None:
    try:  # the plots come last; fail now rather than after the whole run
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ValueError("the demo writes PNG plots and needs matplotlib: pip install 'lenvm_rl[plots]'") from error
    study_main(demo_config(args))
