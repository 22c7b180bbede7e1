"""A few LenVM-GRPO steps under a launcher (torchrun / DeepSpeed), run by tests/test_grpo_distributed.py.

usage: python grpo_worker.py WORKDIR [--deepspeed-zero3] [--whiten | --relative-gated]
WORKDIR holds `policy/` and `critic/` (with tokenizer); each rank writes WORKDIR/rank{r}.json.
Under DeepSpeed, `use_cpu` must stay False (it disables accelerate's DeepSpeed plugin) and bf16 off on CPU.
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from lenvm_rl import LenVMGRPOConfig, LenVMGRPOTrainer  # noqa: E402


class RecordingTrainer(LenVMGRPOTrainer):
    """Keeps the whitened length term (value units) or the inputs and output of the relative length advantage of
    each generation batch, so the test can check that statistics span both processes."""

    records: list = []

    def _whiten_across_processes(self, values, mask):
        whitened = super()._whiten_across_processes(values, mask)
        self.records.append({"raw": values[mask.bool()].tolist(), "whitened": whitened[mask.bool()].tolist()})
        return whitened

    def _relative_length_advantages(self, values, completion_mask, terminated, passed, mode, weights=None,
                                    budgets=None):
        advantages, mask = super()._relative_length_advantages(values, completion_mask, terminated, passed, mode,
                                                               weights, budgets)
        self.records.append({"values": values.tolist(), "completion_mask": completion_mask.tolist(),
                             "terminated": terminated.tolist(), "passed": passed.tolist(),
                             "advantages": advantages.tolist(), "mode": mode})
        return advantages, mask


def reward_len_parity(completions, **kwargs):
    return [float(len(c) % 2) for c in completions]


def main() -> None:
    workdir = sys.argv[1]
    zero3 = "--deepspeed-zero3" in sys.argv
    deepspeed = None
    if zero3:
        deepspeed = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 4,
                     "gradient_accumulation_steps": 1, "bf16": {"enabled": False}}
    prompts = Dataset.from_list([{"prompt": f"add: {i} {i + 1}"} for i in range(16)])
    relative = "--relative-gated" in sys.argv
    whiten = "--whiten" in sys.argv
    length_options = ({"length_gate": "success", "length_lam": 0.5} if relative else
                      {"length_gate": "none", "length_units": "value", "whiten_length_advantages": whiten})
    args = LenVMGRPOConfig(
        output_dir=os.path.join(workdir, "out"), per_device_train_batch_size=4,
        # with the relative units, groups of 8 span both processes (4 rows each): their statistics must be joint
        num_generations=8 if relative else 4,
        max_completion_length=16, max_steps=2, learning_rate=1e-3, use_cpu=not zero3, bf16=False, report_to="none",
        logging_steps=1, beta=0.0, seed=0, save_strategy="no", disable_tqdm=True,
        length_mode=os.environ.get("LENGTH_MODE", "advantage"), length_coef=1.0, **length_options,
        critic_model_name_or_path=os.path.join(workdir, "critic"), deepspeed=deepspeed,
    )
    trainer = RecordingTrainer(model=os.path.join(workdir, "policy"), reward_funcs=reward_len_parity, args=args,
                               train_dataset=prompts)
    trainer.train()
    rank = trainer.accelerator.process_index
    critic_type = type(getattr(trainer, "critic", None)).__name__
    summary = {
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "global_step": trainer.state.global_step,
        "critic_type": critic_type,
        "records": RecordingTrainer.records,
        "logged_keys": sorted({k for entry in trainer.state.log_history for k in entry}),
    }
    if zero3 and getattr(trainer, "critic", None) is not None:
        critic = trainer.critic.module if hasattr(trainer.critic, "module") else trainer.critic
        summary["critic_partitioned"] = any(hasattr(p, "ds_id") for p in critic.parameters())
    with open(os.path.join(workdir, f"rank{rank}.json"), "w") as handle:
        json.dump(summary, handle)
    if torch.distributed.is_initialized():
        # Both ranks must be done with every collective before the group goes away, or gloo may abort at teardown.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
