"""The `softprompt` command line: train's flags and --config file, the model flags evaluate and
predict share, and lm-adapt's flags, all generated from the config dataclasses."""

import json
import re

import pytest
import yaml

from softprompt import settings
from softprompt.cli import build_parser, main, train_config
from softprompt.experiments_cli import LM_ADAPT_SETTINGS
from softprompt.model import DEFAULT_MODEL
from softprompt.prompt import PromptConfig
from softprompt.training.config import LMAdaptConfig, TrainConfig

# Every flag `softprompt train` had before it was generated, with a value and the field it sets.
TRAIN_FLAGS = {
    "--task": ("t.yaml", "task"),
    "--model": ("m", "model"),
    "--data-dir": ("d", "data_dir"),
    "--max-input-tokens": ("64", "max_input_tokens"),
    "--batch-size": ("4", "eval_batch_size"),
    "--prompt-length": ("5", "prompt.length"),
    "--init": ("text", "prompt.init"),
    "--uniform-range": ("0.2", "prompt.uniform_range"),
    "--vocab-top-k": ("10", "prompt.vocab_top_k"),
    "--init-text": ("hello", "prompt.init_text"),
    "--init-file": ("p.safetensors", "prompt.init_file"),
    "--recipe": ("paper", "recipe"),
    "--optimizer": ("adamw", "optimizer"),
    "--lr": ("0.1", "lr"),
    "--weight-decay": ("0.01", "weight_decay"),
    "--beta2-decay": ("0.7", "beta2_decay"),
    "--train-batch-size": ("16", "batch_size"),
    "--micro-batch-size": ("8", "micro_batch_size"),
    "--max-steps": ("5", "max_steps"),
    "--max-minutes": ("1.5", "max_minutes"),
    "--eval-every": ("5", "eval_every"),
    "--checks-per-budget": ("4", "checks_per_budget"),
    "--patience": ("2", "patience"),
    "--eval-max-examples": ("10", "eval_max_examples"),
    "--check-examples": ("5", "check_examples"),
    "--final-candidates": ("2", "final_candidates"),
    "--test-max-examples": ("30", "test_max_examples"),
    "--length-buckets": ("on", "length_buckets"),
    "--seed": ("1", "seed"),
    "--target-prefix": ("<extra_id_0> ", "target_prefix"),
    "--prepared-dir": ("p", "prepared_dir"),
    "--device": ("cpu", "device"),
    "--dtype": ("bfloat16", "dtype"),
    "--compile": ("default", "compile"),
}


def _parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_train_keeps_every_flag_and_its_field():
    argv = [arg for flag, (value, _) in TRAIN_FLAGS.items() for arg in (flag, value)]
    config = settings.flatten(train_config(_parse("train", "--run-dir", "r", *argv)))
    for flag, (value, key) in TRAIN_FLAGS.items():
        assert str(config[key]) == value, flag
    # ... and one flag for every field: nothing of TrainConfig is out of reach.
    assert {key for _, key in TRAIN_FLAGS.values()} == set(config)


def test_train_without_flags_is_the_dataclass_default():
    assert train_config(_parse("train", "--task", "toy", "--run-dir", "r")) == TrainConfig(
        task="toy"
    )


def _write(tmp_path, name, raw) -> str:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return str(path)


def test_train_config_file_then_typed_flags(tmp_path):
    path = _write(
        tmp_path,
        "run.yaml",
        {
            "task": "toy",
            "lr": 0.1,
            "max_steps": 7,
            "prompt": {"length": 4, "init": "sampled_vocab"},
        },
    )
    args = _parse(
        "train", "--config", path, "--run-dir", "r", "--max-steps", "3", "--init", "random_uniform"
    )
    config = train_config(args)
    assert (config.task, config.lr, config.max_steps) == ("toy", 0.1, 3)
    assert config.prompt == PromptConfig(length=4, init="random_uniform")
    # A flag typed with its default value still overrides the file.
    args = _parse("train", "--config", path, "--run-dir", "r", "--lr", "0.3")
    assert train_config(args).lr == 0.3
    # One section of a larger file: params.yaml:train, as the DVC stage reads it.
    params = _write(
        tmp_path, "params.yaml", {"matrix": {"lengths": [2]}, "train": {"max_steps": 9}}
    )
    config = train_config(
        _parse("train", "--config", f"{params}:train", "--task", "toy", "--run-dir", "r")
    )
    assert config.max_steps == 9 and config.task == "toy"


@pytest.mark.parametrize(
    "text, flags, message",
    [
        (
            "task: toy\nmax_stepz: 3\n",
            [],
            r"run\.yaml:2: unknown TrainConfig field 'max_stepz'; did you mean 'max_steps'\?",
        ),
        ("task: toy\nlr: fast\n", [], r"run\.yaml:2: lr must be float or null, got 'fast' \(str\)"),
        ("lr: 0.1\n", [], "train needs a task: --task, or `task:` in the --config file"),
        ("task: toy\n", ["--prompt-length", "0"], "run.yaml: prompt length must be >= 1, got 0"),
    ],
)
def test_train_config_mistakes_are_named(tmp_path, capsys, text, flags, message):
    path = _write(tmp_path, "run.yaml", text)
    assert main(["train", "--config", path, "--run-dir", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err), err
    assert not (tmp_path / "run").exists()


def _toy_run(toy_task, model_dir, **changes) -> dict:
    """A small TrainConfig mapping on the toy task and the tiny model, as a config file holds."""
    return {
        "task": str(toy_task["spec_path"]),
        "data_dir": str(toy_task["data_dir"]),
        "model": str(model_dir),
        "prompt": {"length": 4},
        "batch_size": 8,
        "micro_batch_size": 8,
        "max_steps": 4,
    } | changes


def test_train_with_a_config_file_writes_the_effective_config(
    tiny_causal_dir, toy_task, tmp_path, capsys
):
    config = _toy_run(toy_task, tiny_causal_dir, eval_every=2, eval_max_examples=16)
    path = _write(tmp_path, "run.yaml", config)
    run_dir = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--config",
                path,
                "--run-dir",
                str(run_dir),
                "--max-steps",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    written = json.loads((run_dir / "config.json").read_text())
    assert written["max_steps"] == 2 and written["prompt"]["length"] == 4
    assert written["batch_size"] == 8 and written["eval_every"] == 2
    assert TrainConfig.from_dict(written) == train_config(
        _parse("train", "--config", path, "--run-dir", "r", "--max-steps", "2")
    )


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_evaluate_and_predict_share_the_model_flags(command):
    args = _parse(command, "--task", "toy")
    assert (args.model, args.data_dir, args.max_input_tokens, args.batch_size) == (
        DEFAULT_MODEL,
        None,
        256,
        32,
    )
    args = _parse(
        command,
        "--task",
        "toy",
        "--model",
        "m",
        "--max-input-tokens",
        "64",
        "--batch-size",
        "4",
        "--data-dir",
        "d",
    )
    assert (args.model, args.data_dir, args.max_input_tokens, args.batch_size) == ("m", "d", 64, 4)


def test_lm_adapt_flags_build_its_config():
    args = _parse(
        "lm-adapt",
        "--model",
        "t5",
        "--corpus",
        "c.txt",
        "--out",
        "o",
        "--steps",
        "3",
        "--lr",
        "0.01",
        "--batch-size",
        "2",
        "--max-tokens",
        "32",
        "--seed",
        "1",
        "--optimizer",
        "adamw",
        "--data-dir",
        "d",
    )
    config = settings.load_config(LMAdaptConfig, None, settings.values(args, LM_ADAPT_SETTINGS))
    assert config == LMAdaptConfig(
        model="t5",
        corpus="c.txt",
        steps=3,
        lr=0.01,
        batch_size=2,
        max_tokens=32,
        seed=1,
        optimizer="adamw",
        data_dir="d",
    )
    with pytest.raises(SystemExit):
        _parse("lm-adapt", "--corpus", "c.txt", "--out", "o")  # --model is required


def test_a_diverged_training_run_exits_with_an_error(tiny_causal_dir, toy_task, tmp_path, capsys):
    """The command line reports divergence as an error (exit 2), not as a finished run."""
    # The paper's recipe: the stable one's norm cap would pull the prompt back.
    config = _toy_run(toy_task, tiny_causal_dir, eval_every=1, optimizer="sgd", lr=1e30,
                      recipe="paper")
    path = _write(tmp_path, "run.yaml", config)
    argv = ["train", "--config", path, "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2
    assert "training diverged at step" in capsys.readouterr().err
    assert not (tmp_path / "run" / "result.json").exists()


def test_train_seeds_trains_a_group_into_one_folder_per_seed(tiny_causal_dir, toy_task, tmp_path,
                                                            capsys):
    """`train --seeds 0 1`: both prompts in one batch, each member's run in RUN_DIR/seed<S>."""
    path = _write(tmp_path, "run.yaml", _toy_run(toy_task, tiny_causal_dir, eval_every=2,
                                                  eval_max_examples=16, test_max_examples=8))
    argv = ["train", "--config", path, "--run-dir", str(tmp_path / "runs"), "--seeds", "0", "1",
            "--no-progress"]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["group"]["index"] for r in results] == [0, 1]
    for seed in (0, 1):
        run_dir = tmp_path / "runs" / f"seed{seed}"
        assert json.loads((run_dir / "config.json").read_text())["seed"] == seed
        assert (run_dir / "prompt.safetensors").is_file()
        assert json.loads((run_dir / "result.json").read_text())["group"]["members"] == 2
    assert (tmp_path / "runs" / "seed0" / "group" / "checkpoint.pt").is_file()


@pytest.mark.parametrize("flags, message", [
    (["--seeds", "0", "1", "--seed", "1"], "either --seed"),
    (["--seeds", "0", "0"], "must not repeat"),
])
def test_train_seeds_mistakes_are_named(tmp_path, capsys, flags, message):
    argv = ["train", "--task", "toy", "--run-dir", str(tmp_path / "r"), *flags]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_train_help_says_when_seeds_pay_off(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "launch-bound GPU" in help_text and "N prompts cost about one run" in help_text


def _toy_case(toy_task, spec: bytes | dict | None, train: list[bytes] | None) -> dict:
    """The toy task with its spec file and/or train file replaced."""
    from conftest import TOY_SPEC

    if isinstance(spec, dict):
        spec = yaml.safe_dump(TOY_SPEC | spec).encode()
    if spec is not None:
        toy_task["spec_path"].write_bytes(spec)
    path = toy_task["data_dir"] / "toy" / "train.jsonl"
    if train == []:
        path.unlink()
        path.mkdir()
    elif train is not None:
        path.write_bytes(b"\n".join(train) + b"\n")
    return toy_task


ROW = b'{"sentence": "a fine film", "label": 1}'
DEEP = b'{"sentence": ' + b"[" * 100_000 + b"]" * 100_000 + b', "label": 1}'
# (spec replacement, train file replacement ([] = a folder), the message the error names)
BAD_INPUTS = {
    "shared word": ({"labels": {"0": "yes", "1": "yes"}}, None, r"toy\.yaml: field 'labels': "),
    "bool word": ({"labels": {"0": True, "1": False}}, None, r"toy\.yaml: field 'labels': .*quo"),
    "template": ({"template": "Review: {sentence"}, None, r"toy\.yaml: field 'template' does"),
    "spec bytes": (b"name: toy\nformat: \xffjsonl\n", None, r"toy\.yaml:2: not valid UTF-8"),
    "spec yaml": (b"name: toy\nformat: [jsonl\n", None, r"toy\.yaml:\d+: invalid YAML: "),
    "spec deep": (b"name: " + b"[" * 20_000 + b"]" * 20_000, None,
                  r"toy\.yaml: invalid YAML: nested too deep"),
    "data bytes": (None, [ROW, ROW, b"\xff" + ROW], r"train\.jsonl:3: not valid UTF-8"),
    "data deep": (None, [ROW, DEEP], r"train\.jsonl:2: malformed JSON: nested too deeply"),
    "data digits": (None, [b'{"label": ' + b"1" * 5000 + b"}"], r"train\.jsonl:1: malformed"),
    "data line": (None, [b'{"sentence": "' + b"x" * 1_000_001 + b'"}'], r"train\.jsonl:1: line"),
    "data object": (None, [b'{"sentence": {"a": 1}, "label": 1}'], r"train\.jsonl:1: field 'sen"),
    "data folder": (None, [], r"train\.jsonl: cannot read: Is a directory"),
}


def _one_error_line(capsys, message: str) -> None:
    """The command printed one error line naming `message`, and no traceback."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err[:2000]
    assert re.search(message, err) and "Traceback" not in err, err[:2000]
    assert len(err) < 1000


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_prepare_reports_bad_specs_and_data_in_one_line(toy_task, tmp_path, capsys, case):
    spec, train, message = BAD_INPUTS[case]
    task = _toy_case(toy_task, spec, train)
    out = tmp_path / "prepared"
    argv = ["prepare", "--task", str(task["spec_path"]), "--data-dir", str(task["data_dir"])]
    assert main([*argv, "--out", str(out)]) == 2
    _one_error_line(capsys, message)
    assert not out.exists()


@pytest.mark.parametrize("case", ["shared word", "spec bytes", "data deep", "data object"])
def test_train_reports_bad_specs_and_data_before_the_model_loads(toy_task, tmp_path, capsys, case):
    """A spec whose labels share a word once trained a one-class task reporting accuracy 1.0."""
    spec, train, message = BAD_INPUTS[case]
    task = _toy_case(toy_task, spec, train)
    argv = ["train", "--task", str(task["spec_path"]), "--data-dir", str(task["data_dir"]),
            "--model", str(tmp_path / "no-model"), "--run-dir", str(tmp_path / "run"),
            "--no-progress"]
    assert main(argv) == 2
    _one_error_line(capsys, message)
    assert not (tmp_path / "run" / "result.json").exists()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"input": "x", "target": "yes"}\n' + DEEP, r"dev\.jsonl:2: malformed JSON: nested"),
        (b'{"input": "caf\xe9", "target": "yes"}', r"dev\.jsonl:1: not valid UTF-8"),
        (b'{"input": 5, "target": "yes"}', r"dev\.jsonl:1: field 'input' must be text"),
    ],
)
def test_evaluate_reports_bad_prepared_files_in_one_line(toy_task, tmp_path, capsys, line,
                                                         message):
    (tmp_path / "meta.json").write_text("{}")
    (tmp_path / "dev.jsonl").write_bytes(line + b"\n")
    argv = ["evaluate", "--task", str(toy_task["spec_path"]), "--prepared-dir", str(tmp_path),
            "--split", "dev", "--model", str(tmp_path / "no-model")]
    assert main(argv) == 2
    _one_error_line(capsys, message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (DEEP.decode(), "input 1: malformed JSON: nested too deeply"),
        ('{"sentence": {"a": 1}}', "input 1: field 'sentence' is an object"),
        ('{"sentence": null}', "input 1: field 'sentence' is null"),
    ],
)
def test_predict_reports_bad_inputs_in_one_line(toy_task, tmp_path, capsys, text, message):
    argv = ["predict", "--task", str(toy_task["spec_path"]), "--text", text,
            "--model", str(tmp_path / "no-model")]
    assert main(argv) == 2
    _one_error_line(capsys, message)
