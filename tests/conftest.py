"""Shared fixtures. Nothing here may reach a hub: offline mode is forced before transformers is imported, so an
accidental download fails loudly instead of hanging."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest  # noqa: E402
import torch  # noqa: E402

from lenvm_rl.tiny import build_tiny_tokenizer, save_tiny_causal_lm  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """One saved tiny causal LM (with tokenizer) per architecture, keyed by architecture name."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: save_tiny_causal_lm(root / arch, arch, seed=0) for arch in ("llama", "qwen2", "gpt2")}


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_dirs):
    return tiny_model_dirs["llama"]
