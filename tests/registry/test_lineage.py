"""Lineage read from a run directory, and the checks it passes before it joins a manifest."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from softprompt.registry import InvalidArtifactError, Manifest, lineage_from_run
from softprompt.registry.lineage import LINEAGE_FIELDS, check_lineage, current_code_version
from softprompt.registry.records import serialize_prompt

FP = "sha256:" + "ab" * 32
SPEC = SimpleNamespace(label_words=["no", "yes"], template="Q: {q}\nA:", metric="accuracy",
                       digest="")
VERBALIZER = {"label_words": ["no", "yes"], "template": "Q: {q}\nA:"}


def blob(p: int = 3, e: int = 8):
    """The stored form of a zero prompt [p, e]."""
    return serialize_prompt("toy", torch.zeros(p, e))


@pytest.fixture()
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    config = {"task": "toy", "model": "m", "device": "cpu", "lr": 0.3,
              "prompt": {"length": 4, "init": "class_label"}}
    result = {"task": "toy", "model": "m", "model_fingerprint": FP, "dev": {"score": 0.8},
              "steps": 10, "stop_reason": "max_steps", "not_a_metric": 1}
    (run / "config.json").write_text(json.dumps(config))
    (run / "result.json").write_text(json.dumps(result))
    return run


def test_lineage_from_run(run_dir):
    got = lineage_from_run(run_dir, dataset_version="d.dir", code_version="c0de", spec=SPEC,
                           data_source={"kind": "local"})
    assert set(got) == set(LINEAGE_FIELDS)
    assert got["base_model_fingerprint"] == FP and got["prompt_length"] == 4
    assert got["init"] == "class_label" and got["objective"] == "target_nll"
    # Where things ran is not a hyperparameter.
    assert got["hyperparameters"] == {"lr": 0.3, "prompt": {"length": 4, "init": "class_label"}}
    assert got["metrics"] == {"dev": {"score": 0.8}, "steps": 10, "stop_reason": "max_steps"}
    assert got["label_words"] == ["no", "yes"] and got["spec_sha256"] is None
    assert (got["dataset_version"], got["code_version"]) == ("d.dir", "c0de")
    assert check_lineage("toy", got, blob(4, 16)).data_source == {"kind": "local"}
    assert lineage_from_run(run_dir, spec=SPEC)["code_version"] == current_code_version()


def test_bad_run_directories_are_named(run_dir, tmp_path):
    with pytest.raises(InvalidArtifactError, match="config.json: not found; is .* a `softprompt"):
        lineage_from_run(tmp_path / "nowhere", spec=SPEC)
    (run_dir / "result.json").write_text('{"task": ')
    with pytest.raises(InvalidArtifactError, match=r"result.json:1: malformed JSON"):
        lineage_from_run(run_dir, spec=SPEC)
    (run_dir / "result.json").write_text('["toy"]')
    with pytest.raises(InvalidArtifactError, match="result.json: expected a JSON object"):
        lineage_from_run(run_dir, spec=SPEC)
    (run_dir / "result.json").write_text('{"task": "toy", "model": "m"}')
    missing = "result.json: missing field 'model_fingerprint'"
    with pytest.raises(InvalidArtifactError, match=missing):
        lineage_from_run(run_dir, spec=SPEC)


def test_check_lineage_fills_what_the_prompt_implies():
    given = {"base_model": "m", "base_model_fingerprint": FP, "init": None, **VERBALIZER}
    out = check_lineage("toy", given, blob(3, 8))
    # None values are dropped, so that the Manifest's defaults apply.
    assert (out.task, out.prompt_length, out.init, out.version) == ("toy", 3, None, 1)
    assert (out.shape, out.dtype, out.blob_sha256) == ([3, 8], "float32", blob(3, 8).sha256)
    assert set(LINEAGE_FIELDS) <= {f for f in Manifest.__dataclass_fields__}


@pytest.mark.parametrize(
    ("lineage", "message"),
    [
        (["m"], "lineage must be a dict, got list"),
        ({"base_model_fingerprint": FP, **VERBALIZER}, "'base_model' is missing"),
        ({"base_model": "m", "base_model_fingerprint": "sha256:AB", **VERBALIZER},
         "is not sha256:<64 hex digits>"),
        ({"base_model": "m", "base_model_fingerprint": FP, **VERBALIZER, "metrics": []},
         "'metrics' has type list"),
        ({"base_model": "m", "base_model_fingerprint": FP, **VERBALIZER, "label_words": "ab"},
         "'label_words' has type str"),
        ({"base_model": "m", "base_model_fingerprint": FP, **VERBALIZER, "template": 3},
         "'template' has type int"),
    ],
)
def test_bad_lineage_is_refused(lineage, message):
    with pytest.raises(InvalidArtifactError, match=f"^task toy: .*{message}"):
        check_lineage("toy", lineage, blob())
