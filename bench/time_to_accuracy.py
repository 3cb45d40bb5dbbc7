"""Time to accuracy: the reported-split score after T seconds of training, ours vs PEFT.

Arms (bench/tta_arms.py has how each trains and is scored):
- `ours`: softprompt prompt tuning with its default ("stable") recipe.
- `peft-paper`: PEFT PromptTuningConfig with the paper's Adafactor (lr 0.3, weight decay 1e-5,
  decay 0.8, constant), batch 32 as 4 accumulated micro-batches of 8.
- `peft-recipe`: PEFT with what it can express of our recipe, the same lr and linear warmup
  (torch LambdaLR) and batch 16 as 2x8. PEFT has no option to cap the prompt's row norms.

All arms start from the same initial prompt. At every mark of training time (evaluations
excluded, and PEFT evaluates nothing while it trains) each arm snapshots a prompt. For ours that
is the best prompt on its checks so far, which is what the library hands out; for PEFT, which
keeps no best, it is the current prompt. After an arm's training, every snapshot (and the
initial prompt, mark 0) is scored on the task's reported split ("test"). Each arm runs in a
process of its own; with --jobs J > 1, J of them run at once, each pinned to its own share of
the CPUs with as many torch threads as cores (on a GPU keep --jobs 1: arms sharing the device
would slow each other).

With --target SCORE the marks get denser (DENSE_MARKS evenly spaced ones up to the last mark)
and the report gives each arm's time to reach SCORE on the reported split: the first mark whose
snapshot scores at least SCORE, or "not reached".

    nice -n 19 python -m bench.time_to_accuracy [--marks 120,300,600,1200] [--jobs 1]
    python -m bench.time_to_accuracy --device cuda --dtype bfloat16 --target 0.90 --marks 30,60,120
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from bench.common import REPO, Report, base_parser, load_lm
from bench.tta_arms import ARMS, check_every

NAME = "time_to_accuracy"
MARKS = "120,300,600,1200"
QUICK_MARKS = "2,4"
QUICK_REPORT_EXAMPLES = 100
SST2_GOAL = 0.890  # ours on SST-2 after 1200 s of training, each seed
MAX_CHECK_DROP = 5.0  # points between consecutive checks of ours
DENSE_MARKS = 20  # evenly spaced marks up to the last one, added when a target score is given


# -------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None):
    p = base_parser(__doc__.split("\n")[0], reps=1)
    p.add_argument("--task", default="sst2", help="task name or spec path")
    p.add_argument("--init", default="class_label", help="prompt initialization (all arms)")
    p.add_argument(
        "--marks",
        default=None,
        help=f"seconds of training time to snapshot at (default {MARKS}; --quick {QUICK_MARKS})",
    )
    p.add_argument("--arms", default=",".join(ARMS), help="comma list of: " + ", ".join(ARMS))
    p.add_argument(
        "--seeds",
        default=None,
        help="comma list of seeds for every arm (default: ours 0 and 1, each PEFT arm 0)",
    )
    p.add_argument("--jobs", type=int, default=1, help="arms run at once, each on its own CPUs")
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--report-max-examples",
        type=int,
        default=None,
        help=f"seeded subset of the reported split (default all; --quick {QUICK_REPORT_EXAMPLES})",
    )
    # Set by the parent for the process of one arm.
    p.add_argument("--arm", default=None, choices=ARMS, help="run one arm (a child process)")
    p.add_argument("--arm-out", default=None, help="the arm's JSON record (with --arm)")
    p.add_argument("--cpus", default=None, help="comma list of CPUs to pin the arm to")
    p.add_argument("--work", default=None, help="folder for the arm's run directory")
    p.add_argument("--all-seeds", default=None, help="the seeds of every arm (with --arm)")
    p.add_argument("--zero-shot", action="store_true", help="also score the template alone")
    p.add_argument(
        "--target",
        type=float,
        default=None,
        help="score on the reported split (e.g. 0.90): report each arm's time to reach it, "
        f"snapshotting at {DENSE_MARKS} evenly spaced marks too",
    )
    args = p.parse_args(argv)
    args.marks = parse_marks(args.marks or (QUICK_MARKS if args.quick else MARKS))
    # The marks the tables and targets use; --target adds marks that only time it.
    args.shown_marks = args.marks
    if args.target is not None and not args.arm:
        if not 0.0 < args.target <= 1.0:
            raise SystemExit(f"--target: expected a score in (0, 1], got {args.target}")
        args.marks = dense_marks(args.marks, DENSE_MARKS)
    if args.quick and args.report_max_examples is None:
        args.report_max_examples = QUICK_REPORT_EXAMPLES
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or set(arms) - set(ARMS):
        raise SystemExit(f"--arms: choose from {', '.join(ARMS)}; got {args.arms!r}")
    args.arm_list = arms
    args.seed_list = None if args.seeds is None else parse_seeds(args.seeds)
    # Without a test split the reported examples are the dev examples no seed selects on.
    if args.all_seeds is not None:
        args.all_seeds = parse_seeds(args.all_seeds)
    else:
        args.all_seeds = sorted({seed for _, seed in plan(args)})
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    if args.arm and not args.arm_out:
        raise SystemExit("--arm needs --arm-out")
    return args


def parse_marks(text: str) -> list[float]:
    try:
        marks = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--marks: expected comma-separated seconds, got {text!r}") from None
    if not marks or min(marks) <= 0 or marks != sorted(set(marks)):
        raise SystemExit(f"--marks: expected increasing seconds > 0, got {text!r}")
    return marks


def dense_marks(marks: list[float], count: int) -> list[float]:
    """`marks` and `count` evenly spaced marks up to the last one (rounded to 0.1 s), sorted."""
    step = marks[-1] / count
    return sorted(set(marks) | {round(step * k, 1) for k in range(1, count + 1)} - {0.0})


def time_to_target(record: dict, target: float) -> dict:
    """The first mark at which the arm's snapshot scored at least `target`: its seconds and
    steps, or reached False ("not reached" in the tables)."""
    hit = next((m for m in record["marks"] if m["score"] >= target), None)
    if hit is None:
        return {"reached": False, "seconds": None, "steps": None}
    return {"reached": True, "seconds": hit["mark"], "steps": hit["steps"]}


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise SystemExit(f"--seeds: expected integers >= 0, got {text!r}")
    return seeds


# -------------------------------------------------------------------- one arm (child process)
def run_child(args) -> None:
    """Trains and scores one arm, pinned to --cpus when given, and writes its record."""
    import torch

    from bench.tta_arms import run_arm
    from softprompt.tasks import load_spec

    if args.cpus:
        cpus = [int(c) for c in args.cpus.split(",")]
        os.sched_setaffinity(0, cpus)
        args.threads = len(cpus)
    lm = load_lm(args)
    torch.manual_seed(args.seed)
    record = run_arm(args, lm, load_spec(args.task), Path(args.work or tempfile.mkdtemp()))
    Path(args.arm_out).write_text(json.dumps(asdict(record), indent=2) + "\n")


# -------------------------------------------------------------------- the arms (parent)
def plan(args) -> list[tuple[str, int]]:
    """(arm, seed) of every child, ours and the others alternating, so that with --jobs 2 each
    of ours runs beside a PEFT arm, under the same load."""
    ours, others = [], []
    for arm in args.arm_list:
        default = [0, 1] if arm == "ours" else [0]
        (ours if arm == "ours" else others).extend((arm, s) for s in args.seed_list or default)
    runs = []
    while ours or others:
        runs += [queue.pop(0) for queue in (ours, others) if queue]
    return runs


def cpu_slots(jobs: int) -> list[list[int] | None]:
    """The CPUs of each of `jobs` concurrent children; None (no pinning) for a single job."""
    if jobs == 1:
        return [None]
    cores = sorted(os.sched_getaffinity(0))
    per = max(1, len(cores) // jobs)
    if len(cores) < jobs:
        return [[cores[k % len(cores)]] for k in range(jobs)]
    return [cores[k * per : (k + 1) * per] for k in range(jobs)]


def child_command(args, arm: str, seed: int, out: Path, work: Path, cpus, zero_shot: bool):
    cmd = [
        sys.executable,
        "-m",
        f"bench.{NAME}",
        "--arm",
        arm,
        "--seed",
        str(seed),
        "--arm-out",
        str(out),
        "--work",
        str(work),
        "--model",
        args.model,
        "--task",
        args.task,
        "--init",
        args.init,
        "--prompt-length",
        str(args.prompt_length),
        "--marks",
        ",".join(f"{m:g}" for m in args.marks),
        "--threads",
        str(args.threads),
    ]
    for flag, value in (
        ("--data-dir", args.data_dir),
        ("--device", args.device),
        ("--dtype", args.dtype),
        ("--report-max-examples", args.report_max_examples),
        ("--all-seeds", ",".join(map(str, args.all_seeds))),
    ):
        cmd += [flag, str(value)] if value is not None else []
    cmd += ["--cpus", ",".join(map(str, cpus))] if cpus else []
    return cmd + (["--zero-shot"] if zero_shot else [])


def run_children(args, work: Path) -> list[dict]:
    """Runs every (arm, seed) in a child process, --jobs at a time; returns their records."""
    pending = list(enumerate(plan(args)))
    slots = cpu_slots(args.jobs)
    running: dict[int, tuple] = {}  # slot -> (process, index, log path, out path)
    records: dict[int, dict] = {}
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    while pending or running:
        for slot in [s for s in range(len(slots)) if s not in running]:
            if not pending:
                break
            index, (arm, seed) = pending.pop(0)
            out, log = work / f"{arm}-s{seed}.json", work / f"{arm}-s{seed}.log"
            cmd = child_command(args, arm, seed, out, work, slots[slot], index == 0)
            print(f"{arm} seed {seed}: started on CPUs {slots[slot] or 'all'}", flush=True)
            with log.open("w") as f:
                proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
            running[slot] = (proc, index, log, out)
        time.sleep(0.2)
        for slot, (proc, index, log, out) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[slot]
            if proc.returncode != 0:
                for other in running.values():
                    other[0].kill()
                tail = log.read_text()[-3000:]
                raise SystemExit(f"arm process failed ({proc.returncode}):\n{tail}")
            records[index] = json.loads(out.read_text())
    return [records[i] for i in sorted(records)]


# -------------------------------------------------------------------- results
def at_mark(record: dict, mark: float, key: str = "score"):
    """One field (score, accuracy, steps) of an arm's snapshot at `mark` seconds."""
    return next(m[key] for m in record["marks"] if m["mark"] == mark)


def add_targets(report: Report, args, spec, records: list[dict]) -> None:
    """The targets that apply to the arms and marks that ran."""
    ours = [r for r in records if r["arm"] == "ours"]
    peft_arms = sorted({r["arm"] for r in records if r["arm"] != "ours"})
    last = args.shown_marks[-1]
    if ours and spec.name == "sst2" and 1200.0 in args.shown_marks:
        for r in ours:
            score = at_mark(r, 1200.0)
            report.target(
                f"ours at the 1200 s mark, seed {r['seed']}",
                f">= {SST2_GOAL}",
                score,
                score >= SST2_GOAL,
            )
    if ours and peft_arms:
        margins = []
        for mark in args.shown_marks:
            mine = [at_mark(r, mark) for r in ours]
            for arm in peft_arms:
                theirs = statistics.mean(at_mark(r, mark) for r in records if r["arm"] == arm)
                margins += [statistics.mean(mine) - theirs] + [s - theirs for s in mine]
        worst = min(margins)
        report.target(
            f"ours >= every PEFT arm at every mark up to {last:g} s (worst margin, "
            "mean of seeds and each seed)",
            ">= 0",
            worst,
            worst >= 0,
        )
    if ours and spec.name != "sst2":
        majority = records[0]["majority"]["score"]
        best = max(at_mark(r, last) for r in ours)
        report.target(
            f"ours beats the majority class at the {last:g} s mark (best seed)",
            f"> {majority:.3f}",
            best,
            best > majority,
        )
    if ours:
        drops = [
            100 * (a["score"] - b["score"])
            for r in ours
            for a, b in itertools.pairwise(r["checks"])
        ]
        drop = max([0.0, *drops])  # rises are no drop
        report.target(
            "ours' check score, largest drop between consecutive checks",
            f"<= {MAX_CHECK_DROP:g} points",
            drop,
            drop <= MAX_CHECK_DROP,
            " points",
        )


def plot(path: Path, records: list[dict], zero_shot: float | None, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in records:
        ax.plot(
            [m["mark"] for m in r["marks"]],
            [m["score"] for m in r["marks"]],
            marker="o",
            label=f"{r['arm']} seed {r['seed']}",
        )
    if zero_shot is not None:
        ax.axhline(zero_shot, linestyle="--", color="gray", label="zero-shot")
    ax.set_xlabel("training seconds (evaluations excluded)")
    ax.set_ylabel(f"{metric} on the reported split")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report_time_to_target(report: Report, args, records: list[dict]) -> dict:
    """The table and results of each arm's time to reach --target."""
    reached = {f"{r['arm']} seed {r['seed']}": time_to_target(r, args.target) for r in records}
    report.table(
        f"Time to a score of {args.target:g} on the reported split (first mark reaching it)",
        ["arm", "training seconds", "steps"],
        [
            [name, f"{t['seconds']:g}", t["steps"]] if t["reached"] else [name, "not reached", ""]
            for name, t in reached.items()
        ],
    )
    return reached


def write_report(report: Report, args, spec, records: list[dict]) -> None:
    marks = [0.0, *args.shown_marks]
    zero_shot = next((r["zero_shot"] for r in records if r["zero_shot"] is not None), None)
    rows = [
        [r["arm"], r["seed"], *[f"{at_mark(r, m):.3f} ({at_mark(r, m, 'steps')})" for m in marks]]
        for r in records
    ]
    if zero_shot is not None:
        rows.append(["zero-shot", "", *[f"{zero_shot:.3f}"] * len(marks)])
    majority = records[0]["majority"]

    def majority_row(key: str) -> list:
        return [f"majority class ({majority['label']})", "", *[f"{majority[key]:.3f}"] * len(marks)]

    rows.append(majority_row("score"))
    report.table(
        f"{spec.name}: {spec.metric} on the reported split (steps) after T s of training",
        ["arm", "seed", *[f"{m:g} s" for m in marks]],
        rows,
    )
    if spec.metric != "accuracy":
        report.table(
            f"{spec.name}: accuracy on the reported split after T s of training",
            ["arm", "seed", *[f"{m:g} s" for m in marks]],
            [
                *[[r["arm"], r["seed"], *[f"{at_mark(r, m, 'accuracy'):.3f}" for m in marks]]
                  for r in records],
                majority_row("accuracy"),
            ],
        )
    report.table(
        "Arms",
        [
            "arm",
            "seed",
            "CPUs",
            "threads",
            "s to the last mark / to the end of training / scoring",
            "load avg before / after",
            "optimizer",
            "scorer",
        ],
        [
            [
                r["arm"],
                r["seed"],
                ",".join(map(str, r["cores"])),
                r["threads"],
                f"{r['trained'] - r['started']:.0f} / {r['ended'] - r['started']:.0f} / "
                f"{r['finished'] - r['ended']:.0f}",
                f"{r['load_avg_1m']['before']:.1f} / {r['load_avg_1m']['after']:.1f}",
                r["optimizer"],
                r["scorer"],
            ]
            for r in records
        ],
    )
    add_targets(report, args, spec, records)
    report.results = {
        "metric": spec.metric,
        "marks": marks,
        "zero_shot": zero_shot,
        "majority": majority,
        "report_split": records[0]["report_split"],
        "report_examples": records[0]["report_examples"],
        "arms": records,
        "target": args.target,
    }
    if args.target is not None:
        report.results["time_to_target"] = report_time_to_target(report, args, records)
    report.note(
        f"Reported split: {records[0]['report_split']}, {records[0]['report_examples']} examples."
    )
    report.note(
        f"Training time excludes evaluations: ours checks its prompt {check_every(args)}; "
        "that time is not counted. PEFT evaluates nothing while it trains. Ours' snapshot is "
        "its best prompt on the checks so far; PEFT's is its current prompt."
    )
    report.note(
        "peft-recipe has ours' lr, warmup and batch size but no prompt row-norm cap: "
        "PEFT has no such option."
    )
    report.note(
        "Each arm ran in its own process after the others or beside them (--jobs); "
        "the Arms table gives its CPUs and load. Repetitions: one run per arm and seed."
    )
    report.note(
        "After its last mark ours finishes as the library does (it chooses among its "
        "candidate prompts on the dev selection set and scores its test split); that time "
        "is outside the marks and shows in the Arms table."
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(out / f"{NAME}.png", records, zero_shot, spec.metric)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.arm:
        run_child(args)
        return {}
    from softprompt.tasks import load_spec

    spec = load_spec(args.task)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # The children load the model on this device, so they all train where the report says.
    args.device = device
    report = Report(NAME, "Time to accuracy: softprompt vs PEFT prompt tuning", args, argv)
    report.method = f"at nice {os.nice(0)}; one run per arm and seed, CPUs in the Arms table"
    with tempfile.TemporaryDirectory() as work:
        records = run_children(args, Path(work))
    write_report(report, args, spec, records)
    report.write(device)
    return report.results


if __name__ == "__main__":
    main()
