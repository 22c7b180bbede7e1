"""Scale-out: the accelerate configs, the recipes under `accelerate launch` (ZeRO-3 in one process, DDP in two), the
critic under ZeRO-3 (sharded or replicated, values, saving) and the bad-input checks.

DeepSpeed runs on CPU in a single process only (docs/method.md), so the ZeRO-3 runs use
`accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 1 --mixed_precision no` with
`DS_ACCELERATOR=cpu` and `--bf16 false` (the critic recipe also runs under `zero2.yaml`); the DDP runs use
`recipes/accelerate/multi_gpu.yaml` with two processes and `ACCELERATE_USE_CPU=true`. The GPU-only configs are
checked by turning them into the launcher's environment with accelerate's own code, without starting anything.

Checks that need the trainer object run in a worker: this file, started under the launcher as a script
(`python tests/test_scaleout.py --worker grpo|critic-full|critic-lora WORKDIR`), runs the recipe through the real
`lenvm_rl.cli.main`, keeps the trainer and writes what it measured to `WORKDIR/<name>.json`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
ACCELERATE_CONFIGS = sorted((RECIPES / "accelerate").glob("*.yaml"))
ZERO3_RECIPE = RECIPES / "grpo_zero3" / "qwen2.5-7b_gsm8k_lenvm_zero3_full.yaml"
CRITIC_RECIPE = RECIPES / "critic" / "train_critic_qwen2.5-1.5b.yaml"
TINY_PROMPTS = RECIPES / "data" / "tiny_prompts.jsonl"


def tiny_grpo_override(workdir: Path, critic: str = "critic") -> list[str]:
    """The documented override that runs a realistic GRPO recipe on the tiny model (docs/scaling.md)."""
    return ["--model_name_or_path", str(workdir / "policy"), "--dtype", "float32",
            "--dataset_name", str(TINY_PROMPTS), "--dataset_config", "None", "--prompt_column", "prompt",
            "--reward_funcs", "arithmetic_correctness", "--critic_model_name_or_path", str(workdir / critic),
            "--critic_dtype", "float32", "--use_vllm", "false", "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--num_generations", "4",
            "--max_completion_length", "16", "--bf16", "false", "--report_to", "none", "--save_steps", "2",
            "--length_coef_warmup_steps", "1"]


# ---------------------------------------------------------------------------------------------------- worker side


def fixed_batch(tokenizer):
    """Two prompts (left-padded) with one terminated and one truncated completion (right-padded)."""
    prompts = tokenizer(["add 1 2", "add 3 4 5 6"], padding=True, return_tensors="pt", add_special_tokens=False)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    completion_ids = torch.tensor([[20, 21, 22, eos, pad, pad], [30, 31, 32, 33, 34, 35]])
    completion_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    return prompts["input_ids"], prompts["attention_mask"], completion_ids, completion_mask


def critic_values(critic, batch) -> torch.Tensor:
    """``(B, T+1)`` values of a (possibly ZeRO-3-sharded, possibly LoRA-wrapped) critic on ``batch``."""
    from lenvm_rl.modeling import unwrap_critic

    with torch.no_grad():
        return unwrap_critic(critic).values_for_completions(*batch).float().cpu()


def whole_critic(path):
    """The critic loaded whole (not partitioned), even while a ZeRO-3 config is registered."""
    from lenvm_rl.modeling import LengthValueModel
    from lenvm_rl.trainer.grpo import _zero3_init_disabled

    with _zero3_init_disabled():
        return LengthValueModel.from_pretrained(path).eval()


def _expect_error(build) -> str | None:
    try:
        build()
    except ValueError as error:
        return str(error)
    return None


def _grpo_config(workdir: Path, **overrides):
    from lenvm_rl.trainer.grpo import LenVMGRPOConfig

    settings = dict(output_dir=str(workdir / "scratch"), per_device_train_batch_size=4, num_generations=4,
                    max_completion_length=16, max_steps=1, bf16=False, report_to="none", beta=0.0,
                    save_strategy="no", disable_tqdm=True, length_gate="none", critic_dtype="float32",
                    critic_model_name_or_path=str(workdir / "critic"))
    settings.update(overrides)
    return LenVMGRPOConfig(**settings)


def grpo_worker(workdir: Path) -> dict:
    """Bad inputs first (each must fail before generation), then the ZeRO-3 recipe through the CLI (critic
    sharded), then a trainer with the critic replicated."""
    from datasets import Dataset
    from torch import nn
    from transformers import AutoTokenizer

    from lenvm_rl import cli
    from lenvm_rl.modeling import LengthValueModel
    from lenvm_rl.scripts import grpo as grpo_job
    from lenvm_rl.tasks import arithmetic_correctness
    from lenvm_rl.trainer import grpo

    tokenizer = AutoTokenizer.from_pretrained(workdir / "critic")
    batch = fixed_batch(tokenizer)
    dataset = Dataset.from_list([{"prompt": f"add {i} {i + 1}", "answer": str(2 * i + 1)} for i in range(8)])
    policy = str(workdir / "policy")
    result: dict = {}

    # A critic holding integer parameters (as a quantized one does) cannot be partitioned: built before any
    # DeepSpeed config exists, so it is whole.
    quantized = LengthValueModel.from_pretrained(workdir / "critic")
    quantized.head.register_parameter("codes", nn.Parameter(torch.zeros(8, dtype=torch.uint8), requires_grad=False))
    args = _grpo_config(workdir)
    result["uint8_critic_sharded"] = _expect_error(lambda: grpo.LenVMGRPOTrainer(
        policy, arithmetic_correctness, args, train_dataset=dataset, critic=quantized))
    # Replicating a critic larger than the policy under ZeRO-3 is refused.
    args = _grpo_config(workdir, critic_zero3="replicate", critic_model_name_or_path=str(workdir / "big-critic"))
    result["big_critic_replicated"] = _expect_error(lambda: grpo.LenVMGRPOTrainer(
        policy, arithmetic_correctness, args, train_dataset=dataset))
    # Replicating a critic that was built partitioned (while the ZeRO-3 config is registered) is refused.
    partitioned = LengthValueModel.from_pretrained(workdir / "critic")
    args = _grpo_config(workdir, critic_zero3="replicate")
    result["partitioned_critic_replicated"] = _expect_error(lambda: grpo.LenVMGRPOTrainer(
        policy, arithmetic_correctness, args, train_dataset=dataset, critic=partitioned))

    # The ZeRO-3 recipe, through the real CLI, with the wide critic (whose matrices ZeRO-3 really partitions); keep
    # the trainer it builds.
    reference = critic_values(whole_critic(workdir / "wide-critic"), batch)
    trainers = []
    run_grpo = grpo_job.run_grpo
    grpo_job.run_grpo = lambda *a: trainers.append(run_grpo(*a)) or trainers[-1]
    # The CLI ends the job (destroys the process group) when it is done; this worker keeps inspecting the trainer
    # afterwards and ends the group itself at exit.
    grpo_job.end_job = lambda trainer: None
    output_dir = workdir / "zero3-full"
    code = cli.main(["grpo", "--config", str(ZERO3_RECIPE), *tiny_grpo_override(workdir, "wide-critic"),
                     "--output_dir", str(output_dir)])
    grpo_job.run_grpo = run_grpo
    (trainer,) = trainers
    critic = trainer.critic.module if hasattr(trainer.critic, "module") else trainer.critic
    result["shard"] = {
        "exit_code": code,
        "global_step": trainer.state.global_step,
        "zero_stage": trainer.accelerator.state.deepspeed_plugin.zero_stage,
        "critic_type": type(trainer.critic).__name__,
        "critic_partitioned": all(hasattr(p, "ds_id") for p in critic.parameters()),
        # outside a forward, ZeRO-3 frees the gathered copy of every partitioned (non-persistent) weight
        "critic_released": sum(p.numel() == 0 for p in critic.parameters()),
        "values_max_diff": float((critic_values(trainer.critic, batch) - reference).abs().max()),
        "logged_keys": sorted({k for entry in trainer.state.log_history for k in entry}),
    }

    # A critic smaller than the policy, replicated: a whole copy, the same values as unsharded, and training runs.
    small = workdir / "small-critic"
    args = _grpo_config(workdir, critic_zero3="replicate", critic_model_name_or_path=str(small),
                        output_dir=str(workdir / "replicate"))
    trainer = grpo.LenVMGRPOTrainer(policy, arithmetic_correctness, args, train_dataset=dataset)
    trainer.train()
    result["replicate"] = {
        "global_step": trainer.state.global_step,
        "critic_type": type(trainer.critic).__name__,
        "critic_partitioned": any(hasattr(p, "ds_id") for p in trainer.critic.parameters()),
        "values_max_diff": float((critic_values(trainer.critic, batch)
                                  - critic_values(whole_critic(small), batch)).abs().max()),
    }
    return result


def critic_worker(workdir: Path, lora: bool) -> dict:
    """train-critic with the realistic recipe under ZeRO-3; records the trainer's values just before the save and
    its gathered weights after it, so the test can compare both with the saved checkpoint."""
    import deepspeed
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from lenvm_rl import cli
    from lenvm_rl.modeling import unwrap_critic
    from lenvm_rl.scripts import train_critic as critic_job

    name = "critic-lora" if lora else "critic-full"
    batch = fixed_batch(AutoTokenizer.from_pretrained(workdir / "wide-backbone"))
    result: dict = {}
    trainers = []
    train_critic, save_zero3_critic = critic_job.train_critic, critic_job._save_zero3_critic

    def keep_trainer(*args):
        trainers.append(train_critic(*args))
        return trainers[-1]

    def save_after_recording(trainer, *args, **kwargs):
        # The critic as trained (LoRA not yet merged), run sharded by ZeRO-3, just before the save gathers it.
        result["values_before_save"] = critic_values(trainer.accelerator.unwrap_model(trainer.model), batch).tolist()
        return save_zero3_critic(trainer, *args, **kwargs)

    critic_job.train_critic, critic_job._save_zero3_critic = keep_trainer, save_after_recording
    critic_job.end_job = lambda trainer: None  # the worker inspects the trainer after the CLI returns (see above)
    lora_flags = ["--use_peft", "true", "--lora_target_modules", "q_proj", "v_proj"] if lora else []
    result["exit_code"] = cli.main([
        "train-critic", "--config", str(CRITIC_RECIPE), "--model_name_or_path", str(workdir / "wide-backbone"),
        "--dtype", "float32", "--rollouts", str(workdir / "rollouts"), "--output_dir", str(workdir / name),
        "--max_steps", "2", "--bf16", "false", "--report_to", "none", "--eval_steps", "1", "--save_steps", "2",
        "--learning_rate", "0.05", "--warmup_steps", "0", *lora_flags])
    (trainer,) = trainers
    model = trainer.accelerator.unwrap_model(trainer.model)
    result["zero_stage"] = trainer.accelerator.state.deepspeed_plugin.zero_stage
    result["partitioned"] = all(hasattr(p, "ds_id") for p in model.parameters())
    result["released"] = sum(p.numel() == 0 for p in model.parameters())
    if not lora:
        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            gathered = {n: p.detach().clone().contiguous() for n, p in unwrap_critic(model).named_parameters()}
        save_file(gathered, str(workdir / f"{name}-gathered.safetensors"))
    return result


def _worker_main(argv: list[str]) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    mode, workdir = argv[0], Path(argv[1])
    result = grpo_worker(workdir) if mode == "grpo" else critic_worker(workdir, lora=mode == "critic-lora")
    (workdir / f"{mode}.json").write_text(json.dumps(result))
    if torch.distributed.is_initialized():
        # Both ranks must be done with every collective before the group goes away, or gloo may abort at teardown.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------------------- test side


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args: list[str], cwd: Path, config: str, *, processes: int, env: dict | None = None,
           expect_ok: bool = True) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file recipes/accelerate/<config> --num_processes N --mixed_precision no ...`."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
                   "DS_ACCELERATOR": "cpu", **(env or {})}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(RECIPES / "accelerate" / config), "--num_processes", str(processes), "--mixed_precision", "no",
               "--main_process_port", str(free_port()), *args]
    # a hung launch (a collective that never completes) fails this test instead of stalling the whole suite
    result = subprocess.run(command, env=environment, cwd=cwd, capture_output=True, text=True, timeout=900)
    if expect_ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Tiny policy, tiny critic (same tokenizer), critics larger and smaller than the policy, and tiny rollouts."""
    from conftest import make_synthetic_rollouts
    from transformers import AutoTokenizer

    from lenvm_rl import LengthValueModel
    from lenvm_rl.tiny import save_tiny_causal_lm

    root = tmp_path_factory.mktemp("scaleout")
    policy = save_tiny_causal_lm(root / "policy", "llama", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    torch.manual_seed(0)
    LengthValueModel.from_backbone(policy, gamma=0.95).save_pretrained(root / "critic")
    tokenizer.save_pretrained(root / "critic")
    # The policy has hidden size 64 and 2 layers. ZeRO-3 keeps tensors under 1e5 elements whole on every process
    # ("persistent"), so every tiny tensor is; the wide backbone (hidden 320: 320×320 and 320×640 matrices) is the
    # one whose weights ZeRO-3 really partitions.
    for name, hidden, layers in (("big", 128, 3), ("small", 32, 2), ("wide", 320, 1)):
        backbone = save_tiny_causal_lm(root / f"{name}-backbone", "llama", seed=1, hidden_size=hidden,
                                       num_layers=layers)
        LengthValueModel.from_backbone(backbone, gamma=0.95).save_pretrained(root / f"{name}-critic")
        tokenizer.save_pretrained(root / f"{name}-critic")
    make_synthetic_rollouts(root / "rollouts", tokenizer, num_prompts=12, samples=2)
    return root


# ------------------------------------------------------------------ accelerate configs (no launch needed)


def launcher_environment(config: Path):
    """What `accelerate launch --config_file <config>` would hand its processes, computed by accelerate itself."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import launch as launch_utils

    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "lenvm_rl", "grpo"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = launch_utils.prepare_deepspeed_cmd_env(args)
    elif args.multi_gpu:
        env = launch_utils.prepare_multi_gpu_env(args)
    else:
        _, env = launch_utils.prepare_simple_launcher_cmd_env(args)
    return args, defaults, {k: v for k, v in env.items() if k.startswith("ACCELERATE_")}


EXPECTED = {  # config → (distributed type, ZeRO stage, optimizer/param offload, machines)
    "single_gpu.yaml": ("NO", None, None, 1),
    "multi_gpu.yaml": ("MULTI_GPU", None, None, 1),
    "zero2.yaml": ("DEEPSPEED", 2, "none", 1),
    "zero3.yaml": ("DEEPSPEED", 3, "none", 1),
    "zero3_offload.yaml": ("DEEPSPEED", 3, "cpu", 1),
    "multi_node_zero3.yaml": ("DEEPSPEED", 3, "none", 2),
}


def test_every_accelerate_config_is_expected():
    assert sorted(p.name for p in ACCELERATE_CONFIGS) == sorted(EXPECTED)


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda p: p.stem)
def test_accelerate_config_turns_into_a_launch(config):
    from accelerate.utils import DeepSpeedPlugin, patch_environment

    distributed, stage, offload, machines = EXPECTED[config.name]
    text = config.read_text()
    assert text.startswith("#") and "Use it" in text.split("compute_environment")[0]  # says when to use it
    args, defaults, env = launcher_environment(config)
    assert defaults.distributed_type.value == distributed and defaults.num_machines == machines
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    if stage is None:
        assert not args.use_deepspeed
        return
    # the DeepSpeed settings reach the processes and accelerate builds the intended plugin from them
    with patch_environment(**env):
        plugin = DeepSpeedPlugin()
    zero = plugin.deepspeed_config["zero_optimization"]
    assert plugin.zero_stage == stage and zero["offload_optimizer"]["device"] == offload
    assert zero["offload_param"]["device"] == offload
    if stage == 3:
        assert plugin.zero3_init_flag and zero["stage3_gather_16bit_weights_on_model_save"]
    if machines > 1:
        assert args.nnodes == str(machines) and int(args.nproc_per_node) * machines == defaults.num_processes
        rendezvous = getattr(args, "master_addr", None) or getattr(args, "rdzv_endpoint", "")
        assert defaults.main_process_ip and rendezvous.startswith(defaults.main_process_ip)


# ------------------------------------------------------------------ recipes: bad input, documentation


def test_recipes_name_hardware_and_memory():
    for recipe in [*RECIPES.glob("critic/*.yaml"), *RECIPES.glob("grpo/*.yaml"), ZERO3_RECIPE]:
        header = "\n".join(line for line in recipe.read_text().splitlines() if line.startswith("#"))
        assert ("Sized for" in header or "hardware" in header) and "GB" in header, recipe
    header = ZERO3_RECIPE.read_text().split("\n\n")[0]
    assert "8× 80 GB" in header and "per GPU" in header and "zero3.yaml" in header


def test_zero3_recipe_field_that_does_not_exist_fails(tmp_path, capsys):
    from lenvm_rl.cli import main

    recipe = tmp_path / "typo.yaml"
    recipe.write_text(ZERO3_RECIPE.read_text().replace("critic_zero3: shard", "critic_zero_3: shard"))
    assert main(["grpo", "--config", str(recipe), "--bf16", "false"]) == 2  # bf16 off: this machine has no GPU
    assert "critic_zero_3" in capsys.readouterr().err


def test_critic_zero3_choice_is_checked():
    from lenvm_rl.trainer.grpo import LenVMGRPOConfig

    with pytest.raises(ValueError, match="critic_zero3 must be one of"):
        LenVMGRPOConfig(output_dir="unused", critic_zero3="everywhere", use_cpu=True, bf16=False,
                        per_device_train_batch_size=4, num_generations=4, length_mode="none")


def test_batch_layout_error_names_the_process_count():
    from lenvm_rl.trainer.grpo import LenVMGRPOConfig

    with pytest.raises(ValueError, match=r"number of processes comes from the launcher \(1") as error:
        LenVMGRPOConfig(output_dir="unused", use_cpu=True, bf16=False, per_device_train_batch_size=6,
                        num_generations=4, length_mode="none")
    assert "launch a multiple of 2 processes" in str(error.value)


def test_batch_layout_mismatch_under_accelerate_launch_fails_before_loading(workdir):
    # per-device 2 × 1 process × 1 step = 2 completions cannot hold a group of 4: the recipe needs 2 processes
    result = launch(["-m", "lenvm_rl", "grpo", "--config", str(ZERO3_RECIPE), *tiny_grpo_override(workdir),
                     "--per_device_train_batch_size", "2", "--output_dir", str(workdir / "mismatch")],
                    workdir, "zero3.yaml", processes=1, expect_ok=False)
    assert result.returncode != 0
    assert "lenvm-rl grpo: error: generation_batch_size (2) must be divisible by num_generations (4)" in result.stderr
    assert "launch a multiple of 2 processes" in result.stderr
    assert "Loading weights" not in result.stderr  # refused before any model was loaded
    assert not (workdir / "mismatch").exists()


def test_gpu_check_script_help_and_syntax():
    script = ROOT / "scripts" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    result = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, check=True)
    assert "ZeRO-3" in result.stdout and "critic overhead" in result.stdout
    helper = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--help"],
                            capture_output=True, text=True, check=True)
    assert "--steps" in helper.stdout


# ------------------------------------------------------------------ DDP: the LoRA recipes in two processes


@pytest.mark.parametrize("recipe", sorted((RECIPES / "grpo").glob("*.yaml")), ids=lambda p: p.stem)
def test_grpo_recipe_two_processes_ddp(workdir, recipe):
    output_dir = workdir / f"ddp-{recipe.stem}"
    launch(["-m", "lenvm_rl", "grpo", "--config", str(recipe), *tiny_grpo_override(workdir),
            "--gradient_checkpointing", "false", "--lora_target_modules", "q_proj", "v_proj",
            "--output_dir", str(output_dir)],
           workdir, "multi_gpu.yaml", processes=2, env={"ACCELERATE_USE_CPU": "true"})
    assert (output_dir / "adapter_config.json").exists()
    state = json.loads((output_dir / "checkpoint-2" / "trainer_state.json").read_text())
    # two processes drew the data: 2 steps × 2 processes × 4 completions / 4 per prompt = 4 prompts of the file
    prompts = len(TINY_PROMPTS.read_text().splitlines())
    assert state["global_step"] == 2 and state["epoch"] == pytest.approx(4 / prompts)


# ------------------------------------------------------------------ ZeRO-3, single process: GRPO


@pytest.fixture(scope="module")
def zero3_grpo(workdir):
    launch([str(Path(__file__).resolve()), "--worker", "grpo", str(workdir)], workdir, "zero3.yaml", processes=1)
    return json.loads((workdir / "grpo.json").read_text())


def test_zero3_recipe_trains_and_saves_a_full_policy(zero3_grpo, workdir):
    from transformers import AutoModelForCausalLM

    run = zero3_grpo["shard"]
    assert run["exit_code"] == 0 and run["zero_stage"] == 3 and run["global_step"] == 2
    assert "critic/predicted_length" in run["logged_keys"] and "length/advantage/mean" in run["logged_keys"]
    saved = AutoModelForCausalLM.from_pretrained(workdir / "zero3-full")  # full fine-tune: a whole model, no adapter
    reference = AutoModelForCausalLM.from_pretrained(workdir / "policy")
    assert not (workdir / "zero3-full" / "adapter_config.json").exists()
    for (name, param), (_, ref) in zip(saved.named_parameters(), reference.named_parameters(), strict=True):
        assert param.shape == ref.shape, name


def test_zero3_shards_the_critic_and_its_values_match_an_unsharded_run(zero3_grpo):
    run = zero3_grpo["shard"]
    assert run["critic_type"] == "DeepSpeedEngine" and run["critic_partitioned"] and run["critic_released"] > 0
    assert run["values_max_diff"] < 1e-5


def test_zero3_replicated_critic_is_whole_and_matches(zero3_grpo):
    run = zero3_grpo["replicate"]
    assert run["global_step"] == 1 and run["critic_type"] == "LengthValueModel" and not run["critic_partitioned"]
    assert run["values_max_diff"] < 1e-6


def test_zero3_critic_that_cannot_be_placed_fails_early(zero3_grpo):
    assert "dtype torch.uint8" in zero3_grpo["uint8_critic_sharded"]
    assert "cannot partition" in zero3_grpo["uint8_critic_sharded"]
    assert "larger than the policy" in zero3_grpo["big_critic_replicated"]
    assert "already partitioned" in zero3_grpo["partitioned_critic_replicated"]


# ------------------------------------------------------------------ ZeRO-3, single process: train-critic


@pytest.mark.parametrize("mode", ["critic-full", "critic-lora"])
def test_zero3_trained_critic_saves_a_normal_checkpoint(workdir, mode):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from lenvm_rl import LengthValueModel

    launch([str(Path(__file__).resolve()), "--worker", mode, str(workdir)], workdir, "zero3.yaml", processes=1)
    result = json.loads((workdir / f"{mode}.json").read_text())
    assert result["exit_code"] == 0 and result["zero_stage"] == 3 and result["partitioned"] and result["released"]
    output = workdir / mode
    assert not list(output.glob("global_step*"))  # not a DeepSpeed checkpoint: a plain safetensors critic
    critic = LengthValueModel.from_pretrained(output)
    assert critic.config.gamma is not None
    initial = LengthValueModel.from_backbone(workdir / "wide-backbone")
    changed = [n for n, p in critic.backbone.named_parameters()
               if not torch.equal(p, dict(initial.backbone.named_parameters())[n])]
    assert changed  # training moved the backbone, so the comparison below is not vacuous
    # the checkpoint computes what the trainer's (sharded, for LoRA unmerged) critic computed
    batch = fixed_batch(AutoTokenizer.from_pretrained(workdir / "wide-backbone"))
    torch.testing.assert_close(critic_values(critic, batch), torch.tensor(result["values_before_save"]),
                               rtol=1e-5, atol=1e-5)
    if mode == "critic-full":  # and holds exactly the trainer's gathered weights
        gathered = load_file(str(workdir / f"{mode}-gathered.safetensors"))
        loaded = dict(critic.named_parameters())
        assert sorted(gathered) == sorted(loaded)
        for name, tensor in gathered.items():
            torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0, msg=name)


def test_critic_recipe_trains_under_zero2_through_the_entry_point(workdir):
    # The critic recipe names zero2.yaml for 8 GPUs; one CPU process runs the same DeepSpeed code path.
    from lenvm_rl import LengthValueModel

    output = workdir / "critic-zero2"
    launch(["-m", "lenvm_rl", "train-critic", "--config", str(CRITIC_RECIPE),
            "--model_name_or_path", str(workdir / "wide-backbone"), "--dtype", "float32",
            "--rollouts", str(workdir / "rollouts"), "--output_dir", str(output), "--max_steps", "2",
            "--bf16", "false", "--report_to", "none", "--eval_steps", "1", "--save_steps", "2",
            "--learning_rate", "0.05", "--warmup_steps", "0"], workdir, "zero2.yaml", processes=1)
    critic = LengthValueModel.from_pretrained(output)
    initial = LengthValueModel.from_backbone(workdir / "wide-backbone")
    assert critic.config.gamma is not None
    assert not torch.equal(critic.backbone.layers[0].self_attn.q_proj.weight,
                           initial.backbone.layers[0].self_attn.q_proj.weight)


if __name__ == "__main__":
    if "--worker" not in sys.argv:
        sys.exit("usage: python -m pytest tests/test_scaleout.py  (or, under a launcher: --worker MODE WORKDIR)")
    _worker_main(sys.argv[sys.argv.index("--worker") + 1:])
