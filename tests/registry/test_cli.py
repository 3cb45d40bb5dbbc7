"""`softprompt push|pull|list|show|promote` on a real (tiny) training run, local and S3."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
import torch

from softprompt.cli import main
from softprompt.prompt import PromptConfig, load_prompt
from softprompt.registry import open_registry
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


def test_push_refuses_a_prompt_whose_norm_exploded(run_dir, tmp_path, capsys):
    """A run whose result flags an exploded prompt norm is not pushed: one error line, nothing
    published."""
    result = json.loads((run_dir / "result.json").read_text())
    assert result["prompt_norm"]["exploded"] is False
    result["prompt_norm"].update(exploded=True, ratio=2.5e7)
    (run_dir / "result.json").write_text(json.dumps(result))
    reg = tmp_path / "reg"
    code, _, err = cli(capsys, "push", "--registry", reg, "--run-dir", run_dir, "--alias", "prod")
    assert code == 2
    assert "result.json: the prompt's largest row norm is 2.5e+07 times the vocabulary's" in err
    assert "Traceback" not in err
    assert open_registry(reg).list_tasks() == []


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


LINEAGE = {"base_model": "m", "base_model_fingerprint": "sha256:" + "ab" * 32,
           "template": "Review: {sentence}\nSentiment:", "label_words": ["negative", "positive"]}


def _one_line_error(capsys, *argv) -> str:
    """Runs the command, which must fail with one `error:` line on stderr and no traceback."""
    code, _, err = cli(capsys, *argv)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_cli_errors_are_one_line(tmp_path, capsys):
    """Bad refs (Unicode digits, leading zeros), a folder in place of a manifest, alias or blob,
    and a hand-edited manifest give exit status 2 and one line naming what is wrong."""
    reg = open_registry(tmp_path / "reg")
    m = reg.publish("toy", torch.randn(2, 4), LINEAGE)
    reg.publish("toy", torch.randn(2, 4), LINEAGE)
    r = ("--registry", tmp_path / "reg", "--task", "toy")
    for ref in ("\u00b2", "\u00b9", "\u0661", "\uff11", "01"):
        for command in ("pull", "show"):
            assert "invalid" in _one_line_error(capsys, command, *r, "--ref", ref)
    root = tmp_path / "reg"
    (root / "prompts/toy/2/manifest.json").unlink()
    (root / "prompts/toy/2/manifest.json").mkdir()
    err = _one_line_error(capsys, "pull", *r, "--ref", "2")
    assert "cannot read prompts/toy/2/manifest.json" in err
    # As on S3, a folder holding no file is not listed; one holding a file is.
    assert [v["version"] for v in cli(capsys, "list", *r)[1]["versions"]] == [1]
    (root / "prompts/toy/2/manifest.json/x").write_text("")
    assert "prompts/toy/2/manifest.json" in _one_line_error(capsys, "list", *r)
    (root / "prompts/toy/aliases/production.json").mkdir(parents=True)
    assert "aliases/production.json" in _one_line_error(capsys, "pull", *r)
    blob = root / "blobs/sha256" / m.blob_sha256
    blob.unlink()
    blob.mkdir()
    assert f"cannot read blobs/sha256/{m.blob_sha256}" in _one_line_error(capsys, "pull", *r,
                                                                          "--ref", "1")
    manifest = root / "prompts/toy/1/manifest.json"
    manifest.write_text(manifest.read_text().replace("sha256:" + "ab" * 32, "garbage"))
    err = _one_line_error(capsys, "show", *r, "--ref", "1")
    assert "prompts/toy/1/manifest.json: manifest field 'base_model_fingerprint'" in err


def test_cli_gc(tmp_path, capsys):
    """`softprompt registry gc --dry-run` lists, a run removes, and both print the summary."""
    reg = open_registry(tmp_path / "reg")
    reg.publish("toy", torch.randn(2, 4), LINEAGE)
    orphan = b"orphan"
    reg.store.write(f"blobs/sha256/{hashlib.sha256(orphan).hexdigest()}", orphan)
    gc = ("registry", "gc", "--registry", tmp_path / "reg")
    code, out, _ = cli(capsys, *gc, "--min-age-seconds", 0, "--dry-run")
    assert code == 0 and out["dry_run"] and out["blobs_removed"] == 1
    assert out["bytes_removed"] == len(orphan) and out["blobs_referenced"] == 1
    assert len(reg.store.objects("blobs")) == 2
    code, out, _ = cli(capsys, *gc)  # the default grace period of an hour keeps it
    assert code == 0 and out["blobs_removed"] == 0 and out["kept_younger_than_grace"] == 1
    code, out, _ = cli(capsys, *gc, "--min-age-seconds", 0)
    assert code == 0 and out["blobs_removed"] == 1 and len(reg.store.objects("blobs")) == 1
    assert "must be >= 0" in _one_line_error(capsys, *gc, "--min-age-seconds", -1)


def test_import_peft_takes_the_verbalizer_from_a_spec_or_the_newest_version(tmp_path, toy_task):
    """A PEFT adapter carries no template or label words. --spec names them, else the task's
    newest version lends them, else the import is refused before anything is stored."""
    from softprompt.registry import InvalidArtifactError
    from softprompt.registry.cli import _verbalizer

    reg = open_registry(tmp_path / "reg")
    with pytest.raises(InvalidArtifactError, match="task toy has no version .*pass --spec"):
        _verbalizer(reg, "toy", None)
    spec = load_spec(toy_task["spec_path"])
    from_spec = _verbalizer(reg, "toy", str(toy_task["spec_path"]))
    assert from_spec["label_words"] == spec.label_words and from_spec["template"] == spec.template
    reg.publish("toy", torch.randn(2, 4), {**LINEAGE, "label_words": ["no", "yes"]})
    assert _verbalizer(reg, "toy", None)["label_words"] == ["no", "yes"]
    with pytest.raises(InvalidArtifactError, match="--spec nowhere.yaml"):
        _verbalizer(reg, "toy", "nowhere.yaml")
