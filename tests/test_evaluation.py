"""The ensemble and evaluation stages as plain functions (softprompt.evaluation), without KFP."""

from __future__ import annotations

import json

import pytest
import torch

from softprompt.ensemble import ensemble_evaluate
from softprompt.evaluation import (
    confusion_matrix,
    ensemble_on_dev,
    ensemble_on_test,
    member_curve,
)
from softprompt.scoring import encode_examples, evaluate
from softprompt.task_data import load_task
from softprompt.tasks import load_spec
from softprompt.training.config import TrainConfig
from softprompt.training.prompt_tuning import train


@pytest.fixture(scope="module")
def two_runs(tiny_causal_dir, tmp_path_factory):
    """Two short training runs of the toy task (class-label and sampled-vocab inits)."""
    from conftest import write_toy_task  # the toy task, built once for the module

    root = tmp_path_factory.mktemp("eval")
    spec_path = write_toy_task(root, sizes=(48, 16, 16))["spec_path"]
    runs = []
    for seed, init in ((0, "class_label"), (1, "sampled_vocab")):
        config = TrainConfig(task=str(spec_path), model=str(tiny_causal_dir), batch_size=8,
                             micro_batch_size=8, max_steps=2, eval_every=2, seed=seed,
                             max_input_tokens=64, data_dir=str(root / "data"))
        config.prompt.length, config.prompt.init = 4, init
        train(config, root / f"run{seed}", progress=False)
        runs.append((str(root / f"run{seed}"), f"{init}-seed{seed}"))
    spec = load_spec(spec_path)
    return {"spec": spec, "runs": runs, "data": load_task(spec, root / "data"), "root": root}


def test_dev_then_test_scores_match_one_ensemble_pass(two_runs, tiny_causal, tmp_path):
    spec, data = two_runs["spec"], two_runs["data"]
    summary = ensemble_on_dev(spec, tiny_causal, two_runs["runs"], data["dev"], str(tmp_path),
                              max_input_tokens=64, batch_size=8)
    assert json.loads((tmp_path / "ensemble.json").read_text()) == summary
    assert [m["init"] for m in summary["members"]] == ["class_label", "sampled_vocab"]
    assert not list(tmp_path.glob("members/*/checkpoint.pt*"))  # checkpoints left behind
    dev_scores = [m["dev"]["score"] for m in summary["members"]]
    assert summary["best_member"] == dev_scores.index(max(dev_scores))

    result = ensemble_on_test(spec, tiny_causal, str(tmp_path), data["test"], 64, 8, nearest_k=2,
                              base_model="tiny")
    # The same numbers as ensemble_evaluate on the members' prompts directly.
    from softprompt.prompt import load_prompt

    prompts = [load_prompt(tmp_path / m["dir"] / "prompt.safetensors") for m in summary["members"]]
    direct = ensemble_evaluate(tiny_causal, prompts, spec, data["test"],
                               encode_examples(tiny_causal, data["test"], 64), batch_size=8)
    assert result.values["test_ensemble"] == direct["ensemble"]["score"]
    assert [result.values[f"test_prompt_{i}"] for i in range(2)] == [
        p["score"] for p in direct["per_prompt"]]
    best = summary["best_member"]
    assert result.summary["selected"]["member"] == best
    assert result.values["test_selected"] == direct["per_prompt"][best]["score"]
    assert sum(map(sum, result.confusion)) == len(data["test"])
    assert result.labels == spec.label_words
    assert "ensemble (majority vote)" in result.html and f"{best} (registered)" in result.html
    assert "2 nearest tokens by cosine" in result.html
    # Each member's learning curve, drawn from the metrics.jsonl copied into the ensemble.
    assert "<h2>Learning curves</h2>" in result.html and result.html.count("<svg ") == 2
    assert "prompt 1 (sampled_vocab, seed 1)" in result.html and "no data" not in result.html


def test_the_template_alone_is_scored_on_the_same_examples(two_runs, tiny_causal, tmp_path):
    """Dev and test both score the frozen LM with no prompt ([0, E]), as softprompt.scoring
    evaluates it, and the report shows it beside the prompts."""
    spec, data = two_runs["spec"], two_runs["data"]
    summary = ensemble_on_dev(spec, tiny_causal, two_runs["runs"], data["dev"], str(tmp_path),
                              max_input_tokens=64, batch_size=8)
    empty = torch.zeros(0, tiny_causal.dim)

    def alone(split: str) -> dict:
        encoded = encode_examples(tiny_causal, data[split], 64)
        return evaluate(tiny_causal, empty, spec, data[split], encoded, batch_size=8)

    assert summary["zero_shot"] == {"dev": alone("dev")}
    written = json.loads((tmp_path / "ensemble.json").read_text())
    assert written["zero_shot"] == {"dev": alone("dev")}
    result = ensemble_on_test(spec, tiny_causal, str(tmp_path), data["test"], 64, 8, nearest_k=2,
                              base_model="tiny")
    assert result.summary["zero_shot"] == {"dev": alone("dev"), "test": alone("test")}
    assert result.values["dev_zero_shot"] == alone("dev")["score"]
    assert result.values["test_zero_shot"] == alone("test")["score"]
    assert "template alone (zero-shot)" in result.html


def test_a_summary_without_zero_shot_still_evaluates(two_runs, tiny_causal, tmp_path):
    """An ensemble.json written before the template alone was scored gives no zero-shot values
    and no zero-shot row."""
    spec, data = two_runs["spec"], two_runs["data"]
    summary = ensemble_on_dev(spec, tiny_causal, two_runs["runs"], data["dev"], str(tmp_path),
                              max_input_tokens=64, batch_size=8)
    del summary["zero_shot"]
    (tmp_path / "ensemble.json").write_text(json.dumps(summary))
    result = ensemble_on_test(spec, tiny_causal, str(tmp_path), data["test"], 64, 8, nearest_k=2,
                              base_model="tiny")
    assert "zero_shot" not in result.summary
    assert not any("zero_shot" in key for key in result.values)
    assert "zero-shot" not in result.html and "test_ensemble" in result.values


def test_member_curve_reads_the_log_or_gives_nothing(two_runs, tmp_path):
    run_dir = two_runs["runs"][0][0]
    records = member_curve(run_dir)
    assert {"step", "eval"} <= {r["event"] for r in records}
    assert member_curve(str(tmp_path)) == []


def test_confusion_matrix_rows_are_gold_columns_predicted():
    labels = ["negative", "positive"]
    gold = ["negative", "negative", "positive", "positive", "positive"]
    predicted = ["negative", "positive", "positive", "positive", "negative"]
    assert confusion_matrix(labels, gold, predicted) == [[1, 1], [1, 2]]
