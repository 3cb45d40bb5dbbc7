"""What a training run tells the people watching it, in metrics.jsonl records and progress lines.

Every evaluation reports one line (format_eval_line) and the end of training one more
(format_stop_line): above the tqdm bar when there is one, else through this module's logger at
INFO. Without a bar, a step line (format_step_line) also reports the steps, mean loss and ETA
between evaluations, every 10 s early in a run and every minute later. The library leaves
logging configuration to its caller (the CLI, or the KFP executor, which logs INFO).

parse_progress_line reads these lines back out of a log (after any logger prefix), so a program
that relays a run's output, such as the local pipeline runner, can condense them.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

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


# Without a bar, step lines come at most this often: every LINE_EVERY_MIN_S seconds at first,
# then every tenth of the time run so far, but at least once every LINE_EVERY_MAX_S seconds.
LINE_EVERY_MIN_S = 10.0
LINE_EVERY_MAX_S = 60.0


BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"


class ProgressLines:
    """A run's progress bar (optional) and lines, from the one process that writes.

    total: the step budget (max_steps); initial: steps done before (a resumed run); max_minutes
    and elapsed: the time budget and the seconds spent before, so the ETA also reads the time
    budget. The ETA's rate is measured over the steps of this process only (a resumed run's
    earlier attempt may have run elsewhere)."""

    def __init__(
        self,
        options: ProgressOptions,
        writer: bool,
        total: int,
        initial: int,
        *,
        max_minutes: float | None = None,
        elapsed: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.writer = writer
        self.options = options
        self.total, self.initial, self.steps = total, initial, initial
        self.max_minutes, self.elapsed_before = max_minutes, elapsed
        self.clock = clock
        self.started = self.last_line = clock()
        # Losses since the last line: a step line reports their mean.
        self.losses: list[float] = []
        self.bar = None
        if options.bar and writer:
            from tqdm.auto import tqdm

            # tqdm's own remaining time counts toward max_steps only; the postfix shows ours,
            # which also reads the time budget, so the bar leaves tqdm's out.
            self.bar = tqdm(total=total, initial=initial, desc=options.desc, unit="step",
                            bar_format=BAR_FORMAT)

    def eta(self) -> tuple[float | None, str]:
        """Seconds left and the budget that ends the run first, as from eta_seconds."""
        here = self.clock() - self.started
        budget = self.max_minutes
        if budget is not None:
            budget = max(0.0, budget - self.elapsed_before / 60)
        return eta_seconds(self.steps - self.initial, self.total - self.initial, here, budget)

    def step(self, loss: float, best_score: float) -> None:
        """One optimizer step done: updates the bar, or logs a step line when one is due."""
        self.steps += 1
        self.losses.append(loss)
        if self.bar is not None:
            seconds, which = self.eta()
            self.bar.update(1)
            self.bar.set_postfix(
                loss=f"{loss:.3f}", best=f"{best_score:.3f}", eta=f"{format_duration(seconds)} "
                f"({which})"
            )
            return
        now = self.clock()
        spent = now - self.started
        every = min(LINE_EVERY_MAX_S, max(LINE_EVERY_MIN_S, spent / 10))
        # The last step's evaluation or stop line follows at once: no step line for it.
        if not self.writer or now - self.last_line < every or self.steps >= self.total:
            return
        self.line(
            format_step_line(
                step=self.steps,
                max_steps=self.total,
                loss=math.fsum(self.losses) / len(self.losses),
                loss_steps=len(self.losses),
                metric=self.options.metric,
                best_score=best_score,
                elapsed=self.elapsed_before + spent,
                eta=self.eta(),
            )
        )

    def line(self, text: str) -> None:
        """One progress line, where a person watching the run sees it."""
        self.last_line = self.clock()
        self.losses.clear()
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


def _loss_text(loss: float | None, loss_steps: int) -> str:
    if loss is None:
        return "n/a (no steps since the last evaluation)"
    return f"{loss:.4f} (mean of {loss_steps} step{'s' if loss_steps != 1 else ''})"


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
    return (
        f"step {step}/{max_steps} | train loss {_loss_text(loss, loss_steps)} | "
        f"dev {metric} {score:.4f} | "
        f"best {best_score:.4f} @ step {best_step} | elapsed {format_duration(elapsed)} | "
        f"ETA {format_duration(eta[0])} ({eta[1]})"
    )


def format_step_line(
    *,
    step: int,
    max_steps: int,
    loss: float,
    loss_steps: int,
    metric: str,
    best_score: float,
    elapsed: float,
    eta: tuple[float | None, str],
) -> str:
    """The line logged between evaluations, e.g. "step 120/1000 | train loss 0.4321 (mean of
    40 steps) | best dev accuracy 0.8125 | elapsed 1m30s | ETA 11m00s (step budget)". loss is
    the mean over the `loss_steps` steps since the previous line; best_score is -inf before the
    first evaluation ("best dev accuracy n/a")."""
    best = f"{best_score:.4f}" if math.isfinite(best_score) else "n/a"
    return (
        f"step {step}/{max_steps} | train loss {_loss_text(loss, loss_steps)} | "
        f"best dev {metric} {best} | elapsed {format_duration(elapsed)} | "
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


class ProgressEvent(NamedTuple):
    """A progress line read back by parse_progress_line."""

    kind: str  # "step" (between evaluations), "eval" or "stop"
    step: int
    max_steps: int
    loss: float | None  # mean training loss since the previous line; None when unknown
    metric: str  # the dev metric's name, "" for a stop line
    score: float | None  # an evaluation's dev score, else None
    eta: str  # e.g. "9m48s (step budget)"; "" for a stop line
    text: str  # the line itself, without the logger's prefix


_LINE = re.compile(
    r"step (?P<step>\d+)/(?P<max>\d+) \| train loss (?P<loss>\S+)[^|]* \| "
    r"(?:dev (?P<metric>\S+) (?P<score>\S+) \| best \S+ @ step \d+"
    r"|best dev (?P<best_metric>\S+) \S+) \| elapsed \S+ \| ETA (?P<eta>.+)$"
)
_STOP = re.compile(r"training stopped at step (?P<step>\d+)/(?P<max>\d+) \(\w+\).*$")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_progress_line(line: str) -> ProgressEvent | None:
    """The step, evaluation or stop line this module formats, found anywhere in `line` (after a
    logger's time and level, or a relay's indent); None for any other line."""
    line = line.rstrip("\r\n")
    match = _LINE.search(line)
    if match is not None:
        evaluation = match["metric"] is not None
        return ProgressEvent(
            kind="eval" if evaluation else "step",
            step=int(match["step"]),
            max_steps=int(match["max"]),
            loss=_number(match["loss"]),
            metric=match["metric"] if evaluation else match["best_metric"],
            score=_number(match["score"]) if evaluation else None,
            eta=match["eta"],
            text=line[match.start():],
        )
    match = _STOP.search(line)
    if match is None:
        return None
    return ProgressEvent(
        "stop", int(match["step"]), int(match["max"]), None, "", None, "", line[match.start():]
    )
