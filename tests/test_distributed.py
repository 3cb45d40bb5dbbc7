"""Data-parallel training: 2 processes (torchrun, gloo on CPU) learn the same prompt as 1.

Why the results can be compared tightly: the training loop divides every micro-batch's summed
target log-likelihood by the whole step's target-token count and all-reduces (sums) the prompt
gradient, so in exact arithmetic the 2-process update equals the 1-process update whatever the
examples' lengths. What remains is float32 rounding: the shards pad their micro-batches
differently and the all-reduce adds in another order. Measured: 8e-6 max difference after 4 SGD
steps (3e-5 with Adafactor). The test uses SGD because its update is linear in the gradient;
Adafactor divides the gradient by its own RMS, so it would not notice an all-reduce that averaged
instead of summed. Tolerance 1e-4: ~10x the rounding, and far below what a gradient off by 2x
does (0.33, checked).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from softprompt.cli import main
from softprompt.distributed import SINGLE_PROCESS, backend_for, barrier, process_group, world

STEPS = 4
TOLERANCE = 1e-4


def _train_args(toy_task, model_dir, run_dir, lr: float = 0.3) -> list[str]:
    return [
        "train", "--task", str(toy_task["spec_path"]), "--data-dir", str(toy_task["data_dir"]),
        "--model", str(model_dir), "--run-dir", str(run_dir), "--prompt-length", "4",
        "--train-batch-size", "8", "--micro-batch-size", "2", "--max-steps", str(STEPS),
        "--eval-every", str(STEPS), "--eval-max-examples", "16", "--batch-size", "16",
        "--no-progress", "--optimizer", "sgd", "--lr", str(lr),
    ]


def _losses(run_dir) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if r.get("event") == "step"]


def test_two_processes_learn_the_single_process_prompt(toy_task, tiny_causal_dir, tmp_path):
    # The micro-batch (2) differs from the per-process share (4): accumulation is exercised too.
    one, two = tmp_path / "one", tmp_path / "two"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "softprompt.cli", *_train_args(toy_task, tiny_causal_dir, two)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(_train_args(toy_task, tiny_causal_dir, one)) == 0

    # Rank 0 alone wrote the run directory: one line per step, not two.
    assert len(_losses(two)) == STEPS
    assert _losses(two) == pytest.approx(_losses(one), abs=1e-4)
    assert abs(_losses(one)[0] - _losses(one)[-1]) > 1e-3, (
        "the prompt did not train: the comparison would be empty"
    )
    final_one = torch.load(one / "checkpoint.pt", weights_only=True)
    final_two = torch.load(two / "checkpoint.pt", weights_only=True)
    assert final_two["state"]["step"] == final_one["state"]["step"] == STEPS
    diff = (final_two["prompt"] - final_one["prompt"]).abs().max().item()
    assert diff < TOLERANCE, f"2-process prompt differs from the 1-process prompt by {diff:.2e}"
    # The printed result came from rank 0 only.
    assert proc.stdout.count('"best_step"') == 1

    # The tolerance discriminates: half the learning rate (= a gradient averaged, not summed,
    # over 2 processes) lands far outside it.
    half = tmp_path / "half"
    assert main(_train_args(toy_task, tiny_causal_dir, half, lr=0.15)) == 0
    wrong = torch.load(half / "checkpoint.pt", weights_only=True)["prompt"]
    assert (wrong - final_one["prompt"]).abs().max().item() > 100 * TOLERANCE


def test_process_group_is_a_no_op_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with process_group("cpu") as rank:
        assert rank == 0
        assert not torch.distributed.is_initialized()


def test_process_group_rejects_a_malformed_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"), process_group("cpu"):
        pass


def test_backend_follows_the_device():
    assert backend_for("cpu") == "gloo"
    assert backend_for("cuda") == "nccl"
    assert backend_for(None) == ("nccl" if torch.cuda.is_available() else "gloo")


def test_without_a_process_group_there_is_one_process():
    assert not torch.distributed.is_initialized()
    assert world() == SINGLE_PROCESS == (1, 0) and world().rank == 0
    barrier()  # nothing to wait for
