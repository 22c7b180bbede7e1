"""``lenvm-rl init-critic``: a LenVM critic (new value head) on a decoder backbone, or an imported upstream one."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["InitCriticArguments", "main"]


@dataclass
class InitCriticArguments:
    """Build a LenVM critic (new value head) on a decoder backbone, or import an upstream LenVM checkpoint."""

    backbone: str = field(
        metadata={"help": "Hub name or local directory of the decoder backbone (a causal LM is fine)."}
    )
    output_dir: str = field(metadata={"help": "Directory to save the critic to (safetensors + config.json)."})
    gamma: float | None = field(
        default=None, metadata={"help": "Discount γ in (0, 1); leave unset to choose it at training time."}
    )
    upstream: bool = field(
        default=False,
        metadata={
            "help": "Treat `backbone` as an upstream LenVM checkpoint with value_head.safetensors (needs gamma)."
        },
    )
    dtype: str = field(default="float32", metadata={"help": "Backbone dtype: float32, bfloat16 or float16."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modeling code from the hub."})


DATACLASSES = (InitCriticArguments,)


def main(args: InitCriticArguments) -> None:
    import torch

    from ..data import check_local_path
    from ..modeling import LengthValueModel

    check_local_path(args.backbone, "backbone")
    dtype = getattr(torch, args.dtype)
    if args.upstream:
        if args.gamma is None:
            raise ValueError("--upstream needs --gamma: upstream LenVM checkpoints do not store γ")
        critic = LengthValueModel.from_upstream(
            args.backbone, gamma=args.gamma, dtype=dtype, trust_remote_code=args.trust_remote_code
        )
    else:
        critic = LengthValueModel.from_backbone(
            args.backbone, gamma=args.gamma, dtype=dtype, trust_remote_code=args.trust_remote_code
        )
    critic.save_pretrained(args.output_dir)
    print(f"critic saved to {args.output_dir} (gamma={critic.config.gamma})")
