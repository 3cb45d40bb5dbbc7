"""The training configs validate themselves and document every field."""

import json
from dataclasses import fields

import pytest

from softprompt.prompt import PromptConfig
from softprompt.training.config import (
    LMAdaptConfig,
    ModelTuningConfig,
    TrainConfig,
    check_world_split,
)


def _config(toy_task, **kw):
    base = dict(task=str(toy_task["spec_path"]), prompt=PromptConfig(length=4, init="class_label"),
                batch_size=8, micro_batch_size=4, max_steps=6, eval_every=3,
                data_dir=str(toy_task["data_dir"]), lr=0.3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"optimizer": "lion"}, "unknown optimizer"),
        ({"batch_size": 6, "micro_batch_size": 4}, "multiple"),
        ({"checks_per_budget": -1}, "checks_per_budget must be >= 0, got -1"),
    ],
)
def test_config_validation(toy_task, kw, message):
    with pytest.raises(ValueError, match=message):
        _config(toy_task, **kw)


def test_a_time_budget_spreads_its_checks(toy_task):
    """A 10-minute budget checks at least every 30 s of training (1/20 of it)."""
    assert _config(toy_task, max_minutes=10).check_every_seconds() == pytest.approx(30.0)
    assert _config(toy_task, max_minutes=10, checks_per_budget=5).check_every_seconds() == 120.0
    assert _config(toy_task).check_every_seconds() is None  # no budget: every K steps only
    assert _config(toy_task, max_minutes=10, checks_per_budget=0).check_every_seconds() is None


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"compile": "fast"}, "compile must be one of off, default, reduce-overhead, max-autotune"),
        ({"compile": "reduce-overhead", "device": "cpu"}, "compile 'reduce-overhead' captures"),
        ({"compile": "max-autotune", "device": "cpu"}, "compile 'max-autotune' captures"),
    ],
)
def test_compile_validation(toy_task, kw, message):
    with pytest.raises(ValueError, match=message):
        _config(toy_task, **kw)


def test_cuda_graphs_need_the_device_a_run_takes(toy_task, monkeypatch):
    """Without a device set a run takes CUDA where the machine has it: CUDA graphs are refused
    only where it has none, and plain compilation is allowed anywhere."""
    assert _config(toy_task, compile="default", device="cpu").compile == "default"
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ValueError, match="needs a CUDA device, but the run's device is cpu"):
        _config(toy_task, compile="reduce-overhead")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert _config(toy_task, compile="reduce-overhead").compile == "reduce-overhead"


@pytest.mark.parametrize("config_class", [TrainConfig, ModelTuningConfig, LMAdaptConfig])
def test_every_field_has_help_text(config_class):
    """A command line or a form built from the dataclass documents every option."""
    for f in fields(config_class):
        if f.name == "prompt":  # a PromptConfig, which documents its own fields
            continue
        assert f.metadata.get("help"), f"{config_class.__name__}.{f.name} has no help text"


def test_train_config_round_trips_through_a_dict(toy_task):
    config = _config(toy_task, patience=3)
    raw = json.loads(json.dumps(config.to_dict()))
    assert TrainConfig.from_dict(raw) == config
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields: \['colour'\]"):
        TrainConfig.from_dict(raw | {"colour": "blue"})


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"tasks": []}, "at least one task"),
        ({"optimizer": "lion"}, "unknown optimizer"),
        ({"eval_every": 0}, "eval_every must be >= 1"),
        ({"batch_size": 12, "micro_batch_size": 8}, "multiple of micro_batch_size 8"),
        ({"lr": 0.0}, "lr must be > 0"),
    ],
)
def test_model_tuning_config_validation(kw, message):
    with pytest.raises(ValueError, match=message):
        ModelTuningConfig(**kw)


def test_task_prefix_defaults_to_multi_task_only():
    assert ModelTuningConfig(tasks=["a"]).task_prefix is False
    assert ModelTuningConfig(tasks=["a", "b"]).task_prefix is True
    assert ModelTuningConfig(tasks=["a"], task_prefix=True).task_prefix is True


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"log_every": 0}, "log_every must be >= 1"),
        ({"min_tokens": 1}, "min_tokens must be >= 2"),
        ({"optimizer": "lion"}, "unknown optimizer 'lion'"),
        ({"lr": -1.0}, "lr must be > 0"),
    ],
)
def test_lm_adapt_config_validation(kw, message):
    with pytest.raises(ValueError, match=message):
        LMAdaptConfig(model="m", corpus="c.txt", **kw)


def test_a_step_must_split_evenly_over_processes():
    check_world_split(32, 8, 4)
    with pytest.raises(ValueError, match="batch_size 32 must split into micro-batches of 8 on 3"):
        check_world_split(32, 8, 3)
