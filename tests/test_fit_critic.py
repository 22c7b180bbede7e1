"""`lenvm-rl fit-critic`: one command from a policy and prompts to an evaluated critic, resumable, with sizing
advice and the same bad-input behaviour as every job."""

import json

import pytest
from _tiny_quickstart import ROOT, run_tiny_quickstart

from lenvm_rl.cli import main

PROMPTS = ROOT / "recipes" / "data" / "tiny_prompts.jsonl"


def test_fit_critic_beats_the_constant_baseline_and_resumes(tmp_path, capsys):
    policy = run_tiny_quickstart() / "runs" / "tiny-policy"
    argv = ["fit-critic", "--policy", str(policy), "--dataset", str(PROMPTS), "--output_dir", str(tmp_path / "c"),
            "--num_samples", "8", "--max_new_tokens", "96", "--max_steps", "150", "--batch_size", "16",
            "--learning_rate", "0.003", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "passes over the" in out and "γ auto from these lengths" in out
    metrics = json.loads((tmp_path / "c" / "eval" / "metrics.json").read_text())
    assert metrics["mre_vs_constant"] < 0.7, metrics  # the policy's lengths depend on the prompt: learnable
    assert (tmp_path / "c" / "eval" / "calibration.png").exists()
    stamp = (tmp_path / "c" / "critic" / "config.json").stat().st_mtime_ns
    assert main(argv) == 0  # a rerun finds every stage done
    assert (tmp_path / "c" / "critic" / "config.json").stat().st_mtime_ns == stamp
    assert f"ratio {metrics['mre_vs_constant']:.2f}" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--num_samples", "1"], "num_samples must be ≥ 2"),
    (["--eval_fraction", "0"], "eval_fraction must lie in (0, 1)"),
])
def test_fit_critic_bad_input(tiny_model_dir, tmp_path, capsys, flags, message):
    argv = ["fit-critic", "--policy", str(tiny_model_dir), "--dataset", str(PROMPTS), "--output_dir",
            str(tmp_path / "c"), *flags]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_fit_critic_missing_policy(tmp_path, capsys):
    argv = ["fit-critic", "--policy", str(tmp_path / "nope"), "--dataset", str(PROMPTS), "--output_dir",
            str(tmp_path / "c")]
    assert main(argv) == 2
    assert f"policy {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
