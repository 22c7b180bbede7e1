"""The compacted decoding loop (lenvm_rl.sampling.decode_compacted) against transformers' own: rows that end leave
the batch and the KV cache, and every row still gets the tokens ``generate`` would give it."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, set_seed

from lenvm_rl.sampling import decode_compacted


@pytest.fixture(scope="module")
def model_and_prompts(tiny_model_dirs):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]).eval()
    # a random init attends almost uniformly, so wrong positions or a wrong cache row would go unseen: sharpen it
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
            layer.self_attn.k_proj.weight.mul_(8.0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs["llama"])
    tokenizer.padding_side = "left"
    texts = ["parity 1011", "parity 1", "count 22 apples and 3", "x"]  # different lengths: left padding is real
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()
    return model, tokenizer, batch


def _generate(model, tokenizer, batch, seed, compacted, **settings):
    config = GenerationConfig(pad_token_id=tokenizer.pad_token_id, **settings)
    set_seed(seed)
    extra = {"custom_generate": decode_compacted} if compacted else {}
    return model.generate(**batch, generation_config=config, **extra)


# a random tiny model repeats one token; no repeated token (a processor that reads each row's whole sequence) makes
# every step's token new, so tokens picked as EOS end rows at different steps
DISTINCT = {"no_repeat_ngram_size": 1}


def _frequent_tokens(model, tokenizer, batch, **settings):
    """Tokens greedy decoding emits at different steps of different rows: used as EOS, rows end at different times."""
    free = _generate(model, tokenizer, batch, 0, False, max_new_tokens=16, do_sample=False, eos_token_id=None,
                     **{**DISTINCT, **settings})
    width = batch["input_ids"].shape[1]
    return sorted({int(free[0, width + 2]), int(free[2, width + 9])})


def test_greedy_decoding_equals_generate_when_rows_end_at_different_steps(model_and_prompts):
    model, tokenizer, batch = model_and_prompts
    eos = _frequent_tokens(model, tokenizer, batch)
    settings = {"max_new_tokens": 16, "do_sample": False, "eos_token_id": eos, **DISTINCT}
    theirs = _generate(model, tokenizer, batch, 0, False, **settings)
    ours = _generate(model, tokenizer, batch, 0, True, **settings)
    assert torch.equal(ours, theirs)
    width = batch["input_ids"].shape[1]
    completions = ours[:, width:]
    ended_at = [next((i for i, t in enumerate(row.tolist()) if t in eos), None) for row in completions]
    # the test means something: some rows end early, at different steps, and one runs longer than they do
    finished = [i for i in ended_at if i is not None]
    assert len(set(finished)) >= 2 and min(finished) < completions.shape[1] - 1
    for row, end in zip(completions, ended_at, strict=True):
        if end is not None:  # padding after the row ended, as generate pads
            assert (row[end + 1:] == tokenizer.pad_token_id).all()


@pytest.mark.parametrize("architecture", ["qwen2", "gpt2"])  # gpt2: learned absolute positions
def test_greedy_decoding_equals_generate_on_other_architectures(tiny_model_dirs, model_and_prompts, architecture):
    _, tokenizer, batch = model_and_prompts
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[architecture]).eval()
    eos = _frequent_tokens(model, tokenizer, batch)
    settings = {"max_new_tokens": 16, "do_sample": False, "eos_token_id": eos, **DISTINCT}
    ours = _generate(model, tokenizer, batch, 0, True, **settings)
    assert torch.equal(ours, _generate(model, tokenizer, batch, 0, False, **settings))
    assert (ours[:, batch["input_ids"].shape[1]:] == tokenizer.pad_token_id).any()  # some row ended early


def test_sampling_draws_generates_tokens_while_no_row_has_ended(model_and_prompts):
    # before a row ends both loops draw one multinomial over the same (B, V) probabilities: the same tokens
    model, tokenizer, batch = model_and_prompts
    settings = {"max_new_tokens": 12, "do_sample": True, "temperature": 0.8, "top_k": 0, "top_p": 0.9,
                "eos_token_id": None}
    theirs = _generate(model, tokenizer, batch, 5, False, **settings)
    ours = _generate(model, tokenizer, batch, 5, True, **settings)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, _generate(model, tokenizer, batch, 6, True, **settings))


def test_sampled_rows_end_on_eos_and_the_output_is_as_long_as_the_longest(model_and_prompts):
    model, tokenizer, batch = model_and_prompts
    eos = _frequent_tokens(model, tokenizer, batch)
    settings = {"max_new_tokens": 20, "do_sample": True, "temperature": 1.0, "top_k": 0, "eos_token_id": eos,
                **DISTINCT}
    repeated = {key: value.repeat_interleave(8, dim=0) for key, value in batch.items()}
    ours = _generate(model, tokenizer, repeated, 1, True, **settings)[:, batch["input_ids"].shape[1]:]
    lengths = []
    for row in ours.tolist():
        end = next((i for i, t in enumerate(row) if t in eos), None)
        lengths.append(len(row) if end is None else end + 1)
        if end is not None:
            assert all(t == tokenizer.pad_token_id for t in row[end + 1:])
    assert ours.shape[1] == max(lengths) <= 20
    assert min(lengths) < max(lengths)


def test_a_logits_processor_with_per_row_state_is_refused(model_and_prompts):
    from transformers import LogitsProcessor, LogitsProcessorList

    class CountsRows(LogitsProcessor):  # unknown to the loop: it might index its state by batch position
        def __call__(self, input_ids, scores):
            return scores

    model, tokenizer, batch = model_and_prompts
    config = GenerationConfig(max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with pytest.raises(ValueError, match=r"logits processors that keep per-row state \['CountsRows'\]"):
        model.generate(**batch, generation_config=config, logits_processor=LogitsProcessorList([CountsRows()]),
                       custom_generate=decode_compacted)


def test_a_repetition_penalty_over_left_padded_prompts_follows_the_dropped_rows(model_and_prompts):
    # transformers gives the penalty one prompt length per row; the loop keeps it aligned with the rows left
    model, tokenizer, batch = model_and_prompts
    penalty = {"repetition_penalty": 1.3}
    eos = _frequent_tokens(model, tokenizer, batch, **penalty)
    settings = {"max_new_tokens": 16, "do_sample": False, "eos_token_id": eos, **DISTINCT, **penalty}
    ours = _generate(model, tokenizer, batch, 0, True, **settings)
    assert torch.equal(ours, _generate(model, tokenizer, batch, 0, False, **settings))
    assert (ours[:, batch["input_ids"].shape[1]:] == tokenizer.pad_token_id).any()  # rows were dropped


@pytest.mark.parametrize("settings, message", [
    ({"num_beams": 2, "do_sample": False}, "beam search"),
    ({"return_dict_in_generate": True, "do_sample": False}, "return_dict_in_generate"),
])
def test_unsupported_generation_settings_are_refused(model_and_prompts, settings, message):
    model, tokenizer, batch = model_and_prompts
    with pytest.raises(ValueError, match=message):
        _generate(model, tokenizer, batch, 0, True, max_new_tokens=4, **settings)


def test_grpo_generates_through_the_compacted_loop(tiny_model_dir, tmp_path, monkeypatch):
    from datasets import Dataset

    import lenvm_rl.trainer.grpo as grpo
    from lenvm_rl import LenVMGRPOConfig, LenVMGRPOTrainer

    calls = []

    def counted(model, input_ids, *args, **kwargs):
        calls.append(input_ids.shape[0])
        return decode_compacted(model, input_ids, *args, **kwargs)

    monkeypatch.setattr(grpo, "decode_compacted", counted)
    args = LenVMGRPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, num_generations=4,
                           max_completion_length=12, learning_rate=1e-3, use_cpu=True, bf16=False, report_to="none",
                           logging_steps=1, beta=0.0, seed=0, save_strategy="no", disable_tqdm=True,
                           length_mode="none", compact_generation=True)
    def constant(completions, **kwargs):
        return [1.0] * len(completions)

    trainer = LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=constant, args=args,
                               train_dataset=Dataset.from_list([{"prompt": f"add: {i}"} for i in range(16)]))
    trainer.train()
    assert calls == [8, 8]  # one generation batch of 8 completions per step
    # for TRL's generation only: afterwards (evaluations, guided decoding) generate runs its own loop again
    assert "generate" not in vars(trainer.model)
    lengths = [entry["completions/mean_length"] for entry in trainer.state.log_history
               if "completions/mean_length" in entry]
    assert len(lengths) == 2 and all(0 < length <= 12 for length in lengths)


def test_compact_generation_is_refused_with_another_generation_engine(tmp_path):
    from lenvm_rl import LenVMGRPOConfig

    with pytest.raises(ValueError, match="use_transformers_continuous_batching"):
        LenVMGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, compact_generation=True,
                        use_transformers_continuous_batching=True)
