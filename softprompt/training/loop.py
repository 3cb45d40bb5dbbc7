"""The training loop, written once for every method (prompt tuning, model tuning, LM adaptation).

It knows nothing of prompts or tasks. A `Trainable` hands it the parameters that learn, their
optimizer, a function giving each step's micro-batches, a loss, and optionally a dev evaluation
and the state to checkpoint; a `Schedule` says how long to train and how often to evaluate.

- One optimizer step accumulates the gradients of the step's micro-batches. Each micro-batch's
  loss is divided by the whole step's target-token count, so however a step is split into
  micro-batches and processes, the update is the same.
- The dev score is computed before the first step (the initial state is a candidate too), every
  `eval_every` steps and at the end; on a new best, `keep_best` saves what the caller wants to
  keep. With `eval_every_seconds`, an evaluation also follows once that much training time has
  passed since the last (`check_due`): a run of slow steps on a time budget would otherwise
  hand out its initial state for minutes. The time evaluations take is counted apart from
  training time (`eval_seconds`). After `patience` evaluations without a new best, training
  stops early; so does a spent step or wall-clock budget (evaluations included).
- After every evaluation a checkpoint (trainable state, optimizer, loop state) is written
  atomically; a later call with the same checkpoint path resumes from it. Data order must be a
  pure function of the step, so a resumed run sees exactly the batches the killed one would have.
- metrics.jsonl gets "resume", "step" and "eval" records; progress lines go to progress.py.
- A non-finite loss or parameter ends the run with TrainingDiverged (and a "diverged" record)
  before anything is evaluated, kept as best or checkpointed.
- Under torchrun the gradients are summed over processes, rank 0's clock decides the time budget
  and rank 0 alone writes the checkpoint.
"""

from __future__ import annotations

import io
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from softprompt import distributed
from softprompt.fileio import atomic_write
from softprompt.model import Batch
from softprompt.scoring import Encoded
from softprompt.training.batching import BucketedOrder
from softprompt.training.progress import (
    MetricsLog,
    ProgressLines,
    ProgressOptions,
    eta_seconds,
    format_eval_line,
    format_stop_line,
)

log = logging.getLogger(__name__)


class TrainingDiverged(ValueError):
    """The loss or a trained parameter stopped being finite: the run failed and must not look
    done. Usually the learning rate is too high for the model."""


class StepBatches(NamedTuple):
    """This process's share of one optimizer step."""

    micro_batches: list  # what the loss function takes, one forward each
    target_tokens: int  # target tokens of the whole step over all processes: the loss divisor


def _nothing(*_args) -> None:
    return None


@dataclass
class Trainable:
    """What the loop trains and how it is scored."""

    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    batches: Callable[[int], StepBatches]  # step number (from 0) -> its micro-batches
    # (micro-batch, the step's target tokens) -> scalar loss, summed and divided by that count
    loss: Callable[[Any, int], torch.Tensor]
    # Dev metrics with a "score" (higher is better); None: the run never evaluates.
    evaluate: Callable[[], dict] | None = None
    # Called with the step on every process when the dev score improves.
    keep_best: Callable[[int], None] = _nothing
    # Called with the step and the dev metrics after every evaluation (a pool of candidates).
    after_eval: Callable[[int, dict], None] = _nothing
    # The trainable state a checkpoint holds beside the optimizer, and how to restore it.
    state: Callable[[], dict] = dict
    load_state: Callable[[dict], None] = _nothing
    # Called once when the run starts afresh (not on resume).
    on_start: Callable[[], None] = _nothing
    # Called with the step number before / after each optimizer step (learning-rate schedule,
    # constraints on the parameters).
    before_step: Callable[[int], None] = _nothing
    after_step: Callable[[int], None] = _nothing
    # Called after each step (and its evaluation) with the step count and the seconds of
    # training so far, evaluations excluded; True ends the run (stop reason "stopped").
    on_step: Callable[[int, float], bool] = lambda _step, _seconds: False


@dataclass(frozen=True)
class Schedule:
    """How long a run trains, and when it evaluates and logs."""

    max_steps: int
    eval_every: int = 1  # only used when the trainable evaluates
    # Also evaluate once this many seconds of training (evaluations excluded) have passed since
    # the last evaluation; None: every eval_every steps only.
    eval_every_seconds: float | None = None
    max_minutes: float | None = None
    patience: int | None = None  # evaluations without a new best before stopping
    log_every: int = 1  # "step" records carry the mean loss of the last log_every steps


class LoopResult(NamedTuple):
    """How a run of the loop ended."""

    steps: int
    stop_reason: str  # "max_steps", "time_budget", "early_stopping" or "stopped"
    best_score: float  # -inf when the run never evaluated
    best_step: int
    elapsed: float  # wall-clock seconds of training, evaluations included, over all attempts
    losses: list[float]  # each step's loss, since this call began
    eval_seconds: float = 0.0  # the part of elapsed spent evaluating


# A time-triggered evaluation waits at least this many times as long as the last one took, so
# evaluations take at most about a quarter of the run whatever they cost.
EVAL_COST_RATIO = 3.0


def check_due(step: int, since_eval: float, last_eval_seconds: float, schedule: Schedule) -> bool:
    """Whether an evaluation follows optimizer step `step`, `since_eval` seconds of training
    after the last evaluation, which took `last_eval_seconds`."""
    if step % schedule.eval_every == 0:
        return True
    if schedule.eval_every_seconds is None:
        return False
    return since_eval >= max(schedule.eval_every_seconds, EVAL_COST_RATIO * last_eval_seconds)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Example indices of optimizer step `step`: epochs are seeded permutations, walked in order."""
    out = []
    start = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        order = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.extend(order[offset : offset + batch_size - len(out)])
    return out


def encoded_step(
    encoded: Encoded,
    batch_size: int,
    micro_batch_size: int,
    seed: int,
    world: distributed.World,
    step: int,
    by_length: bool = False,
    order: BucketedOrder | None = None,
) -> StepBatches:
    """This process's micro-batches of optimizer step `step` over `encoded`.

    The step's examples are a pure function of seed and step (`batch_indices`, or `order`'s
    length buckets when given), so a resumed run sees the same batches. Each process takes every
    world-th example; `by_length` groups similar lengths into the same micro-batch (less
    padding)."""
    if order is None:
        indices = batch_indices(len(encoded.inputs), batch_size, step, seed)
    else:
        indices = order.step(step)
    tokens = sum(len(encoded.targets[i]) for i in indices)
    mine = list(indices[world.rank :: world.size])
    if by_length:
        mine.sort(key=lambda i: len(encoded.inputs[i]))
    chunks = [mine[k : k + micro_batch_size] for k in range(0, len(mine), micro_batch_size)]
    batches = [
        Batch([encoded.inputs[i] for i in c], [encoded.targets[i] for i in c]) for c in chunks
    ]
    return StepBatches(batches, tokens)


def save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getvalue())


def train_loop(
    trainable: Trainable,
    schedule: Schedule,
    metrics: MetricsLog,
    checkpoint: Path | None = None,
    progress: ProgressOptions | None = None,
) -> LoopResult:
    """Trains until a budget is spent or patience runs out; see the module docstring.

    The loop state is saved to `checkpoint` after every evaluation and resumed from it (None
    means no checkpoint). The best state is what `trainable.keep_best` kept."""
    return _Loop(trainable, schedule, metrics, checkpoint, progress or ProgressOptions()).run()


class _Loop:
    """One run of train_loop, with the loop state and the steps that change it."""

    def __init__(
        self,
        trainable: Trainable,
        schedule: Schedule,
        metrics: MetricsLog,
        checkpoint: Path | None,
        progress: ProgressOptions,
    ) -> None:
        self.trainable, self.schedule, self.metrics = trainable, schedule, metrics
        self.checkpoint, self.progress = checkpoint, progress
        self.world = distributed.world()
        self.writer = self.world.rank == 0  # all compute the same evaluations; one writes
        self.device = trainable.params[0].device
        # Saved in checkpoints as is: resuming restores the step, the best so far and the clock.
        self.state = {
            "step": 0,
            "best_score": -math.inf,
            "best_step": 0,
            "evals_since_best": 0,
            "elapsed": 0.0,
            "eval_seconds": 0.0,
        }
        self.losses: list[float] = []
        # Losses of the steps since the previous evaluation: its line reports their mean, which
        # shows the trend better than the last step's noisy loss.
        self.recent_losses: list[float] = []

    def run(self) -> LoopResult:
        self._resume_or_start()
        state, schedule = self.state, self.schedule
        self.started = time.monotonic() - state["elapsed"]
        self.lines = ProgressLines(self.progress, self.writer, schedule.max_steps, state["step"],
                                   max_minutes=schedule.max_minutes, elapsed=state["elapsed"])
        evaluates = self.trainable.evaluate is not None
        if evaluates and state["step"] == 0 and not math.isfinite(state["best_score"]):
            self._evaluate()  # the initial state is a candidate: training may only make it worse
            self._save()
        stop_reason = self._train()
        self.lines.close()
        if evaluates and not self._evaluated_this_step():
            self._evaluate(stop_reason)
            self._save()
        best = (
            (self.progress.metric, state["best_score"], state["best_step"]) if evaluates else None
        )
        self.lines.line(
            format_stop_line(
                step=state["step"],
                max_steps=schedule.max_steps,
                stop_reason=stop_reason,
                elapsed=time.monotonic() - self.started,
                best=best,
                note=self.progress.final_note,
            )
        )
        return LoopResult(
            state["step"],
            stop_reason,
            state["best_score"],
            state["best_step"],
            state["elapsed"],
            self.losses,
            state.get("eval_seconds", 0.0),
        )

    def _resume_or_start(self) -> None:
        if self.checkpoint is None or not self.checkpoint.exists():
            self.trainable.on_start()
            return
        saved = torch.load(self.checkpoint, weights_only=True, map_location=self.device)
        self.trainable.load_state(saved)
        self.trainable.optimizer.load_state_dict(saved["optimizer"])
        self.state = saved["state"]
        self.metrics.write(event="resume", step=self.state["step"])
        log.info("resumed from %s at step %d", self.checkpoint, self.state["step"])

    def _stop_reason(self) -> str | None:
        """Why training stops before the next step, if it does."""
        state, schedule = self.state, self.schedule
        if self.world.size > 1:
            state["elapsed"] = distributed.from_rank0(state["elapsed"], self.device)
        if schedule.max_minutes is not None and state["elapsed"] >= schedule.max_minutes * 60:
            return "time_budget"
        if schedule.patience is not None and state["evals_since_best"] >= schedule.patience:
            return "early_stopping"
        return None

    def _train(self) -> str:
        """Optimizer steps until a budget is spent or patience runs out; returns why it stopped."""
        state, schedule = self.state, self.schedule
        while state["step"] < schedule.max_steps:
            stop_reason = self._stop_reason()
            if stop_reason is not None:
                return stop_reason
            self.trainable.before_step(state["step"])
            loss = self._step()
            self._check_finite(loss)
            self.trainable.after_step(state["step"])
            state["step"] += 1
            state["elapsed"] = time.monotonic() - self.started
            self.losses.append(loss)
            self.recent_losses.append(loss)
            self._log_step()
            self.lines.step(loss, state["best_score"])
            evaluates = self.trainable.evaluate is not None
            train_seconds = state["elapsed"] - state.get("eval_seconds", 0.0)
            if evaluates and self._check_due(train_seconds):
                self._evaluate()
                self._save()
                train_seconds = state["elapsed"] - state["eval_seconds"]
            if self.trainable.on_step(state["step"], train_seconds):
                return "stopped"
        return "max_steps"

    def _check_due(self, train_seconds: float) -> bool:
        """check_due for the step just taken; every process follows rank 0's clock."""
        state = self.state
        since = train_seconds - state.get("eval_train_seconds", 0.0)
        due = check_due(state["step"], since, state.get("last_eval_seconds", 0.0), self.schedule)
        if self.world.size > 1 and self.schedule.eval_every_seconds is not None:
            due = distributed.from_rank0(float(due), self.device) > 0.5
        return due

    def _evaluated_this_step(self) -> bool:
        """Whether the last evaluation was at the current step (checkpoints written before the
        time trigger existed do not say: their evaluations were every eval_every steps)."""
        state = self.state
        if "eval_step" in state:
            return state["eval_step"] == state["step"]
        return state["step"] % self.schedule.eval_every == 0

    def _step(self) -> float:
        """One optimizer step over the step's micro-batches; returns the step's loss."""
        trainable = self.trainable
        step = trainable.batches(self.state["step"])
        trainable.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro_batch in step.micro_batches:
            loss = trainable.loss(micro_batch, step.target_tokens)
            loss.backward()
            total += loss.item()
        if self.world.size > 1:
            total = distributed.sum_across_processes(trainable.params, total)
        trainable.optimizer.step()
        return total

    def _check_finite(self, loss: float) -> None:
        """Raises TrainingDiverged when the step's loss or a parameter it updated is not finite.
        A NaN prompt can still score a finite accuracy, so without this it could become "best"."""
        finite = math.isfinite(loss)
        finite = finite and all(bool(torch.isfinite(p).all()) for p in self.trainable.params)
        if finite:
            return
        step = self.state["step"] + 1
        self.metrics.write(event="diverged", step=step, loss=loss if math.isfinite(loss) else None)
        what = f"loss {loss}" if not math.isfinite(loss) else "non-finite parameters"
        raise TrainingDiverged(
            f"training diverged at step {step} ({what}); nothing from this step on was kept. "
            "Lower the learning rate (--lr) and train again in a new run directory"
        )

    def _log_step(self) -> None:
        step, every = self.state["step"], self.schedule.log_every
        if step % every != 0 and step != self.schedule.max_steps:
            return
        window = self.losses[-every:]
        self.metrics.write(
            event="step",
            step=step,
            loss=round(sum(window) / len(window), 5),
            elapsed=round(self.state["elapsed"], 2),
        )

    def _evaluate(self, stop_reason: str | None = None) -> None:
        """Scores dev, keeps a new best, and reports the evaluation (line and record)."""
        state, step = self.state, self.state["step"]
        began = time.monotonic()
        scores = self.trainable.evaluate()
        took = time.monotonic() - began
        state["eval_seconds"] = state.get("eval_seconds", 0.0) + took
        # What the time trigger measures from: the training time at this evaluation, its cost.
        state.update(eval_step=step, last_eval_seconds=took,
                     eval_train_seconds=time.monotonic() - self.started - state["eval_seconds"])
        self.trainable.after_eval(step, scores)
        improved = scores["score"] > state["best_score"]
        if improved:
            state.update(best_score=scores["score"], best_step=step, evals_since_best=0)
            self.trainable.keep_best(step)
        else:
            state["evals_since_best"] += 1
        now = time.monotonic() - self.started  # this evaluation included, like those to come
        state["elapsed"] = now
        if stop_reason is None:
            eta = eta_seconds(step, self.schedule.max_steps, now, self.schedule.max_minutes)
        else:
            eta = (0.0, f"stopped: {stop_reason}")
        recent = self.recent_losses
        loss = math.fsum(recent) / len(recent) if recent else None
        self.lines.line(
            format_eval_line(
                step=step,
                max_steps=self.schedule.max_steps,
                loss=loss,
                loss_steps=len(recent),
                metric=self.progress.metric,
                score=scores["score"],
                best_score=state["best_score"],
                best_step=state["best_step"],
                elapsed=now,
                eta=eta,
            )
        )
        recent.clear()
        finite_best = math.isfinite(state["best_score"])  # -inf (JSON -Infinity) until a score
        self.metrics.write(
            event="eval",
            step=step,
            split="dev",
            elapsed=round(state["elapsed"], 2),
            eval_seconds=round(state["eval_seconds"], 2),
            **scores,
            best=improved,
            best_score=state["best_score"] if finite_best else None,
            best_step=state["best_step"],
            loss_since_last_eval=None if loss is None else round(loss, 5),
            eta_s=None if eta[0] is None else round(eta[0], 1),
            eta_by=eta[1],
        )

    def _save(self) -> None:
        if self.checkpoint is None or not self.writer:
            return
        trainable = self.trainable
        save_checkpoint(
            self.checkpoint,
            {
                **trainable.state(),
                "optimizer": trainable.optimizer.state_dict(),
                "state": self.state,
            },
        )
