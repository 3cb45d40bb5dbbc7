#!/usr/bin/env bash
# The main job on the embedded default: offline SmolLM2-135M, the shared SST-2 data, local outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir=${RUN_DIR:-runs/demo-sst2}
.venv/bin/softprompt train --task sst2 --run-dir "$run_dir" --prompt-length 20 --init class_label \
  --train-batch-size 16 --micro-batch-size 8 --max-steps 60 --eval-every 20 --eval-max-examples 200
echo "prompt: $run_dir/prompt.safetensors  metrics: $run_dir/metrics.jsonl  result: $run_dir/result.json"
