"""`lenvm-rl study` end to end on a tiny configuration: a report with every stage, resume after a crash without
redoing finished runs, a user-supplied `module:function` reward, and clear errors for bad recipes."""

import json
import re
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from lenvm_rl.cli import main
from lenvm_rl.study import claims
from lenvm_rl.study import runner as study_job

TINY = {
    "seeds": [0], "warmup_problems": 300, "warmup_steps": 20, "warmup_hidden_size": 32, "warmup_layers": 1,
    "critic_rollout_prompts": 16, "critic_rollout_samples": 2, "critic_steps": 4, "train_prompts": 32,
    "rl_steps": 2, "rl_prompts_per_step": 2, "rl_generations": 2, "eval_prompts": 8, "eval_samples": 2,
    "max_completion_length": 24, "bootstrap_samples": 20, "threads": 1, "smoke": True,
    "normalizations": ["batch"], "headline_method": "lenvm/batch",
    "methods": {"none": {"method": "none"},
                "linear/batch": {"method": "linear", "grid": [0.2], "options": {"scale_rewards": "batch"}},
                "lenvm": {"method": "lenvm", "grid": [1.0]}},
}


def write_recipe(path, **overrides):
    recipe = {**TINY, **overrides}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def numbers(out):
    """What a report says, without wall times: per-run summaries and the report's point estimates."""
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
    return rows, json.loads((out / "report.json").read_text())["point"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted tiny study (shared by the tests that only read it)."""
    root = tmp_path_factory.mktemp("study")
    recipe = write_recipe(root / "recipe.yaml", output_dir=str(root / "out"))
    assert main(["study", "--config", str(recipe)]) == 0
    return root / "out"


def test_tiny_study_end_to_end(finished):
    report = (finished / "report.md").read_text()
    assert report.splitlines()[0].startswith("> **SMOKE TEST.**")  # the banner before any number
    assert report.splitlines()[2].startswith("Headline: ")
    for section in ("## Tokens at matched accuracy", "## Accuracy at matched tokens", "## Every configuration",
                    "## Critic", "## Stage wall times", "ideal (analytic)", "starting policy"):
        assert section in report, section
    rows = [json.loads(line) for line in (finished / "results.jsonl").read_text().splitlines()]
    assert {(r["variant"], r["coef"], r["seed"]) for r in rows} == {("none", 0.0, 0), ("linear/batch", 0.2, 0),
                                                                    ("lenvm/batch", 1.0, 0)}
    for row in rows:
        assert 0.0 <= row["accuracy"] <= 1.0 and 1 <= row["mean_tokens"] <= 24
        assert set(row["by_difficulty"]) <= {str(bits) for bits in range(2, 9)} and len(row["by_difficulty"]) >= 3
        assert "greedy_accuracy" in row and "check_rate" in row
    assert (finished / "accuracy_vs_tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (finished / "critic" / "config.json").exists()
    # the critic's weights are recorded, so one rebuilt from a fresh clone can be checked against them
    recorded = json.loads((finished / "critic_metrics.json").read_text())["weights_sha256"]
    assert recorded == study_job._weights_digest(finished / "critic") and len(recorded) == 16
    results = [json.loads(path.read_text()) for path in (finished / "runs").rglob("result.json")]
    read = {(result["label"], result["coef"], result["seed"]): result["critic_weights_sha256"] for result in results}
    # each run names the critic it read
    assert read == {("none", 0.0, 0): None, ("linear/batch", 0.2, 0): None, ("lenvm/batch", 1.0, 0): recorded}


def test_rerun_after_a_crash_redoes_nothing_and_reports_the_same(finished, tmp_path, monkeypatch, capsys):
    recipe = write_recipe(tmp_path / "recipe.yaml", output_dir=str(tmp_path / "out"))
    real_run = study_job._rl_run
    calls = []

    def crash_on_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-study")
        return real_run(*args, **kwargs)

    monkeypatch.setattr(study_job, "_rl_run", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        main(["study", "--config", str(recipe)])
    done = list((tmp_path / "out" / "runs").rglob("result.json"))
    assert len(done) == 1
    assert not list((tmp_path / "out").rglob("*claim*"))  # the crash let go of its claims
    calls.clear()
    monkeypatch.setattr(study_job, "_rl_run", lambda *a, **k: calls.append(a[1]) or real_run(*a, **k))
    # another live process holds the 'linear' run: this one skips it, then takes it once that process is gone
    claim = study_job._run_dir(tmp_path / "out", "linear/batch", 0.2, 0) / study_job.RUN_CLAIM
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        claim.parent.mkdir(parents=True, exist_ok=True)
        claim.write_text(json.dumps({**claims._machine(), "pid": other.pid, "since": 0.0}))
        # the finished run as if it had taken 10 minutes: what is left is read from it
        result_file = next((tmp_path / "out" / "runs").rglob("result.json"))
        result_file.write_text(json.dumps({**json.loads(result_file.read_text()), "seconds": 600.0}))
        capsys.readouterr()
        assert main(["study", "--config", str(recipe), "--status"]) == 0
        status = capsys.readouterr().out.splitlines()
        assert status[0].startswith("run ") and status[1].split() == ["shared", "stages", "done"]
        assert status[2].startswith("none 0 seed 0") and "finished" in status[2]
        assert "running " in status[3] and f"pid {other.pid}" in status[3]
        assert status[4].split()[-1] == "pending" and status[-2] == "3 runs: 1 finished, 1 running, 1 pending"
        # what is left: the pending run, as long as the one finished run took (the running one, claimed at time 0,
        # is past its expected time)
        assert status[-1].startswith("left: about 10 min of runs (divide by the processes")
        assert main(["study", "--config", str(recipe)]) == 0
        assert calls == ["lenvm/batch"]
    finally:
        other.kill()
        other.wait()
    assert main(["study", "--config", str(recipe)]) == 0
    assert calls == ["lenvm/batch", "linear/batch"]  # the finished 'none' run was never redone
    assert numbers(tmp_path / "out") == numbers(finished)


def test_user_supplied_reward_function_is_imported_and_used(tmp_path, monkeypatch):
    module = tmp_path / "my_rewards.py"
    module.write_text(textwrap.dedent("""
        from pathlib import Path

        from lenvm_rl.tasks import checked_parity_correctness

        def strict_sum(completions, answer, **kwargs):
            Path(__file__).with_name("called").touch()
            return checked_parity_correctness(completions, answer)
    """))
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "recipe.yaml", output_dir=str(tmp_path / "out"),
                          reward_funcs=["my_rewards:strict_sum"], methods={"none": {"method": "none"}},
                          critic=str(tmp_path / "unused"), eval_greedy=False)
    assert main(["study", "--config", str(recipe)]) == 0
    assert (tmp_path / "called").exists()
    config = json.loads((tmp_path / "out" / "study_config.json").read_text())["config"]
    assert config["reward_funcs"] == ["my_rewards:strict_sum"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"methods": {"none": {"method": "none"}, "x": {"method": "shortest", "grid": [1]}}},
         "methods.x: unknown method 'shortest'"),
        ({"methods": {"none": {"method": "none"}, "lin": {"method": "linear", "grid": []}}},
         "methods.lin: grid is empty"),
        ({"methods": {"none": {"method": "none"}, "lin": {"method": "linear", "grid": [0.1],
                                                           "options": {"scale_reward": "batch"}}}},
         "methods.lin: ['scale_reward'] are not LenVMGRPOConfig fields"),
        ({"methods": {"lin": {"method": "linear", "grid": [0.1]}}}, "must include a 'none' variant"),
        ({"reward_funcs": ["no_such_module:reward"]}, "cannot import reward function 'no_such_module:reward'"),
        ({"seeds": []}, "seeds is empty"),
    ],
)
def test_bad_recipes_fail_with_a_clear_error(tmp_path, capsys, overrides, message):
    recipe = write_recipe(tmp_path / "recipe.yaml", output_dir=str(tmp_path / "out"), **overrides)
    assert main(["study", "--config", str(recipe)]) == 2
    assert message in capsys.readouterr().err


def test_missing_prompt_column_is_named(tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"question": f"add {i} {i}", "answer": str(2 * i)}) + "\n" for i in range(20)))
    recipe = write_recipe(tmp_path / "recipe.yaml", output_dir=str(tmp_path / "out"), dataset=str(data),
                          policy=str(tmp_path), eval_prompts=4, reward_funcs=["arithmetic_correctness"])
    assert main(["study", "--config", str(recipe)]) == 2
    assert "prompt column 'prompt' not found" in capsys.readouterr().err


def test_a_dataset_without_its_reward_is_refused_before_anything_runs(tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"prompt": "add 1 1", "answer": "2"}) + "\n")
    recipe = write_recipe(tmp_path / "recipe.yaml", output_dir=str(tmp_path / "out"), dataset=str(data),
                          policy=str(tmp_path))
    assert main(["study", "--config", str(recipe)]) == 2
    assert "reward_funcs: name the correctness reward of dataset" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_changed_run_settings_are_refused(finished, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "recipe.yaml", output_dir=str(finished), rl_steps=3, report_only=True)
    assert main(["study", "--config", str(recipe)]) == 2
    assert "rl_steps: 2 → 3" in capsys.readouterr().err


def test_a_ppo_variant_can_start_from_a_task_critic_pretrained_on_the_rollouts(tmp_path):
    methods = {"none": {"method": "none"},
               "ppo_lenvm/pretrained": {"method": "ppo_lenvm", "grid": [1.0],
                                        "options": {"task_critic_model_name_or_path": "pretrained"}}}
    recipe = write_recipe(tmp_path / "recipe.yaml", output_dir=str(tmp_path / "out"), methods=methods,
                          task_critic_steps=30, eval_greedy=False)
    assert main(["study", "--config", str(recipe)]) == 0
    out = tmp_path / "out"
    assert (out / "task-critic" / "config.json").exists()
    metrics = json.loads((out / "task_critic_metrics.json").read_text())
    assert metrics["last_loss"] < metrics["first_loss"]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {row["variant"] for row in rows} == {"none", "ppo_lenvm/pretrained"}


@pytest.mark.parametrize("recipe", ["recipes/study/confirmatory.yaml", "recipes/study/sweep.yaml",
                                    "recipes/study/v3_sweep.yaml", "recipes/study/multi_parity_sweep.yaml",
                                    "recipes/study/v3_long_budget.yaml",
                                    "recipes/study/multi_parity_confirmatory.yaml",
                                    "recipes/budget/checked_parity_budget_sweep.yaml",
                                    "recipes/budget/checked_parity_budget_confirmatory.yaml",
                                    "recipes/budget/smollm2_budget_sweep.yaml",
                                    "recipes/smollm2/study_sweep.yaml",
                                    "recipes/budget/multi_parity_budget_sweep.yaml"])
def test_shipped_study_recipes_are_valid(recipe):
    from pathlib import Path

    from trl import TrlParser

    from lenvm_rl.study.methods import METHODS

    path = Path(__file__).resolve().parents[1] / recipe
    (config,) = TrlParser((study_job.StudyConfig,)).parse_args_and_config(["--config", str(path)])
    assert {variant["method"] for variant in config.methods.values()} <= set(METHODS)
    assert "none" in config.methods and len(config.seeds) >= (5 if "confirmatory" in recipe else 1)
    # the header's own commands on this recipe (a split with --only, the preregister call) parse too: labels and
    # flags exist
    header = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
    splits = [line.split(f"lenvm-rl study --config {recipe}", 1)[1].split("`")[0].split() for line in header
              if f"lenvm-rl study --config {recipe}" in line]
    for flags in splits:
        TrlParser((study_job.StudyConfig,)).parse_args_and_config(["--config", str(path), *flags])
    assert splits, "the header says how to run this recipe"
    from lenvm_rl.scripts.preregister import PreregisterArguments

    for command in re.findall(r"`lenvm-rl preregister ([^`]*)`", " ".join(header)):
        TrlParser((PreregisterArguments,)).parse_args_and_config(command.split())


def test_preregister_writes_a_confirmatory_recipe_the_study_accepts(finished, tmp_path):
    from trl import TrlParser

    output = tmp_path / "confirmatory.yaml"
    assert main(["preregister", "--sweep", str(finished), "--output", str(output), "--output_dir",
                 str(tmp_path / "confirm"), "--eval_greedy", "false"]) == 0
    (config,) = TrlParser((study_job.StudyConfig,)).parse_args_and_config(["--config", str(output)])
    assert (config.headline_method, config.comparator_method) == ("lenvm/batch", "linear/batch")
    sweep_greedy = json.loads((finished / "study_config.json").read_text())["config"]["eval_greedy"]
    assert sweep_greedy and not config.eval_greedy  # the flag overrides the sweep's setting
    assert config.preregistration["sweep_seeds"] == [0] and config.seeds == [200, 201, 202, 203, 204]
    assert config.policy == str(finished / "policy") and config.critic == str(finished / "critic")
    assert set(config.methods) == {"none", "linear/batch", "lenvm/batch", "lenvm_seq/batch"}
    assert len(config.methods["lenvm/batch"]["grid"]) == 4
    header = " ".join(line.removeprefix("# ") for line in output.read_text().split("\noutput_dir:")[0].splitlines())
    assert f"Needs the sweep's critic at {finished / 'critic'}:" in header
    runs = len(config.seeds) * sum(len(variant.get("grid") or [0]) for variant in config.methods.values())
    assert re.search(rf"Expected wall time: about \d+ minutes on one process \({runs} runs × about \d+ min",
                     header), header


@pytest.mark.parametrize("flags, message", [
    (["--seeds", "0", "1", "2", "3", "4"], "seeds [0] were used by the sweep"),
    (["--seeds", "7", "8"], "needs ≥ 5 seeds"),
])
def test_preregister_refuses_bad_seeds(finished, tmp_path, capsys, flags, message):
    assert main(["preregister", "--sweep", str(finished), "--output", str(tmp_path / "c.yaml"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c.yaml").exists()


def test_preregister_needs_a_finished_sweep(tmp_path, capsys):
    assert main(["preregister", "--sweep", str(tmp_path / "nothing"), "--output", str(tmp_path / "c.yaml")]) == 2
    assert "must be the output_dir of a finished `lenvm-rl study`" in capsys.readouterr().err


def test_a_rerun_that_skips_every_run_keeps_the_stage_times(finished, tmp_path):
    import shutil

    out = tmp_path / "again"
    shutil.copytree(finished, out)
    recipe = write_recipe(tmp_path / "recipe.yaml", output_dir=str(out))
    assert main(["study", "--config", str(recipe)]) == 0
    report = (out / "report.md").read_text()
    assert "## Stage wall times" in report and "| warm-up |" in report


def test_stop_by_starts_no_run_that_would_end_after_it(finished, tmp_path, monkeypatch, capsys):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished, out)
    pending = study_job._run_dir(out, "linear/batch", 0.2, 0) / study_job.RESULT_FILE
    pending.unlink()
    recipe = write_recipe(tmp_path / "recipe.yaml", output_dir=str(out))
    calls = []
    real_run = study_job._rl_run
    monkeypatch.setattr(study_job, "_rl_run", lambda *a, **k: calls.append(a[1]) or real_run(*a, **k))
    # a run another live process holds is that process's: not one this process left for later
    claim = pending.parent / study_job.RUN_CLAIM
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        claim.write_text(json.dumps({**claims._machine(), "pid": other.pid, "since": time.time()}))
        capsys.readouterr()
        assert main(["study", "--config", str(recipe), "--stop_by", "+0"]) == 0
        said = "".join(capsys.readouterr())
        assert "linear/batch 0.2 seed 0: skipped" in said and "not started" not in said
    finally:
        other.kill()
        other.wait()
        claim.unlink()
    # no finished 'linear' run: it may take as long as the longest finished run (> 0 s)
    assert main(["study", "--config", str(recipe), "--stop_by", "+0"]) == 0
    said = "".join(capsys.readouterr())
    assert calls == [] and not pending.exists()
    assert "linear/batch 0.2 seed 0: not started, stop_by (+0) is 0 min away and it may take" in said
    assert said.count("stop_by +0: 1 run(s) not started; rerun the command to run them") == 1
    assert (out / "report.md").exists()
    assert main(["study", "--config", str(recipe), "--stop_by", "+600"]) == 0  # ten hours is time enough
    assert calls == ["linear/batch"] and pending.exists()


def test_stop_by_reads_minutes_from_now_or_a_local_time(tmp_path, capsys):
    from datetime import datetime

    assert study_job._parse_stop_by("+90", now=1000.0) == 1000.0 + 90 * 60
    assert study_job._parse_stop_by("2026-12-03T16:05") == datetime(2026, 12, 3, 16, 5).timestamp()  # local time
    assert study_job._parse_stop_by("2026-12-03T16:05+01:00") == 1796310300.0  # 15:05 UTC
    assert study_job._parse_stop_by("2026-12-03T15:05Z") == 1796310300.0
    assert study_job._parse_stop_by(None) is None
    for bad, message in [("+soon", "is not +MINUTES"), ("+-5", "is not +MINUTES"), ("16h05", "is neither")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            study_job._parse_stop_by(bad)
    recipe = write_recipe(tmp_path / "recipe.yaml", output_dir=str(tmp_path / "out"))
    assert main(["study", "--config", str(recipe), "--stop_by", "tomorrow"]) != 0
    assert "stop_by: 'tomorrow' is neither" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written
    results = [{"label": "a", "coef": 1.0, "seconds": 10.0}, {"label": "a", "coef": 2.0, "seconds": 30.0},
               {"label": "a", "coef": 2.0, "seconds": 50.0}]
    assert study_job._expected_seconds(results, "a", 2.0) == 40.0  # the same variant and coefficient
    assert study_job._expected_seconds(results, "a", 2.0, longest=True) == 50.0
    assert study_job._expected_seconds(results, "b", 1.0) == 30.0  # else every finished run
    assert study_job._expected_seconds(results + [{"label": "b", "coef": 1.0}], "b", 1.0) == 30.0  # untimed: skipped
    assert study_job._expected_seconds([], "a", 1.0) is None


def test_recipe_key_typo_names_the_nearest_field(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "recipe.yaml", output_dir=str(tmp_path / "out"))
    recipe.write_text(recipe.read_text().replace("seeds:", "seed:"))
    assert main(["study", "--config", str(recipe)]) == 2
    assert "unknown field 'seed'; did you mean 'seeds'?" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_length_bonus_grid_is_refused(tmp_path, capsys):
    methods = {"none": {"method": "none"}, "lin": {"method": "linear", "grid": [-0.5],
                                                   "options": {"scale_rewards": "batch"}}}
    recipe = write_recipe(tmp_path / "recipe.yaml", output_dir=str(tmp_path / "out"), methods=methods)
    assert main(["study", "--config", str(recipe)]) == 2
    assert "makes a length method reward length" in capsys.readouterr().err


def test_the_long_task_runs_through_the_same_harness_and_its_preregistration_keeps_the_task(tmp_path):
    """task: multi_parity goes through every stage a real run takes (warm-up on its data, critic, task critic, GRPO,
    its diagnostics and segment rates in the report), and a confirmatory recipe written from it stays on it."""
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "recipe.yaml", output_dir=str(out), task="multi_parity", max_completion_length=64,
        task_critic_steps=4, warmup_problems=200, warmup_steps=10,
        headline_method="lenvm_task/batch", ablation_method="lenvm_seq/batch",
        methods={"none": {"method": "none"}, "kimi": {"method": "kimi", "grid": [0.4]},
                 "lenvm_task": {"method": "lenvm_task", "grid": [0.5]}})
    assert main(["study", "--config", str(recipe)]) == 0
    report = (out / "report.md").read_text()
    assert "trace long rate | trace short rate | check rate" in report
    assert "| bits of the first string (its part's accuracy) |" in report
    critic = json.loads((out / "critic_metrics.json").read_text())
    assert set(critic["decisions"]) <= {"first token", "after an answer"} and "first token" in critic["decisions"]
    table = json.loads((out / "eval_prompts.json").read_text())
    assert table["ideal_structure"] == {"trace_long": 1.0, "trace_short": 0.0, "check": 0.0}
    assert all(25 <= tokens <= 260 for tokens in table["ideal_tokens"])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {row["variant"] for row in rows} == {"none", "kimi/batch", "lenvm_task/batch"}
    # a segment no completion of this 10-step warm-up parses into has no rate (not NaN); the rest are the task's
    rates = {key: value for row in rows for key, value in row.items() if key.endswith("_rate")}
    assert set(rates) <= {"trace_long_rate", "trace_short_rate", "check_rate"}
    assert all(0.0 <= value <= 1.0 for value in rates.values())

    confirmatory = tmp_path / "confirmatory.yaml"
    assert main(["preregister", "--sweep", str(out), "--output", str(confirmatory), "--output_dir",
                 str(tmp_path / "conf"), "--seeds", "1", "2", "3", "4", "5", "--grid_points", "3"]) == 0
    written = yaml.safe_load(confirmatory.read_text())
    assert written["task"] == "multi_parity" and written["policy"] == str(out / "policy")
    assert written["methods"]["lenvm_task/batch"]["grid"] == pytest.approx([0.25, 0.5, 1.0])
    assert written["methods"]["lenvm_task/batch"]["options"]["task_critic_model_name_or_path"] == str(
        out / "task-critic")
    from trl import TrlParser

    (config,) = TrlParser((study_job.StudyConfig,)).parse_args_and_config(["--config", str(confirmatory)])
    assert config.study_task().name == "multi_parity"


def test_a_lora_study_on_chat_prompts_with_its_own_tokenizer(tmp_path, tiny_model_dir, capsys):
    """The real-model path on a tiny model: chat-message prompts with an answer column, a reward reading it, a
    tokenizer from its own directory, LoRA adapters through TRL's peft_config (recorded per run: a small fraction
    of the parameters trains), nucleus sampling, compacted decoding, and the LenVM critic given as a directory."""
    from transformers import AutoTokenizer

    from lenvm_rl import LengthValueModel

    data, held_out = tmp_path / "prompts.jsonl", tmp_path / "held_out.jsonl"
    for path, numbers in ((data, range(4, 24)), (held_out, range(4))):
        path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"add {i} {i}"}],
                                            "answer": str(2 * i)}) + "\n" for i in numbers))
    tokenizer_dir = tmp_path / "tokenizer"
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tokenizer_dir)
    critic = tmp_path / "critic"
    LengthValueModel.from_backbone(tiny_model_dir, gamma=0.9).save_pretrained(critic)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "recipe.yaml", output_dir=str(out), dataset=str(data),
                          eval_dataset=str(held_out),
                          policy=str(tiny_model_dir), tokenizer_name_or_path=str(tokenizer_dir), critic=str(critic),
                          difficulty_column=None, eval_prompts=4, reward_funcs=["arithmetic_correctness"],
                          use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"], top_p=0.9,
                          max_completion_length=12, eval_greedy=False, normalizations=None,
                          compact_generation=True,
                          headline_method="lenvm", methods={"none": {"method": "none"},
                                                            "lenvm": {"method": "lenvm", "grid": [0.5]}})
    assert main(["study", "--config", str(recipe)]) == 0
    results = [json.loads(path.read_text()) for path in sorted((out / "runs").rglob("result.json"))]
    assert {r["label"] for r in results} == {"none", "lenvm"}
    for result in results:
        assert 0 < result["trainable_parameters"] < 0.2 * result["parameters"]
    saved = json.loads((out / "study_config.json").read_text())["fingerprint"]
    assert saved["use_peft"] is True and saved["lora_target_modules"] == ["q_proj", "v_proj"]
    assert saved["compact_generation"] is True
    assert all(len(r["eval"]["correct"]) == 4 for r in results)  # the held-out file, all of it
    # a held-out file that repeats training prompts is refused, naming it
    held_out.write_text(data.read_text().splitlines()[0] + "\n")
    repeat = write_recipe(tmp_path / "repeat.yaml", **{**yaml.safe_load(recipe.read_text()),
                                                       "output_dir": str(tmp_path / "repeat")})
    capsys.readouterr()
    assert main(["study", "--config", str(repeat)]) == 2
    assert "1 evaluation prompts are also training prompts of" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, message", [
    ({"lora_r": 8}, "['lora_r'] are LoRA options and use_peft is false"),
    ({"top_p": 0.0}, "top_p must lie in (0, 1], got 0.0"),
    ({"tokenizer_name_or_path": "/no/such/tokenizer"}, "tokenizer_name_or_path /no/such/tokenizer does not exist"),
    ({"eval_dataset": "held_out.jsonl"}, "eval_dataset holds the held-out prompts of a dataset of your own"),
])
def test_real_model_options_are_checked(tmp_path, capsys, overrides, message):
    recipe = write_recipe(tmp_path / "recipe.yaml", output_dir=str(tmp_path / "out"), **overrides)
    assert main(["study", "--config", str(recipe)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_confirmatory_recipe_carries_every_run_setting_of_its_sweep():
    """Every run setting is either shared with the sweep verbatim or written by preregister itself (the sweep's
    policy and critic by path, the confirmatory's own seeds and evaluation size); one added to the study and
    forgotten here would silently fall back to its default in the confirmatory study."""
    from lenvm_rl.scripts.preregister import _SHARED

    written = {"policy", "critic", "eval_prompts", "eval_samples"}
    # the sweep's own warm-up and critic training: the confirmatory study reads their results by path
    built_by_the_sweep = {name for name in study_job._RUN_FIELDS
                          if name.startswith(("warmup_", "critic_", "task_critic_"))}
    missing = set(study_job._RUN_FIELDS) - set(_SHARED) - written - built_by_the_sweep
    assert not missing, missing


def test_a_rebuilt_critic_that_differs_from_the_recorded_one_is_reported(finished, tmp_path, capsys):
    record = tmp_path / "critic_metrics.json"
    digest = study_job._weights_digest(finished / "critic")
    record.write_text(json.dumps({"weights_sha256": digest}))
    assert study_job._checked_critic_digest(finished / "critic", record) == digest
    assert "warning" not in capsys.readouterr().err
    record.write_text(json.dumps({"weights_sha256": "0" * 16}))
    assert study_job._checked_critic_digest(finished / "critic", record) == digest
    assert f"(weights {digest}) is not the one {record} records ({'0' * 16})" in capsys.readouterr().err


def test_while_another_process_holds_the_shared_stages_the_runs_that_need_none_of_them_go_ahead(
        finished, tmp_path, monkeypatch, capsys):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished, out)
    for result in (out / "runs").rglob("result.json"):
        result.unlink()
    recipe = write_recipe(tmp_path / "recipe.yaml", output_dir=str(out))
    # it holds the stages for a while only: were nothing run meanwhile, the study would wait for it, then fail
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(90)"])
    calls = []
    real_run = study_job._rl_run

    def run_and_note(*args, **kwargs):
        calls.append((args[1], other.poll() is None))  # (variant, did the other process still hold the stages?)
        result = real_run(*args, **kwargs)
        if len(calls) == 2:  # the shared stages' holder goes away after the two runs that need no critic
            other.kill()
            other.wait()
        return result

    monkeypatch.setattr(study_job, "_rl_run", run_and_note)
    try:
        (out / study_job.SETUP_CLAIM).write_text(json.dumps({**claims._machine(), "pid": other.pid, "since": 0.0}))
        capsys.readouterr()
        assert main(["study", "--config", str(recipe)]) == 0
    finally:
        other.kill()
        other.wait()
    assert "meanwhile running the 2 pending run(s) that need none of them" in capsys.readouterr().err
    # the critic-free runs went ahead under the other process's claim; the LenVM run waited for the shared stages
    assert calls == [("none", True), ("linear/batch", True), ("lenvm/batch", False)]
    assert numbers(out) == numbers(finished)
