"""One source for every setting: flags, config files and pipeline parameters come from the config
dataclasses, and every surface's defaults are the dataclasses' (the drift check)."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from settings_drift import drift, parser_defaults, pipeline_field_defaults

from softprompt import settings
from softprompt.model import DEFAULT_MODEL
from softprompt.prompt import PromptConfig
from softprompt.serve.config import ServeConfig
from softprompt.training.config import LMAdaptConfig, ModelTuningConfig, TrainConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = {
    "ensemble": ["--task", "toy"],
    "ablate": ["--task", "toy", "--axis", "length"],
    "baselines": ["--tasks", "toy"],
    "domain-shift": [],
    "scale": ["--task", "toy"],
}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def _compiled_defaults(path) -> dict:
    spec = next(yaml.safe_load_all(path.read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    return {name: p.get("defaultValue") for name, p in params.items()}


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory) -> dict[str, tuple[type, dict]]:
    """{surface: (config class, {key: the default that surface gives the field})}."""
    from components.compile import compile_pipelines
    from softprompt import experiments_cli
    from softprompt.cli import build_parser, train_config

    parser = build_parser()
    commands = _subparsers(parser)
    found = {
        "softprompt train": (TrainConfig, parser_defaults(commands["train"], TrainConfig)),
        "softprompt lm-adapt": (
            LMAdaptConfig,
            parser_defaults(commands["lm-adapt"], LMAdaptConfig),
        ),
    }
    for command in ("evaluate", "predict"):
        found[f"softprompt {command}"] = (
            TrainConfig,
            parser_defaults(commands[command], TrainConfig),
        )
    # What a command builds when no setting is typed (train's typed flags override --config;
    # the experiments' flags are "not given" unless typed).
    args = parser.parse_args(["train", "--task", "toy", "--run-dir", "run"])
    built = settings.flatten(train_config(args))
    found["softprompt train (built)"] = (
        TrainConfig,
        {k: v for k, v in built.items() if k != "task"},
    )
    for command, extra in EXPERIMENTS.items():
        args = parser.parse_args([command, "--out", "out", *extra])
        offered = {s.key for s in experiments_cli.BASE_SETTINGS} - {"task"}
        built = settings.flatten(experiments_cli._base(args))
        found[f"softprompt {command} (built)"] = (
            TrainConfig,
            {k: v for k, v in built.items() if k in offered},
        )
        found[f"softprompt {command}"] = (
            TrainConfig,
            parser_defaults(commands[command], TrainConfig),
        )
    found["softprompt serve"] = (
        ServeConfig,
        parser_defaults(commands["serve"], ServeConfig),
    )
    compiled = {p.stem: p for p in compile_pipelines(tmp_path_factory.mktemp("compiled"))}
    for name, cls in (("prompt_tuning", TrainConfig), ("lm_adaptation", LMAdaptConfig)):
        params = _compiled_defaults(compiled[name])
        found[f"{name} pipeline"] = (cls, pipeline_field_defaults(cls, params))
    return found


def _drift(surfaces) -> list[str]:
    return [
        line
        for name, (cls, values) in surfaces.items()
        for line in drift(cls, values, name)
    ]


def test_every_surface_defaults_to_the_dataclass(surfaces):
    assert _drift(surfaces) == []
    # Each surface offers what it should (so an empty check cannot pass for a full one).
    train = set(settings.defaults(TrainConfig))
    assert set(surfaces["softprompt train"][1]) == train - {"task"}
    assert set(surfaces["softprompt train (built)"][1]) == train - {"task"}
    shared = {"model", "data_dir", "max_input_tokens", "eval_batch_size"}
    assert shared <= set(surfaces["softprompt evaluate"][1])
    assert shared <= set(surfaces["softprompt predict"][1])
    assert surfaces["softprompt evaluate"][1]["model"] == DEFAULT_MODEL
    assert set(surfaces["softprompt lm-adapt"][1]) == set(settings.defaults(LMAdaptConfig))
    for command in EXPERIMENTS:
        assert len(surfaces[f"softprompt {command} (built)"][1]) == 17
        assert surfaces[f"softprompt {command}"][1] == {}  # every setting defaults to "not given"
    serve = {"model", "max_batch_size", "max_wait_ms", "poll_seconds", "metrics_port"}
    assert serve <= set(surfaces["softprompt serve"][1])
    pipeline = surfaces["prompt_tuning pipeline"][1]
    assert {"model", "prompt.length", "lr", "eval_every", "patience", "max_minutes"} <= set(
        pipeline
    )
    assert pipeline["eval_every"] == 25 and pipeline["patience"] is None
    assert {"steps", "lr", "batch_size", "max_tokens", "seed"} <= set(
        surfaces["lm_adaptation pipeline"][1]
    )


@pytest.mark.parametrize(
    "surface",
    [
        "softprompt train",
        "softprompt train (built)",
        "softprompt ablate (built)",
        "softprompt evaluate",
        "softprompt lm-adapt",
        "softprompt serve",
        "prompt_tuning pipeline",
        "lm_adaptation pipeline",
    ],
)
def test_a_drifted_default_is_reported(surfaces, surface):
    cls, values = surfaces[surface]
    key = sorted(k for k, v in values.items() if isinstance(v, int) and not isinstance(v, bool))[0]
    drifted = dict(values) | {key: values[key] + 1}
    assert drift(cls, drifted, surface) == [
        f"{surface}: {key} defaults to {values[key] + 1!r}, but {cls.__name__}.{key} to "
        f"{values[key]!r}"
    ]


def test_a_changed_dataclass_default_is_reported_where_it_was_copied(surfaces, monkeypatch):
    """A surface that copied a default (the compiled pipeline keeps the value it was compiled
    with) is reported once the dataclass default moves away from it."""
    field = next(f for f in fields(TrainConfig) if f.name == "eval_every")
    monkeypatch.setattr(field, "default", 100)
    expected = "eval_every defaults to 25, but TrainConfig.eval_every to 100"
    assert f"prompt_tuning pipeline: {expected}" in _drift(surfaces)
    assert f"softprompt train: {expected}" in _drift(surfaces)


def test_settings_walk_nested_configs_with_their_flags_and_parameter_names():
    by_key = {s.key: s for s in settings.settings(TrainConfig)}
    length = by_key["prompt.length"]
    assert (length.flag, length.param, length.dest, length.default) == (
        "--prompt-length",
        "prompt_length",
        "prompt_length",
        20,
    )
    assert by_key["prompt.init"].flag == "--init" and "class_label" in by_key["prompt.init"].choices
    assert by_key["batch_size"].flag == "--train-batch-size"
    assert by_key["eval_batch_size"].flag == "--batch-size"
    assert by_key["model"].param == "base_model"
    assert by_key["max_minutes"].optional and by_key["max_minutes"].kind is float
    assert all(s.help for s in by_key.values())
    assert settings.pick(LMAdaptConfig, ["model"])[0].required
    with pytest.raises(TypeError, match="ModelTuningConfig.tasks"):
        settings.settings(ModelTuningConfig)


def test_flags_read_back_what_was_typed():
    chosen = settings.pick(TrainConfig, ["lr", "prompt.length", "max_minutes"])
    parser = argparse.ArgumentParser()
    settings.add_flags(parser, chosen)
    args = parser.parse_args(["--prompt-length", "4"])
    assert (args.lr, args.prompt_length, args.max_minutes) == (None, 4, None)
    assert settings.given(args, chosen) == {"prompt": {"length": 4}}
    assert settings.values(args, chosen) == {
        "lr": None,
        "prompt": {"length": 4},
        "max_minutes": None,
    }
    unset = argparse.ArgumentParser()
    settings.add_flags(unset, chosen, unset=True)
    args = unset.parse_args(["--lr", "0.1"])
    assert vars(args) == {"lr": 0.1} and settings.given(args, chosen) == {"lr": 0.1}


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_config_files_and_sections(tmp_path):
    path = _write(
        tmp_path,
        "params.yaml",
        "tasks: [toy]\ntrain:\n  lr: 0.1\n  prompt:\n    length: 4\n  task: toy\n",
    )
    source = settings.read_config(f"{path}:train")
    assert source.values == {"lr": 0.1, "prompt": {"length": 4}, "task": "toy"}
    assert source.lines == {"lr": 3, "prompt": 4, "prompt.length": 5, "task": 6}
    config = settings.load_config(TrainConfig, source, {"prompt": {"init": "sampled_vocab"}})
    assert (config.lr, config.prompt.length, config.prompt.init) == (0.1, 4, "sampled_vocab")
    assert config.eval_every == TrainConfig().eval_every
    # JSON is YAML too, lines included.
    json_path = _write(tmp_path, "run.json", json.dumps({"max_steps": 7}, indent=1))
    assert settings.load_config(TrainConfig, settings.read_config(json_path)).max_steps == 7
    with pytest.raises(ValueError, match="params.yaml: no section 'evaluate'"):
        settings.read_config(f"{path}:evaluate")
    with pytest.raises(FileNotFoundError, match="config file not found: .*nothere.yaml"):
        settings.read_config(tmp_path / "nothere.yaml")
    with pytest.raises(ValueError, match="tasks: a config must be a mapping"):
        settings.read_config(f"{path}:tasks")


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "lr: 0.1\nmax_stepz: 3\n",
            r"run.yaml:2: unknown TrainConfig field 'max_stepz'; "
            r"did you mean 'max_steps'\?",
        ),
        ("prompt:\n  lenght: 4\n", r"run.yaml:2: unknown TrainConfig field 'prompt.lenght'"),
        ("lr: fast\n", r"run.yaml:1: lr must be float or null, got 'fast' \(str\)"),
        ("max_steps: true\n", r"run.yaml:1: max_steps must be int, got True \(bool\)"),
        ("max_steps: 2.5\n", r"run.yaml:1: max_steps must be int, got 2.5 \(float\)"),
        ("patience: [1]\n", r"run.yaml:1: patience must be int or null"),
        ("prompt: 4\n", r"run.yaml:1: prompt must be a mapping of its fields"),
        ("batch_size: 6\nmicro_batch_size: 4\n", r"run.yaml: batch_size 6 must be a multiple"),
    ],
)
def test_config_file_mistakes_name_the_file_line_and_field(tmp_path, text, message):
    source = settings.read_config(_write(tmp_path, "run.yaml", text))
    with pytest.raises(ValueError, match=message):
        settings.load_config(TrainConfig, source)


def test_numbers_read_as_the_field_wants():
    # YAML 1.1 reads 1e-5 as a string; an int is a float too.
    config = settings.load_config(TrainConfig, None, {"weight_decay": "1e-5", "lr": 1})
    assert (config.weight_decay, config.lr) == (1e-5, 1.0) and isinstance(config.lr, float)
    with pytest.raises(ValueError, match="command line: LMAdaptConfig.__init__"):
        settings.load_config(LMAdaptConfig, None, {"corpus": "toy"})


def test_pipeline_parameters_encode_none_as_zero():
    train = settings.pipeline_defaults(TrainConfig)
    assert (train.max_minutes, train.patience, train.data_dir) == (0.0, 0, "")
    assert (train.base_model, train.prompt_length, train.eval_every) == (DEFAULT_MODEL, 20, 25)
    assert not hasattr(settings.pipeline_defaults(LMAdaptConfig), "base_model")  # required
    params = {
        "task": "toy",
        "base_model": "tiny",
        "prompt_length": 4,
        "max_minutes": 0.0,
        "patience": 3,
        "eval_max_examples": 0,
        "run_key": "not a field",
    }
    config = settings.config_from_pipeline(TrainConfig, params, seed=2)
    assert (config.model, config.prompt.length, config.seed) == ("tiny", 4, 2)
    assert (config.max_minutes, config.patience, config.eval_max_examples) == (None, 3, None)
    fixed = settings.config_from_pipeline(TrainConfig, params, prompt=PromptConfig(length=6))
    assert fixed.prompt == PromptConfig(length=6)
    adapt = settings.config_from_pipeline(
        LMAdaptConfig, {"base_model": "t5", "corpus": "toy", "data_dir": "", "steps": 3}
    )
    assert (adapt.model, adapt.data_dir, adapt.steps) == ("t5", None, 3)


@pytest.mark.parametrize(
    "path",
    sorted((REPO_ROOT / "results" / "experiments" / "configs").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_the_shipped_experiment_configs_load(path):
    config = settings.load_config(TrainConfig, settings.read_config(path))
    assert config.task == "sst2" and config.prompt.init == "class_label"


def test_params_yaml_train_section_is_a_train_config():
    """dvc.yaml's train stage reads it with `--config params.yaml:train`."""
    source = settings.read_config(f"{REPO_ROOT / 'params.yaml'}:train")
    config = settings.load_config(TrainConfig, source, {"task": "sst2"})
    assert (
        config.max_steps
        == yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["train"]["max_steps"]
    )


def test_config_file_errors_name_the_file(tmp_path):
    """A TrainConfig file's unknown key fails naming the file and the key; a nested prompt
    mapping merges field by field with the overrides."""
    from softprompt.settings import load_config, read_config
    from softprompt.training.config import TrainConfig

    path = tmp_path / "cfg.yaml"
    path.write_text("task: sst2\nmax_stepz: 3\n")
    with pytest.raises(ValueError, match=r"cfg.yaml.*max_stepz"):
        load_config(TrainConfig, read_config(path))
    path.write_text("task: sst2\nprompt: {length: 3}\nmax_steps: 7\n")
    config = load_config(TrainConfig, read_config(path), {"prompt": {"init": "sampled_vocab"}})
    assert (config.max_steps, config.prompt.length, config.prompt.init) == (7, 3, "sampled_vocab")
