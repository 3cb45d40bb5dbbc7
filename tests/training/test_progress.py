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
    format_stop_line,
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
