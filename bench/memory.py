"""Peak memory of serving K tasks with one model, and of a training step (softprompt vs PEFT).

Serving K tasks: a fresh process loads the model, then K prompts from safetensors files (as
pulled from the registry), keeps them resident and scores R requests in one batch
(softprompt.scoring.mixed_label_scores with by_prompt=False, the same batch shape for every K).
Two request patterns:
- one task: all R requests for task 0 while K prompts are resident: the cost of holding K tasks
  (the target compares K=100 with K=1);
- spread: the R requests round-robin over the K tasks: also what mixing costs. Rows of one prompt
  share its [BOS; P] prefix (CPU), so K=1 runs it once while at K >= R no two rows share one.
The cost is that process's peak RSS (CPU; GPU: allocated bytes) from after a first warm-up
request to the end. One process per measurement, because in a long-lived process the heap left
by earlier measurements moved the peak by several percent either way.
Training: the peak above the steady state during one step of each implementation (the same
setup as bench.train_vs_peft).

    nice -n 19 python -m bench.memory [--tasks-resident 1,10,100] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.common import (
    REPO,
    Report,
    base_parser,
    check_args,
    fixed_batch,
    load_lm,
    mib,
    parse_ints,
    peak_memory,
    summary,
)
from bench.train_vs_peft import Trainers
from softprompt.model import Batch
from softprompt.prompt import load_prompt, random_uniform, save_prompt
from softprompt.scoring import mixed_label_scores

TARGET_EXTRA = 0.01
# glibc serves large blocks from mmap and unmaps them on free once a fixed threshold is set, so RSS
# follows live memory instead of whatever heap earlier allocations left behind.
CHILD_ENV = os.environ | {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "2"}


def main(argv: Sequence[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n")[0], reps=3)
    p.add_argument("--tasks-resident", default="1,10,100", help="K, tasks served by one model")
    p.add_argument("--requests", type=int, default=32, help="R, requests per served batch")
    p.add_argument("--serve-input-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8, help="training batch")
    p.add_argument("--input-tokens", type=int, default=128, help="training input length")
    p.add_argument("--label-words", default="negative,positive")
    p.add_argument("--skip-training", action="store_true", help="serving only (no PEFT needed)")
    p.add_argument(
        "--serve-once", default=None, metavar="PATTERN:K:DIR", help=argparse.SUPPRESS
    )  # one measurement, in a child process
    args = p.parse_args(argv)
    check_args(args)
    if args.serve_once:
        pattern, k, prompt_dir = args.serve_once.split(":", 2)
        return serve_once(args, pattern, int(k), Path(prompt_dir))
    ks = parse_ints(args.tasks_resident, "--tasks-resident")
    words = args.label_words.split(",")

    report = Report("memory", "Peak memory: serving K tasks, and training vs PEFT", args, argv)
    lm = load_lm(args)
    model_bytes = sum(t.numel() * t.element_size() for t in lm.model.state_dict().values())
    results: dict = {"model_bytes": model_bytes}

    with tempfile.TemporaryDirectory() as tmp:
        gen = torch.Generator().manual_seed(args.seed)
        for k in range(max(ks)):
            save_prompt(
                random_uniform(args.prompt_length, lm.dim, gen), Path(tmp) / f"task{k}.safetensors"
            )
        child = [
            sys.executable,
            "-m",
            "bench.memory",
            *(argv if argv is not None else sys.argv[1:]),
        ]
        patterns = ("one_task", "spread")
        serving = {(pattern, k): [] for pattern in patterns for k in ks}
        for r in range(args.reps):
            for pattern in patterns:
                for k in ks[r % len(ks):] + ks[: r % len(ks)]:
                    out = subprocess.run(
                        [*child, "--serve-once", f"{pattern}:{k}:{tmp}"],
                        capture_output=True,
                        text=True,
                        check=True,
                        cwd=REPO,
                        env=CHILD_ENV,
                    ).stdout
                    serving[pattern, k].append(json.loads(out.strip().splitlines()[-1]))
    base_k = min(ks)
    rows = []
    results["serving"] = {pattern: {} for pattern in patterns}
    for pattern, k in serving:
        runs = serving[pattern, k]
        peak = summary([m["peak"] for m in runs])
        extra = summary(
            [a["peak"] / b["peak"] - 1 for a, b in zip(runs, serving[pattern, base_k], strict=True)]
        )
        prompt_bytes = k * args.prompt_length * lm.dim * 4
        results["serving"][pattern][k] = {
            "peak": peak,
            "delta": summary([m["delta"] for m in runs]),
            "extra_vs_min_k": extra,
            "prompt_bytes": prompt_bytes,
        }
        rows.append(
            [
                pattern.replace("_", " "),
                k,
                mib(peak["median"]),
                mib(results["serving"][pattern][k]["delta"]["median"]),
                mib(prompt_bytes),
                f"{extra['median']:+.2%} ({extra['min']:+.2%} to {extra['max']:+.2%})",
            ]
        )
    report.table(
        f"Serving K tasks: R={args.requests} requests of {args.serve_input_tokens} tokens in one "
        f"batch, model weights {mib(model_bytes)} MiB",
        [
            "requests",
            "K",
            "peak MiB (process)",
            "peak above start MiB",
            "prompts MiB",
            f"vs K={base_k}",
        ],
        rows,
    )
    if 100 in ks and 1 in ks:
        extra = results["serving"]["one_task"][100]["extra_vs_min_k"]["median"]
        report.target(
            "serving 100 tasks vs 1",
            f"< {TARGET_EXTRA:.0%} more memory",
            extra * 100,
            extra < TARGET_EXTRA,
            "%",
        )
        spread = results["serving"]["spread"][100]["extra_vs_min_k"]["median"]
        report.note(
            f"Spread over the tasks, K=100 peaks {spread:+.2%} over K=1: besides the prompts, its "
            "rows cannot share a [BOS; P] prefix (every row has its own prompt), so each computes "
            "P more positions; at K=1 all rows share one."
        )

    if not args.skip_training:
        trainers = Trainers(lm, args.prompt_length, args.seed)
        batch = Batch(*fixed_batch(lm, args.batch_size, args.input_tokens, words, args.seed))
        steps = {"softprompt": lambda: trainers.ours(batch), "PEFT": lambda: trainers.peft(batch)}
        for fn in steps.values():
            for _ in range(max(args.warmup, 1)):  # optimizer state exists before measuring
                fn()
        train = {name: [] for name in steps}
        for r in range(args.reps):
            for name in list(steps)[r % 2:] + list(steps)[: r % 2]:
                train[name].append(peak_memory(steps[name], lm.device))
        results["training"] = {
            name: {
                "peak": summary([m["peak"] for m in v]),
                "delta": summary([m["delta"] for m in v]),
            }
            for name, v in train.items()
        }
        report.table(
            f"Training step: B={args.batch_size}, {args.input_tokens} input + {args.prompt_length} "
            "prompt tokens",
            ["implementation", "peak above steady state MiB", "process peak MiB"],
            [
                [name, mib(v["delta"]["median"]), mib(v["peak"]["median"])]
                for name, v in results["training"].items()
            ],
        )
        ratio = (
            results["training"]["PEFT"]["delta"]["median"]
            / results["training"]["softprompt"]["delta"]["median"]
        )
        results["training"]["peft_over_ours_delta"] = ratio
        report.note(
            f"Training: PEFT's step needs {ratio:.2f}x softprompt's extra memory (full-vocabulary "
            "logits at every position)."
        )
    report.results = results
    report.note(
        "Serving: one fresh process per measurement (K and repetition interleaved). CPU memory is "
        "the process RSS: freed heap is returned (malloc_trim) and the kernel's high-water mark "
        "reset (/proc/self/clear_refs) before each measurement; `peak above start` is what the "
        "measured work added."
    )
    report.write(lm.device)
    return report.results


def serve_once(args: argparse.Namespace, pattern: str, k: int, prompt_dir: Path) -> dict:
    """In a fresh process: load the model, then measure loading K prompts (kept resident) and
    scoring one batch of R requests (`pattern`: all for task 0, or spread over the K tasks).
    Prints the measurement as JSON."""
    lm = load_lm(args)
    words = args.label_words.split(",")
    inputs, _ = fixed_batch(lm, args.requests, args.serve_input_tokens, words, args.seed)
    # A first request pages in every weight (safetensors loads are file-backed), so the peak
    # measures what K tasks add to a warm service, not how much of the model was resident.
    mixed_label_scores(
        lm,
        [random_uniform(args.prompt_length, lm.dim, torch.Generator().manual_seed(args.seed))]
        * len(inputs),
        inputs,
        [words] * len(inputs),
        by_prompt=False,
    )
    resident: list = []

    def serve() -> None:
        resident.extend(
            load_prompt(prompt_dir / f"task{i}.safetensors").to(lm.device) for i in range(k)
        )
        owners = [i % k if pattern == "spread" else 0 for i in range(len(inputs))]
        mixed_label_scores(
            lm, [resident[i] for i in owners], inputs, [words] * len(inputs), by_prompt=False
        )

    measured = peak_memory(serve, lm.device)
    print(json.dumps(measured))
    return measured


if __name__ == "__main__":
    main()
