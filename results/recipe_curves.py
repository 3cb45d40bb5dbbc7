"""Plots the check-score curves of the recipe candidates (results/recipe_sst2/<name>/).

Each run directory is a `softprompt train` run; its metrics.jsonl "eval" records give the check
score at every check, and their elapsed and eval_seconds give the training seconds (checks
excluded) at which it was taken. The result's GLUE-dev accuracy goes into the legend.

    .venv/bin/python results/recipe_curves.py   # writes results/recipe_sst2/curves.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "recipe_sst2"


def curve(run: Path) -> tuple[list[float], list[float]]:
    seconds, scores = [], []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "eval":
            seconds.append(record["elapsed"] - record.get("eval_seconds", 0.0))
            scores.append(record["score"])
    return seconds, scores


def main(root: Path = HERE) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for run in sorted(p for p in root.iterdir() if (p / "metrics.jsonl").is_file()):
        result = json.loads((run / "result.json").read_text())
        label = f"{run.name}: GLUE dev {100 * result['test']['score']:.1f}"
        ax.plot(*curve(run), marker="o", markersize=3, label=label)
    ax.set_xlabel("training seconds (checks excluded), 1 core per run")
    ax.set_ylabel("check accuracy (200 dev examples)")
    ax.set_title("SST-2, SmolLM2-135M, P=20, class-label init")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = root / "curves.png"
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE))
