"""The LenVM critic: a decoder backbone plus a value head predicting, at every token, how much generation remains.

``V = -sigmoid(z)`` with ``z = Linear(H, H') → SiLU → Linear(H', 1)`` applied to the final hidden state; the head
always runs in float32 (even under a bf16 backbone), and no LM head is computed. Values follow docs/method.md:
``V(s) ≈ -(1 - γ^remaining)``; ``γ`` travels in the config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_MAPPING,
)
from transformers.utils import ModelOutput

from .io import files_replaced_atomically
from .length_math import check_completion_mask, check_gamma, value_to_length

__all__ = [
    "LengthValueConfig",
    "LengthValueModel",
    "LengthValueOutput",
    "UPSTREAM_HEAD_FILE",
    "check_decoder_config",
    "check_tokenizer",
    "add_lora",
    "merge_lora",
    "unwrap_critic",
]

UPSTREAM_HEAD_FILE = "value_head.safetensors"
_UPSTREAM_KEYS = {
    "v_head.fc.weight": "fc.weight",
    "v_head.fc.bias": "fc.bias",
    "v_head.summary.weight": "summary.weight",
    "v_head.summary.bias": "summary.bias",
}


class LengthValueConfig(PreTrainedConfig):
    """Configuration of a :class:`LengthValueModel`.

    Args:
        decoder_config: config of the decoder backbone (any ``AutoModel``-loadable causal decoder).
        gamma: discount the critic was trained with, in (0, 1). ``None`` only before training; everything that
            turns values into lengths or advantages refuses a critic without it.
        head_hidden_size: width ``H'`` of the head's hidden layer (defaults to the backbone's hidden size ``H``).
        decoder_name_or_path: where the backbone came from (informational, recorded for provenance).
    """

    model_type = "lenvm"
    sub_configs_defaults = {"decoder_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    decoder_config: dict | PreTrainedConfig | None = None
    gamma: float | None = None
    head_hidden_size: int | None = None
    decoder_name_or_path: str | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_decoder_config(self.decoder_config)
        _import_backbone_class(self.decoder_config)
        if self.head_hidden_size is None:
            self.head_hidden_size = int(self.decoder_config.hidden_size)
        if self.gamma is not None:
            self.gamma = check_gamma(self.gamma)


def check_decoder_config(config: PreTrainedConfig) -> PreTrainedConfig:
    """Raise ``ValueError`` unless ``config`` describes a decoder-only causal LM backbone."""
    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"backbone model_type {model_type!r} is an encoder-decoder; LengthValueModel needs a decoder-only "
            "causal LM (e.g. qwen2, llama, gpt2)"
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise ValueError(
            f"backbone model_type {model_type!r} is not a decoder-only causal LM; LengthValueModel needs a causal "
            "decoder (e.g. qwen2, llama, gpt2) whose hidden state at token t sees only tokens ≤ t"
        )
    return config


def check_tokenizer(tokenizer: Any) -> Any:
    """Check that a tokenizer can delimit completions: it must define EOS. A missing pad token is set to EOS
    (as TRL does). Returns the tokenizer."""
    if getattr(tokenizer, "eos_token_id", None) is None:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)!r} has no EOS token; "
            "LenVM lengths count the EOS token, so the tokenizer must define eos_token"
        )
    if getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass
class LengthValueOutput(ModelOutput):
    """Per-position critic outputs.

    Attributes:
        value: ``(B, S)`` float32, ``V = -sigmoid(logits)`` ∈ (-1, 0). (Named like TRL's value heads; a ``values``
            field would shadow the mapping method ``ModelOutput.values()``, which DeepSpeed's engine calls.)
        logits: ``(B, S)`` float32 head logits ``z``.
        cache: the backbone's KV cache when ``use_cache=True``.
    """

    value: Tensor | None = None
    logits: Tensor | None = None
    cache: Any = None


def _output_cache(outputs: ModelOutput) -> Any:
    # transformers 5.x renamed ``past_key_values`` to ``cache``; accept either.
    return getattr(outputs, "cache", None) or getattr(outputs, "past_key_values", None)


class LengthValueHead(nn.Module):
    """``Linear(H, H') → SiLU → Linear(H', 1)``, evaluated in float32 whatever the parameters' storage dtype."""

    def __init__(self, hidden_size: int, head_hidden_size: int):
        super().__init__()
        self.fc = nn.Linear(hidden_size, head_hidden_size)
        self.summary = nn.Linear(head_hidden_size, 1)

    def forward(self, hidden_states: Tensor) -> Tensor:
        device_type = hidden_states.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            hidden = hidden_states.to(device=self.fc.weight.device, dtype=torch.float32)
            hidden = F.silu(F.linear(hidden, self.fc.weight.float(), self.fc.bias.float()))
            return F.linear(hidden, self.summary.weight.float(), self.summary.bias.float()).squeeze(-1)


class LengthValueModel(PreTrainedModel):
    """The LenVM critic. Build one with :meth:`from_backbone` (new head) or load one with ``from_pretrained``.

    ``forward`` returns per-position values; :meth:`values_for_completions` returns the ``(B, T+1)`` layout the
    length math expects; :meth:`predict_length` reads the prompt boundary.
    """

    config_class = LengthValueConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _keep_in_fp32_modules_strict = ["head"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: LengthValueConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        self.backbone = backbone if backbone is not None else AutoModel.from_config(config.decoder_config)
        self.head = LengthValueHead(int(config.decoder_config.hidden_size), int(config.head_hidden_size))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear) and any(module is m for m in self.head.modules()):
            std = float(getattr(self.config.decoder_config, "initializer_range", 0.02))
            nn.init.normal_(module.weight, mean=0.0, std=std)
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    @property
    def gamma(self) -> float:
        """The discount the critic was trained with (raises if the config has none)."""
        if self.config.gamma is None:
            raise ValueError(
                "this critic's config has no gamma; set critic.config.gamma (the γ it was trained with) or pass "
                "gamma= when loading it"
            )
        return float(self.config.gamma)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_backbone(
        cls,
        backbone: str | os.PathLike | PreTrainedModel,
        gamma: float | None = None,
        head_hidden_size: int | None = None,
        trust_remote_code: bool = False,
        **load_kwargs: Any,
    ) -> LengthValueModel:
        """A critic with a freshly initialized head on a pretrained decoder.

        Args:
            backbone: hub name, local directory, or an already loaded model. A causal-LM checkpoint is fine: its
                base model is loaded and the LM head is dropped. A name that looks like a local path
                (:func:`~lenvm_rl.data.looks_like_local_path`) but does not exist raises ``FileNotFoundError``.
            gamma: discount in (0, 1), or ``None`` to set later (e.g. ``gamma: auto`` in critic training).
            head_hidden_size: width of the head's hidden layer (default: the backbone's hidden size).
            trust_remote_code: passed to transformers; off unless asked.
            **load_kwargs: passed to ``AutoModel.from_pretrained`` (``dtype``, ``device_map``, ``revision``,
                ``attn_implementation``, ...).
        """
        if isinstance(backbone, PreTrainedModel):
            has_lm_head = hasattr(backbone, "lm_head")
            model = getattr(backbone, backbone.base_model_prefix, backbone) if has_lm_head else backbone
            name = getattr(backbone.config, "_name_or_path", None) or None
            check_decoder_config(model.config)
        else:
            name = str(backbone)
            _check_local_path(name, "backbone")
            decoder_config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
            check_decoder_config(decoder_config)
            load_kwargs.setdefault("use_safetensors", True)
            model = AutoModel.from_pretrained(
                name, config=decoder_config, trust_remote_code=trust_remote_code, **load_kwargs
            )
        # Building the composite config resets its sub-config's attention implementation; keep the one the
        # backbone was loaded with.
        attn_implementation = model.config._attn_implementation
        config = LengthValueConfig(
            decoder_config=model.config,
            gamma=gamma,
            head_hidden_size=head_hidden_size,
            decoder_name_or_path=name,
        )
        model.config._attn_implementation = attn_implementation
        critic = cls(config, backbone=model)
        last_param = next(reversed(list(model.parameters())))
        critic.head.to(device=last_param.device)
        return critic

    @classmethod
    def from_upstream(
        cls,
        checkpoint: str | os.PathLike,
        gamma: float,
        trust_remote_code: bool = False,
        **load_kwargs: Any,
    ) -> LengthValueModel:
        """Import a published upstream LenVM checkpoint (github.com/eric-ai-lab/Length-Value-Model).

        Such a checkpoint is a full HF causal-LM directory plus ``value_head.safetensors`` holding
        ``v_head.fc.{weight,bias}`` (``H×H'``) and ``v_head.summary.{weight,bias}`` (``H'→1``). γ is not stored
        there, so it must be given (the paper uses 0.997 for Qwen2.5 critics, 0.9998 for Qwen3).
        """
        gamma = check_gamma(gamma)
        _check_local_path(checkpoint, "upstream checkpoint")
        head_path = _resolve_checkpoint_file(checkpoint, UPSTREAM_HEAD_FILE)
        state = load_file(str(head_path))
        for key in _UPSTREAM_KEYS:
            if key not in state:
                raise KeyError(f"{head_path}: missing key {key!r} (found {sorted(state)})")
        hidden, head_hidden = state["v_head.fc.weight"].shape[1], state["v_head.fc.weight"].shape[0]
        critic = cls.from_backbone(
            checkpoint, gamma=gamma, head_hidden_size=head_hidden, trust_remote_code=trust_remote_code, **load_kwargs
        )
        expected = {name: tuple(p.shape) for name, p in critic.head.named_parameters()}
        if hidden != critic.config.decoder_config.hidden_size:
            raise ValueError(
                f"{head_path}: v_head.fc.weight has input size {hidden}, but the backbone's hidden size is "
                f"{critic.config.decoder_config.hidden_size}"
            )
        head_state = {}
        for upstream_key, ours in _UPSTREAM_KEYS.items():
            tensor = state[upstream_key]
            if tuple(tensor.shape) != expected[ours]:
                raise ValueError(
                    f"{head_path}: {upstream_key!r} has shape {tuple(tensor.shape)}, expected {expected[ours]}"
                )
            head_state[ours] = tensor.to(torch.float32)
        critic.head.load_state_dict(head_state)
        return critic

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """``PreTrainedModel.from_pretrained`` restricted to safetensors (never unpickles) and without remote code
        unless asked. ``gamma=`` overrides the γ stored in the config (for checkpoints saved without one). A name
        that looks like a local path but is not there fails at once (``FileNotFoundError``) instead of going to
        the hub."""
        _check_local_path(pretrained_model_name_or_path, "critic")
        kwargs.setdefault("use_safetensors", True)
        kwargs.setdefault("trust_remote_code", False)
        gamma = kwargs.pop("gamma", None)
        critic = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if gamma is not None:
            critic.config.gamma = check_gamma(gamma)
        return critic

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """``PreTrainedModel.save_pretrained`` (safetensors, γ in ``config.json``) written atomically: files are
        staged in a scratch directory and moved into place one ``os.replace`` each, so a crash mid-save leaves the
        previous checkpoint readable."""
        if not kwargs.get("is_main_process", True):
            return
        with files_replaced_atomically(save_directory) as scratch:
            super().save_pretrained(scratch, *args, **kwargs)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool = False,
        **kwargs: Any,
    ) -> LengthValueOutput:
        """Values at every position. Shapes: ``input_ids``/``attention_mask`` ``(B, S)`` → ``value`` ``(B, S)``.

        With left padding, position ids are derived from the attention mask (``cumsum - 1``) unless given, so a
        padded row gets the same values as the unpadded sequence. Other keyword arguments (a KV cache, ...) go to
        the backbone unchanged.
        """
        continuing = any(kwargs.get(key) is not None for key in ("cache", "past_key_values"))
        if position_ids is None and attention_mask is not None and not continuing:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        outputs = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        logits = self.head(outputs.last_hidden_state)
        return LengthValueOutput(
            value=-torch.sigmoid(logits),
            logits=logits,
            cache=_output_cache(outputs) if use_cache else None,
        )

    def values_for_completions(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        completion_ids: Tensor,
        completion_mask: Tensor,
        micro_batch_size: int | None = None,
        read: str = "value",
    ) -> Tensor:
        """The ``(B, T+1)`` values of docs/method.md for TRL-style batches.

        Args:
            prompt_ids, prompt_mask: ``(B, P)``, left-padded (the last column is each prompt's last token).
            completion_ids, completion_mask: ``(B, T)``, right-padded; the mask is a 0/1 prefix of length ``L_b``.
            micro_batch_size: rows per forward pass (``None``: all at once), to bound memory.
            read: ``"value"`` (``-sigmoid(z)``, the LenVM value) or ``"logits"`` (the unbounded head output ``z``,
                which the PPO task critic reads as its value).

        Returns:
            ``(B, T+1)`` float32: column 0 is ``V(s_0)`` read at the last prompt token, column ``t`` is read at
            completion token ``t-1``; columns past ``L_b`` are 0. Gradients flow unless called under ``no_grad``.
        """
        check_completion_mask(completion_mask)
        if prompt_ids.shape != prompt_mask.shape or prompt_ids.dim() != 2:
            raise ValueError(
                f"prompt_ids {tuple(prompt_ids.shape)} and prompt_mask {tuple(prompt_mask.shape)} "
                "must be one (B, P) shape"
            )
        if completion_ids.shape != completion_mask.shape:
            raise ValueError(
                f"completion_ids {tuple(completion_ids.shape)} and completion_mask {tuple(completion_mask.shape)} "
                "must have one shape"
            )
        if prompt_ids.shape[0] != completion_ids.shape[0]:
            raise ValueError(f"prompts ({prompt_ids.shape[0]}) and completions ({completion_ids.shape[0]}) differ in B")
        if prompt_ids.shape[1] == 0 or not bool((prompt_mask[:, -1] == 1).all()):
            raise ValueError(
                "prompts must be left-padded with a non-empty last column (prompt_mask[:, -1] == 1 for every row)"
            )
        prompt_len = prompt_ids.shape[1]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1).to(torch.long)
        if read not in ("value", "logits"):
            raise ValueError(f"read must be 'value' or 'logits', got {read!r}")
        step = micro_batch_size or input_ids.shape[0]
        if step < 1:
            raise ValueError(f"micro_batch_size must be ≥ 1, got {micro_batch_size}")
        chunks = []
        for start in range(0, input_ids.shape[0], step):
            rows = slice(start, start + step)
            values = getattr(self(input_ids=input_ids[rows], attention_mask=attention_mask[rows]), read)
            chunks.append(values[:, prompt_len - 1 :])
        values = torch.cat(chunks, dim=0)
        boundary = completion_mask.new_ones((completion_mask.shape[0], 1))
        keep = torch.cat([boundary, completion_mask], dim=1).to(device=values.device, dtype=values.dtype)
        return values * keep

    @torch.no_grad()
    def predict_length(self, prompt_ids: Tensor, prompt_mask: Tensor, micro_batch_size: int | None = None) -> Tensor:
        """Predicted completion length (tokens, EOS included) at the prompt boundary: ``ln(1 + V(s_0)) / ln γ``.

        ``prompt_ids``/``prompt_mask`` are ``(B, P)`` left-padded; returns ``(B,)`` float32. Being the inverse of a
        mean *value*, this estimates the value-space length ``ln(E[γ^L]) / ln γ``, which sits below the mean raw
        length when lengths vary (Jensen); evaluate it against the value-space ground truth (docs/method.md).
        """
        empty = prompt_ids.new_zeros((prompt_ids.shape[0], 0))
        values = self.values_for_completions(prompt_ids, prompt_mask, empty, empty, micro_batch_size)
        return value_to_length(values[:, 0], self.gamma)


def _import_backbone_class(decoder_config: PreTrainedConfig) -> None:
    # Under ZeRO-3, from_pretrained builds the critic inside deepspeed.zero.Init, which wraps the __init__ of every
    # nn.Module class created meanwhile and puts the wrapped one back on exit. A class whose decorator replaces
    # __init__ after creation (kernels' use_kernelized_func on LlamaAttention) then loses the decorator's __init__,
    # and every later instance fails in forward ("no attribute '_kernel_funcs'"). The config is always built before
    # the model (from_pretrained reads it before entering zero.Init), so importing the backbone's module here
    # creates its classes outside the context on every path.
    try:
        MODEL_MAPPING[type(decoder_config)]
    except KeyError:
        pass  # AutoModel.from_config names the unsupported type itself


def _check_local_path(name: Any, what: str) -> None:
    # data.py imports datasets; load it only when a path is actually checked.
    from .data import check_local_path

    if isinstance(name, (str, os.PathLike)):
        check_local_path(name, what)


def _resolve_checkpoint_file(checkpoint: str | os.PathLike, filename: str) -> Path:
    directory = Path(checkpoint)
    if directory.is_dir():
        path = directory / filename
        if not path.is_file():
            raise FileNotFoundError(f"{directory} has no {filename}: not an upstream LenVM checkpoint")
        return path
    if directory.exists() or str(checkpoint).startswith((".", "/")):
        raise FileNotFoundError(f"checkpoint directory {checkpoint} does not exist")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=str(checkpoint), filename=filename))


def add_lora(critic: LengthValueModel, lora_config: Any) -> Any:
    """Wrap a critic in a PEFT LoRA model whose value head is fully trained and saved (``modules_to_save``).

    ``lora_config`` is a ``peft.LoraConfig``; its ``target_modules`` address backbone modules (e.g.
    ``["q_proj", "v_proj"]``, or ``"all-linear"``). Returns the ``PeftModel``; ``save_pretrained`` on it writes
    the adapter plus the head, and :func:`merge_lora` folds it back into a plain :class:`LengthValueModel`.
    """
    from peft import get_peft_model

    modules_to_save = list(lora_config.modules_to_save or [])
    if "head" not in modules_to_save:
        modules_to_save.append("head")
    lora_config.modules_to_save = modules_to_save
    if lora_config.target_modules == "all-linear":
        linear_names = {
            name.rsplit(".", 1)[-1]
            for name, module in critic.backbone.named_modules()
            if isinstance(module, nn.Linear)
        }
        lora_config.target_modules = sorted(linear_names)
    return get_peft_model(critic, lora_config)


def unwrap_critic(model: Any) -> LengthValueModel:
    """The :class:`LengthValueModel` inside a LoRA (``PeftModel``), DDP or DeepSpeed wrapper. LoRA layers live in
    the critic's own modules, so calling the unwrapped critic still applies them."""
    inner = model
    while not isinstance(inner, LengthValueModel):
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
        elif hasattr(inner, "module"):
            inner = inner.module
        else:
            raise TypeError(f"expected a LengthValueModel (optionally wrapped), got {type(model).__name__}")
    return inner


def merge_lora(model: Any) -> LengthValueModel:
    """Merge a LoRA-wrapped critic (from :func:`add_lora`) into a plain :class:`LengthValueModel`."""
    if isinstance(model, LengthValueModel):
        return model
    merged = model.merge_and_unload()
    if not isinstance(merged, LengthValueModel):
        raise TypeError(f"merge_lora expected a LoRA-wrapped LengthValueModel, got {type(merged).__name__}")
    return merged


AutoConfig.register(LengthValueConfig.model_type, LengthValueConfig, exist_ok=True)
AutoModel.register(LengthValueConfig, LengthValueModel, exist_ok=True)
