"""Model tuning: a trainable copy of the model, task prefixes, and dev selection through the
shared loop."""

import json

import yaml

from softprompt.task_data import load_task, seeded_subset
from softprompt.tasks import Example, load_spec
from softprompt.training.config import ModelTuningConfig
from softprompt.training.model_tuning import model_tune, prefix_task, trainable_copy


def test_trainable_copy_unfreezes_a_copy_only(tiny_causal):
    tuned = trainable_copy(tiny_causal)
    assert all(p.requires_grad for p in tuned.model.parameters())
    assert not any(p.requires_grad for p in tiny_causal.model.parameters())
    assert tuned.name == f"{tiny_causal.name}+model-tuned"
    first = next(tuned.model.parameters())
    assert first.data_ptr() != next(tiny_causal.model.parameters()).data_ptr()


def test_prefix_task_names_the_task(toy_task):
    spec = load_spec(toy_task["spec_path"])
    (prefixed,) = prefix_task([Example(input="Review: fine", target="positive")], spec)
    assert prefixed.input == "toy: Review: fine" and prefixed.target == "positive"


def test_each_task_scores_its_own_seeded_dev_subset(tiny_causal, toy_task, tmp_path, monkeypatch):
    """Multi-task selection: the mean over tasks of each task's fixed seeded dev subset."""
    import softprompt.training.model_tuning as model_tuning

    spec = yaml.safe_load(toy_task["spec_path"].read_text())
    toy2 = toy_task["tasks_dir"] / "toy2.yaml"
    toy2.write_text(yaml.safe_dump(spec | {"name": "toy2"}))
    scored = []
    real = model_tuning.evaluate

    def recording(lm, prompt, task_spec, examples, encoded, batch_size):
        scored.append((task_spec.name, [e.input for e in examples]))
        return real(lm, prompt, task_spec, examples, encoded, batch_size=batch_size)

    monkeypatch.setattr(model_tuning, "evaluate", recording)
    config = ModelTuningConfig(tasks=[str(toy_task["spec_path"]), str(toy2)], batch_size=8,
                               micro_batch_size=4, max_steps=2, eval_every=1, optimizer="adamw",
                               lr=1e-2, eval_max_examples=12, data_dir=str(toy_task["data_dir"]))
    result = model_tune(config, tmp_path / "mt", lm=tiny_causal)

    dev = load_task(load_spec(toy_task["spec_path"]), toy_task["data_dir"])["dev"]
    subset = [e.input for e in seeded_subset(dev, 12, config.seed)]
    # Three evaluations on dev (the initial weights, steps 1 and 2), then each task's test split
    # once.
    for name in ("toy", "toy2"):
        dev_scored = [inputs for task, inputs in scored if task == name and len(inputs) == 12]
        assert dev_scored == [[f"{name}: {x}" for x in subset]] * 3
    records = [json.loads(x) for x in (tmp_path / "mt" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    assert [set(r["per_task"]) for r in evals] == [{"toy", "toy2"}] * 3
    for r in evals:
        assert r["score"] == sum(r["per_task"].values()) / 2
    best = max(evals, key=lambda r: r["score"])
    assert result["best_step"] == best["step"] and result["dev_score"] == best["score"]
    assert result["method"] == "multi_task_model_tuning" and records[-1]["event"] == "done"


def test_model_tuning_trains_a_copy_and_leaves_the_frozen_model(tiny_causal, toy_task, tmp_path):
    before = {k: v.clone() for k, v in tiny_causal.model.state_dict().items()}
    config = ModelTuningConfig(
        tasks=[str(toy_task["spec_path"])], data_dir=str(toy_task["data_dir"]), batch_size=8,
        micro_batch_size=4, max_steps=4, eval_every=2, optimizer="adamw", lr=1e-2,
    )
    result = model_tune(config, tmp_path / "mt", lm=tiny_causal)
    assert result["trainable_parameters"] == sum(p.numel() for p in tiny_causal.model.parameters())
    for k, v in tiny_causal.model.state_dict().items():
        assert v.equal(before[k]), f"model tuning changed the frozen model's {k}"
    assert all(not p.requires_grad for p in tiny_causal.model.parameters())
    log = (tmp_path / "mt" / "metrics.jsonl").read_text().splitlines()
    losses = [r["loss"] for r in map(json.loads, log) if r["event"] == "step"]
    assert len(losses) == 4 and result["tasks"]["toy"]["split"] == "test"
