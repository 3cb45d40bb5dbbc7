"""bench.time_to_accuracy: every arm trains in its own process for a few seconds on the tiny model
and toy task, and the results files hold every arm and mark. No accuracy assertions beyond
sanity, as the runs are seconds long."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from bench import time_to_accuracy
from bench.tta_arms import (
    Marks,
    check_every,
    peft_label_scores,
    reported_examples,
    train_config,
)
from softprompt.model import load_frozen_lm
from softprompt.scoring import label_scores
from softprompt.task_data import seeded_subset
from softprompt.training.config import TrainConfig


def _args(argv):
    return time_to_accuracy.parse_args(argv)


def test_plan_defaults_to_two_seeds_of_ours_and_one_of_each_peft_arm():
    args = _args([])
    # Alternating, so that with --jobs 2 each of ours runs beside a PEFT arm.
    assert time_to_accuracy.plan(args) == [
        ("ours", 0),
        ("peft-paper", 0),
        ("ours", 1),
        ("peft-recipe", 0),
    ]
    assert args.marks == [120.0, 300.0, 600.0, 1200.0]
    assert time_to_accuracy.plan(_args(["--arms", "peft-recipe", "--seeds", "3,4"])) == [
        ("peft-recipe", 3),
        ("peft-recipe", 4),
    ]
    with pytest.raises(SystemExit):
        _args(["--marks", "300,120"])
    with pytest.raises(SystemExit):
        _args(["--arms", "ours,lora"])


def test_a_target_adds_dense_marks_and_times_the_first_mark_reaching_it():
    args = _args(["--marks", "30,60,120", "--target", "0.9"])
    assert args.shown_marks == [30.0, 60.0, 120.0]  # the tables' and targets' marks
    # Every 6 s up to 120 s: the given marks are among them.
    assert args.marks == [6.0 * k for k in range(1, time_to_accuracy.DENSE_MARKS + 1)]
    with pytest.raises(SystemExit, match="--target"):
        _args(["--target", "90"])
    record = {"marks": [{"mark": 0.0, "steps": 0, "score": 0.5},
                        {"mark": 6.0, "steps": 40, "score": 0.91},
                        {"mark": 12.0, "steps": 80, "score": 0.95}]}
    assert time_to_accuracy.time_to_target(record, 0.9) == {
        "reached": True, "seconds": 6.0, "steps": 40}
    assert time_to_accuracy.time_to_target(record, 0.96) == {
        "reached": False, "seconds": None, "steps": None}


def test_without_a_test_split_the_reported_examples_are_outside_every_selection_set():
    dev = [object() for _ in range(50)]
    args = SimpleNamespace(all_seeds=[0, 1], report_max_examples=None, task="t")
    reported = reported_examples(args, {"dev": dev}, 20)
    chosen = {id(e) for seed in (0, 1) for e in seeded_subset(dev, 20, seed)}
    assert reported and not {id(e) for e in reported} & chosen
    assert len(reported) == 50 - len(chosen)
    # With a test split that split is reported, capped by --report-max-examples.
    test = list(range(30))
    args.report_max_examples = 10
    assert reported_examples(args, {"dev": dev, "test": test}, 20) == seeded_subset(test, 10, 0)
    with pytest.raises(SystemExit, match="every dev example"):
        reported_examples(args, {"dev": dev[:5]}, 20)


def test_cpu_slots_are_disjoint():
    assert time_to_accuracy.cpu_slots(1) == [None]
    slots = time_to_accuracy.cpu_slots(2)
    assert len(slots) == 2 and all(slots)
    if len(set().union(*map(set, slots))) >= 2:
        assert not set(slots[0]) & set(slots[1])


def test_ours_checks_as_often_as_a_run_budgeted_to_the_last_mark():
    args = _args(["--marks", "120,300,600"])
    lm = SimpleNamespace(device=torch.device("cpu"), model=SimpleNamespace(dtype=torch.float32))
    config = train_config(args, 0, lm)
    assert config.check_every_seconds() == pytest.approx(600 / TrainConfig.checks_per_budget)
    assert config.max_minutes * 60 >= 2 * 600  # the last mark ends the run, not the budget
    assert check_every(args).startswith("every 25 steps or 30 s of training")  # the report's


def test_marks_snapshot_each_mark_once():
    taken = iter(range(100))
    marks = Marks([1.0, 2.0, 3.0], lambda: torch.tensor(next(taken)))
    assert not marks.passed(5, 0.5)
    assert not marks.passed(9, 2.5)  # two marks passed within one step
    assert marks.passed(12, 3.1)
    assert [(s.mark, s.steps) for s in marks.snapshots] == [(1.0, 9), (2.0, 9), (3.0, 12)]


def test_peft_scorer_agrees_with_ours_where_the_layouts_are_equal(tiny_causal_dir):
    """The tiny model's tokenizer adds no BOS, so PEFT's [P; X] is our [lead; P; X]: both rank
    classifiers give the same label scores for the same prompt."""
    pytest.importorskip("peft")
    from peft import PromptTuningConfig, TaskType, get_peft_model

    lm = load_frozen_lm(str(tiny_causal_dir))
    assert lm.lead_ids == []
    prompt = 0.1 * torch.randn(4, lm.dim, generator=torch.Generator().manual_seed(0))
    model = get_peft_model(
        lm.model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)
    )
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.copy_(prompt)
    inputs = [lm.tokenize(t) for t in ("the movie was great", "awful plot", "a boring story film")]
    words = ["negative", "positive"]
    ours = label_scores(lm, prompt, inputs, words)
    theirs = peft_label_scores(lm, model, inputs, words, batch_size=4)
    assert theirs.shape == (3, 2)
    assert torch.allclose(ours, theirs, atol=1e-4)


def _run(tiny_causal_dir, toy_task, out, *extra):
    return time_to_accuracy.main(
        [
            "--model",
            str(tiny_causal_dir),
            "--task",
            str(toy_task["spec_path"]),
            "--data-dir",
            str(toy_task["data_dir"]),
            "--prompt-length",
            "4",
            "--threads",
            "1",
            "--out",
            str(out),
            *extra,
        ]
    )


def _check_record(out, arms, marks):
    record = json.loads((out / "time_to_accuracy.json").read_text())
    results = record["results"]
    assert [(r["arm"], r["seed"]) for r in results["arms"]] == arms
    assert results["marks"] == [0.0, *marks]
    for r in results["arms"]:
        assert [m["mark"] for m in r["marks"]] == [0.0, *marks]
        steps = [m["steps"] for m in r["marks"]]
        assert steps[0] == 0 and steps == sorted(steps) and steps[-1] > 0
        assert all(0.0 <= m["score"] <= 1.0 for m in r["marks"])
        assert r["threads"] >= 1 and r["cores"]
        assert r["started"] <= r["trained"] <= r["ended"] <= r["finished"]
        assert set(r["load_avg_1m"]) == {"before", "after"}
    assert 0.0 <= results["zero_shot"] <= 1.0
    assert record["targets"]
    assert all(isinstance(t["met"], bool) for t in record["targets"])
    assert (out / "time_to_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| arm |" in (out / "time_to_accuracy.md").read_text()
    return record


def test_all_arms_one_at_a_time(tiny_causal_dir, toy_task, tmp_path):
    pytest.importorskip("peft")
    _run(tiny_causal_dir, toy_task, tmp_path, "--marks", "1,2", "--jobs", "1")
    record = _check_record(
        tmp_path,
        [("ours", 0), ("peft-paper", 0), ("ours", 1), ("peft-recipe", 0)],
        [1.0, 2.0],
    )
    names = [t["name"] for t in record["targets"]]
    assert any("every PEFT arm" in n for n in names) and any("drop" in n for n in names)
    assert not any("1200 s" in n for n in names)  # not SST-2
    # Not SST-2: the benchmark computes the majority class's score and compares ours with it.
    majority = record["results"]["majority"]
    assert majority["label"] in ("negative", "positive") and 0.0 <= majority["accuracy"] <= 1.0
    assert any("majority class" in n for n in names)
    assert all(0.0 <= m["accuracy"] <= 1.0 for r in record["results"]["arms"] for m in r["marks"])
    # Seed 0's arms start from the same prompt and are scored alike: equal scores at mark 0.
    initial = {r["arm"]: r["marks"][0]["score"] for r in record["results"]["arms"] if not r["seed"]}
    assert len(set(initial.values())) == 1
    ours = record["results"]["arms"][0]
    assert ours["checks"] and ours["scorer"] == "softprompt.scoring.evaluate"


def test_two_jobs_each_pinned(tiny_causal_dir, toy_task, tmp_path):
    pytest.importorskip("peft")
    _run(
        tiny_causal_dir,
        toy_task,
        tmp_path,
        "--arms",
        "ours,peft-recipe",
        "--seeds",
        "0",
        "--marks",
        "1",
        "--jobs",
        "2",
    )
    record = _check_record(tmp_path, [("ours", 0), ("peft-recipe", 0)], [1.0])
    arms = record["results"]["arms"]
    expected = time_to_accuracy.cpu_slots(2)
    assert [a["cores"] for a in arms] == expected
    assert [a["threads"] for a in arms] == [len(c) for c in expected]
