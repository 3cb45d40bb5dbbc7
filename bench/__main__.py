"""Runs every benchmark in turn, then writes <out>/summary.md: each benchmark's targets and a link
to its full results. `make bench` runs this under `nice -n 19`.

    python -m bench [--quick] [--only train_vs_peft,memory] [--reps N] [--model M] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Sequence
from pathlib import Path

from bench.common import RESULTS_DIR, fmt, markdown_table, target_cell

BENCHMARKS = (
    "train_vs_peft",
    "utilization",
    "rank_labels",
    "ensemble_batch",
    "group_step",
    "mixed_tasks",
    "memory",
    "time_to_accuracy",
)


def write_summary(out: Path) -> Path:
    """summary.md from whatever <name>.json files the folder holds."""
    rows, runs = [], []
    for name in BENCHMARKS:
        path = out / f"{name}.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        env, load = record["environment"], record["load_avg_1m"]
        runs.append(
            [
                f"[{name}]({name}.md)",
                env.get("gpu") or env["cpu"],
                f"{load['before']:.1f} / {load['after']:.1f}",
                record["started"],
                f"`{record['command']}`",
            ]
        )
        for t in record["targets"]:
            rows.append(
                [
                    t["name"],
                    t["goal"],
                    f"{fmt(t['measured'])}{t['unit']}",
                    target_cell(t),
                ]
            )
    text = [
        "# Benchmark summary",
        "",
        markdown_table(["target", "goal", "measured", "met"], rows),
        "",
        markdown_table(
            ["benchmark", "machine", "load avg before / after", "started", "command"], runs
        ),
        "",
    ]
    path = out / "summary.md"
    path.write_text("\n".join(text))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(BENCHMARKS), help="comma list of benchmarks to run")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--model", default=None)
    p.add_argument(
        "--reps",
        type=int,
        default=None,
        help="timed repetitions for each benchmark (default: its own)",
    )
    p.add_argument("--out", default=str(RESULTS_DIR))
    args = p.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        raise SystemExit(
            f"--only: unknown benchmarks {sorted(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    common = (
        ["--out", args.out]
        + (["--quick"] if args.quick else [])
        + (["--model", args.model] if args.model else [])
    )
    common += ["--reps", str(args.reps)] if args.reps is not None else []
    for name in chosen:
        print(f"\n=== bench.{name} ===", flush=True)
        importlib.import_module(f"bench.{name}").main(common)
    print(f"\nwrote {write_summary(Path(args.out))}")


if __name__ == "__main__":
    main()
