#!/usr/bin/env bash
# GPU check: a few GRPO + LenVM steps in bf16 under DeepSpeed ZeRO-3 on one GPU, with and without the critic.
# Prints step time, peak GPU memory and the critic overhead ratio. Takes 3–6 minutes on one recent GPU.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/gpu_check.sh [--output-dir DIR] [options of scripts/gpu_check.py ...]

Runs a few GRPO + LenVM steps in bf16 under DeepSpeed ZeRO-3 on ONE GPU
(accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 1), on a randomly initialised
Qwen2-architecture policy of ~100M parameters built from a config (no download; the built-in tiny tokenizer),
once without the critic (length_mode none) and once with a same-size LenVM critic (length_mode advantage).
Prints, for each run, the median step time and the peak GPU memory, then the critic overhead ratio
(step time with the critic / without). Needs a CUDA GPU, torch with CUDA, and deepspeed (pip install -e ".[deepspeed]").
Expected: about 3-6 minutes in total, well under 10.

Useful options (passed on to scripts/gpu_check.py; see `python scripts/gpu_check.py --help`):
  --output-dir DIR              where models and measurements go (default runs/gpu-check)
  --steps N                     optimizer steps per run (default 6; the first --warmup-steps are not timed)
  --batch-size N                completions per step (default 16, groups of --num-generations 8)
  --max-completion-length N     tokens per completion (default 256)
  --hidden-size/--layers/...    policy size (default hidden 768, 12 layers: ~100M parameters)
USAGE
}

for arg in "$@"; do
  if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then usage; exit 0; fi
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python}"
OUTPUT_DIR="runs/gpu-check"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  if [[ "${args[i]}" == "--output-dir" ]]; then OUTPUT_DIR="${args[i + 1]}"; fi
done

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: no CUDA GPU visible to torch; this check is for a GPU machine (CI runs the CPU tests)" >&2
  exit 1
fi
"$PYTHON" -c "import deepspeed" 2>/dev/null || { echo "gpu_check.sh: deepspeed is not installed" >&2; exit 1; }

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$SECONDS
"$PYTHON" scripts/gpu_check.py --prepare "$@"
for mode in none advantage; do
  echo "== GRPO, length_mode $mode, ZeRO-3, one GPU"
  "$PYTHON" -m accelerate.commands.launch --config_file recipes/accelerate/zero3.yaml --num_processes 1 \
    --main_process_port 0 scripts/gpu_check.py --run "$mode" "$@"
done
echo "== summary (output in $OUTPUT_DIR, $((SECONDS - start)) s in total)"
"$PYTHON" scripts/gpu_check.py --summary "$@"
