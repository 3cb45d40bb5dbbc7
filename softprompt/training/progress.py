"""What a training run tells the people watching it, in metrics.jsonl records and progress lines.

Every evaluation reports one line (format_eval_line) and the end of training one more
(format_stop_line): above the tqdm bar when there is one, else through this module's logger at
INFO. The library leaves logging configuration to its caller (the CLI, or the KFP executor,
which logs INFO).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class MetricsLog:
    """Append-only JSONL log, flushed per line so a killed run keeps what it logged."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, **record) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


@dataclass(frozen=True)
class ProgressOptions:
    """How a run shows its progress (with a tqdm bar or without) and the words its lines use."""

    bar: bool = False
    desc: str = "train"
    metric: str = "score"  # the dev metric's name in the lines, e.g. "accuracy"
    # What the caller does after training, appended to the final line.
    final_note: str = ""


class ProgressLines:
    """A run's progress bar (optional) and lines, from the one process that writes."""

    def __init__(self, options: ProgressOptions, writer: bool, total: int, initial: int) -> None:
        self.writer = writer
        self.bar = None
        if options.bar and writer:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=options.desc, unit="step")

    def step(self, loss: float, best_score: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", best=f"{best_score:.3f}")

    def line(self, text: str) -> None:
        """One progress line, where a person watching the run sees it."""
        if not self.writer:
            return
        if self.bar is not None:
            # A logger line under a live bar would break the bar.
            self.bar.write(text, file=sys.stderr)
        else:
            log.info("%s", text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def eta_seconds(
    step: int, max_steps: int, elapsed: float, max_minutes: float | None
) -> tuple[float | None, str]:
    """Seconds left in a run and which budget ends it first.

    step: optimizer steps done; elapsed: wall-clock seconds so far, evaluations included, so the
    measured rate elapsed / step already carries the evaluation overhead of the steps to come.
    Returns (seconds, which), which being "step budget" or "time budget": the smaller of
    (max_steps - step) x seconds per step and the max_minutes budget minus elapsed (never below
    0). At step 0 no rate is measured yet, so only the time budget can say anything; without one
    the answer is (None, "no estimate"). Early stopping (patience) is not foreseen.
    """
    by_time = None if max_minutes is None else max(0.0, max_minutes * 60 - elapsed)
    by_steps = None
    if step >= max_steps:
        by_steps = 0.0
    elif step > 0:
        by_steps = (max_steps - step) * elapsed / step
    if by_time is not None and (by_steps is None or by_time < by_steps):
        return by_time, "time budget"
    if by_steps is None:
        return None, "no estimate"
    return by_steps, "step budget"


def format_duration(seconds: float | None) -> str:
    """Seconds as "45s", "12m30s" or "2h05m" ("?" for None): short enough for a log line."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_eval_line(
    *,
    step: int,
    max_steps: int,
    loss: float | None,
    loss_steps: int,
    metric: str,
    score: float,
    best_score: float,
    best_step: int,
    elapsed: float,
    eta: tuple[float | None, str],
) -> str:
    """The one line an evaluation logs, e.g. "step 300/1000 | train loss 0.4123 (mean of 50
    steps) | dev accuracy 0.8125 | best 0.8250 @ step 250 | elapsed 4m12s | ETA 9m48s (step
    budget)". loss: mean training loss over the `loss_steps` steps since the previous
    evaluation (None when there were none); elapsed in seconds; eta as from eta_seconds."""
    if loss is None:
        loss_text = "n/a (no steps since the last evaluation)"
    else:
        loss_text = f"{loss:.4f} (mean of {loss_steps} step{'s' if loss_steps != 1 else ''})"
    return (
        f"step {step}/{max_steps} | train loss {loss_text} | dev {metric} {score:.4f} | "
        f"best {best_score:.4f} @ step {best_step} | elapsed {format_duration(elapsed)} | "
        f"ETA {format_duration(eta[0])} ({eta[1]})"
    )


def format_stop_line(
    *,
    step: int,
    max_steps: int,
    stop_reason: str,
    elapsed: float,
    best: tuple[str, float, int] | None = None,
    note: str = "",
) -> str:
    """The line the end of training logs, e.g. "training stopped at step 1000/1000
    (max_steps); best dev accuracy 0.8250 @ step 250; elapsed 14m00s". `best` is the (metric,
    score, step) of the best evaluation, None for a run that never evaluates; `note` says what
    the caller does next."""
    text = f"training stopped at step {step}/{max_steps} ({stop_reason}); "
    if best is not None:
        metric, score, best_step = best
        text += f"best dev {metric} {score:.4f} @ step {best_step}; "
    text += f"elapsed {format_duration(elapsed)}"
    return text + (f"; {note}" if note else "")
