"""The task catalogue and retraining change detection (softprompt.catalogue): local folders, and
a git + DVC catalogue read at a revision from DVC's own records (SeaweedFS as its remote)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from dvc_catalogue import DvcCatalogue

from softprompt.catalogue import (
    CatalogueError,
    TaskPlan,
    plan_retraining,
    read_catalogue,
    read_catalogue_at,
    verify_registered,
)
from softprompt.registry import open_registry

FINGERPRINT = "sha256:" + "0" * 64


def add_task(tasks_dir: Path, data_dir: Path, name: str, splits=("train", "dev", "test"),
             **spec_overrides) -> Path:
    """A toy sentiment task `name`: its spec in `tasks_dir`, its data in `data_dir/name/`."""
    from conftest import TOY_SPEC, _toy_rows

    (data_dir / name).mkdir(parents=True, exist_ok=True)
    for split, (n, seed) in {"train": (24, 1), "dev": (8, 2), "test": (8, 3)}.items():
        if split in splits:
            rows = _toy_rows(n, seed + sum(map(ord, name)))
            text = "".join(json.dumps(r) + "\n" for r in rows)
            (data_dir / name / f"{split}.jsonl").write_text(text)
    spec = TOY_SPEC | {"name": name, "splits": {s: f"{name}/{s}.jsonl" for s in splits}}
    path = tasks_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec | spec_overrides))
    return path


def append_row(data_dir: Path, name: str, row: dict) -> None:
    with (data_dir / name / "train.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")


def publish_like_the_pipeline(registry, spec, version: str, base_model: str):
    """What the pipeline's register step publishes for `spec` (a TaskSpec), with a random
    prompt."""
    lineage = {"base_model": base_model, "base_model_fingerprint": FINGERPRINT,
               "init": "class_label", "objective": "target_nll", "dataset_version": version,
               "code_version": "test", "metrics": {"dev": {"score": 0.5}},
               "label_words": spec.label_words, "template": spec.template, "metric": spec.metric,
               "spec_sha256": spec.digest}
    return registry.publish(spec.name, torch.randn(4, 8), lineage)


def test_plan_retrains_new_and_changed_tasks_only(catalogue):
    cat, reg = catalogue, open_registry(catalogue["registry"])
    for name in ("alpha", "beta"):
        add_task(cat["tasks_dir"], cat["data_dir"], name)

    def plan(base_model="m", **kwargs):
        entries = read_catalogue(cat["tasks_dir"], data_dir=cat["data_dir"])
        return {p.task: p for p in plan_retraining(entries, reg, base_model, **kwargs)}

    first = plan()
    assert {t: (p.retrain, p.reason, p.latest_version) for t, p in first.items()} == {
        "alpha": (True, "new task", None), "beta": (True, "new task", None)}
    entries = {e.name: e for e in read_catalogue(cat["tasks_dir"], data_dir=cat["data_dir"])}
    for p in first.values():
        publish_like_the_pipeline(reg, entries[p.task].spec, p.dataset_version, "m")
    assert {t: (p.retrain, p.reason, p.latest_version) for t, p in plan().items()} == {
        "alpha": (False, "unchanged", 1), "beta": (False, "unchanged", 1)}
    # Reformatting a spec (same content) and editing its description change nothing.
    beta = cat["tasks_dir"] / "beta.yaml"
    raw = yaml.safe_load(beta.read_text())
    beta.write_text(yaml.safe_dump(raw | {"description": "now documented"},
                                   default_flow_style=True))
    assert plan()["beta"].retrain is False

    append_row(cat["data_dir"], "alpha", {"sentence": "a great film", "label": 1, "idx": 99})
    plans = plan()
    assert plans["alpha"].retrain
    assert plans["alpha"].reason.startswith(f"data changed ({first['alpha'].dataset_version} -> ")
    assert plans["beta"].retrain is False

    # A field that shapes training, other than template / labels / metric, is a change too.
    beta.write_text(yaml.safe_dump(raw | {"splits": {"train": "beta/train.jsonl",
                                                     "test": "beta/test.jsonl"},
                                          "carve_dev": {"from": "train", "fraction": 0.2}}))
    assert plan()["beta"].reason == "spec changed (other fields)"
    beta.write_text(yaml.safe_dump(raw | {"template": "Text: {sentence}\nMood:",
                                          "labels": {"0": "bad", "1": "good"}}))
    assert plan()["beta"].reason == "spec changed (template, label words)"
    assert plan(base_model="adapted")["beta"].reason == \
        "spec changed (template, label words); base model changed (m -> adapted)"
    forced = plan(force=["alpha"])["alpha"]
    assert forced.retrain and forced.reason.startswith("requested; data changed")


def test_plans_hand_the_pipeline_the_spec_text_and_the_data_reference(catalogue):
    cat = catalogue
    spec_path = add_task(cat["tasks_dir"], cat["data_dir"], "alpha")
    entries = read_catalogue(cat["tasks_dir"], data_dir=cat["data_dir"])
    (p,) = plan_retraining(entries, open_registry(cat["registry"]), "m")
    assert TaskPlan.from_dict(json.loads(json.dumps(p.to_dict()))) == p  # travels as JSON
    assert p.run_params() == {"task": "alpha", "task_spec": spec_path.read_text(),
                              "data_version": p.dataset_version,
                              "data_dir": str(cat["data_dir"])}


def test_unusable_specs_and_data_fail_only_their_own_task(catalogue):
    cat, reg = catalogue, open_registry(catalogue["registry"])
    add_task(cat["tasks_dir"], cat["data_dir"], "good")
    add_task(cat["tasks_dir"], cat["data_dir"], "renamed")
    (cat["tasks_dir"] / "renamed.yaml").rename(cat["tasks_dir"] / "other.yaml")
    (cat["tasks_dir"] / "broken.yaml").write_text("name: broken\nformat: [unclosed\n")
    add_task(cat["tasks_dir"], cat["data_dir"], "nodata")
    (cat["data_dir"] / "nodata" / "train.jsonl").unlink()
    (cat["data_dir"] / "nodata" / "dev.jsonl").unlink()
    (cat["data_dir"] / "nodata" / "test.jsonl").unlink()
    (cat["data_dir"] / "nodata").rmdir()

    (cat["tasks_dir"] / "latin1.yaml").write_bytes(b"name: latin1\ndescription: caf\xe9\n")
    bomb = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\nname: bomb\n"
    (cat["tasks_dir"] / "bomb.yaml").write_text(bomb)

    entries = read_catalogue(cat["tasks_dir"], data_dir=cat["data_dir"])
    plans = {p.task: p for p in plan_retraining(entries, reg, "m")}
    assert plans["good"].retrain and plans["good"].error is None
    assert "latin1.yaml:2: not valid UTF-8 (byte 0xe9 at column 17)" in plans["latin1"].error
    assert "bomb.yaml:2: YAML aliases (*a) are not allowed" in plans["bomb"].error
    assert "invalid task spec" in plans["broken"].error and "broken.yaml" in plans["broken"].error
    assert "other.yaml: field 'name' is 'renamed', but the task is 'other'" in plans["other"].error
    assert plans["nodata"].error.startswith("data: task nodata")
    assert "nodata not found" in plans["nodata"].error
    assert all(p.retrain for p in plans.values())  # errors are launched, to fail visibly

    with pytest.raises(CatalogueError, match=r"task\(s\) \['nope'\] not in the catalogue .* "
                                             r"\(available: .*good"):
        read_catalogue(cat["tasks_dir"], only=["nope"])
    with pytest.raises(CatalogueError, match="not a directory"):
        read_catalogue(cat["tasks_dir"] / "missing")
    assert [e.name for e in read_catalogue(cat["tasks_dir"], only=["good"])] == ["good"]


def test_verify_registered_checks_the_new_version(catalogue):
    cat, reg = catalogue, open_registry(catalogue["registry"])
    add_task(cat["tasks_dir"], cat["data_dir"], "alpha")
    (entry,) = read_catalogue(cat["tasks_dir"], data_dir=cat["data_dir"])
    plan = TaskPlan("alpha", entry.spec_path, True, "new task", dataset_version="v1.dir")
    with pytest.raises(RuntimeError, match="task alpha: .*registered no new version"):
        verify_registered(reg, plan)
    publish_like_the_pipeline(reg, entry.spec, "other.dir", "m")
    with pytest.raises(RuntimeError, match="v1 records dataset_version other.dir, expected v1.dir"):
        verify_registered(reg, plan)
    other = TaskPlan.from_dict(plan.to_dict() | {"dataset_version": "other.dir"})
    assert verify_registered(reg, other).version == 1
    with pytest.raises(RuntimeError, match="registered no new version"):
        verify_registered(reg, TaskPlan.from_dict(other.to_dict() | {"latest_version": 1}))


# ---------------------------------------------------------------------------- git + DVC
def test_dvc_catalogue_is_planned_from_dvcs_records_without_its_data(tmp_path, s3_server):
    cat = DvcCatalogue(tmp_path / "catalogue", s3_server)
    first = cat.add_task("alpha")
    # A task whose data folder was never `dvc add`ed: only that task fails.
    cat.write_task("orphan")
    (cat.root / "data" / "orphan").rename(tmp_path / "not-tracked")
    cat.git("add", "tasks/orphan.yaml")
    cat.git("commit", "-q", "-m", "orphan spec")
    reg = open_registry(tmp_path / "registry")

    # The plan reads no data: the remote may be empty and the workspace gone.
    s3_server.client().delete_objects(Bucket=cat.bucket, Delete={"Objects": [
        {"Key": k} for k in [cat.object_key(cat.version("alpha")), *cat.file_objects("alpha")]]})
    entries, sha = read_catalogue_at(f"file://{cat.root}", "main")
    assert sha == cat.head() != first
    plans = {p.task: p for p in plan_retraining(entries, reg, "m")}
    assert plans["orphan"].error.startswith("data: task orphan: data/orphan@")
    assert plans["orphan"].error.endswith("no such path in the repository "
                                          "(add the data with `dvc add data/orphan`)")
    alpha = plans["alpha"]
    assert (alpha.retrain, alpha.reason, alpha.dataset_version) == (True, "new task",
                                                                    cat.version("alpha"))
    assert alpha.spec_path == f"tasks/alpha.yaml@{sha[:12]}"
    assert alpha.run_params() == {
        "task": "alpha", "task_spec": (cat.root / "tasks" / "alpha.yaml").read_text(),
        "data_version": cat.version("alpha"), "data_remote": cat.remote, "data_rev": sha,
        "data_path": "data/alpha"}

    # At the first commit the catalogue had alpha only; a bad revision is the catalogue's error.
    entries, sha = read_catalogue_at(str(cat.root), first)
    assert [e.name for e in entries] == ["alpha"] and sha == first
    with pytest.raises(CatalogueError, match="cannot open DVC repo .* at rev nope"):
        read_catalogue_at(str(cat.root), "nope")
    with pytest.raises(CatalogueError, match=r"\['beta'\] not in the catalogue"):
        read_catalogue_at(str(cat.root), "main", only=["beta"])
    entries, _ = read_catalogue_at(str(cat.root), "main", remote="s3://elsewhere/dvc")
    assert {e.data.remote for e in entries if e.data} == {"s3://elsewhere/dvc"}
