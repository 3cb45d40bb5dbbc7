"""Progress reporting: ETA, durations and the lines a run logs."""

import json
import logging

import pytest

from softprompt.training.progress import (
    MetricsLog,
    ProgressLines,
    ProgressOptions,
    eta_seconds,
    format_duration,
    format_eval_line,
    format_step_line,
    format_stop_line,
    parse_progress_line,
)


@pytest.mark.parametrize(
    "step, max_steps, elapsed, max_minutes, expected",
    [
        (100, 1000, 60.0, None, (540.0, "step budget")),  # 0.6 s/step x 900 steps, no time budget
        (100, 1000, 60.0, 5, (240.0, "time budget")),  # 300 s budget - 60 s < 540 s of steps
        (500, 1000, 60.0, 60, (60.0, "step budget")),  # 60 s of steps < 3540 s of budget
        (10, 1000, 400.0, 5, (0.0, "time budget")),  # past the budget: never negative
        (1000, 1000, 90.0, None, (0.0, "step budget")),  # all steps done
        (0, 1000, 3.0, None, (None, "no estimate")),  # no step measured, no time budget
        (0, 1000, 3.0, 2, (117.0, "time budget")),  # no step measured: the budget bounds the run
    ],
)
def test_eta_seconds(step, max_steps, elapsed, max_minutes, expected):
    seconds, which = eta_seconds(step, max_steps, elapsed, max_minutes)
    assert which == expected[1]
    assert seconds == (None if expected[0] is None else pytest.approx(expected[0]))


@pytest.mark.parametrize(
    "seconds, text",
    [
        (None, "?"),
        (0, "0s"),
        (44.6, "45s"),
        (59.6, "1m00s"),
        (750, "12m30s"),
        (7500, "2h05m"),
        (float("nan"), "?"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_format_eval_line():
    line = format_eval_line(
        step=300,
        max_steps=1000,
        loss=0.41234,
        loss_steps=50,
        metric="accuracy",
        score=0.8125,
        best_score=0.825,
        best_step=250,
        elapsed=252.0,
        eta=(750.0, "time budget"),
    )
    assert line == (
        "step 300/1000 | train loss 0.4123 (mean of 50 steps) | dev accuracy 0.8125 | "
        "best 0.8250 @ step 250 | elapsed 4m12s | ETA 12m30s (time budget)"
    )
    line = format_eval_line(
        step=0,
        max_steps=10,
        loss=None,
        loss_steps=0,
        metric="f1",
        score=0.5,
        best_score=0.5,
        best_step=0,
        elapsed=1.0,
        eta=(None, "no estimate"),
    )
    assert "train loss n/a" in line and line.endswith("ETA ? (no estimate)")


def test_format_stop_line():
    line = format_stop_line(step=1000, max_steps=1000, stop_reason="max_steps", elapsed=840.0,
                            best=("accuracy", 0.825, 250), note="scoring the best prompt on test")
    assert line == ("training stopped at step 1000/1000 (max_steps); best dev accuracy 0.8250 @ "
                    "step 250; elapsed 14m00s; scoring the best prompt on test")
    # A run without evaluations (LM adaptation) has no best to report.
    line = format_stop_line(step=7, max_steps=10, stop_reason="time_budget", elapsed=3.0)
    assert line == "training stopped at step 7/10 (time_budget); elapsed 3s"


def test_metrics_log_appends_one_json_line_per_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.write(event="step", step=1, loss=0.5)
    log.write(event="eval", step=1, score=float("-inf"))
    assert [json.loads(x)["event"] for x in path.read_text().splitlines()] == ["step", "eval"]
    MetricsLog(tmp_path / "other.jsonl", enabled=False).write(event="step")
    assert not (tmp_path / "other.jsonl").exists()  # a process that does not write


def test_progress_lines_go_to_the_logger_without_a_bar(caplog):
    caplog.set_level(logging.INFO, logger="softprompt.training.progress")
    ProgressLines(ProgressOptions(bar=False), writer=True, total=3, initial=0).line("step 1/3")
    ProgressLines(ProgressOptions(bar=True), writer=False, total=3, initial=0).line("step 2/3")
    assert [r.getMessage() for r in caplog.records] == ["step 1/3"]


def test_format_step_line():
    line = format_step_line(step=120, max_steps=1000, loss=0.43214, loss_steps=40,
                            metric="accuracy", best_score=0.8125, elapsed=90.0,
                            eta=(660.0, "step budget"))
    assert line == ("step 120/1000 | train loss 0.4321 (mean of 40 steps) | best dev accuracy "
                    "0.8125 | elapsed 1m30s | ETA 11m00s (step budget)")
    # Before the first evaluation there is no best score yet.
    line = format_step_line(step=1, max_steps=10, loss=2.0, loss_steps=1, metric="f1",
                            best_score=float("-inf"), elapsed=12.0, eta=(48.0, "time budget"))
    assert " | best dev f1 n/a | " in line and " (mean of 1 step) | " in line


def test_progress_lines_read_back_after_a_logger_prefix():
    """parse_progress_line finds each of this module's lines after any logger's prefix."""
    step = format_step_line(step=7, max_steps=30, loss=0.5, loss_steps=7, metric="accuracy",
                            best_score=float("-inf"), elapsed=20.0, eta=(66.0, "step budget"))
    evaluation = format_eval_line(step=30, max_steps=30, loss=None, loss_steps=0, metric="f1",
                                  score=0.75, best_score=0.8, best_step=10, elapsed=99.0,
                                  eta=(0.0, "stopped: max_steps"))
    stop = format_stop_line(step=30, max_steps=30, stop_reason="time_budget", elapsed=99.0)
    prefixes = ["", "INFO softprompt.training.progress: ",
                "    [KFP Executor 2026-12-02 14:38:55,583 INFO]: "]
    for prefix in prefixes:
        event = parse_progress_line(prefix + step + "\n")
        assert event == ("step", 7, 30, 0.5, "accuracy", None, "1m06s (step budget)", step)
        event = parse_progress_line(prefix + evaluation)
        assert event == ("eval", 30, 30, None, "f1", 0.75, "0s (stopped: max_steps)", evaluation)
        assert parse_progress_line(prefix + stop) == ("stop", 30, 30, None, "", None, "", stop)
    assert parse_progress_line("INFO root: step 3 of the data preparation") is None


class _Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _run_steps(lines: ProgressLines, clock: _Clock, steps: int, seconds: float) -> None:
    for i in range(steps):
        clock.now += seconds
        lines.step(loss=float(i), best_score=0.75)


@pytest.mark.parametrize(
    "max_minutes, initial, elapsed, eta",
    [
        (None, 0, 0.0, "ETA 3m10s (step budget)"),  # 95 steps left at 2 s each
        (1, 0, 0.0, "ETA 50s (time budget)"),  # 60 s budget - 10 s spent < 190 s of steps
        (60, 0, 0.0, "ETA 3m10s (step budget)"),  # an hour's budget is far off
        # Resumed at step 50 after 30 s: the rate is this process's; the budget has 20 s left.
        (1, 50, 30.0, "ETA 20s (time budget)"),
        (None, 50, 30.0, "ETA 1m30s (step budget)"),
    ],
)
def test_step_lines_carry_loss_and_eta_against_either_budget(caplog, max_minutes, initial,
                                                             elapsed, eta):
    caplog.set_level(logging.INFO, logger="softprompt.training.progress")
    clock = _Clock()
    lines = ProgressLines(ProgressOptions(metric="accuracy"), writer=True, total=100,
                          initial=initial, max_minutes=max_minutes, elapsed=elapsed, clock=clock)
    _run_steps(lines, clock, 4, 2.0)
    assert caplog.records == []  # the first line comes after 10 s
    _run_steps(lines, clock, 1, 2.0)
    (record,) = caplog.records
    # The mean of the 5 losses since the start: 0, 1, 2, 3, then 0.
    assert record.getMessage() == (
        f"step {initial + 5}/100 | train loss 1.2000 (mean of 5 steps) | best dev accuracy "
        f"0.7500 | elapsed {10 + int(elapsed)}s | {eta}"
    )
    assert parse_progress_line(record.getMessage()).eta == eta.removeprefix("ETA ")


def test_step_lines_thin_out_as_the_run_goes_on(caplog):
    """Every 10 s at first, every tenth of the time so far later, at most a minute apart; none
    for the last step (its evaluation or stop line follows); an evaluation's line resets both
    the interval and the mean loss."""
    caplog.set_level(logging.INFO, logger="softprompt.training.progress")
    clock = _Clock()
    lines = ProgressLines(ProgressOptions(), writer=True, total=2000, initial=0, clock=clock)
    _run_steps(lines, clock, 1000, 1.0)
    steps = [parse_progress_line(r.getMessage()).step for r in caplog.records]
    assert steps[:3] == [10, 20, 30]
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    assert gaps == sorted(gaps) and max(gaps) == 60 and gaps[-1] == 60
    caplog.clear()
    lines.line("step 1000/2000 | an evaluation")
    _run_steps(lines, clock, 59, 1.0)
    assert caplog.records[0].getMessage() == "step 1000/2000 | an evaluation"
    assert len(caplog.records) == 1
    clock.now += 1.0
    lines.step(loss=1.0, best_score=0.5)
    assert "(mean of 60 steps)" in caplog.records[-1].getMessage()
    # The last step: no step line, whatever the time.
    caplog.clear()
    done = ProgressLines(ProgressOptions(), writer=True, total=3, initial=0, clock=clock)
    _run_steps(done, clock, 3, 30.0)
    assert [parse_progress_line(r.getMessage()).step for r in caplog.records] == [1, 2]


def test_the_bar_shows_the_eta_against_the_time_budget(capsys):
    clock = _Clock()
    lines = ProgressLines(ProgressOptions(bar=True, desc="train toy"), writer=True, total=100,
                          initial=0, max_minutes=1, clock=clock)
    _run_steps(lines, clock, 5, 2.0)
    lines.close()
    err = capsys.readouterr().err
    assert "train toy" in err and "eta=50s (time budget)" in err and "loss=4.000" in err
