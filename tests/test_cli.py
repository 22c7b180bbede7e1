"""The `lenvm-rl` entry point: subcommands, YAML recipes with CLI overrides, and clear errors."""

import subprocess
import sys

import pytest

from lenvm_rl import LengthValueModel
from lenvm_rl.cli import main


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "make-tiny-model" in out and "init-critic" in out


def test_unknown_subcommand(capsys):
    assert main(["no-such-thing"]) == 2
    assert "unknown subcommand 'no-such-thing'" in capsys.readouterr().err


def test_tiny_model_then_critic_from_a_recipe_with_override(tmp_path):
    assert main(["make-tiny-model", "--output_dir", str(tmp_path / "policy"), "--architecture", "gpt2"]) == 0
    recipe = tmp_path / "critic.yaml"
    recipe.write_text(f"backbone: {tmp_path / 'policy'}\noutput_dir: {tmp_path / 'critic'}\ngamma: 0.9\n")
    assert main(["init-critic", "--config", str(recipe), "--gamma", "0.95"]) == 0
    critic = LengthValueModel.from_pretrained(tmp_path / "critic")
    assert critic.config.gamma == 0.95
    assert critic.config.decoder_config.model_type == "gpt2"


def test_recipe_field_that_does_not_exist_fails(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("backbone: x\noutput_dir: y\nbogus_field: 1\n")
    assert main(["init-critic", "--config", str(recipe)]) == 2
    assert "bogus_field" in capsys.readouterr().err


def test_upstream_needs_gamma(tmp_path, capsys):
    assert main(["init-critic", "--backbone", str(tmp_path), "--output_dir", str(tmp_path / "c"), "--upstream"]) == 2
    assert "--upstream needs --gamma" in capsys.readouterr().err


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "lenvm_rl", "--help"], capture_output=True, text=True, check=True)
    assert "init-critic" in result.stdout


# ------------------------------------------------------------- mistyped local paths fail at once (exit 2)

_GRPO_COMMON = ["--dataset_name", "prompts.jsonl", "--output_dir", "runs/out", "--bf16", "false", "--use_cpu",
                "true", "--report_to", "none"]

MISSING_PATHS = {
    "rollout-policy": (["rollout", "--policy", "runs/tiny-polcy", "--dataset", "prompts.jsonl", "--output_dir",
                        "runs/out"], "policy runs/tiny-polcy"),
    "rollout-tokenizer": (["rollout", "--policy", "runs/here", "--tokenizer_name_or_path", "runs/tokenizr",
                           "--dataset", "prompts.jsonl", "--output_dir", "runs/out"],
                          "tokenizer_name_or_path runs/tokenizr"),
    "rollout-dataset": (["rollout", "--policy", "runs/here", "--dataset", "runs/promts.jsonl", "--output_dir",
                         "runs/out"], "prompt dataset runs/promts.jsonl"),
    "train-critic-model": (["train-critic", "--model_name_or_path", "runs/tiny-polcy", "--rollouts", "runs/here",
                            "--output_dir", "runs/out"], "model_name_or_path runs/tiny-polcy"),
    "train-critic-tokenizer": (["train-critic", "--model_name_or_path", "runs/here", "--tokenizer_name_or_path",
                                "runs/tokenizr", "--rollouts", "runs/here", "--output_dir", "runs/out"],
                               "tokenizer_name_or_path runs/tokenizr"),
    "train-critic-rollouts": (["train-critic", "--model_name_or_path", "runs/here", "--rollouts",
                               "runs/tiny-rollots", "--output_dir", "runs/out"], "rollouts runs/tiny-rollots"),
    "eval-critic-critic": (["eval-critic", "--critic", "runs/tiny-critc", "--rollouts", "runs/here",
                            "--output_dir", "runs/out"], "critic runs/tiny-critc"),
    "eval-critic-rollouts": (["eval-critic", "--critic", "runs/here", "--rollouts", "runs/tiny-rollots",
                              "--output_dir", "runs/out"], "rollouts runs/tiny-rollots"),
    "predict-length-critic": (["predict-length", "--critic", "runs/tiny-critc", "--dataset", "prompts.jsonl",
                               "--output_file", "runs/out.jsonl"], "critic runs/tiny-critc"),
    "predict-length-tokenizer": (["predict-length", "--critic", "runs/here", "--tokenizer", "runs/tokenizr",
                                  "--dataset", "prompts.jsonl", "--output_file", "runs/out.jsonl"],
                                 "tokenizer runs/tokenizr"),
    "eval-length-control-policy": (["eval-length-control", "--policy", "runs/tiny-polcy", "--critic", "runs/here"],
                                   "policy runs/tiny-polcy"),
    "eval-length-control-critic": (["eval-length-control", "--policy", "runs/here", "--critic", "runs/tiny-critc"],
                                   "critic runs/tiny-critc"),
    "init-critic": (["init-critic", "--backbone", "runs/tiny-polcy", "--output_dir", "runs/out"],
                    "backbone runs/tiny-polcy"),
    "init-critic-upstream": (["init-critic", "--backbone", "runs/lenvm-upstrem", "--output_dir", "runs/out",
                              "--upstream", "--gamma", "0.997"], "backbone runs/lenvm-upstrem"),
    "make-tiny-model-fit-data": (["make-tiny-model", "--output_dir", "runs/out", "--fit_data", "runs/tiny_stf.jsonl"],
                                 "fit_data runs/tiny_stf.jsonl"),
    "grpo-model": (["grpo", "--model_name_or_path", "runs/tiny-polcy", "--length_mode", "none", *_GRPO_COMMON],
                   "model_name_or_path runs/tiny-polcy"),
    "grpo-critic": (["grpo", "--model_name_or_path", "runs/here", "--critic_model_name_or_path", "runs/tiny-critc",
                     *_GRPO_COMMON], "critic_model_name_or_path runs/tiny-critc"),
    "grpo-tokenizer": (["grpo", "--model_name_or_path", "runs/here", "--tokenizer_name_or_path", "runs/tokenizr",
                        "--length_mode", "none", *_GRPO_COMMON], "tokenizer_name_or_path runs/tokenizr"),
    "grpo-dataset": (["grpo", "--model_name_or_path", "runs/here", "--length_mode", "none", *_GRPO_COMMON,
                      "--dataset_name", "runs/promts.jsonl"], "prompt dataset runs/promts.jsonl"),
    "ppo-model": (["ppo", "--model_name_or_path", "runs/tiny-polcy", "--length_mode", "none", *_GRPO_COMMON],
                  "model_name_or_path runs/tiny-polcy"),
    "ppo-task-critic": (["ppo", "--model_name_or_path", "runs/here", "--length_mode", "none",
                         "--task_critic_model_name_or_path", "runs/task-critc", *_GRPO_COMMON],
                        "task_critic_model_name_or_path runs/task-critc"),
}


LOCAL_ONLY = {"eval-critic-rollouts", "train-critic-rollouts", "make-tiny-model-fit-data"}


@pytest.mark.parametrize("case", sorted(MISSING_PATHS))
def test_a_mistyped_local_path_fails_at_once_with_exit_2(case, tmp_path, monkeypatch, capsys):
    """A mistyped name fails at once in one line, exit 2, whether `runs/` exists or not: never a traceback."""
    argv, named = MISSING_PATHS[case]
    (tmp_path / "runs" / "here").mkdir(parents=True)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "add 3 5", "answer": "8"}\n')
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    # local-only inputs do not exist; anything that may be a hub id is not here and the hub is offline (conftest)
    problem = ("does not exist" if case in LOCAL_ONLY
               else "is not a local directory, and the hub is unreachable (offline)")
    assert f"lenvm-rl {argv[0]}: error: {named} {problem}" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "runs" / "out").exists() and not (tmp_path / "runs" / "out.jsonl").exists()


def test_looks_like_local_path():
    from lenvm_rl.data import looks_like_local_path

    assert not looks_like_local_path("Qwen/Qwen2.5-0.5B-Instruct")  # a hub id
    assert looks_like_local_path("./tiny-policy") and looks_like_local_path("/abs/tiny-policy")
    assert looks_like_local_path("runs/a/b")


def test_local_or_hub_does_not_depend_on_unrelated_folders(tmp_path, monkeypatch):
    from lenvm_rl.data import check_local_path, looks_like_local_path

    monkeypatch.chdir(tmp_path)
    before = looks_like_local_path("runs/tiny-polcy")
    (tmp_path / "runs").mkdir()
    assert looks_like_local_path("runs/tiny-polcy") == before is False
    with pytest.raises(FileNotFoundError, match=r"^policy tiny-policy is not a local directory, and the hub is "
                                                r"unreachable \(offline\)$"):
        check_local_path("tiny-policy", "policy")
    with pytest.raises(FileNotFoundError, match="^fit data runs/x.jsonl does not exist$"):
        check_local_path("runs/x.jsonl", "fit data", hub=False)
    (tmp_path / "runs" / "tiny-polcy").mkdir()
    check_local_path("runs/tiny-polcy", "policy")  # it exists now: nothing to say


def test_job_help_shows_the_project_options_and_counts_the_rest(capsys):
    assert main(["grpo", "--help"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) < 120, len(out.splitlines())
    assert "--length_coef (default: 0.125)" in out and "--help-all" in out
    assert "--per_device_train_batch_size" not in out  # TrainingArguments' options wait for --help-all
