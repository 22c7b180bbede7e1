"""Tokenizers that corrupt prompts are caught: the round-trip check (rollout, predict-length, grpo/ppo), richer
fingerprints that say what differs, and `tokenizer_name_or_path` to load the right one.

The repro of the issue: a policy directory with `model_type: qwen2` and the character vocabulary (space included).
transformers 5 loads its tokenizer as Qwen2Tokenizer, whose byte-level pre-tokenizer drops the spaces, so
"add 3 2 8 7 9?" is encoded as "add32879?"."""

import json
import warnings

import pytest
from transformers import AutoTokenizer

from lenvm_rl.cli import main
from lenvm_rl.data import (
    TokenizerFingerprint,
    check_prompt_round_trip,
    check_same_tokenizer,
    render_prompt,
    tokenizer_fingerprint,
    tokenizer_record,
)
from lenvm_rl.rollout import ROLLOUT_INFO_FILE, RolloutConfig, generate_rollouts, load_rollouts
from lenvm_rl.tiny import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizers(tiny_model_dirs):
    return {arch: AutoTokenizer.from_pretrained(tiny_model_dirs[arch]) for arch in ("llama", "qwen2")}


@pytest.fixture()
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"add 3 2 8 7 {i}?", "answer": str(20 + i)}) + "\n"
                            for i in range(4)))
    return path


def test_the_repro_tokenizer_drops_spaces(tokenizers):
    """The premise of the tests below; if transformers stops swapping the tokenizer, they test nothing."""
    qwen = tokenizers["qwen2"]
    assert type(qwen).__name__ == "Qwen2Tokenizer"
    assert qwen.decode(qwen("3 2 8 7 9?", add_special_tokens=False)["input_ids"]) == "32879?"


def test_round_trip_warns_with_a_concrete_example(tokenizers):
    texts = [render_prompt(tokenizers["qwen2"], f"add 3 2 8 7 {i}?")[0] for i in range(5)]
    with pytest.warns(UserWarning, match="does not round-trip 5 of 5") as caught:
        assert not check_prompt_round_trip(tokenizers["qwen2"], texts, "rollout")
    message = str(caught[0].message)
    assert "add 3 2 8 7 0?" in message and "add32870?" in message and "Qwen2Tokenizer" in message


def test_round_trip_passes_a_faithful_tokenizer(tokenizers):
    texts = [render_prompt(tokenizers["llama"], f"add 3 2 8 7 {i}?\n  indented")[0] for i in range(5)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_prompt_round_trip(tokenizers["llama"], texts, "rollout")


class _BosTokenizer:
    """Renders special tokens with extra spaces and adds a BOS, as sentencepiece tokenizers do; text is kept."""

    all_special_tokens = ["<s>", "<|user|>"]

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": list(range(len(text)))}

    def __init__(self, lose=None):
        self.lose = lose
        self.last = None

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=False):
        text = self.last.replace("<|user|>", " <|user|> ")
        return "<s> " + (text.replace(self.lose, "") if self.lose else text)


def test_round_trip_tolerates_special_token_rendering_but_not_lost_text():
    faithful = _BosTokenizer()
    faithful.last = "<|user|>add 3 5"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_prompt_round_trip(faithful, [faithful.last], "x")
    lossy = _BosTokenizer(lose="5")
    lossy.last = "<|user|>add 3 5"
    with pytest.warns(UserWarning, match="does not round-trip"):
        assert not check_prompt_round_trip(lossy, [lossy.last], "x")


def test_rollout_warns_and_tokenizer_name_or_path_fixes_it(tiny_model_dirs, prompt_file, tmp_path):
    settings = dict(policy=str(tiny_model_dirs["qwen2"]), dataset=str(prompt_file), num_samples=1,
                    max_new_tokens=4, eval_fraction=0.0)
    with pytest.warns(UserWarning, match=r"rollout .*does not round-trip.*add32870\?"):
        generate_rollouts(RolloutConfig(output_dir=str(tmp_path / "bad"), **settings))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        splits = generate_rollouts(RolloutConfig(output_dir=str(tmp_path / "good"),
                                                 tokenizer_name_or_path=str(tiny_model_dirs["llama"]), **settings))
    prompt = build_tiny_tokenizer().decode(splits["train"][0]["prompt_ids"])
    assert "add 3 2 8 7 0?" in prompt
    _, info = load_rollouts(tmp_path / "good")
    assert info["settings"]["tokenizer_name_or_path"] == str(tiny_model_dirs["llama"])


def test_rollout_info_records_the_tokenizer_and_old_files_still_load(tiny_model_dirs, prompt_file, tmp_path):
    generate_rollouts(RolloutConfig(policy=str(tiny_model_dirs["llama"]), dataset=str(prompt_file),
                                    output_dir=str(tmp_path / "out"), num_samples=1, max_new_tokens=4,
                                    eval_fraction=0.0))
    info = json.loads((tmp_path / "out" / ROLLOUT_INFO_FILE).read_text())
    record = info["tokenizer_record"]
    assert record["fingerprint"] == info["tokenizer_fingerprint"]
    assert record["class"] and record["vocab_size"] == len(build_tiny_tokenizer())
    assert record["special_tokens"]["eos_token"] == ["<|eos|>", 1] and record["probe_ids"]
    _, loaded = load_rollouts(tmp_path / "out")
    assert isinstance(loaded["tokenizer_fingerprint"], TokenizerFingerprint)
    assert loaded["tokenizer_fingerprint"].record == record
    # an older rollout_info.json holds only the hash: still loads, compared by hash only
    del info["tokenizer_record"]
    (tmp_path / "out" / ROLLOUT_INFO_FILE).write_text(json.dumps(info))
    _, old = load_rollouts(tmp_path / "out")
    assert old["tokenizer_fingerprint"] == record["fingerprint"] and old["tokenizer_fingerprint"].record is None
    check_same_tokenizer(old["tokenizer_fingerprint"], build_tiny_tokenizer(), "old rollouts vs critic")


def test_fingerprints_tell_an_other_pre_tokenizer_apart_and_say_how(tokenizers):
    # same vocabulary, so the old hash alone cannot tell them apart ...
    assert str(tokenizer_fingerprint(tokenizers["llama"])) == str(tokenizer_fingerprint(tokenizers["qwen2"]))
    check_same_tokenizer(str(tokenizer_fingerprint(tokenizers["llama"])), tokenizers["qwen2"], "hash only")
    # ... but the record can
    with pytest.raises(ValueError, match="tokenizers differ") as caught:
        check_same_tokenizer(tokenizer_fingerprint(tokenizers["llama"]), tokenizers["qwen2"], "critic vs policy")
    message = str(caught.value)
    assert message.startswith("critic vs policy: tokenizers differ (same vocabulary")
    assert "Qwen2Tokenizer" in message and type(tokenizers["llama"]).__name__ in message
    assert "differently from token 3 on: [7, 26," in message  # "Add" then " " (id 7) vs no space
    check_same_tokenizer(tokenizer_record(tokenizers["llama"]), tokenizers["llama"], "same")


def test_fingerprint_mismatch_names_vocab_size_and_special_tokens(tokenizers):
    bigger = build_tiny_tokenizer()
    bigger.add_tokens(["<|extra|>"])
    with pytest.raises(ValueError, match=r"vocab size \d+ vs \d+") as caught:
        check_same_tokenizer(tokenizer_fingerprint(tokenizers["llama"]), bigger, "rollouts vs critic")
    assert "fingerprint" in str(caught.value) and "same vocabulary" not in str(caught.value)
    other_eos = build_tiny_tokenizer()
    other_eos.eos_token = "<|pad|>"
    with pytest.raises(ValueError, match=r"eos_token \['<\|eos\|>', 1\] vs \['<\|pad\|>', 0\]"):
        check_same_tokenizer(tokenizer_fingerprint(tokenizers["llama"]), other_eos, "rollouts vs critic")
    # an old hash-only record says what it can
    with pytest.raises(ValueError, match="recorded only a hash"):
        check_same_tokenizer("0123456789abcdef", tokenizers["llama"], "old rollouts vs critic")


def test_predict_length_warns_on_a_corrupting_tokenizer(tiny_model_dirs, tmp_path):
    from lenvm_rl import LengthValueModel

    critic = tmp_path / "critic"
    LengthValueModel.from_backbone(tiny_model_dirs["llama"], gamma=0.95).save_pretrained(critic)
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"prompt": "add 3 2 8 7 9?"}) + "\n")
    argv = ["predict-length", "--critic", str(critic), "--dataset", str(data), "--output_file",
            str(tmp_path / "out.jsonl"), "--device", "cpu"]
    with pytest.warns(UserWarning, match=r"predict-length .*add32879\?"):
        assert main([*argv, "--tokenizer", str(tiny_model_dirs["qwen2"])]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert main([*argv, "--tokenizer", str(tiny_model_dirs["llama"])]) == 0


def test_grpo_job_checks_the_dataset_prompts(tokenizers):
    from lenvm_rl.scripts.grpo import check_dataset_prompts

    prompts = ["add 3 2 8 7 9?", [{"role": "user", "content": "add 1 2 3"}]]
    with pytest.warns(UserWarning, match=r"does not round-trip 2 of 2"):
        assert not check_dataset_prompts(tokenizers["qwen2"], prompts, "grpo prompts")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert check_dataset_prompts(tokenizers["llama"], prompts, "grpo prompts")


def test_grpo_job_loads_tokenizer_name_or_path_and_warns_without_it(tiny_model_dirs, prompt_file, tmp_path):
    """The qwen2 repro policy through `lenvm-rl grpo`'s job: its own tokenizer corrupts the prompts (warning); with
    `tokenizer_name_or_path` the trainer gets the faithful one as its processing class."""
    from trl import ModelConfig

    from lenvm_rl import LenVMGRPOConfig
    from lenvm_rl.scripts.grpo import GRPOScriptArguments, run_grpo

    def run(name, **script):
        args = LenVMGRPOConfig(output_dir=str(tmp_path / name), max_steps=1, length_mode="none",
                               per_device_train_batch_size=4, num_generations=4, max_completion_length=4,
                               use_cpu=True, bf16=False, report_to="none", beta=0.0, save_strategy="no",
                               disable_tqdm=True)
        return run_grpo(GRPOScriptArguments(dataset_name=str(prompt_file), reward_funcs=["arithmetic_correctness"],
                                            **script),
                        args, ModelConfig(model_name_or_path=str(tiny_model_dirs["qwen2"]), dtype="float32"))

    with pytest.warns(UserWarning, match=r"prompts \(tokenizer .*qwen2\).*does not round-trip"):
        trainer = run("own")
    assert type(trainer.processing_class).__name__ == "Qwen2Tokenizer"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = run("given", tokenizer_name_or_path=str(tiny_model_dirs["llama"]))
    assert not [w for w in caught if "round-trip" in str(w.message)]
    assert trainer.processing_class.name_or_path == str(tiny_model_dirs["llama"])
    assert trainer.processing_class.padding_side == "left"


def test_evenly_spaced_indices():
    from lenvm_rl.data import evenly_spaced_indices

    assert evenly_spaced_indices(10, 3) == [0, 4, 9] or evenly_spaced_indices(10, 3) == [0, 5, 9]
    assert evenly_spaced_indices(3, 32) == [0, 1, 2] and evenly_spaced_indices(0, 5) == []
    assert evenly_spaced_indices(100, 1) == [0]
