"""Shared benchmark machinery: interleaved timing, statistics, peak memory, the machine's record,
inputs, and the JSON + Markdown results files.

Every comparison runs its cases round-robin inside one process (the order rotates each round),
so load from other processes hits all cases alike and the per-round ratios stay fair.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


# -------------------------------------------------------------------- command line
def base_parser(description: str, reps: int = 5) -> argparse.ArgumentParser:
    """Options every benchmark shares."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--model",
        default="smollm2-135m",
        help="offline short name, local dir or .gguf path (decoder-only)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--dtype",
        default=None,
        help="frozen weights' dtype (default: float32 on CPU, bfloat16 on GPU)",
    )
    p.add_argument(
        "--compile",
        default="off",
        help="torch.compile mode of the frozen stack: off, default, reduce-overhead (CUDA graphs)"
        " or max-autotune",
    )
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU")
    p.add_argument(
        "--reps", type=int, default=reps, help="timed repetitions per case (after warmup)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--prompt-length", type=int, default=20, help="P, soft prompt tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS_DIR), help="folder for <name>.json and <name>.md")
    p.add_argument(
        "--quick", action="store_true", help="few repetitions and small shapes (for tests)"
    )
    return p


def check_args(args: argparse.Namespace) -> None:
    """Validates the shared options; --quick caps repetitions and warm-up."""
    for name in ("reps", "threads", "prompt_length"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise SystemExit(f"--warmup must be >= 0, got {args.warmup}")
    if args.quick:
        args.reps, args.warmup = min(args.reps, 2), min(args.warmup, 1)


def load_lm(args: argparse.Namespace):
    """The frozen LM the benchmark runs on.

    It must be decoder-only, as the shapes and FLOP counts assume it."""
    from softprompt.model import load_frozen_lm

    torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    lm = load_frozen_lm(args.model, device=device, dtype=dtype, compile=args.compile)
    if lm.is_encoder_decoder:
        raise SystemExit(
            f"{args.model}: the benchmarks cover decoder-only models; this one is encoder-decoder"
        )
    return lm


def parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"{what}: expected integers >= 1, got {text!r}")
    return values


# -------------------------------------------------------------------- timing and statistics
def synchronize(device: torch.device | str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(
    cases: dict[str, Callable[[], object]],
    reps: int,
    warmup: int = 1,
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Seconds per call of every case, `reps` rounds of one call each; the order rotates by one
    case per round so no case always runs first (or right after a particular other one)."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            synchronize(device)
            start = time.perf_counter()
            cases[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def summary(samples: Sequence[float]) -> dict:
    """median, min, max and spread = (max - min) / median of a list of measurements."""
    med = statistics.median(samples)
    return {
        "median": med,
        "min": min(samples),
        "max": max(samples),
        "spread": (max(samples) - min(samples)) / med if med else 0.0,
        "n": len(samples),
        "samples": list(samples),
    }


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> dict:
    """Per-round ratios of two interleaved cases (same round = same machine load), summarized."""
    return summary([a / b for a, b in zip(numerator, denominator, strict=True)])


def fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:,.0f}"


def fmt_spread(s: dict, scale: float = 1.0, digits: int = 3) -> str:
    """'median (min-max)' of a summary, scaled."""
    low, high = fmt(s["min"] * scale, digits), fmt(s["max"] * scale, digits)
    return f"{fmt(s['median'] * scale, digits)} ({low}-{high})"


# -------------------------------------------------------------------- memory
_LIBC = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> dict:
    """Runs fn once and returns {'base', 'peak', 'delta'} in bytes.

    CPU: process RSS. Freed heap goes back to the OS first (malloc_trim) and the kernel's
    high-water mark is reset (write 5 to /proc/self/clear_refs), so `peak` is the highest RSS
    while fn ran and `delta` what fn added above the RSS it started from.
    CUDA: torch's allocated bytes and their peak (reset before fn).
    """
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"base": base, "peak": peak, "delta": peak - base}
    if _LIBC is None or not Path("/proc/self/clear_refs").exists():
        raise RuntimeError("peak CPU memory needs Linux /proc (clear_refs and VmHWM)")
    _LIBC.malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS") * 1024
    fn()
    peak = _status_kib("VmHWM") * 1024
    return {"base": base, "peak": peak, "delta": peak - base}


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


# -------------------------------------------------------------------- the machine's peak
def matmul_peak(
    sizes: Sequence[int] = (1024, 1536, 2048), iters: int = 3, device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Measured matrix-multiply throughput: torch.mm of square [n, n] x [n, n] (2 n^3 FLOPs),
    best of `iters` per size. Returns {'per_size': {n: FLOP/s}, 'peak': max FLOP/s}."""
    per_size = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        torch.mm(a, b)  # first call pays for allocation and kernel selection
        best = float("inf")
        for _ in range(iters):
            synchronize(device)
            start = time.perf_counter()
            torch.mm(a, b)
            synchronize(device)
            best = min(best, time.perf_counter() - start)
        per_size[n] = 2 * n**3 / best
    return {"per_size": per_size, "peak": max(per_size.values())}


# -------------------------------------------------------------------- inputs
def fixed_batch(
    lm, batch: int, input_tokens: int, label_words: Sequence[str], seed: int
) -> tuple[list[list[int]], list[list[int]]]:
    """`batch` inputs of exactly `input_tokens` ids drawn from the model's common tokens, each with
    a label word target (alternating). Returns (inputs, targets)."""
    rng = random.Random(seed)
    pool = lm.common_token_ids(5000)
    inputs = [[rng.choice(pool) for _ in range(input_tokens)] for _ in range(batch)]
    targets = [lm.encode_target(label_words[i % len(label_words)]) for i in range(batch)]
    return inputs, targets


def task_examples(task: str, data_dir: str | None, split: str | None = None):
    """(spec, examples) of a task's split (default: test, else dev, else train)."""
    from softprompt.task_data import load_task
    from softprompt.tasks import load_spec

    spec = load_spec(task)
    data = load_task(spec, data_dir)
    split = split or next(s for s in ("test", "dev", "train") if s in data)
    if split not in data:
        raise SystemExit(f"task {spec.name}: no {split!r} split (has {sorted(data)})")
    return spec, data[split]


# -------------------------------------------------------------------- the record of a run
def _git(*cmd: str) -> str:
    try:
        return subprocess.run(
            ["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment(device: torch.device | str) -> dict:
    """The machine, the library versions and the code version of this run."""
    import transformers

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    env = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        # The results folder is left out: a run of several benchmarks writes it as it goes.
        "git_dirty": bool(
            _git("status", "--porcelain", "--", ".", f":(exclude){RESULTS_DIR.relative_to(REPO)}")
        ),
    }
    try:
        import peft

        env["peft"] = peft.__version__
    except ImportError:
        env["peft"] = None
    if str(device).startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    return env


# A target's status by its `met`: None where the run's device is not the one the goal is for.
TARGET_STATUS = {True: "met", False: "not met", None: "not measured"}


def target_cell(target: dict) -> str:
    """The "met" cell of a target: yes, **no**, or "not measured (a <device type> goal)"."""
    if target["met"] is None:
        return f"not measured (a {target['on']} goal)"
    return "yes" if target["met"] else "**no**"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


class Report:
    """Collects a benchmark's tables, targets and notes, prints them, and writes
    <out>/<name>.json (everything, raw samples included) and <out>/<name>.md (for people)."""

    def __init__(
        self, name: str, title: str, args: argparse.Namespace, argv: Sequence[str] | None
    ) -> None:
        self.name, self.title, self.args = name, title, args
        argv = sys.argv[1:] if argv is None else list(argv)
        self.command = "python -m bench." + name + (" " + shlex.join(argv) if argv else "")
        self.load_before = os.getloadavg()[0]
        self.started = time.time()
        self.tables: list[dict] = []
        self.targets: list[dict] = []
        self.notes: list[str] = []
        self.results: dict = {}
        self.env: dict = {}
        # How the numbers were taken, for the Run section; None: the interleaved default.
        self.method: str | None = None

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.tables.append(
            {"title": title, "columns": list(columns), "rows": [[str(c) for c in r] for r in rows]}
        )
        print(f"\n{title}\n{markdown_table(columns, rows)}", flush=True)

    def target(
        self, name: str, goal: str, measured: float, met: bool, unit: str = "",
        on: str | None = None,
    ) -> None:
        """A goal and what this run measured against it. `on` ("cuda" or "cpu") names the only
        device type the goal is for: a run on another type reports it "not measured" (met None),
        as its number says nothing about that goal."""
        self.targets.append({"name": name, "goal": goal, "measured": measured, "unit": unit,
                             "met": bool(met), "on": on})

    def note(self, text: str) -> None:
        self.notes.append(text)

    def write(self, device: torch.device | str) -> tuple[Path, Path]:
        self.env = self.env or environment(device)
        kind = torch.device(device).type
        for t in self.targets:
            measured_here = t["on"] in (None, kind)
            t["met"] = t["met"] if measured_here else None
            t["status"] = TARGET_STATUS[t["met"]]
        record = {
            "benchmark": self.name,
            "device": str(device),
            "device_name": self.env.get("gpu") or self.env["cpu"],
            "title": self.title,
            "command": self.command,
            "config": {k: v for k, v in vars(self.args).items() if k != "out"},
            "environment": self.env,
            "load_avg_1m": {"before": self.load_before, "after": os.getloadavg()[0]},
            "wall_seconds": round(time.time() - self.started, 1),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "results": self.results,
            "targets": self.targets,
            "tables": self.tables,
            "notes": self.notes,
        }
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        json_path, md_path = out / f"{self.name}.json", out / f"{self.name}.md"
        json_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
        md_path.write_text(self.markdown(record))
        if self.targets:
            print("\n" + markdown_table(*self._target_rows()), flush=True)
        print(f"\nwrote {json_path} and {md_path}", flush=True)
        return json_path, md_path

    def _target_rows(self) -> tuple[list[str], list[list[str]]]:
        rows = [
            [t["name"], t["goal"], f"{fmt(t['measured'])}{t['unit']}", target_cell(t)]
            for t in self.targets
        ]
        return ["target", "goal", "measured", "met"], rows

    def markdown(self, record: dict) -> str:
        env = record["environment"]
        parts = [f"# {self.title}", ""]
        for t in self.tables:
            parts += [f"### {t['title']}", "", markdown_table(t["columns"], t["rows"]), ""]
        if self.targets:
            parts += ["### Targets", "", markdown_table(*self._target_rows()), ""]
        if self.notes:
            parts += ["### Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        default_method = (
            f"under `nice -n 19`, median of {self.args.reps} interleaved repetitions; ranges "
            "are min-max"
        )
        machine = (
            env["gpu"]
            if "gpu" in env
            else f"{env['cpu']}, {env['cpu_count']} cores, {env['torch_threads']} torch threads"
        )
        parts += [
            "### Run",
            "",
            f"- command: `{record['command']}` ({self.method or default_method})",
            f"- machine: {machine}; {env['platform']}",
            f"- versions: python {env['python']}, torch {env['torch']}, transformers "
            f"{env['transformers']}, peft {env['peft']}; softprompt "
            f"{env['git_commit']}{' (uncommitted changes)' if env['git_dirty'] else ''}",
            f"- 1-minute load average: {record['load_avg_1m']['before']:.2f} before, "
            f"{record['load_avg_1m']['after']:.2f} after (the CPU is shared; compare the ratios, "
            "measured side by side, more than absolute times)",
            f"- started {record['started']}, {record['wall_seconds']} s",
            "",
        ]
        return "\n".join(parts)
