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
    assert m["hyperparameters"]["recipe"] == "stable" and m["init"] == "class_label"
    assert m["metrics"]["recipe"]["name"] == "stable" and m["metrics"]["recipe"]["lr"] > 0
    assert m["metrics"]["test"]["n"] == 32
    assert m["template"] == "Review: {sentence}\nSentiment:" and m["metric"] == "accuracy"
    assert out["alias"]["version"] == 1

    assert cli(capsys, "list", "--registry", reg, "--format", "json")[1]["tasks"] == ["toy"]
    listed = cli(capsys, "list", "--registry", reg, "--task", "toy", "--format", "json")[1]
    assert [v["version"] for v in listed["versions"]] == [1] and listed["aliases"] == {"staging": 1}
    shown = cli(capsys, "show", "--registry", reg, "--task", "toy", "--ref", "staging",
                "--format", "json")[1]
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


def test_push_to_an_alias_refuses_a_prompt_below_the_template_alone(run_dir, tmp_path, capsys):
    """A run whose chosen prompt scores below zero-shot on dev is not pushed to an alias (nothing
    published); without --alias it is kept in the registry."""
    result = json.loads((run_dir / "result.json").read_text())
    assert result["zero_shot"]["dev"]["n"] == result["dev"]["n"]
    result["zero_shot"]["dev"]["score"] = result["dev"]["score"] + 0.01
    (run_dir / "result.json").write_text(json.dumps(result))
    reg = tmp_path / "reg"
    code, _, err = cli(capsys, "push", "--registry", reg, "--run-dir", run_dir, "--alias", "prod")
    assert code == 2 and "is below the template alone's" in err and "'prod'" in err
    assert open_registry(reg).list_tasks() == []
    code, out, _ = cli(capsys, "push", "--registry", reg, "--run-dir", run_dir)
    assert code == 0
    assert out["manifest"]["metrics"]["zero_shot"] == result["zero_shot"]


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
    assert [v["version"] for v in cli(capsys, "list", *r, "--format", "json")[1]["versions"]] == [1]
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


def _text(capsys, *argv) -> tuple[int, str, str]:
    """Runs the command; returns its exit status, stdout and stderr."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _scored_registry(root, versions: int = 2):
    """A registry whose task toy has `versions` scored versions, production moved 1, 2, ..."""
    reg = open_registry(root)
    scored = {**LINEAGE, "metrics": {"dev": {"score": 0.75}, "test": {"score": 0.7}},
              "dataset_version": "0123456789abcdef.dir"}
    for v in range(1, versions + 1):
        reg.publish("toy", torch.randn(2, 4), scored)
        reg.promote("toy", "production", v)
    return reg


def test_list_and_show_print_tables_unless_asked_for_json(tmp_path, capsys):
    """list and show print tables and key/value blocks by default; --format json prints the
    records as before."""
    _scored_registry(tmp_path / "reg")
    r = ("--registry", tmp_path / "reg")
    code, out, _ = _text(capsys, "list", *r)
    assert code == 0 and out.splitlines()[0] == f"registry {tmp_path / 'reg'}"
    assert out.splitlines()[-1].split() == ["toy", "2", "2", "production", "->", "2", "0.7500",
                                            "0.7000"]
    code, out, _ = _text(capsys, "list", *r, "--task", "toy")
    head, *rows = (line.split() for line in out.splitlines()[2:])
    assert code == 0 and head[:3] == ["VERSION", "CREATED_AT", "PROMPT_LENGTH"]
    assert [row[0] for row in rows] == ["1", "2"]
    assert rows[1][-4:] == ["0.7500", "0.7000", "01234567", "production"]
    code, out, _ = _text(capsys, "show", *r, "--task", "toy")
    assert code == 0 and out.startswith(f"task toy, version 2 in registry {tmp_path / 'reg'}")
    values = dict(line.split(None, 1) for line in out.splitlines()
                  if line.startswith("  ") and line.strip() != "-")
    assert values["dev.score"] == "0.75" and values["label_words"] == "negative, positive"
    assert "\nalias production -> version 2 (2 moves)\nSEQ" in out
    assert out.splitlines()[-1].split()[:3] == ["2", "2", "1"]
    code, out, _ = _text(capsys, "show", *r, "--task", "toy", "--ref", "1")
    assert code == 0 and "task toy, version 1" in out and "alias" not in out
    code, out, _ = _text(capsys, "show", *r, "--task", "toy", "--format", "json")
    shown = json.loads(out)
    assert (shown["manifest"]["version"], shown["alias"]["seq"]) == (2, 2)
    assert _text(capsys, "list", "--registry", tmp_path / "empty")[1].endswith(": no tasks\n")


def test_promote_rollback_walks_back_along_the_alias_path(tmp_path, capsys):
    """--rollback moves the alias one step back and says so on stderr; a second goes further
    back; with nothing before it, or the alias not where --expected-version says, it fails with
    one error line. --version and --rollback exclude each other."""
    _scored_registry(tmp_path / "reg", versions=3)
    p = ("promote", "--registry", tmp_path / "reg", "--task", "toy", "--alias", "production")
    code, out, err = _text(capsys, *p, "--rollback")
    assert code == 0 and json.loads(out)["version"] == 2 and json.loads(out)["previous"] == 3
    assert err == "rolled back toy/production: version 3 -> 2 (path now [1, 2])\n"
    err = _one_line_error(capsys, *p, "--rollback", "--expected-version", 3)
    assert "points to version 2, not the expected 3; not rolled back" in err
    code, out, err = _text(capsys, *p, "--rollback", "--expected-version", 2)
    assert code == 0 and json.loads(out)["version"] == 1 and "version 2 -> 1" in err
    assert "has no version to roll back to" in _one_line_error(capsys, *p, "--rollback")
    assert "drop --expect-new" in _one_line_error(capsys, *p, "--rollback", "--expect-new")
    code, out, err = _text(capsys, *p, "--version", 3)
    assert code == 0 and err == "moved toy/production: version 1 -> 3\n"
    for argv in ((*p, "--version", 2, "--rollback"), p):
        with pytest.raises(SystemExit) as exit_:
            main([str(a) for a in argv])
        assert exit_.value.code == 2
    assert "--version" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command", ["list", "show", "promote", "export-peft", "push", "pull", "import-peft", "gc"]
)
def test_help_shows_worked_examples_that_parse(command, capsys):
    """--help ends with the command's examples, line breaks kept, and every example command
    line parses into that command."""
    import shlex

    from softprompt.cli import build_parser
    from softprompt.registry.cli import EXAMPLES

    path = ["registry", command] if command == "gc" else [command]
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and EXAMPLES[command].strip() in out
    examples = [line.strip() for line in EXAMPLES[command].splitlines()
                if line.startswith("  softprompt ")]
    assert examples
    for line in examples:
        argv = shlex.split(line.split("|")[0])[1:]
        args = build_parser().parse_args(argv)
        assert [args.command, getattr(args, "registry_command", None)][: len(path)] == path, line
