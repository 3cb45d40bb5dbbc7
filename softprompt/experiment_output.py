"""What an experiment writes: a results table with its notes and command, the same numbers as
JSON, a plot where the paper has a figure, and the summaries its tables show (mean and spread,
each class's share of the predictions and of the gold labels).

    <name>.md    a results table (with the command that made it)
    <name>.json  the same numbers, machine-readable
    <name>.png   a plot (matplotlib, drawn off-screen)
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path


def _fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def write_results(
    out_dir: Path,
    name: str,
    title: str,
    header: list[str],
    rows: list[list],
    payload: dict,
    command: str | None,
    notes: Sequence[str] = (),
) -> Path:
    """name.md (a table, the notes and the command) and name.json (payload + table)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    payload = payload | {"command": command, "table": {"header": header, "rows": rows}}
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))
    return out_dir / f"{name}.md"


def plot(
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    series: dict[str, tuple[list, list, list]],
    logx: bool = False,
    categorical: bool = False,
) -> None:
    """One line (or bar group) with error bars per series, {label: (x, mean, spread)}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, (x, mean, spread) in series.items():
        if categorical:
            ax.bar([str(v) for v in x], mean, yerr=spread, capsize=4, label=label)
        else:
            ax.errorbar(x, mean, yerr=spread, marker="o", capsize=4, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mean_spread(values: list[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def class_shares(label_words: Sequence[str], predicted: Sequence[str],
                 gold: Sequence[str]) -> dict:
    """The share of each label word among the predictions and among the gold labels:
    {"predicted": {word: share}, "gold": {word: share}}. A model that answers one class for
    everything shows as a predicted share of 1.0 whatever its accuracy."""
    return {name: {w: sum(x == w for x in labels) / len(labels) for w in label_words}
            for name, labels in (("predicted", predicted), ("gold", gold))}


def shares_from_f1(label_words: Sequence[str], positive: str, gold: Sequence[str],
                   accuracy: float, f1: float) -> dict:
    """class_shares of a binary task recovered from its gold labels, accuracy and F1, where the
    predictions themselves are not kept.

    With P gold positives, N gold negatives, T = P + N and Q predicted positives, F1 = 2 tp /
    (Q + P) and accuracy T = 2 tp + N - Q, so Q = (N + F1 P - accuracy T) / (1 - F1), and Q = P
    when F1 = 1."""
    (negative,) = [w for w in label_words if w != positive]
    total = len(gold)
    pos = sum(g == positive for g in gold)
    neg = total - pos
    q = pos if f1 >= 1.0 else round((neg + f1 * pos - accuracy * total) / (1.0 - f1))
    predicted = [positive] * q + [negative] * (total - q)
    return class_shares(label_words, predicted, gold)


def shares_text(shares: dict | None, which: str) -> str:
    """'0.32 / 0.68': the `which` ("predicted" or "gold") share of each label, in label order."""
    if not shares:
        return "n/a"
    return " / ".join(f"{v:.2f}" for v in shares[which].values())
