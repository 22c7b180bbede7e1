"""Rollout generation on the built-in tiny policy: layout, split by prompt, resume after a crash, bad input."""

import json

import pytest

import lenvm_rl.rollout as rollout_module
from lenvm_rl.cli import main
from lenvm_rl.rollout import RolloutConfig, generate_rollouts, load_rollouts


@pytest.fixture()
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    with path.open("w") as handle:
        for i in range(9):
            handle.write(json.dumps({"question": f"what is {i} + {i}?", "id": i}) + "\n")
    return path


def config(tiny_model_dir, prompt_file, output_dir, **overrides):
    settings = dict(policy=str(tiny_model_dir), dataset=str(prompt_file), output_dir=str(output_dir),
                    prompt_column="question", num_samples=3, max_new_tokens=40, prompts_per_batch=2,
                    eval_fraction=0.34, seed=7)
    settings.update(overrides)
    return RolloutConfig(**settings)


def test_rollouts_layout_and_split(tiny_model_dir, tiny_tokenizer, prompt_file, tmp_path):
    splits = generate_rollouts(config(tiny_model_dir, prompt_file, tmp_path / "out"))
    assert set(splits) == {"train", "eval"}
    assert len(splits["train"]) + len(splits["eval"]) == 9 * 3
    train_prompts, eval_prompts = set(splits["train"]["prompt_index"]), set(splits["eval"]["prompt_index"])
    assert not train_prompts & eval_prompts and len(eval_prompts) == 3
    eos = tiny_tokenizer.eos_token_id
    all_rows = splits["train"].to_list() + splits["eval"].to_list()
    for row in all_rows:
        assert row["completion_length"] == len(row["completion_ids"])
        assert row["terminated"] == (row["completion_ids"][-1] == eos)
        assert eos not in row["completion_ids"][:-1]
        if not row["terminated"]:
            assert row["completion_length"] == 40
        # the chat template was applied: the prompt ends with the assistant marker
        assert tiny_tokenizer.decode(row["prompt_ids"]).endswith("<|assistant|>")
    assert any(row["terminated"] for row in all_rows) and not all(row["terminated"] for row in all_rows)
    _, info = load_rollouts(tmp_path / "out")
    assert info["settings"]["temperature"] == 1.0 and info["settings"]["num_samples"] == 3
    assert info["tokenizer_fingerprint"] and info["num_rows"] == 27
    assert not (tmp_path / "out.partial").exists()


def test_resume_after_a_crash_continues_without_duplicates(tiny_model_dir, prompt_file, tmp_path, monkeypatch):
    reference = generate_rollouts(config(tiny_model_dir, prompt_file, tmp_path / "reference"))

    real_generate = rollout_module._generate_chunk
    calls = {"n": 0}

    def crash_on_third_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("node preempted")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(rollout_module, "_generate_chunk", crash_on_third_chunk)
    with pytest.raises(RuntimeError, match="preempted"):
        generate_rollouts(config(tiny_model_dir, prompt_file, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    assert len(list((tmp_path / "out.partial").glob("chunk-*.parquet"))) == 2

    monkeypatch.setattr(rollout_module, "_generate_chunk", real_generate)
    resumed = generate_rollouts(config(tiny_model_dir, prompt_file, tmp_path / "out"))
    for split in ("train", "eval"):
        assert resumed[split].to_list() == reference[split].to_list()


def test_other_settings_never_overwrite(tiny_model_dir, prompt_file, tmp_path):
    generate_rollouts(config(tiny_model_dir, prompt_file, tmp_path / "out"))
    with pytest.raises(ValueError, match="other settings"):
        generate_rollouts(config(tiny_model_dir, prompt_file, tmp_path / "out", temperature=0.5))
    # same settings: the finished directory is returned as is
    again = generate_rollouts(config(tiny_model_dir, prompt_file, tmp_path / "out"))
    assert len(again["train"]) + len(again["eval"]) == 27


def test_conversational_prompts_and_greedy(tiny_model_dir, tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": [{"role": "user", "content": f"hi {i}"}]}) for i in range(3)))
    splits = generate_rollouts(RolloutConfig(policy=str(tiny_model_dir), dataset=str(path),
                                             output_dir=str(tmp_path / "out"), num_samples=2, temperature=0.0,
                                             max_new_tokens=8, eval_fraction=0.0))
    rows = splits["train"].to_list()
    assert len(rows) == 6 and "eval" not in splits
    # greedy: both samples of a prompt are identical
    assert rows[0]["completion_ids"] == rows[1]["completion_ids"]


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"prompt_column": "missing"}, ValueError, "prompt column 'missing' not found"),
        ({"num_samples": 0}, ValueError, "num_samples"),
        ({"top_p": 0.0}, ValueError, "top_p"),
        ({"backend": "sglang"}, ValueError, "backend"),
        ({"dataset": "/nonexistent/prompts.jsonl"}, FileNotFoundError, "does not exist"),
    ],
)
def test_bad_input(tiny_model_dir, prompt_file, tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        generate_rollouts(config(tiny_model_dir, prompt_file, tmp_path / "out", **overrides))
    assert not (tmp_path / "out").exists()


def test_empty_dataset_is_an_error(tiny_model_dir, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text(json.dumps({"question": "x"}) + "\n")
    empty = tmp_path / "empty.parquet"
    from datasets import Dataset

    Dataset.from_dict({"question": []}).to_parquet(str(empty))
    with pytest.raises(ValueError, match="empty"):
        generate_rollouts(config(tiny_model_dir, empty, tmp_path / "out"))


def test_cli_rollout(tiny_model_dir, prompt_file, tmp_path, capsys):
    assert main(["rollout", "--policy", str(tiny_model_dir), "--dataset", str(prompt_file), "--prompt_column",
                 "question", "--output_dir", str(tmp_path / "out"), "--num_samples", "2", "--max_new_tokens",
                 "5", "--max_prompts", "4"]) == 0
    assert "rollouts saved" in capsys.readouterr().out
    splits, info = load_rollouts(tmp_path / "out")
    assert info["num_prompts"] == 4 and info["num_rows"] == 8
    assert main(["rollout", "--policy", str(tiny_model_dir), "--dataset", str(prompt_file),
                 "--output_dir", str(tmp_path / "bad")]) == 2
    assert "prompt column 'prompt' not found" in capsys.readouterr().err


def test_device_names_are_checked_early():
    import torch

    from lenvm_rl.data import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda:0")
