"""Benchmarks this checkout against another commit in the same run, to show a change kept speed.

A change that should not move performance (a restructuring, say) is checked by running the same
benchmarks on both trees, alternating them round by round so that both see the same machine
state. The other commit runs from a temporary `git worktree` with this virtual environment.
Each benchmark's targets (ratios against PEFT or against one forward pass, measured side by side
inside each run) are compared between the two trees.

    python -m bench.against --base REV [--only train_vs_peft,rank_labels] [--rounds 2]

"Within noise" means the checkout's median lies inside the base's range across its rounds,
widened by `--tolerance` (default 5%, about the spread between repeated runs of one commit on a
shared 2-core machine; bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import RESULTS_DIR, environment, markdown_table
from softprompt.tasks import default_data_dir

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def run_benchmark(tree: Path, name: str, out: Path, extra: Sequence[str]) -> dict[str, float]:
    """Runs `python -m bench.<name>` with `tree` first on the path; returns {target: measured}."""
    # Both trees read the data this checkout finds: the default location is beside the checkout,
    # and the other tree lives in a temporary folder.
    data = str(default_data_dir())
    env = os.environ | {"PYTHONPATH": str(tree), "SOFTPROMPT_DATA_DIR": data}
    command = [sys.executable, "-m", f"bench.{name}", "--out", str(out), *extra]
    subprocess.run(command, cwd=tree, env=env, check=True)
    record = json.loads((out / f"{name}.json").read_text())
    return {t["name"]: t["measured"] for t in record["targets"]}


def within_noise(head: list[float], base: list[float], tolerance: float) -> bool:
    """The head's median inside the base's min-max, widened by `tolerance` on each side."""
    low, high = min(base) * (1 - tolerance), max(base) * (1 + tolerance)
    return low <= statistics.median(head) <= high


def compare(args: argparse.Namespace) -> dict:
    """All rounds of every benchmark, alternating the trees; returns the JSON record."""
    base_commit = git("rev-parse", args.base)
    head_commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    samples: dict[str, dict[str, dict[str, list[float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-base-") as tmp:
        base_tree = Path(tmp) / "tree"
        git("worktree", "add", "--detach", str(base_tree), base_commit)
        try:
            trees = {"base": base_tree, "head": ROOT}
            for round_ in range(args.rounds):
                # ABBA order: neither tree always runs first.
                order = ["base", "head"] if round_ % 2 == 0 else ["head", "base"]
                for name in args.only:
                    for side in order:
                        out = Path(tmp) / f"{side}-{name}-{round_}"
                        measured = run_benchmark(trees[side], name, out, args.extra)
                        for target, value in measured.items():
                            per_side = samples.setdefault(name, {}).setdefault(target, {})
                            per_side.setdefault(side, []).append(value)
        finally:
            git("worktree", "remove", "--force", str(base_tree))
    return {
        "benchmark": "against",
        "command": "python -m bench.against " + " ".join(sys.argv[1:]),
        "base": base_commit,
        "head": head_commit + (" (uncommitted changes)" if dirty else ""),
        "environment": environment("cpu"),
        "load_avg_1m": os.getloadavg()[0],  # at the end: the last runs' own load included
        "rounds": args.rounds,
        "tolerance": args.tolerance,
        "samples": samples,
        "targets": targets(samples, args.tolerance),
    }


def targets(samples: dict, tolerance: float) -> list[dict]:
    """One target per benchmark target: the checkout within noise of the base."""
    out = []
    for name, by_target in samples.items():
        for target, sides in by_target.items():
            head, base = sides["head"], sides["base"]
            out.append({
                "name": f"{name}: {target}",
                "goal": f"within noise of the base (its range +-{tolerance:.0%})",
                "measured": statistics.median(head) / statistics.median(base),
                "unit": "x base",
                "met": within_noise(head, base, tolerance),
                "base": base,
                "head": head,
            })
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="the commit to compare against")
    p.add_argument("--only", default="train_vs_peft,rank_labels", help="comma list of benchmarks")
    p.add_argument("--rounds", type=int, default=2, help="runs of each benchmark per tree")
    p.add_argument("--tolerance", type=float, default=0.05, help="relative widening of the range")
    p.add_argument("--out", default=str(RESULTS_DIR), help="folder for against.json and .md")
    p.add_argument("extra", nargs="*", help="after --: arguments passed to every benchmark")
    args = p.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    started = time.time()
    record = compare(args)
    record["wall_seconds"] = round(time.time() - started, 1)
    env = record["environment"]
    rows = [
        [
            t["name"],
            ", ".join(f"{v:.3f}" for v in t["base"]),
            ", ".join(f"{v:.3f}" for v in t["head"]),
            f"{t['measured']:.3f}",
            "yes" if t["met"] else "**no**",
        ]
        for t in record["targets"]
    ]
    table = markdown_table(["target", "base runs", "checkout runs", "median ratio", "within noise"],
                           rows)
    text = [
        "# This checkout against another commit, same run",
        "",
        table,
        "",
        f"- base {record['base']}, checkout {record['head']}",
        f"- machine: {env['cpu']}, {env['cpu_count']} cores; torch {env['torch']}; "
        f"1-minute load average at the end {record['load_avg_1m']:.2f}",
        f"- command: `{record['command']}` ({record['rounds']} rounds, alternating), "
        f"{record['wall_seconds']} s",
        "",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "against.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "against.md").write_text("\n".join(text))
    print("\n".join(text))
    return record


if __name__ == "__main__":
    main()
