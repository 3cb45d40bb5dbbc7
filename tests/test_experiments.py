"""The paper's experiment commands (softprompt/experiments_cli.py) on the toy task with tiny
models: tables, JSON and plots."""

import json

import pytest
import yaml

from softprompt.cli import main

FAST_SETTINGS = {
    "--prompt-length": 4,
    "--train-batch-size": 8,
    "--micro-batch-size": 8,
    "--max-steps": 2,
    "--eval-every": 2,
    "--test-limit": 12,
    "--eval-max-examples": 12,
}
FAST = [arg for flag, value in FAST_SETTINGS.items() for arg in (flag, str(value))]


def _args(toy_task, model_dir, out):
    return [
        "--out",
        str(out),
        "--model",
        str(model_dir),
        "--data-dir",
        str(toy_task["data_dir"]),
        *FAST,
    ]


@pytest.fixture()
def two_tasks(toy_task):
    """toy plus toy2: the same data under a second name (a stand-in for QQP/MRPC in transfer)."""
    spec = yaml.safe_load(toy_task["spec_path"].read_text())
    path = toy_task["tasks_dir"] / "toy2.yaml"
    path.write_text(yaml.safe_dump(spec | {"name": "toy2"}))
    return str(toy_task["spec_path"]), str(path)


def test_length_ablation_writes_table_json_and_plot(tiny_causal_dir, toy_task, tmp_path):
    out = tmp_path / "abl"
    rc = main(
        [
            "ablate",
            "--axis",
            "length",
            "--values",
            "2",
            "6",
            "--seeds",
            "0",
            "1",
            "--task",
            str(toy_task["spec_path"]),
            *_args(toy_task, tiny_causal_dir, out),
        ]
    )
    assert rc == 0
    payload = json.loads((out / "ablation_length.json").read_text())
    assert list(payload["scores"]) == ["2", "6"] and all(
        len(v) == 2 for v in payload["scores"].values()
    )
    assert (out / "ablation_length.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 2 |" in (out / "ablation_length.md").read_text()
    # Four runs, each with its own prompt length.
    shapes = sorted(
        json.loads((out / "runs" / f"length-{p}-seed{s}" / "config.json").read_text())["prompt"][
            "length"
        ]
        for p in (2, 6)
        for s in (0, 1)
    )
    assert shapes == [2, 2, 6, 6]
    # Each seed is its own run: seeded data order and init, not a replicate of seed 0.
    assert all(
        json.loads((out / "runs" / f"length-{p}-seed{s}" / "config.json").read_text())["seed"] == s
        for p in (2, 6)
        for s in (0, 1)
    )
    assert all(steps == [2, 2] for steps in payload["steps"].values())


def test_init_ablation_and_its_errors(tiny_t5_dir, toy_task, tmp_path):
    out = tmp_path / "abl"
    rc = main(
        [
            "ablate",
            "--axis",
            "init",
            "--seeds",
            "0",
            "--task",
            str(toy_task["spec_path"]),
            *_args(toy_task, tiny_t5_dir, out),
        ]
    )
    assert rc == 0
    payload = json.loads((out / "ablation_init.json").read_text())
    assert list(payload["scores"]) == ["random_uniform", "sampled_vocab", "class_label"]
    assert (out / "ablation_init.png").is_file()
    # class_label init cannot fill a 1-vector prompt with 2 labels: refused before training.
    rc = main(
        [
            "ablate",
            "--axis",
            "length",
            "--values",
            "1",
            "--init",
            "class_label",
            "--task",
            str(toy_task["spec_path"]),
            *_args(toy_task, tiny_t5_dir, tmp_path / "bad"),
        ]
    )
    assert rc == 2 and not (tmp_path / "bad" / "runs").exists()


def test_baselines_compare_every_method_per_task(tiny_causal_dir, toy_task, two_tasks, tmp_path):
    out = tmp_path / "base"
    rc = main(
        [
            "baselines",
            "--tasks",
            *two_tasks,
            "--k-shot",
            "2",
            "--mt-lr",
            "1e-3",
            "--mt-optimizer",
            "adamw",
            *_args(toy_task, tiny_causal_dir, out),
        ]
    )
    assert rc == 0
    results = json.loads((out / "baselines.json").read_text())["results"]
    methods = {
        "prompt tuning",
        "model tuning",
        "multi-task model tuning",
        "zero-shot (template only)",
        "prompt design (2-shot priming)",
    }
    assert set(results) == {"toy", "toy2"} and all(set(r) == methods for r in results.values())
    assert results["toy"]["prompt tuning"]["params"] == 4 * 32
    assert (
        results["toy"]["model tuning"]["params"] > 10_000
        and results["toy"]["zero-shot (template only)"]["params"] == 0
    )
    multi = json.loads((out / "runs" / "model-multitask" / "config.json").read_text())
    assert multi["task_prefix"] is True and len(multi["tasks"]) == 2


def test_domain_shift_trains_on_source_and_scores_the_target(
    tiny_causal_dir, toy_task, two_tasks, tmp_path
):
    out = tmp_path / "shift"
    a, b = two_tasks
    rc = main(
        [
            "domain-shift",
            "--pairs",
            f"{a}:{b}",
            "--mt-optimizer",
            "adamw",
            *_args(toy_task, tiny_causal_dir, out),
        ]
    )
    assert rc == 0
    records = json.loads((out / "domain_shift.json").read_text())["results"]
    assert [(r["source"], r["target"], r["method"]) for r in records] == [
        ("toy", "toy2", "prompt_tuning"),
        ("toy", "toy2", "model_tuning"),
    ]
    # toy2 is toy under another name: a prompt scores the same on both.
    assert records[0]["target_metrics"]["accuracy"] == records[0]["in_domain"]["accuracy"]
    rc = main(["domain-shift", "--pairs", f"{a}-{b}", *_args(toy_task, tiny_causal_dir, out)])
    assert rc == 2


def test_scale_compares_two_models(tiny_causal_dir, tiny_t5_dir, toy_task, tmp_path):
    out = tmp_path / "scale"
    rc = main(
        [
            "scale",
            "--models",
            str(tiny_causal_dir),
            str(tiny_t5_dir),
            "--task",
            str(toy_task["spec_path"]),
            "--mt-optimizer",
            "adamw",
            *[
                x
                for x in _args(toy_task, tiny_causal_dir, out)
                if x != str(tiny_causal_dir) and x != "--model"
            ],
        ]
    )
    assert rc == 0
    records = json.loads((out / "scale.json").read_text())["results"]
    assert len(records) == 2 and records[0]["parameters"] < records[1]["parameters"]
    assert (out / "scale.png").is_file() and "gap" in (out / "scale.md").read_text()


def test_grid_crosses_lengths_and_inits_in_one_table_and_plot(tiny_causal_dir, toy_task, tmp_path):
    out = tmp_path / "grid"
    rc = main(
        [
            "grid",
            "--lengths",
            "1",
            "3",
            "--inits",
            "random_uniform",
            "class_label",
            "--seeds",
            "0",
            "1",
            "--task",
            str(toy_task["spec_path"]),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            *_args(toy_task, tiny_causal_dir, out),
        ]
    )
    assert rc == 0
    payload = json.loads((out / "grid.json").read_text())
    # class_label cannot fill one position with two labels: that cell is left out and listed.
    assert payload["scores"] == {
        "random_uniform": {"1": payload["scores"]["random_uniform"]["1"],
                           "3": payload["scores"]["random_uniform"]["3"]},
        "class_label": {"3": payload["scores"]["class_label"]["3"]},
    }
    assert all(len(v) == 2 for cells in payload["scores"].values() for v in cells.values())
    assert payload["skipped"] == ["class_label at length 1"]
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| class_label | 3 |" in (out / "grid.md").read_text()
    config = json.loads((out / "runs" / "P3-class_label-seed1" / "config.json").read_text())
    assert (config["prompt"], config["seed"], config["device"]) == (
        config["prompt"] | {"length": 3, "init": "class_label"}, 1, "cpu")
    rc = main(["grid", "--inits", "vocab", *_args(toy_task, tiny_causal_dir, tmp_path / "bad")])
    assert rc == 2 and not (tmp_path / "bad" / "runs").exists()


def test_ensembles_on_several_tasks_make_one_table(tiny_causal_dir, toy_task, two_tasks, tmp_path):
    out = tmp_path / "ens"
    rc = main(["ensemble", "--tasks", *two_tasks, "--seeds", "0", "1",
               *_args(toy_task, tiny_causal_dir, out)])
    assert rc == 0
    tasks = json.loads((out / "ensembles.json").read_text())["tasks"]
    assert list(tasks) == ["toy", "toy2"]
    for name, result in tasks.items():
        assert len(result["per_prompt"]) == 2 and result["best"] >= result["average"]
        assert (out / name / "ensemble.md").is_file()  # each task's own table
    assert "ensemble (majority vote of 2)" in (out / "ensembles.md").read_text()


def test_domain_shift_reports_each_class_share(tiny_causal_dir, toy_task, two_tasks, tmp_path):
    """The share of each class among the target's predictions and gold labels: a model answering
    one class to everything shows it, whatever its accuracy."""
    a, b = two_tasks
    out = tmp_path / "shift"
    rc = main(["domain-shift", "--pairs", f"{a}:{b}", "--mt-optimizer", "adamw",
               *_args(toy_task, tiny_causal_dir, out)])
    assert rc == 0
    prompt, model = json.loads((out / "domain_shift.json").read_text())["results"]
    shares = prompt["target_metrics"]["shares"]
    assert set(shares) == {"predicted", "gold"}
    assert shares["gold"] == {"negative": 0.5, "positive": 0.5}  # 12 of the toy test split
    assert sum(shares["predicted"].values()) == pytest.approx(1.0)
    assert prompt["in_domain"]["shares"]["gold"] == shares["gold"]
    # Model tuning keeps no predictions; toy is scored by accuracy alone, so no shares follow.
    assert model["target_metrics"]["shares"] is None and model["steps"] == 2
    assert "predicted share (negative / positive)" in (out / "domain_shift.md").read_text()
