"""What an experiment writes: a results table with its notes and command, the same numbers as
JSON, and a plot where the paper has a figure.

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
