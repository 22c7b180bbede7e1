"""The critic model: backbones, layout of values, save/load, upstream import, LoRA, and bad input."""

import os

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedModel

from lenvm_rl import LengthValueConfig, LengthValueModel, add_lora, check_tokenizer, merge_lora, value_to_length
from lenvm_rl.tiny import build_tiny_tokenizer


def make_batch(seed=0, prompt_lengths=(3, 5), completion_lengths=(4, 2), vocab=100):
    """Left-padded prompts and right-padded completions, as TRL lays them out."""
    generator = torch.Generator().manual_seed(seed)
    width_p, width_c = max(prompt_lengths), max(completion_lengths)
    batch = len(prompt_lengths)
    prompt_ids = torch.randint(7, vocab, (batch, width_p), generator=generator)
    completion_ids = torch.randint(7, vocab, (batch, width_c), generator=generator)
    prompt_mask = torch.zeros(batch, width_p, dtype=torch.long)
    completion_mask = torch.zeros(batch, width_c, dtype=torch.long)
    for row, (p, c) in enumerate(zip(prompt_lengths, completion_lengths, strict=True)):
        prompt_mask[row, width_p - p :] = 1
        completion_mask[row, :c] = 1
    prompt_ids = prompt_ids * prompt_mask
    completion_ids = completion_ids * completion_mask
    return prompt_ids, prompt_mask, completion_ids, completion_mask


@pytest.fixture(scope="module")
def critic(tiny_model_dir):
    torch.manual_seed(0)
    return LengthValueModel.from_backbone(tiny_model_dir, gamma=0.99).eval()


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gpt2"])
def test_backbones_load_and_give_values_in_range(tiny_model_dirs, architecture):
    directory = tiny_model_dirs[architecture]
    critic = LengthValueModel.from_backbone(directory, gamma=0.99)
    lm = AutoModelForCausalLM.from_pretrained(directory)
    base = getattr(lm, lm.base_model_prefix)
    for (name, ours), theirs in zip(critic.backbone.state_dict().items(), base.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs), name
    assert not any("lm_head" in name for name in critic.state_dict())
    ids = torch.randint(7, 100, (2, 6))
    values = critic(input_ids=ids, attention_mask=torch.ones_like(ids)).value
    assert values.shape == (2, 6) and values.dtype == torch.float32
    assert ((values > -1) & (values < 0)).all()
    assert critic.config.decoder_config.model_type == architecture
    assert critic.config.head_hidden_size == critic.config.decoder_config.hidden_size


def test_from_backbone_accepts_a_loaded_causal_lm(tiny_model_dir):
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    critic = LengthValueModel.from_backbone(lm, gamma=0.9, head_hidden_size=16)
    assert critic.backbone is lm.model
    assert critic.head.fc.weight.shape == (16, lm.config.hidden_size)


def test_save_and_reload_is_bit_identical(critic, tmp_path):
    critic.save_pretrained(tmp_path / "critic")
    files = sorted(os.listdir(tmp_path / "critic"))
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files)
    reloaded = LengthValueModel.from_pretrained(tmp_path / "critic").eval()
    assert reloaded.config.gamma == 0.99
    original, loaded = critic.state_dict(), reloaded.state_dict()
    assert original.keys() == loaded.keys()
    for key in original:
        assert torch.equal(original[key], loaded[key]), key
    batch = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(
            critic.values_for_completions(*batch), reloaded.values_for_completions(*batch), rtol=0, atol=0
        )
    via_auto = AutoModel.from_pretrained(tmp_path / "critic")
    assert isinstance(via_auto, LengthValueModel)


def test_bf16_backbone_keeps_a_float32_head(critic, tmp_path):
    critic.save_pretrained(tmp_path / "critic")
    half = LengthValueModel.from_pretrained(tmp_path / "critic", dtype=torch.bfloat16)
    assert half.backbone.get_input_embeddings().weight.dtype == torch.bfloat16
    assert half.head.fc.weight.dtype == torch.float32
    ids = torch.randint(7, 100, (1, 5))
    with torch.no_grad():
        values = half(input_ids=ids, attention_mask=torch.ones_like(ids)).value
        reference = critic(input_ids=ids, attention_mask=torch.ones_like(ids)).value
    assert values.dtype == torch.float32
    torch.testing.assert_close(values, reference, atol=2e-2, rtol=0)


def test_values_for_completions_layout(critic):
    prompt_ids, prompt_mask, completion_ids, completion_mask = make_batch()
    with torch.no_grad():
        values = critic.values_for_completions(prompt_ids, prompt_mask, completion_ids, completion_mask)
        assert values.shape == (2, completion_ids.shape[1] + 1)
        for row in range(2):
            length = int(completion_mask[row].sum())
            prompt = prompt_ids[row][prompt_mask[row].bool()]
            sequence = torch.cat([prompt, completion_ids[row, :length]])[None]
            alone = critic(input_ids=sequence, attention_mask=torch.ones_like(sequence)).value[0]
            # column 0 is read at the last prompt token, column t at completion token t-1
            torch.testing.assert_close(values[row, : length + 1], alone[len(prompt) - 1 :], atol=1e-5, rtol=0)
            assert (values[row, length + 1 :] == 0).all()
        chunked = critic.values_for_completions(
            prompt_ids, prompt_mask, completion_ids, completion_mask, micro_batch_size=1
        )
    torch.testing.assert_close(chunked, values, atol=1e-5, rtol=0)


def test_predict_length_reads_the_prompt_boundary(critic):
    prompt_ids, prompt_mask, completion_ids, completion_mask = make_batch()
    with torch.no_grad():
        values = critic.values_for_completions(prompt_ids, prompt_mask, completion_ids, completion_mask)
    predicted = critic.predict_length(prompt_ids, prompt_mask)
    torch.testing.assert_close(predicted, value_to_length(values[:, 0], 0.99), atol=1e-4, rtol=1e-5)
    assert (predicted > 0).all()


def test_gradients_reach_backbone_and_head(critic):
    critic.train()
    batch = make_batch()
    values = critic.values_for_completions(*batch)
    values.sum().backward()
    assert critic.head.summary.weight.grad is not None
    assert critic.backbone.get_input_embeddings().weight.grad is not None
    critic.zero_grad(set_to_none=True)
    critic.eval()


def test_lora_trains_adapters_and_head_and_merges(critic, tmp_path):
    fresh = LengthValueModel.from_pretrained(_save(critic, tmp_path / "base"))
    wrapped = add_lora(fresh, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or ".head." in name for name in trainable)
    assert any(".head." in name for name in trainable)
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    batch = make_batch()
    with torch.no_grad():
        before = wrapped(input_ids=batch[0], attention_mask=batch[1]).value
        merged = merge_lora(wrapped)
        after = merged(input_ids=batch[0], attention_mask=batch[1]).value
        base_values = critic(input_ids=batch[0], attention_mask=batch[1]).value
    assert isinstance(merged, LengthValueModel)
    torch.testing.assert_close(before, after, atol=1e-5, rtol=0)
    assert (after - base_values).abs().max() > 1e-4  # the adapter changed something
    reloaded = LengthValueModel.from_pretrained(_save(merged, tmp_path / "merged"))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=batch[0], attention_mask=batch[1]).value, after)


def _save(model, path):
    model.save_pretrained(path)
    return path


# ---------------------------------------------------------------- upstream checkpoints


def _upstream_checkpoint(directory, tiny_model_dir, hidden, head_hidden=None, drop=None, bad_shape=None):
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lm.save_pretrained(directory)
    head_hidden = head_hidden or hidden
    generator = torch.Generator().manual_seed(1)
    state = {
        "v_head.fc.weight": torch.randn(head_hidden, hidden, generator=generator),
        "v_head.fc.bias": torch.randn(head_hidden, generator=generator),
        "v_head.summary.weight": torch.randn(1, head_hidden, generator=generator),
        "v_head.summary.bias": torch.randn(1, generator=generator),
    }
    if drop:
        state.pop(drop)
    if bad_shape:
        state[bad_shape] = torch.randn(3, 3)
    save_file(state, str(directory / "value_head.safetensors"))
    return state


def test_upstream_import_maps_the_head(tiny_model_dir, tmp_path):
    hidden = AutoConfig.from_pretrained(tiny_model_dir).hidden_size
    state = _upstream_checkpoint(tmp_path / "up", tiny_model_dir, hidden, head_hidden=24)
    critic = LengthValueModel.from_upstream(tmp_path / "up", gamma=0.997)
    assert critic.config.gamma == 0.997
    assert torch.equal(critic.head.fc.weight, state["v_head.fc.weight"])
    assert torch.equal(critic.head.summary.bias, state["v_head.summary.bias"])
    ids = torch.randint(7, 100, (1, 4))
    with torch.no_grad():
        hidden_states = critic.backbone(input_ids=ids).last_hidden_state
        z = torch.nn.functional.silu(hidden_states @ state["v_head.fc.weight"].T + state["v_head.fc.bias"])
        z = (z @ state["v_head.summary.weight"].T + state["v_head.summary.bias"]).squeeze(-1)
        torch.testing.assert_close(critic(input_ids=ids).value, -torch.sigmoid(z))


@pytest.mark.parametrize("key", ["v_head.fc.bias", "v_head.summary.weight"])
def test_upstream_missing_key_is_named(tiny_model_dir, tmp_path, key):
    hidden = AutoConfig.from_pretrained(tiny_model_dir).hidden_size
    _upstream_checkpoint(tmp_path / "up", tiny_model_dir, hidden, drop=key)
    with pytest.raises(KeyError, match=key.replace(".", r"\.")):
        LengthValueModel.from_upstream(tmp_path / "up", gamma=0.997)


def test_upstream_wrong_shape_is_named(tiny_model_dir, tmp_path):
    hidden = AutoConfig.from_pretrained(tiny_model_dir).hidden_size
    _upstream_checkpoint(tmp_path / "up", tiny_model_dir, hidden, bad_shape="v_head.summary.weight")
    with pytest.raises(ValueError, match=r"v_head\.summary\.weight.*shape"):
        LengthValueModel.from_upstream(tmp_path / "up", gamma=0.997)


def test_upstream_without_head_file_or_gamma(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="value_head.safetensors"):
        LengthValueModel.from_upstream(tiny_model_dir, gamma=0.997)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LengthValueModel.from_upstream(tmp_path / "nowhere", gamma=0.997)
    with pytest.raises(ValueError, match="gamma"):
        LengthValueModel.from_upstream(tiny_model_dir, gamma=1.0)


# ---------------------------------------------------------------- bad input


def test_encoder_backbone_is_rejected(tmp_path):
    config = AutoConfig.for_model("bert", vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32)
    AutoModel.from_config(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="'bert' is not a decoder-only causal LM"):
        LengthValueModel.from_backbone(tmp_path / "bert", gamma=0.9)
    with pytest.raises(ValueError, match="decoder-only"):
        LengthValueConfig(decoder_config=config)
    t5 = AutoConfig.for_model("t5", vocab_size=50, d_model=16, num_layers=1, num_heads=2, d_ff=32, d_kv=8)
    with pytest.raises(ValueError, match="encoder-decoder"):
        LengthValueConfig(decoder_config=t5)


def test_tokenizer_without_eos_is_rejected():
    tokenizer = build_tiny_tokenizer()
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="no EOS token"):
        check_tokenizer(tokenizer)
    padless = build_tiny_tokenizer()
    padless.pad_token = None
    assert check_tokenizer(padless).pad_token_id == padless.eos_token_id


def test_critic_without_gamma_refuses_lengths(tiny_model_dir):
    critic = LengthValueModel.from_backbone(tiny_model_dir)
    prompt_ids, prompt_mask, _, _ = make_batch()
    with pytest.raises(ValueError, match="no gamma"):
        critic.predict_length(prompt_ids, prompt_mask)
    with pytest.raises(ValueError, match="gamma"):
        LengthValueModel.from_backbone(tiny_model_dir, gamma=1.5)


def test_gamma_given_at_load_overrides(critic, tmp_path):
    critic.save_pretrained(tmp_path / "c")
    assert LengthValueModel.from_pretrained(tmp_path / "c", gamma=0.95).gamma == 0.95


def test_pickled_weights_are_never_loaded(tiny_model_dir, tmp_path):
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    target = tmp_path / "pickled"
    target.mkdir()
    lm.config.save_pretrained(target)
    torch.save(lm.state_dict(), target / "pytorch_model.bin")
    with pytest.raises(OSError):
        LengthValueModel.from_backbone(target, gamma=0.9)


def test_bad_batches_are_rejected(critic):
    prompt_ids, prompt_mask, completion_ids, completion_mask = make_batch()
    with pytest.raises(ValueError, match="left-padded"):
        critic.values_for_completions(prompt_ids, prompt_mask.flip(1), completion_ids, completion_mask)
    with pytest.raises(ValueError, match="prefix"):
        critic.values_for_completions(prompt_ids, prompt_mask, completion_ids, completion_mask.flip(1))
    with pytest.raises(ValueError, match="one shape"):
        critic.values_for_completions(prompt_ids, prompt_mask, completion_ids[:, :1], completion_mask)


def test_crash_mid_save_leaves_the_old_checkpoint(critic, tmp_path, monkeypatch):
    target = tmp_path / "critic"
    critic.save_pretrained(target)
    before = {name: (target / name).read_bytes() for name in os.listdir(target)}

    def crashing_save(self, save_directory, *args, **kwargs):
        (save_directory / "model.safetensors").write_bytes(b"half-written")
        raise RuntimeError("disk full")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", crashing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        critic.save_pretrained(target)
    monkeypatch.undo()
    after = {name: (target / name).read_bytes() for name in os.listdir(target)}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["critic"]  # no scratch directory left behind
    LengthValueModel.from_pretrained(target)


def test_a_mistyped_local_path_never_goes_to_the_hub(tmp_path, monkeypatch):
    """`runs/tiny-critc` is not here and the hub is offline: FileNotFoundError at once, naming it, whether or not
    `runs/` exists."""
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    unreachable = r" is not a local directory, and the hub is unreachable \(offline\)$"
    with pytest.raises(FileNotFoundError, match="^critic runs/tiny-critc" + unreachable):
        LengthValueModel.from_pretrained("runs/tiny-critc")
    with pytest.raises(FileNotFoundError, match="^backbone runs/tiny-polcy" + unreachable):
        LengthValueModel.from_backbone("runs/tiny-polcy", gamma=0.9)
    with pytest.raises(FileNotFoundError, match="^upstream checkpoint runs/lenvm" + unreachable):
        LengthValueModel.from_upstream("runs/lenvm", gamma=0.997)
