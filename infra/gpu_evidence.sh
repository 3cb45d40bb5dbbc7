#!/usr/bin/env bash
# The GPU evidence in one script, for a machine with one CUDA GPU and this repo's checkout.
#
#   infra/gpu_evidence.sh all OUT_DIR          the benchmarks (minutes, each step time-limited),
#                                              then the experiments (hours, bounded by steps), all
#                                              under OUT_DIR (meant to be results/gpu_<gpu-name>/)
#   infra/gpu_evidence.sh smoke OUT_DIR [PART] every command of `all` with a tiny model, toy tasks,
#                                              tiny budgets and the CPU: proves the commands and
#                                              their flags work (PART: bench or experiments only)
#   infra/gpu_evidence.sh bench MODEL OUT_DIR  the benchmarks alone, on MODEL
#   infra/gpu_evidence.sh experiments OUT_DIR  the experiments alone
#   infra/gpu_evidence.sh carry OUT_DIR        where the model cache and data are: what `arch`
#                                              and `bench` need on a machine without network
#                                              (SmolLM2's config and tokenizer from the model
#                                              cache, the data of sst2 rte mrpc cb), about 10 MB
#   infra/gpu_evidence.sh arch SRC OUT_DIR     SRC's config and tokenizer with random weights
#                                              (seed 0), a MODEL for `bench` on a machine without
#                                              the weights (time and memory do not depend on the
#                                              weights' values)
#
# `all`, `bench` and `experiments` refuse to start (exit 2) when torch sees no CUDA device.
# OUT_DIR/bench/ holds the GPU check (infra/gpu_check.py), each benchmark's .json, .md and .log,
# and summary.md; OUT_DIR/experiments/ one folder per experiment (its table, JSON, plot and
# resumable runs). Each part's steps.txt has one line per step: its exit status, seconds and
# command. The script exits 1 when a step failed (after running the rest), else 0.
#
# Needs $PYTHON (default python3) with torch (CUDA), transformers, peft, pyyaml, matplotlib;
# `smollm2-135m` and `gemma3-270m` loadable (their GGUF packages or the cache in
# $SOFTPROMPT_MODEL_CACHE) and the data of sst2 rte boolq qqp mrpc cb in $SOFTPROMPT_DATA_DIR.
# Environment overrides: MODEL (the benchmarks' model), SEEDS (the grids' seeds), EXP_LIMIT
# (seconds each experiment command may run), ONLY (a comma list of steps to run, by their log's
# name, e.g. ONLY=utilization,grid_gemma3 to rerun two; the experiments resume their runs).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
CONFIGS=results/experiments/configs
FAILED=$(mktemp)  # the steps of this call that failed, one line each
trap 'rm -f "$FAILED"' EXIT

# ---- the settings of a GPU run (`smoke_settings` replaces them) -----------------------------
MODEL=${MODEL:-smollm2-135m}
SEEDS=${SEEDS:-0 1 2}
ENSEMBLE_SEEDS="0 1 2 3 4"
EXP_LIMIT=${EXP_LIMIT:-43200}
MM_SIZES=4096,8192          # a GPU reaches its matmul peak only on large matrices
BATCH_SIZES=8,16,32,64,128,256
DEVICE=(--device cuda --dtype bfloat16)
BENCH=(--model "$MODEL")
TASK=(--task sst2)          # the benchmarks' task; its data comes from $SOFTPROMPT_DATA_DIR
MIXED=(--tasks sst2,rte,mrpc,cb)
RANK=(--labels 2,3,10)
MEMORY=(--reps 2)
TTA=(--marks 30,60,120 --target 0.90 --seeds 0)
CHECK=(--model "$MODEL")
ENSEMBLE_TASKS=(sst2 rte boolq)
PAIRS=(qqp:mrpc mrpc:qqp)
EXP=()                      # flags every experiment command gets after its --config
GRID_TASK=()                # the grids' task when not their config's
PARALLEL=1                  # experiments share the GPU: small models leave it mostly idle

# ---- compile and grouped runs ---------------------------------------------------------------
# The benchmarks measure the step eager and compiled (COMPILE: a torch.compile mode;
# reduce-overhead captures CUDA graphs; off skips the compiled runs), and N prompts trained in
# one batch against one (bench.group_step). The experiments train eagerly, one prompt per run:
# set `compile:` in their config files once the compiled benchmarks show it pays. TRAIN_FLAGS
# are more flags every experiment command gets.
COMPILE=${COMPILE:-reduce-overhead}
GROUP=(--members 1,3,5 --batch-size 32)
TRAIN_FLAGS=()
# ----------------------------------------------------------------------------------------------

step() {  # step LIMIT_S LOG command...: run one step under a time limit, log it, report its status
  local limit=$1 log=$2
  shift 2
  local name
  name=$(basename "$log" .log)
  if [[ -n ${ONLY:-} && ",$ONLY," != *",$name,"* ]]; then return 0; fi
  local start=$SECONDS
  timeout "$limit" "$@" >"$log" 2>&1
  local rc=$?
  local line
  line="$(date -u +%H:%M:%S) rc=$rc $((SECONDS - start))s $*"
  echo "$line" | tee -a "$(dirname "$log")/steps.txt"
  if [[ $rc != 0 ]]; then echo "$line" >>"$FAILED"; fi
}

require_cuda() {
  local cuda="import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"
  if ! $PY -c "$cuda" 2>/dev/null; then
    echo "gpu_evidence: torch sees no CUDA device, and these numbers are the GPU's;" \
      "'$0 smoke OUT_DIR' runs every command on the CPU with a tiny model" >&2
    exit 2
  fi
}

machine() {  # machine OUT: what ran where
  mkdir -p "$1"
  nvidia-smi >"$1/nvidia-smi.txt" 2>&1
  $PY -c "import torch, transformers, peft
print(torch.__version__, transformers.__version__, peft.__version__)" >"$1/versions.txt" 2>&1
}

bench() {
  local out=$1
  machine "$out"
  local b=("${BENCH[@]}" "${DEVICE[@]}" --out "$out")
  step 300 "$out/gpu_check.log" $PY infra/gpu_check.py "${CHECK[@]}" "${TASK[@]}" \
    --run-dir "$out/gpu_check_runs" --out "$out/gpu_check.json" "${DEVICE[@]}"
  step 180 "$out/train_vs_peft.log" $PY -m bench.train_vs_peft "${b[@]}" "${TASK[@]}" \
    --batch-size 32 --shapes task --mm-sizes $MM_SIZES
  step 300 "$out/utilization.log" $PY -m bench.utilization "${b[@]}" "${TASK[@]}" \
    --batch-sizes $BATCH_SIZES --mm-sizes $MM_SIZES
  if [[ $COMPILE != off ]]; then  # the same two, the frozen stack compiled
    mkdir -p "$out/compiled"
    step 600 "$out/compiled/train_vs_peft.log" $PY -m bench.train_vs_peft "${b[@]}" "${TASK[@]}" \
      --batch-size 32 --shapes task --mm-sizes $MM_SIZES --compile "$COMPILE" --out "$out/compiled"
    step 900 "$out/compiled/utilization.log" $PY -m bench.utilization "${b[@]}" "${TASK[@]}" \
      --batch-sizes $BATCH_SIZES --mm-sizes $MM_SIZES --compile "$COMPILE" --out "$out/compiled"
  fi
  step 120 "$out/group_step.log" $PY -m bench.group_step "${b[@]}" "${GROUP[@]}"
  step 120 "$out/rank_labels.log" $PY -m bench.rank_labels "${b[@]}" "${RANK[@]}" --naive
  step 120 "$out/ensemble_batch.log" $PY -m bench.ensemble_batch "${b[@]}"
  step 120 "$out/mixed_tasks.log" $PY -m bench.mixed_tasks "${b[@]}" "${MIXED[@]}"
  # Each serving measurement is a fresh process (2 patterns x 3 K per repetition), so it gets a
  # long limit. 2 repetitions take 93 s with a tiny model on a 2-core CPU.
  step 200 "$out/memory.log" $PY -m bench.memory "${b[@]}" "${MEMORY[@]}"
  # Three arms one after another (a GPU shared by two would slow both), each to its last mark.
  step 900 "$out/time_to_accuracy.log" $PY -m bench.time_to_accuracy "${b[@]}" "${TASK[@]}" \
    "${TTA[@]}" --jobs 1
  $PY -c "import sys; from pathlib import Path; from bench.__main__ import write_summary
write_summary(Path(sys.argv[1]))" "$out"
  if [[ -d $out/compiled ]]; then
    $PY -c "import sys; from pathlib import Path; from bench.__main__ import write_summary
write_summary(Path(sys.argv[1]))" "$out/compiled"
  fi
}

experiments() {
  local out=$1 smollm2=$CONFIGS/gpu_smollm2.yaml gemma3=$CONFIGS/gpu_gemma3.yaml
  machine "$out"
  local sp=($PY -m softprompt.cli) flags=("${EXP[@]}" "${TRAIN_FLAGS[@]}")
  # Dequantize the GGUFs once (cached as safetensors) before several processes want them.
  local load="import sys; from softprompt.model import load_frozen_lm as load; "
  load+="print([load(name, device='cpu').name for name in sys.argv[1:]])"
  step 600 "$out/load.log" $PY -c "$load" "$(model_of "$smollm2")" "$(model_of "$gemma3")"
  run_exp "$out/grid_smollm2.log" "${sp[@]}" grid --config "$smollm2" "${flags[@]}" \
    "${GRID_TASK[@]}" --out "$out/grid_smollm2" --seeds $SEEDS
  run_exp "$out/grid_gemma3.log" "${sp[@]}" grid --config "$gemma3" "${flags[@]}" \
    "${GRID_TASK[@]}" --out "$out/grid_gemma3" --seeds $SEEDS
  run_exp "$out/ensembles.log" "${sp[@]}" ensemble --config "$smollm2" "${flags[@]}" \
    --out "$out/ensembles" --tasks "${ENSEMBLE_TASKS[@]}" --seeds $ENSEMBLE_SEEDS
  # Model tuning updates every weight, by steps that bfloat16 weights would round away: both
  # methods run in float32 here, as they share the model.
  run_exp "$out/domain_shift.log" "${sp[@]}" domain-shift --config "$smollm2" "${flags[@]}" \
    --dtype float32 --out "$out/domain_shift" --pairs "${PAIRS[@]}" --test-limit 2000
  wait
}

run_exp() {  # run_exp LOG command...: one experiment command, beside the others on a GPU
  if [[ $PARALLEL == 1 ]]; then
    step "$EXP_LIMIT" "$@" &
  else
    step "$EXP_LIMIT" "$@"
  fi
}

model_of() {  # model_of CONFIG: the model a config file names (the smoke run's model instead)
  if [[ ${SMOKE_TINY:-} ]]; then echo "$SMOKE_TINY"; else
    $PY -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['model'])" "$1"; fi
}

smoke_settings() {  # smoke_settings OUT: a tiny model and toy tasks under OUT, tiny budgets
  local out=$1
  mkdir -p "$out"
  SMOKE_TINY=${SMOKE_MODEL:-$out/tiny-model}
  # The tests' tiny model and toy task; toy2 is toy under another name, scored by F1, as a
  # second task for the ensembles and the domain shift.
  $PY - "$out" "$SMOKE_TINY" <<'PYTHON' || { echo "smoke: no tiny model or toy task" >&2; exit 1; }
import sys
from pathlib import Path

import yaml

from tests.conftest import build_tiny_causal, write_toy_task

out, tiny = Path(sys.argv[1]), Path(sys.argv[2])
if not (tiny / "config.json").is_file():
    build_tiny_causal(tiny)
if not (out / "toy" / "tasks" / "toy2.yaml").is_file():
    toy = write_toy_task(out / "toy")
    spec = yaml.safe_load(toy["spec_path"].read_text())
    spec |= {"name": "toy2", "metric": "f1", "positive_label": "positive"}
    (toy["tasks_dir"] / "toy2.yaml").write_text(yaml.safe_dump(spec))
PYTHON
  local toy=$out/toy/tasks/toy.yaml toy2=$out/toy/tasks/toy2.yaml data=$out/toy/data
  SEEDS=0
  ENSEMBLE_SEEDS="0 1"
  EXP_LIMIT=600
  MM_SIZES=128,256
  BATCH_SIZES=2,4
  DEVICE=(--device cpu --dtype float32)
  BENCH=(--model "$SMOKE_TINY" --quick --threads 1 --prompt-length 4)
  COMPILE=off  # compiling costs minutes on this CPU; tests/model/test_compiled.py covers it
  GROUP=(--members 2 --batch-size 2 --input-tokens 8)
  TASK=(--task "$toy" --data-dir "$data")
  MIXED=(--tasks "$toy,$toy2" --data-dir "$data" --per-task 3)
  RANK=(--labels 2,10 --input-tokens 16)
  MEMORY=(--reps 1 --tasks-resident 1,100 --requests 4 --serve-input-tokens 8 --input-tokens 16)
  TTA=(--marks 1,2 --target 0.6 --seeds 0)
  CHECK=(--model "$SMOKE_TINY" --steps 3 --batch-size 8 --micro-batch-size 8 --prompt-length 4
    --eval-max-examples 16)
  ENSEMBLE_TASKS=("$toy" "$toy2")
  PAIRS=("$toy:$toy2" "$toy2:$toy")
  GRID_TASK=(--task "$toy")
  EXP=(--model "$SMOKE_TINY" "${DEVICE[@]}" --data-dir "$data" --prompt-length 4 --max-steps 2
    --eval-every 2 --train-batch-size 8 --micro-batch-size 8 --eval-max-examples 12 --test-limit 12)
  PARALLEL=0
}

finish() {  # exit 1 when a step of this call failed
  if [[ -s $FAILED ]]; then
    echo "gpu_evidence: failed steps (their logs are beside their results):" >&2
    cat "$FAILED" >&2
    exit 1
  fi
}

carry() {
  local out=$1 model=${SOFTPROMPT_MODEL_CACHE:-$HOME/.cache/softprompt/models}/smollm2-135m
  local data=${SOFTPROMPT_DATA_DIR:-../shared/data}
  mkdir -p "$out/smollm2-135m" "$out/data" &&
    cp "$model"/{config.json,tokenizer.json,tokenizer_config.json} "$out/smollm2-135m/" &&
    cp -r "$data"/{sst2,rte,mrpc,cb} "$out/data/" ||
    { echo "carry: needs the cached model in $model (load it once) and the data in $data" >&2
      exit 1; }
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

usage() {
  echo "usage: $0 all OUT_DIR | smoke OUT_DIR [bench|experiments] | bench MODEL OUT_DIR |" \
    "experiments OUT_DIR | carry OUT_DIR | arch SRC OUT_DIR" >&2
  exit 2
}

parts() {  # parts OUT PART: the benchmarks, then the experiments (PART: one of them only)
  local out=$1 part=$2
  if [[ $part != experiments ]]; then bench "$out/bench"; fi
  if [[ $part != bench ]]; then experiments "$out/experiments"; fi
  finish
}

case "${1:-}" in
  all) [[ $# == 2 ]] || usage; require_cuda; parts "$2" all ;;
  smoke) [[ $# == 2 || ($# == 3 && $3 =~ ^(bench|experiments)$) ]] || usage
    smoke_settings "$2"; parts "$2" "${3:-all}" ;;
  bench) [[ $# == 3 ]] || usage; require_cuda; BENCH=(--model "$2"); CHECK=(--model "$2")
    bench "$3"; finish ;;
  experiments) [[ $# == 2 ]] || usage; require_cuda; experiments "$2"; finish ;;
  carry) carry "$2" ;;
  arch) arch "$2" "$3" ;;
  *) usage ;;
esac
