"""Seconds per SST-2 training step (P=100, batch 16) with the frozen weights in fp32 and in bf16,
and in bf16 with torch's bf16 attention kernels instead of float32 attention.

Each setting trains a random [100, E] prompt on the same 96 SST-2 training examples (6 batches
of 16, in order): 5 untimed steps, then 30 timed ones. Prints a table and writes JSON to --out.

    OMP_NUM_THREADS=2 .venv/bin/python results/sst2_bf16/step_time.py \
        --out results/sst2_bf16/step_time.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from softprompt.model import Batch, load_frozen_lm
from softprompt.scoring import encode_examples
from softprompt.tasks import load_spec
from softprompt.training import prompt_tuning
from softprompt.training.config import TrainConfig

SETTINGS = {  # name: (dtype, attention; None: the loader's choice)
    "fp32": ("float32", None),
    "bf16, bf16 attention (sdpa)": ("bfloat16", "sdpa"),
    "bf16, fp32 attention (the loader's choice)": ("bfloat16", None),
}


def seconds_per_step(dtype: str, attention: str | None, examples, warmup: int, steps: int):
    lm = load_frozen_lm("smollm2-135m", device="cpu", dtype=dtype, attention=attention)
    encoded = encode_examples(lm, examples, 256)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.nn.Parameter(torch.randn(100, lm.dim, generator=gen))  # [P, E]
    batches = [
        Batch(encoded.inputs[k : k + 16], encoded.targets[k : k + 16])
        for k in range(0, len(examples), 16)
    ]

    def step(k: int) -> None:
        logprobs, _ = lm.target_logprobs(prompt * 0.1, batches[k % len(batches)])
        (-logprobs.mean()).backward()

    for k in range(warmup):
        step(k)
    start = time.perf_counter()
    for k in range(steps):
        step(k)
    return (time.perf_counter() - start) / steps, lm.model.config._attn_implementation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    spec = load_spec("sst2")
    config = TrainConfig(task="sst2")
    examples = prompt_tuning.load_data(config, spec, {})["train"][:96]
    rows = {}
    for name, (dtype, attention) in SETTINGS.items():
        seconds, used = seconds_per_step(dtype, attention, examples, 5, args.steps)
        rows[name] = {"dtype": dtype, "attention": used, "seconds_per_step": round(seconds, 3)}
    base = rows["fp32"]["seconds_per_step"]
    print("| setting | attention | s per step | of fp32's time |\n|---|---|---|---|")
    for name, row in rows.items():
        row["of_fp32"] = round(row["seconds_per_step"] / base, 2)
        print(f"| {name} | {row['attention']} | {row['seconds_per_step']} | {row['of_fp32']} |")
    record = {
        "command": "results/sst2_bf16/step_time.py",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "steps": args.steps,
        "rows": rows,
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
