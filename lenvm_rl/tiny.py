"""The built-in tiny tokenizer and model configs: everything needed to run the pipeline with no hub access.

The tokenizer is character-level over printable ASCII plus a few special tokens (pad, EOS, unk and chat-role
markers) and carries a chat template, so prompts go through ``apply_chat_template`` exactly as with a real model.
Tiny backbones of several architectures are built from configs; :func:`save_tiny_causal_lm` writes a policy
directory (model + tokenizer) that every ``lenvm-rl`` subcommand loads by path like a hub checkpoint, and
:func:`fit_causal_lm` fits such a policy to prompt/completion pairs (a few hundred SFT steps) so that what it
generates, and how long, depends on the prompt.
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig, PreTrainedTokenizerFast

__all__ = [
    "TINY_ARCHITECTURES",
    "build_tiny_tokenizer",
    "tiny_decoder_config",
    "save_tiny_causal_lm",
    "fit_causal_lm",
]

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|eos|>"
UNK_TOKEN = "<|unk|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ '<|eos|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

# llama first: AutoTokenizer keeps our character-level tokenizer for it, while for a qwen2 config it swaps in
# Qwen2Tokenizer, whose byte-level pre-tokenizer drops the spaces of a character vocabulary.
TINY_ARCHITECTURES = ("llama", "qwen2", "gpt2")


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer (~105 tokens) with EOS, pad and a chat template.

    Special tokens come first (pad = 0, EOS = 1, unk = 2, then the role markers), then printable ASCII and newline.
    """
    specials = [PAD_TOKEN, EOS_TOKEN, UNK_TOKEN, *ROLE_TOKENS]
    characters = sorted(set(string.printable) - set("\t\r\x0b\x0c"))
    vocab = {token: index for index, token in enumerate(specials + characters)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(ROLE_TOKENS)})
    return tokenizer


def tiny_decoder_config(
    architecture: str = "llama",
    vocab_size: int | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 1024,
) -> PreTrainedConfig:
    """A small decoder config of the given architecture (``qwen2``, ``llama`` or ``gpt2``).

    ``vocab_size`` defaults to the tiny tokenizer's; token ids for pad/EOS match it.
    """
    if architecture not in TINY_ARCHITECTURES:
        raise ValueError(f"architecture must be one of {TINY_ARCHITECTURES}, got {architecture!r}")
    tokenizer = build_tiny_tokenizer()
    vocab_size = vocab_size or len(tokenizer)
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id, "bos_token_id": None}
    if architecture == "gpt2":
        return AutoConfig.for_model(
            "gpt2", vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers, n_head=num_heads,
            n_positions=max_positions, tie_word_embeddings=True, **ids,
        )
    return AutoConfig.for_model(
        architecture,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        **ids,
    )


def save_tiny_causal_lm(
    output_dir: str | Path,
    architecture: str = "llama",
    seed: int = 0,
    **config_kwargs,
) -> Path:
    """Build a randomly initialized tiny causal LM plus the tiny tokenizer and save both to ``output_dir``.

    The directory loads with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` like any
    hub checkpoint. Returns the directory.
    """
    output_dir = Path(output_dir)
    config = tiny_decoder_config(architecture, **config_kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.save_pretrained(output_dir)
    build_tiny_tokenizer().save_pretrained(output_dir)
    return output_dir


def fit_causal_lm(
    model_dir: str | Path,
    data_file: str | Path,
    output_dir: str | Path | None = None,
    steps: int = 300,
    learning_rate: float = 3e-3,
    batch_size: int = 16,
    seed: int = 0,
    prompt_column: str = "prompt",
    completion_column: str = "completion",
    progress: bool = True,
) -> Path:
    """Fit the causal LM at ``model_dir`` to prompt/completion pairs with TRL's ``SFTTrainer`` and save it (model and
    tokenizer, files replaced atomically) to ``output_dir`` (default: ``model_dir`` itself).

    ``data_file`` is a local json/jsonl/parquet/csv file (or ``save_to_disk`` directory) whose ``prompt_column`` and
    ``completion_column`` hold strings. When the tokenizer has a chat template, each pair becomes a user and an
    assistant message, so the model learns exactly the text ``lenvm-rl rollout`` renders (the template's
    generation prompt, then the completion and EOS); the loss covers the completion tokens only. A random tiny
    policy's completion length does not depend on the prompt; fitted to pairs whose length does (the shipped
    ``recipes/data/tiny_sft.jsonl``: running-sum traces, longer for more terms), it becomes a policy whose critic
    can beat a constant baseline. Returns the output directory.
    """
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from .data import check_local_path, load_prompt_dataset
    from .io import files_replaced_atomically

    checks = [(steps >= 1, f"fit steps must be ≥ 1, got {steps}"),
              (learning_rate > 0, f"fit learning_rate must be > 0, got {learning_rate}"),
              (batch_size >= 1, f"fit batch_size must be ≥ 1, got {batch_size}")]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    check_local_path(model_dir, "model directory", hub=False)
    check_local_path(data_file, "fit data", hub=False)
    model_dir = Path(model_dir)
    output_dir = Path(output_dir) if output_dir is not None else model_dir
    table = load_prompt_dataset(str(data_file), column=prompt_column)
    if completion_column not in table.column_names:
        raise ValueError(f"{data_file}: completion column {completion_column!r} not found; available columns: "
                         f"{table.column_names}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for index, (prompt, completion) in enumerate(zip(table[prompt_column], table[completion_column], strict=True)):
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise ValueError(f"{data_file}: row {index}: {prompt_column!r} and {completion_column!r} must be strings, "
                             f"got {type(prompt).__name__} and {type(completion).__name__}")
        if getattr(tokenizer, "chat_template", None) is not None:
            rows.append({"prompt": [{"role": "user", "content": prompt}],
                         "completion": [{"role": "assistant", "content": completion}]})
        else:
            rows.append({"prompt": prompt, "completion": completion})
    with tempfile.TemporaryDirectory(prefix="lenvm-fit-") as scratch:
        config = SFTConfig(
            output_dir=scratch, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=learning_rate,
            lr_scheduler_type="cosine", warmup_steps=0.05, weight_decay=0.0, use_cpu=not torch.cuda.is_available(),
            bf16=False, report_to="none", logging_steps=max(1, steps // 5), save_strategy="no", seed=seed,
            disable_tqdm=not progress, completion_only_loss=True,
        )
        trainer = SFTTrainer(model=str(model_dir), args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer)
        trainer.train()
        model = trainer.model
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config.eos_token_id is None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    with files_replaced_atomically(output_dir) as staged:
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
    return output_dir
