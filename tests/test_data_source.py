"""Spec and data sources by version (softprompt.data_source), against a real git + DVC
catalogue whose remote is the real SeaweedFS S3 server."""

from __future__ import annotations

import json

import pytest
import yaml
from dvc_catalogue import DvcCatalogue

from softprompt.data_source import (
    DataFetchError,
    DataRef,
    check_inside_folder,
    materialize,
    prepare,
    read_spec,
    read_spec_text,
)
from softprompt.data_version import dataset_version
from softprompt.prepared import load_prepared
from softprompt.tasks import TaskDataError, parse_spec


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, s3_server):
    cat = DvcCatalogue(tmp_path_factory.mktemp("dvc") / "catalogue", s3_server)
    cat.first = cat.add_task("alpha")
    return cat


@pytest.fixture()
def aws(s3_env, monkeypatch, tmp_path):
    """The S3 server's AWS variables in os.environ, as a pod's environment would hold them
    (dvc-s3 reads AWS_CONFIG_FILE itself and rejects /dev/null: an empty file instead)."""
    empty = tmp_path / "aws-config"
    empty.touch()
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    return s3_env


def test_remote_fetch_by_hash_needs_no_git(catalogue, aws, tmp_path):
    version = catalogue.version("alpha")
    ref = DataRef(task="alpha", version=version, remote=catalogue.remote)
    root, got = materialize(ref, tmp_path)
    assert got == version == dataset_version(catalogue.root / "data" / "alpha")
    assert sorted(p.name for p in (root / "alpha").iterdir()) == ["dev.jsonl", "test.jsonl",
                                                                   "train.jsonl"]
    for name in ("train", "dev", "test"):
        assert (root / "alpha" / f"{name}.jsonl").read_bytes() == \
            (catalogue.root / "data" / "alpha" / f"{name}.jsonl").read_bytes()


def test_repo_fetch_at_a_revision(catalogue, aws, tmp_path):
    ref = DataRef(task="alpha", repo=str(catalogue.root), rev=catalogue.first)
    root, got = materialize(ref, tmp_path)
    assert got == catalogue.version("alpha")
    assert (root / "alpha" / "train.jsonl").is_file()


def test_a_wrong_rev_names_task_rev_and_path(catalogue, aws, tmp_path):
    ref = DataRef(task="alpha", repo=str(catalogue.root), rev="no-such-branch")
    with pytest.raises(DataFetchError) as err:
        materialize(ref, tmp_path)
    message = str(err.value)
    assert "task alpha" in message and "no-such-branch" in message and "data/alpha" in message


def test_a_missing_path_at_the_rev_is_an_error(catalogue, aws, tmp_path):
    ref = DataRef(task="beta", repo=str(catalogue.root), rev=catalogue.first)
    with pytest.raises(DataFetchError, match=r"task beta, rev .*path data/beta.*: no such path"):
        materialize(ref, tmp_path)


def test_a_missing_remote_object_is_an_error(catalogue, aws, tmp_path):
    never_pushed = "0" * 32 + ".dir"
    ref = DataRef(task="alpha", version=never_pushed, remote=catalogue.remote, rev="abc123")
    with pytest.raises(DataFetchError) as err:
        materialize(ref, tmp_path)
    message = str(err.value)
    assert "task alpha" in message and "rev abc123" in message and "data/alpha" in message
    assert "cannot download" in message


def test_tampered_bytes_are_refused(tmp_path, s3_server, aws):
    cat = DvcCatalogue(tmp_path / "catalogue", s3_server)
    cat.add_task("gamma")
    client = s3_server.client()
    key = cat.file_objects("gamma")[0]
    body = client.get_object(Bucket=cat.bucket, Key=key)["Body"].read()
    client.put_object(Bucket=cat.bucket, Key=key, Body=body + b'{"sentence": "x", "label": 0}\n')
    ref = DataRef(task="gamma", version=cat.version("gamma"), remote=cat.remote)
    with pytest.raises(DataFetchError, match="refusing to train on it"):
        materialize(ref, tmp_path / "scratch")


def test_local_folder_is_checked_against_the_promise(tmp_path):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "train.jsonl").write_text('{"sentence": "good", "label": 1}\n')
    version = dataset_version(tmp_path / "toy")
    root, got = materialize(DataRef(task="toy", data_dir=str(tmp_path), version=version), tmp_path)
    assert (root, got) == (tmp_path, version)
    (tmp_path / "toy" / "train.jsonl").write_text('{"sentence": "bad", "label": 0}\n')
    with pytest.raises(DataFetchError, match=f"but {version} was promised"):
        materialize(DataRef(task="toy", data_dir=str(tmp_path), version=version), tmp_path)
    with pytest.raises(DataFetchError, match="data folder .* not found"):
        materialize(DataRef(task="nope", data_dir=str(tmp_path)), tmp_path)


def test_bad_references_are_refused_before_any_fetch():
    with pytest.raises(DataFetchError, match="not a DVC directory hash"):
        DataRef(task="t", version="v3")
    with pytest.raises(DataFetchError, match="needs the data version"):
        DataRef(task="t", remote="s3://b/dvc")
    with pytest.raises(DataFetchError, match="not both"):
        DataRef(task="t", remote="s3://b/dvc", repo="https://git", version="0" * 32 + ".dir")


def test_spec_sources(tmp_path, monkeypatch):
    from conftest import TOY_SPEC

    inline = yaml.safe_dump(TOY_SPEC)
    assert read_spec("toy", inline).template == TOY_SPEC["template"]
    path = tmp_path / "toy.yaml"
    path.write_text(inline)
    assert read_spec_text("toy", str(path)) == (inline, str(path))
    assert read_spec("toy", f"file://{path}").name == "toy"
    monkeypatch.setenv("SOFTPROMPT_TASKS_DIR", str(tmp_path))
    assert read_spec("toy").spec_file == str(path)
    with pytest.raises(TaskDataError,
                       match="field 'name' is 'toy', but the task is 'other'"):
        read_spec("other", inline)
    with pytest.raises(TaskDataError, match="cannot read the task spec at"):
        read_spec("toy", str(tmp_path / "missing.yaml"))
    with pytest.raises(TaskDataError, match="invalid YAML"):
        read_spec("toy", "name: [unclosed\nformat: jsonl")


def test_split_files_must_lie_in_the_task_folder():
    from conftest import TOY_SPEC

    spec = parse_spec(TOY_SPEC | {"splits": {"train": "other/train.jsonl"}}, "toy.yaml")
    with pytest.raises(TaskDataError, match=r"'splits.train' is 'other/train.jsonl', outside"):
        check_inside_folder(spec, "toy")
    check_inside_folder(parse_spec(TOY_SPEC, "toy.yaml"), "toy")


def test_prepare_writes_splits_and_reports_the_version(catalogue, aws, tmp_path):
    spec = read_spec("alpha", (catalogue.root / "tasks" / "alpha.yaml").read_text())
    ref = DataRef(task="alpha", version=catalogue.version("alpha"), remote=catalogue.remote,
                  rev=catalogue.first, path="data/alpha")
    info = prepare(spec, ref, tmp_path / "train_dev", tmp_path / "test",
                   caps={"train": 10, "dev": 0, "test": 0}, seed=3)
    assert info["dataset_version"] == catalogue.version("alpha")
    assert info["source"] == {"task": "alpha", "version": catalogue.version("alpha"),
                              "remote": catalogue.remote, "rev": catalogue.first,
                              "path": "data/alpha", "kind": "dvc-remote"}
    assert info["counts"] == {"train": 10, "dev": 8, "test": 8}
    prepared = load_prepared(tmp_path / "train_dev")
    assert set(prepared) == {"train", "dev"} and len(prepared["train"]) == 10
    assert set(load_prepared(tmp_path / "test")) == {"test"}
    assert json.loads((tmp_path / "train_dev" / "meta.json").read_text())["task"] == "alpha"
