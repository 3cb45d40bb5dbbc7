"""infra/gpu_evidence.sh and infra/gpu_check.py where torch sees no GPU: the GPU modes refuse to
start, and the smoke mode runs the commands of `all` with the tiny model, toy tasks and tiny
budgets on the CPU.

The smoke test runs the steps of SMOKE_STEPS (about 85 s on a 2-core CPU): every new or changed
command. The other steps of `smoke` (rank_labels, ensemble_batch, mixed_tasks and memory, each
with its own test in tests/test_bench.py, and the Gemma grid, the same command as the SmolLM2
grid with another config file) take about 60 s more; `infra/gpu_evidence.sh smoke OUT` runs them
all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "infra" / "gpu_evidence.sh"
BENCH_STEPS = ["gpu_check", "train_vs_peft", "utilization", "group_step", "time_to_accuracy"]
EXPERIMENT_STEPS = ["load", "grid_smollm2", "ensembles", "domain_shift"]
SMOKE_STEPS = BENCH_STEPS + EXPERIMENT_STEPS
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here")


def _script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable, **(env or {})},
    )


@no_cuda
def test_the_gpu_modes_refuse_to_start_without_cuda(tmp_path):
    out = tmp_path / "out"
    for args in (["all", str(out)], ["experiments", str(out)], ["bench", "m", str(out)]):
        run = _script(*args)
        assert run.returncode == 2, args
        assert "no CUDA device" in run.stderr and "smoke OUT_DIR" in run.stderr
    assert not out.exists()
    for args in (["all"], ["smoke", str(out), "serve"], ["smoke"]):
        run = _script(*args)
        assert run.returncode == 2 and "usage:" in run.stderr, args


@no_cuda
def test_gpu_check_refuses_cuda_without_a_device(tmp_path):
    sys.path.insert(0, str(ROOT / "infra"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "infra"))
    assert gpu_check.main(["--out", str(tmp_path / "check.json")]) == 2
    assert not (tmp_path / "check.json").exists()


def test_smoke_runs_the_commands_of_all(tiny_causal_dir, tmp_path):
    out = tmp_path / "evidence"
    env = {"SMOKE_MODEL": str(tiny_causal_dir), "ONLY": ",".join(SMOKE_STEPS)}
    run = _script("smoke", str(out), env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    for part, steps in (("bench", BENCH_STEPS), ("experiments", EXPERIMENT_STEPS)):
        lines = (out / part / "steps.txt").read_text().splitlines()
        assert len(lines) == len(steps) and all(" rc=0 " in line for line in lines), lines
        assert all((out / part / f"{step}.log").is_file() for step in steps)
    bench = out / "bench"
    for name in ("train_vs_peft", "utilization", "group_step", "time_to_accuracy"):
        record = json.loads((bench / f"{name}.json").read_text())
        assert record["device"] == "cpu" and (bench / f"{name}.md").is_file()
    utilization = json.loads((bench / "utilization.json").read_text())
    assert [t["status"] for t in utilization["targets"] if t["on"] == "cuda"] == ["not measured"]
    assert list(utilization["results"]["curve"]) == ["2", "4"]
    tta = json.loads((bench / "time_to_accuracy.json").read_text())["results"]
    assert tta["target"] == 0.6 and len(tta["time_to_target"]) == 3
    check = json.loads((bench / "gpu_check.json").read_text())
    assert (check["device"], check["steps"]) == ("cpu", 3)
    assert (bench / "summary.md").is_file() and (bench / "utilization.png").is_file()
    experiments = out / "experiments"
    grid = json.loads((experiments / "grid_smollm2" / "grid.json").read_text())
    assert grid["lengths"] == [1, 5, 20, 100, 150] and len(grid["scores"]) == 3
    assert (experiments / "grid_smollm2" / "grid.png").is_file()
    ensembles = json.loads((experiments / "ensembles" / "ensembles.json").read_text())
    assert list(ensembles["tasks"]) == ["toy", "toy2"]
    shift = json.loads((experiments / "domain_shift" / "domain_shift.json").read_text())
    assert [(r["source"], r["method"]) for r in shift["results"]] == [
        ("toy", "prompt_tuning"),
        ("toy", "model_tuning"),
        ("toy2", "prompt_tuning"),
        ("toy2", "model_tuning"),
    ]
    # toy2 is scored by F1, so model tuning's shares on it follow from accuracy and F1.
    assert shift["results"][1]["target_metrics"]["shares"]["gold"] == {
        "negative": 0.5,
        "positive": 0.5,
    }
