"""The `lenvm-rl` entry point: subcommands, YAML recipes with CLI overrides, and clear errors."""

import subprocess
import sys

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
