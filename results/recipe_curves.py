"""Plots the check-score curves of `softprompt train` runs against their training seconds.

Each run directory's metrics.jsonl "eval" records give the check score at every check, and their
elapsed and eval_seconds give the training seconds (checks excluded) at which it was taken. The
legend names each run with its prompt length and the result's GLUE-dev accuracy.

    .venv/bin/python results/recipe_curves.py   # results/recipe_sst2/<run>/ -> curves.png there
    .venv/bin/python results/recipe_curves.py --out results/sst2_prompt_length/curves.png \\
        --title "..." RUN_DIR ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent / "recipe_sst2"
RECIPE_TITLE = "SST-2, SmolLM2-135M, P=20, class-label init, 1 core per run"


def curve(run: Path) -> tuple[list[float], list[float]]:
    seconds, scores = [], []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "eval":
            seconds.append(record["elapsed"] - record.get("eval_seconds", 0.0))
            scores.append(record["score"])
    return seconds, scores


def label(run: Path) -> str:
    result = json.loads((run / "result.json").read_text())
    length = json.loads((run / "config.json").read_text())["prompt"]["length"]
    return f"{run.name} (P={length}): GLUE dev {100 * result['test']['score']:.1f}"


def plot(runs: list[Path], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for run in runs:
        ax.plot(*curve(run), marker="o", markersize=3, label=label(run))
    ax.set_xlabel("training seconds (checks excluded)")
    ax.set_ylabel("check accuracy (200 dev examples)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="*", type=Path, help="run directories (default: recipe_sst2/*)")
    p.add_argument("--out", type=Path, default=HERE / "curves.png")
    p.add_argument("--title", default=RECIPE_TITLE)
    args = p.parse_args(argv)
    runs = args.runs or sorted(r for r in HERE.iterdir() if (r / "result.json").is_file())
    return plot(runs, args.out, args.title)


if __name__ == "__main__":
    print(main())
