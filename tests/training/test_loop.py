"""The training loop on a toy objective (no language model): exact gradient accumulation,
exact resume after a kill, early stopping, budgets and logging."""

import json
import logging
import re

import pytest
import torch

from softprompt.training import loop
from softprompt.training.loop import (
    Schedule,
    StepBatches,
    Trainable,
    TrainingDiverged,
    batch_indices,
    check_due,
    train_loop,
)
from softprompt.training.progress import MetricsLog

N, BATCH = 32, 8


class Toy:
    """Least squares on 32 fixed points: w [3] learns y = X w. A micro-batch is a list of row
    indices; its loss is the summed squared error divided by the step's example count."""

    def __init__(self, micro_batch_size=BATCH, scores=None, kill_at_call=None):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(N, 3, generator=generator)  # [N, 3]
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5])  # [N]
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.optimizer = torch.optim.Adam([self.w], lr=0.1)
        self.micro = micro_batch_size
        self.scores = list(scores) if scores is not None else None
        self.kill_at_call, self.calls, self.best_steps = kill_at_call, 0, []

    def batches(self, step):
        indices = batch_indices(N, BATCH, step, seed=1)
        chunks = [indices[k : k + self.micro] for k in range(0, BATCH, self.micro)]
        return StepBatches(chunks, target_tokens=len(indices))

    def loss(self, rows, normalizer):
        self.calls += 1
        if self.calls == self.kill_at_call:
            raise KeyboardInterrupt("killed")
        return ((self.x[rows] @ self.w - self.y[rows]) ** 2).sum() / normalizer

    def evaluate(self):
        if self.scores is not None:
            return {"score": self.scores.pop(0)}
        return {"score": -float(((self.x @ self.w.detach() - self.y) ** 2).mean())}

    def restore(self, saved):
        with torch.no_grad():
            self.w.copy_(saved["w"])

    def trainable(self, evaluates=True):
        return Trainable(
            params=[self.w], optimizer=self.optimizer, batches=self.batches, loss=self.loss,
            evaluate=self.evaluate if evaluates else None, keep_best=self.best_steps.append,
            state=lambda: {"w": self.w.detach().clone()}, load_state=self.restore,
        )


def _records(path, event):
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == event]


def test_batch_order_is_deterministic_and_covers_epochs():
    first = [i for s in range(5) for i in batch_indices(10, 4, s, seed=3)]
    assert first == [i for s in range(5) for i in batch_indices(10, 4, s, seed=3)]
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:20]) == list(range(10))


def test_accumulation_equals_the_full_batch(tmp_path):
    """Each micro-batch's loss is divided by the whole step's count: the update is the same."""
    weights, losses = [], []
    for micro in (8, 2, 1):
        toy = Toy(micro_batch_size=micro)
        log = MetricsLog(tmp_path / f"micro{micro}.jsonl")
        outcome = train_loop(toy.trainable(), Schedule(max_steps=5, eval_every=5), log)
        weights.append(toy.w.detach().clone())
        losses.append(outcome.losses)
        assert toy.calls == 5 * BATCH // micro
    for w, loss in zip(weights[1:], losses[1:], strict=True):
        assert torch.allclose(w, weights[0], atol=1e-6)
        assert loss == pytest.approx(losses[0], abs=1e-6)


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path):
    schedule = Schedule(max_steps=6, eval_every=2)
    whole = Toy()
    expected = train_loop(
        whole.trainable(), schedule, MetricsLog(tmp_path / "a.jsonl"), tmp_path / "a.pt"
    )

    # Killed in step 4, after the checkpoint of step 2: steps 3 and 4 are done again.
    killed = Toy(kill_at_call=4)
    with pytest.raises(KeyboardInterrupt):
        train_loop(killed.trainable(), schedule, MetricsLog(tmp_path / "b.jsonl"),
                   tmp_path / "b.pt")
    resumed = Toy()  # a new process: fresh weights and optimizer, restored from the checkpoint
    outcome = train_loop(
        resumed.trainable(), schedule, MetricsLog(tmp_path / "b.jsonl"), tmp_path / "b.pt"
    )
    assert torch.equal(resumed.w, whole.w)
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"])
    assert sorted(b) == ["optimizer", "state", "w"]
    assert (outcome.steps, outcome.best_step, outcome.best_score) == (
        expected.steps, expected.best_step, expected.best_score,
    )
    assert _records(tmp_path / "b.jsonl", "resume") == [{"event": "resume", "step": 2}]
    # Step 3 was logged by the killed run and again after the resume.
    assert [r["step"] for r in _records(tmp_path / "b.jsonl", "step")] == [1, 2, 3, 3, 4, 5, 6]


def test_patience_stops_after_evaluations_without_a_new_best(tmp_path):
    toy = Toy(scores=[0.4, 0.5, 0.7, 0.6, 0.7, 0.9])
    log = MetricsLog(tmp_path / "m.jsonl")
    schedule = Schedule(max_steps=10, eval_every=1, patience=2)
    outcome = train_loop(toy.trainable(), schedule, log)
    # Step 0 (the initial state) is evaluated first. Step 2 is the last best; steps 3 and 4
    # bring none (a tie is no improvement): stop.
    assert (outcome.steps, outcome.stop_reason, outcome.best_step) == (4, "early_stopping", 2)
    assert outcome.best_score == 0.7 and toy.best_steps == [0, 1, 2]
    evals = _records(tmp_path / "m.jsonl", "eval")
    assert [r["step"] for r in evals] == [0, 1, 2, 3, 4]  # no evaluation after step 4
    assert [r["best"] for r in evals] == [True, True, True, False, False]


def test_the_initial_state_is_a_candidate(tmp_path):
    """Training that only makes the score worse keeps the untrained state (step 0)."""
    toy = Toy(scores=[0.9, 0.5, 0.6])
    outcome = train_loop(toy.trainable(), Schedule(max_steps=4, eval_every=2),
                         MetricsLog(tmp_path / "m.jsonl"))
    assert (outcome.best_step, outcome.best_score, toy.best_steps) == (0, 0.9, [0])
    assert outcome.eval_seconds > 0 and outcome.eval_seconds <= outcome.elapsed


def test_a_spent_time_budget_stops_before_the_first_step(tmp_path):
    toy = Toy()
    schedule = Schedule(max_steps=10, eval_every=5, max_minutes=0)
    outcome = train_loop(toy.trainable(), schedule, MetricsLog(tmp_path / "m.jsonl"))
    assert (outcome.steps, outcome.stop_reason, toy.calls) == (0, "time_budget", 0)
    # The final evaluation still scores (and keeps) the untrained state.
    assert toy.best_steps == [0] and len(_records(tmp_path / "m.jsonl", "eval")) == 1


def test_a_check_is_due_every_k_steps_and_after_enough_training_time():
    steps_only = Schedule(max_steps=100, eval_every=25)
    assert check_due(25, 0.0, 0.0, steps_only) and not check_due(24, 1e6, 0.0, steps_only)
    timed = Schedule(max_steps=100, eval_every=25, eval_every_seconds=30.0)
    assert check_due(50, 0.0, 0.0, timed)
    assert not check_due(3, 29.9, 1.0, timed) and check_due(3, 30.0, 1.0, timed)
    # A check that took 20 s waits 60 s of training: checks stay under a quarter of the time.
    assert not check_due(3, 59.0, 20.0, timed) and check_due(3, 60.0, 20.0, timed)


class FakeClock:
    """The loop's clock, advanced by the toy: `step_seconds` per training forward and
    `eval_seconds` per evaluation."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


@pytest.mark.parametrize(("eval_seconds", "expected"), [
    (0.0, [0, 3, 6, 9, 10]),  # every 30 s of training: 3 steps of 10 s
    (20.0, [0, 6, 10]),  # a 20 s check waits 60 s of training
])
def test_slow_steps_are_checked_by_training_time(tmp_path, monkeypatch, eval_seconds, expected):
    clock = FakeClock()
    monkeypatch.setattr(loop, "time", clock)
    toy = Toy()
    toy_loss, toy_evaluate = toy.loss, toy.evaluate

    def slow_loss(rows, normalizer):
        clock.now += 10.0
        return toy_loss(rows, normalizer)

    def slow_evaluate():
        clock.now += eval_seconds
        return toy_evaluate()

    toy.loss, toy.evaluate = slow_loss, slow_evaluate
    schedule = Schedule(max_steps=10, eval_every=25, eval_every_seconds=30.0)
    outcome = train_loop(toy.trainable(), schedule, MetricsLog(tmp_path / "m.jsonl"))
    assert [r["step"] for r in _records(tmp_path / "m.jsonl", "eval")] == expected
    assert outcome.elapsed == pytest.approx(100.0 + eval_seconds * len(expected))
    assert outcome.eval_seconds == pytest.approx(eval_seconds * len(expected))


def test_a_run_without_evaluation_logs_mean_losses(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="softprompt.training.progress")
    toy = Toy()
    schedule = Schedule(max_steps=7, log_every=3)
    log = MetricsLog(tmp_path / "m.jsonl")
    outcome = train_loop(toy.trainable(evaluates=False), schedule, log, tmp_path / "c.pt")
    steps = _records(tmp_path / "m.jsonl", "step")
    # Every 3rd step and the last, each with the mean loss of the last 3 steps.
    assert [r["step"] for r in steps] == [3, 6, 7]
    for record, end in zip(steps, (3, 6, 7), strict=True):
        assert record["loss"] == pytest.approx(sum(outcome.losses[end - 3 : end]) / 3, abs=1e-5)
    assert outcome.best_score == float("-inf") and toy.best_steps == []
    assert not (tmp_path / "c.pt").exists()  # checkpoints follow evaluations
    (line,) = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(r"training stopped at step 7/7 \(max_steps\); elapsed \d+s", line)


@pytest.mark.parametrize("poison", ["loss", "parameter"])
def test_a_diverged_run_fails_and_keeps_nothing_from_then_on(tmp_path, poison):
    """A NaN loss (or a NaN weight after a finite loss) at step 3 stops the run with
    TrainingDiverged naming the step; the last checkpoint and best state are from step 2."""
    toy = Toy()
    real_loss, real_step = toy.loss, toy.optimizer.step

    def loss(rows, normalizer):
        value = real_loss(rows, normalizer)
        return value * float("nan") if poison == "loss" and toy.calls > 2 else value

    def step(*args, **kwargs):
        real_step(*args, **kwargs)
        if poison == "parameter" and toy.calls > 2:
            with torch.no_grad():
                toy.w[0] = float("nan")

    toy.loss, toy.optimizer.step = loss, step
    with pytest.raises(TrainingDiverged, match="step 3"):
        train_loop(toy.trainable(), Schedule(max_steps=6, eval_every=2),
                   MetricsLog(tmp_path / "m.jsonl"), tmp_path / "c.pt")
    assert toy.best_steps == [0, 2]
    assert torch.load(tmp_path / "c.pt")["state"]["step"] == 2
    assert torch.isfinite(torch.load(tmp_path / "c.pt")["w"]).all()
    assert [r["step"] for r in _records(tmp_path / "m.jsonl", "diverged")] == [3]
    assert not _records(tmp_path / "m.jsonl", "eval")[-1]["step"] > 2
