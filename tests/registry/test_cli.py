"""`softprompt push|pull|list|show|promote` on a real (tiny) training run, local and S3."""

from __future__ import annotations

import json
import uuid

import pytest

from softprompt.cli import main
from softprompt.prompt import PromptConfig, load_prompt
from softprompt.tasks import load_spec
from softprompt.training.config import TrainConfig
from softprompt.training.prompt_tuning import train


@pytest.fixture()
def run_dir(tiny_causal, tiny_causal_dir, toy_task, tmp_path):
    config = TrainConfig(task=str(toy_task["spec_path"]), model=str(tiny_causal_dir),
                         prompt=PromptConfig(length=4), batch_size=8, micro_batch_size=8,
                         max_steps=2, eval_every=2, data_dir=str(toy_task["data_dir"]))
    spec = load_spec(toy_task["spec_path"])
    train(config, tmp_path / "run", lm=tiny_causal, spec=spec, progress=False)
    return tmp_path / "run"


def cli(capsys, *argv) -> tuple[int, dict | None, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def test_cli_round_trip_local(run_dir, tiny_causal, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SOFTPROMPT_REGISTRY", raising=False)
    monkeypatch.chdir(tmp_path)
    # The default registry is ./registry.
    assert cli(capsys, "push", "--run-dir", run_dir, "--task", "default")[0] == 0
    assert (tmp_path / "registry" / "prompts" / "default" / "1" / "manifest.json").is_file()

    reg = tmp_path / "reg"
    code, out, _ = cli(capsys, "push", "--registry", reg, "--run-dir", run_dir,
                       "--alias", "staging", "--dataset-version", "0123abcd.dir")
    assert code == 0
    m = out["manifest"]
    assert (m["task"], m["version"], m["shape"], m["dtype"]) == (
        "toy", 1, [4, tiny_causal.dim], "float32")
    assert m["base_model_fingerprint"] == tiny_causal.fingerprint
    assert m["label_words"] == ["negative", "positive"]
    assert m["dataset_version"] == "0123abcd.dir" and m["code_version"]
    assert m["objective"] == "target_nll"
    assert m["hyperparameters"]["lr"] == 0.3 and m["init"] == "class_label"
    assert m["metrics"]["test"]["n"] == 32
    assert m["template"] == "Review: {sentence}\nSentiment:" and m["metric"] == "accuracy"
    assert out["alias"]["version"] == 1

    assert cli(capsys, "list", "--registry", reg)[1]["tasks"] == ["toy"]
    listed = cli(capsys, "list", "--registry", reg, "--task", "toy")[1]
    assert [v["version"] for v in listed["versions"]] == [1] and listed["aliases"] == {"staging": 1}
    shown = cli(capsys, "show", "--registry", reg, "--task", "toy", "--ref", "staging")[1]
    assert shown["manifest"] == m and shown["alias"]["seq"] == 1

    promote = ("promote", "--registry", reg, "--task", "toy", "--alias", "production",
               "--version", 1, "--expect-new")
    assert cli(capsys, *promote)[0] == 0
    code, _, err = cli(capsys, *promote)
    assert code == 2 and "alias toy/production points to version 1, not the expected None" in err

    out_file = tmp_path / "pulled.safetensors"
    code, pulled, _ = cli(capsys, "pull", "--registry", reg, "--task", "toy", "--out", out_file,
                          "--fingerprint", tiny_causal.fingerprint)
    assert code == 0 and pulled["manifest"]["version"] == 1
    # Usable as `--prompt`.
    assert load_prompt(out_file).equal(load_prompt(run_dir / "prompt.safetensors"))

    code, _, err = cli(capsys, "pull", "--registry", reg, "--task", "toy",
                       "--fingerprint", "sha256:" + "0" * 64)
    assert code == 2 and "refusing to load it onto a model with fingerprint sha256:000" in err
    code, _, err = cli(capsys, "pull", "--registry", reg, "--task", "../toy")
    assert code == 2 and "invalid task name '../toy'" in err
    code, _, err = cli(capsys, "push", "--registry", reg, "--run-dir", tmp_path / "nowhere")
    assert code == 2 and "config.json: not found" in err


@pytest.mark.s3
def test_cli_s3_registry_from_environment(run_dir, s3_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(
        "SOFTPROMPT_REGISTRY", f"s3://{s3_env.create_bucket()}/{uuid.uuid4().hex[:8]}"
    )
    monkeypatch.setenv("SOFTPROMPT_REGISTRY_CACHE", str(tmp_path / "cache"))
    code, out, _ = cli(capsys, "push", "--run-dir", run_dir, "--task", "toy-s3")
    assert code == 0 and out["manifest"]["version"] == 1
    promote = ("promote", "--task", "toy-s3", "--alias", "production", "--version", 1)
    assert cli(capsys, *promote)[0] == 0
    out_file = tmp_path / "p.safetensors"
    code, pulled, _ = cli(capsys, "pull", "--task", "toy-s3", "--out", out_file)
    assert code == 0 and pulled["manifest"] == out["manifest"]
    assert load_prompt(out_file).equal(load_prompt(run_dir / "prompt.safetensors"))
