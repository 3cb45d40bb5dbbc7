#!/usr/bin/env bash
# The GPU evidence in one script, for a machine with one CUDA GPU and this repo's checkout.
#
#   infra/gpu_evidence.sh bench MODEL OUT_DIR     bf16 benchmarks against PEFT (bench/)
#   infra/gpu_evidence.sh carry OUT_DIR           where the model cache and data are: what `arch`
#                                                 and `bench` need on a machine without network
#                                                 (SmolLM2's config and tokenizer from the model
#                                                 cache, the data of sst2 rte mrpc cb), about 10 MB
#   infra/gpu_evidence.sh arch SRC OUT_DIR        SRC's config and tokenizer with random weights (seed
#                                                 0), a MODEL for `bench` on a machine without the
#                                                 weights (time and memory do not depend on the
#                                                 weights' values)
#   infra/gpu_evidence.sh experiments OUT_DIR     GPU check, then the paper's experiments at real
#                                                 size on SmolLM2-135M, five at once
#
# Needs $PYTHON (default python3) with torch (CUDA), transformers, peft, pyyaml, matplotlib. The
# experiments need `smollm2-135m` loadable (its GGUF package or the cache in
# $SOFTPROMPT_MODEL_CACHE) and $SOFTPROMPT_DATA_DIR. Every step has its own time limit, so one
# slow step cannot starve the rest, and its log lands beside its results.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

step() {  # step LIMIT_S LOG command...: run one step under a time limit, log it, report its status
  local limit=$1 log=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$log" 2>&1
  local rc=$?
  echo "$(date -u +%H:%M:%S) rc=$rc $((SECONDS - start))s $*" | tee -a "$(dirname "$log")/steps.txt"
}

bench() {
  local model=$1 out=$2
  mkdir -p "$out"
  nvidia-smi >"$out/nvidia-smi.txt" 2>&1
  $PY -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)" >"$out/versions.txt" 2>&1
  # Same settings as the CPU table (batch 8, 128 input tokens, P=20), then a GPU-sized batch.
  step 100 "$out/train_vs_peft.log" $PY -m bench.train_vs_peft --model "$model" --out "$out"
  step 80 "$out/utilization.log" $PY -m bench.utilization --model "$model" --out "$out" --mm-sizes 4096,8192
  step 80 "$out/utilization_b64.log" $PY -m bench.utilization --model "$model" --out "$out/b64" --mm-sizes 4096,8192 \
    --batch-size 64 --infer-batch-size 128 --input-tokens 256
  step 60 "$out/rank_labels.log" $PY -m bench.rank_labels --model "$model" --out "$out" --naive
  step 60 "$out/ensemble_batch.log" $PY -m bench.ensemble_batch --model "$model" --out "$out"
  step 60 "$out/mixed_tasks.log" $PY -m bench.mixed_tasks --model "$model" --out "$out"
  # Each serving measurement is a fresh process (2 patterns x 3 K per repetition), so it gets the
  # longest limit. 2 repetitions take 93 s with a tiny model on a 2-core CPU.
  step 150 "$out/memory.log" $PY -m bench.memory --model "$model" --out "$out" --reps 2
  $PY -c "import sys; from pathlib import Path; from bench.__main__ import write_summary; write_summary(Path(sys.argv[1]))" "$out"
}

carry() {
  local out=$1 model=${SOFTPROMPT_MODEL_CACHE:-$HOME/.cache/softprompt/models}/smollm2-135m
  local data=${SOFTPROMPT_DATA_DIR:-../shared/data}
  mkdir -p "$out/smollm2-135m" "$out/data" &&
    cp "$model"/{config.json,tokenizer.json,tokenizer_config.json} "$out/smollm2-135m/" &&
    cp -r "$data"/{sst2,rte,mrpc,cb} "$out/data/" ||
    { echo "carry: needs the cached model in $model (load it once) and the data in $data" >&2; exit 1; }
}

arch() {
  $PY - "$1" "$2" <<'PYTHON'
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

src, out = sys.argv[1:]
torch.manual_seed(0)
AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src)).save_pretrained(out)
AutoTokenizer.from_pretrained(src).save_pretrained(out)
PYTHON
}

experiments() {
  local out=$1 config=results/experiments/configs/sst2_smollm2_gpu.yaml
  mkdir -p "$out"
  nvidia-smi >"$out/nvidia-smi.txt" 2>&1
  # Dequantize the GGUF once (cached as safetensors) before five processes want it.
  step 180 "$out/load.log" $PY -c "from softprompt.model import load_frozen_lm; print(load_frozen_lm('smollm2-135m').name)"
  step 120 "$out/gpu_check.log" $PY infra/gpu_check.py --out "$out/gpu_check.json"
  # Five experiments share the GPU (each is launch-bound at this model size); each run inside is
  # bounded by --max-minutes, each command by its step limit.
  export OMP_NUM_THREADS=3
  local sp=($PY -m softprompt.cli)
  step 400 "$out/ensemble.log" "${sp[@]}" ensemble --config $config --out "$out/ensemble_sst2" --seeds 0 1 2 --max-minutes 1.0 &
  step 400 "$out/domain_shift.log" "${sp[@]}" domain-shift --config $config --out "$out/domain_shift" --pairs qqp:mrpc mrpc:qqp \
    --max-minutes 0.75 --test-limit 2000 &
  step 400 "$out/baselines.log" "${sp[@]}" baselines --config $config --out "$out/baselines" --tasks sst2 rte --k-shot 4 \
    --max-minutes 0.6 &
  step 400 "$out/ablate_length.log" "${sp[@]}" ablate --axis length --values 1 5 20 100 150 --init sampled_vocab --config $config \
    --out "$out/ablation_length" --seeds 0 1 --max-minutes 0.3 &
  step 400 "$out/ablate_init.log" "${sp[@]}" ablate --axis init --config $config --out "$out/ablation_init" --seeds 0 1 \
    --max-minutes 0.5 &
  wait
}

case "${1:-}" in
  bench) bench "$2" "$3" ;;
  carry) carry "$2" ;;
  arch) arch "$2" "$3" ;;
  experiments) experiments "$2" ;;
  *) echo "usage: $0 bench MODEL OUT_DIR | carry OUT_DIR | arch SRC OUT_DIR | experiments OUT_DIR" >&2; exit 2 ;;
esac
