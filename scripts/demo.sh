#!/usr/bin/env bash
# The main job on the embedded default: the prompt-tuning pipeline (the same one compiled for
# Kubeflow) run on this machine by kfp.local: offline SmolLM2-135M, the shared SST-2 data, two
# prompts trained in parallel, their ensemble, evaluation, and registration behind the quality gate
# in a local registry under runs/. A small step budget and evaluation subsets keep it to minutes
# on two cores; a second run reuses every cached step and only registers again.
# The terminal shows live progress (each step as it starts and ends, the training steps, loss, dev
# score and ETA) and then the summary; the full output goes to $root/last-run.log.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${DEMO_ROOT:-runs/demo}
mkdir -p "$root"
.venv/bin/python -m components.runner prompt-tuning --task sst2 --root "$root" --output "$root/last-run.json" \
  --log "$root/last-run.log" \
  --set base_model=smollm2-135m \
  --set 'prompt_configs=[{"seed": 0, "init": "class_label"}, {"seed": 1, "init": "class_label"}]' \
  --set prompt_length=20 --set batch_size=8 --set micro_batch_size=8 \
  --set max_steps="${DEMO_STEPS:-30}" --set eval_every="${DEMO_STEPS:-30}" --set eval_max_examples=100 \
  --set max_train_examples=2000 --set max_dev_examples=100 --set max_test_examples=200
echo "result JSON: $root/last-run.json   full log: $root/last-run.log   pipeline runs (outputs, cache): $root/pipelines"
