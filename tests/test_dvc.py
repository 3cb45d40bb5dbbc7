"""The DVC pipeline (dvc.yaml, params.yaml) on a tiny configuration, in a throwaway git+dvc repo.

One module-scoped repo runs `dvc repro` once (ingest, prepare, train, evaluate of the toy task with
the tiny causal model, offline); the tests then check what DVC does next: nothing on a second run,
only the dependents after a parameter or code change, the data version in the lock file and in a
registry manifest, a checkout of that version, and a push / wiped cache / pull through a real S3
server. Without dvc: each stage's code deps cover the softprompt modules its command imports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TOY_SPEC
from toy_mirror import snapshot, write_toy

from scripts.dvc_code_deps import (
    command_files,
    loaded_by_every_command,
    rewrite,
    stage_commands,
    stages,
)
from softprompt.data_version import commits_with_version, dataset_version
from softprompt.prepared import load_prepared
from softprompt.tasks import load_spec

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SOFTPROMPT_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        **extra,
    )
    return env


def run(cwd: Path, *cmd: str, env: dict | None = None) -> str:
    """Runs a command (dvc / git from the test environment); returns stdout+stderr, fails loudly."""
    exe = str(BIN / "dvc") if cmd[0] == "dvc" else cmd[0]
    proc = subprocess.run(
        [exe, *cmd[1:]], cwd=cwd, env=env or _env(), capture_output=True, text=True
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}"
    return output


def git(cwd: Path, *args: str) -> str:
    return run(cwd, "git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args)


def ran(output: str) -> set[str]:
    """Stages `dvc repro` ran, from its "Running stage 'name':" lines."""
    return {
        line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")
    }


def lock_md5(repo: Path, stage: str, path: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == path)


TRAIN = "train@toy-random_uniform-2"
EVAL = "evaluate@toy-random_uniform-2"
ALL = {"ingest@toy", "prepare@toy", TRAIN, EVAL}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_causal_dir) -> dict:
    """A git+dvc repo running the real dvc.yaml on the toy task after one `dvc repro`.
    The mirror sits beside the repo (../mirror), as ../shared/data does beside a checkout."""
    base = tmp_path_factory.mktemp("dvc")
    write_toy(base / "mirror")
    repo = base / "repo"
    (repo / "tasks").mkdir(parents=True)
    (repo / "tasks" / "toy.yaml").write_text(yaml.safe_dump(TOY_SPEC))
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "init", "-q")
    shutil.copy(
        REPO_ROOT / ".dvc" / "config", repo / ".dvc" / "config"
    )  # the shipped remote config
    shutil.copy(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    # The stages depend on the softprompt code they run, so the repo carries a copy of it.
    shutil.copytree(
        REPO_ROOT / "softprompt", repo / "softprompt", ignore=shutil.ignore_patterns("__pycache__")
    )
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["tasks"] = ["toy"]
    params["data"].update(source="mirror", mirror="../mirror", tasks_dir="tasks")
    params["matrix"].update(inits=["random_uniform"], lengths=[2])
    params["train"].update(
        model=str(tiny_causal_dir),
        batch_size=8,
        micro_batch_size=8,
        max_steps=4,
        eval_every=2,
        eval_max_examples=8,
        max_input_tokens=32,
    )
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    first = run(repo, "dvc", "repro")
    return {"repo": repo, "mirror": base / "mirror", "first": first}


def test_repro_runs_every_stage_then_nothing(pipeline, tiny_causal_dir):
    repo = pipeline["repo"]
    assert ran(pipeline["first"]) == ALL
    assert load_prepared(repo / "data/prepared/toy")["train"][0].target in ("negative", "positive")
    raw_info = json.loads((repo / "data/raw/toy/source.json").read_text())
    assert raw_info["source"] == "mirror" and set(raw_info["files"]) == {
        "toy/train.jsonl",
        "toy/dev.jsonl",
        "toy/test.jsonl",
        "toy.yaml",
    }
    metrics = json.loads((repo / "eval/toy-random_uniform-p2/metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n"] == 8 and 0 <= metrics["accuracy"] <= 1
    assert (repo / "eval/toy-random_uniform-p2/dev.csv").read_text().splitlines()[
        0
    ] == "step,score,accuracy"
    # The run's config: params.yaml's train section, then the matrix values and paths as flags.
    config = json.loads((repo / "runs/toy-random_uniform-p2/config.json").read_text())
    assert (config["model"], config["max_steps"], config["batch_size"]) == (
        str(tiny_causal_dir),
        4,
        8,
    )
    assert config["eval_max_examples"] == 8 and config["max_input_tokens"] == 32
    assert config["prompt"]["init"] == "random_uniform" and config["prompt"]["length"] == 2
    assert config["prepared_dir"] == "data/prepared/toy"

    second = run(repo, "dvc", "repro")
    assert ran(second) == set()
    assert "Data and pipelines are up to date" in second
    shown = json.loads(run(repo, "dvc", "metrics", "show", "--json"))
    assert "accuracy" in json.dumps(shown)


def test_param_change_reruns_only_its_dependents(pipeline):
    repo = pipeline["repo"]
    params_path = repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["evaluate"]["split"] = "dev"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(repo, "dvc", "repro")
    assert ran(out) == {EVAL}, out
    assert (
        json.loads((repo / "eval/toy-random_uniform-p2/metrics.json").read_text())["split"] == "dev"
    )
    reproduced = params_path.read_text()  # the state dvc.lock now pins
    # Any train setting, one the stage's command spelled before (lr) or not (patience): the train
    # stage is stale (evaluate follows once train's output changes); ingest and prepare are not.
    for key, value in (("lr", 0.1), ("patience", 3)):
        changed = yaml.safe_load(reproduced)
        changed["train"][key] = value
        try:
            params_path.write_text(yaml.safe_dump(changed, sort_keys=False))
            status = json.loads(run(repo, "dvc", "status", "--json"))
            assert set(status) == {TRAIN}, (key, status)
            assert {"changed deps": {"params.yaml": {"train": "modified"}}} in status[TRAIN]
        finally:
            params_path.write_text(reproduced)


def test_code_change_reruns_only_the_stages_that_run_it(pipeline):
    repo = pipeline["repo"]
    for module, stale in [("softprompt/distributed.py", {TRAIN}), ("softprompt/tasks.py", ALL)]:
        path = repo / module
        original = path.read_text()
        try:
            path.write_text(original + "\n# changed\n")
            status = json.loads(run(repo, "dvc", "status", "--json"))
            assert set(status) == stale, (module, status)
            assert all({"changed deps": {module: "modified"}} in status[stage] for stage in stale)
        finally:
            path.write_text(original)
    assert "Data and pipelines are up to date" in run(repo, "dvc", "status")


def test_dataset_version_is_dvcs_own_hash(pipeline):
    repo = pipeline["repo"]
    assert dataset_version(repo / "data/prepared/toy") == lock_md5(
        repo, "prepare@toy", "data/prepared/toy"
    )
    # nested folders (raw/toy/toy/*.jsonl) hash the same way
    assert dataset_version(repo / "data/raw/toy") == lock_md5(repo, "ingest@toy", "data/raw/toy")


def test_manifest_names_the_data_version_and_checkout_reproduces_it(pipeline, tmp_path):
    registry = pytest.importorskip("softprompt.registry")
    import torch

    from softprompt.prompt import load_prompt

    repo = pipeline["repo"]
    prepared = repo / "data/prepared/toy"
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "toy data v1")
    v1_commit = git(repo, "rev-parse", "HEAD").strip()
    v1 = dataset_version(prepared)
    saved = snapshot(prepared)

    run_dir = repo / "runs/toy-random_uniform-p2"
    reg = registry.open_registry(tmp_path / "registry")
    # config.json names the spec as the stage did, relative to the repo root
    lineage = registry.lineage_from_run(
        run_dir, dataset_version=v1, spec=load_spec(repo / "data/raw/toy/toy.yaml")
    )
    manifest = reg.publish("toy", load_prompt(run_dir / "prompt.safetensors"), lineage)
    assert (
        reg.manifest("toy", manifest.version).dataset_version
        == v1
        == lock_md5(repo, "prepare@toy", "data/prepared/toy")
    )

    write_toy(pipeline["mirror"], n_train=24)  # new upstream data: a new data version
    out = run(repo, "dvc", "repro", "prepare@toy")
    assert ran(out) == {"ingest@toy", "prepare@toy"}
    git(repo, "commit", "-q", "-am", "toy data v2")
    assert dataset_version(prepared) != v1

    # From the manifest back to the bytes: the commit that pinned the version, then dvc checkout.
    assert commits_with_version(manifest.dataset_version, repo)[-1] == v1_commit
    git(repo, "checkout", "-q", v1_commit)
    run(repo, "dvc", "checkout")
    assert snapshot(prepared) == saved
    assert dataset_version(prepared) == v1
    write_toy(pipeline["mirror"])  # the upstream data back at v1: everything matches the v1 lock
    assert "Data and pipelines are up to date" in run(repo, "dvc", "status")
    prompt, _ = reg.pull("toy", manifest.version)
    assert torch.equal(prompt, load_prompt(run_dir / "prompt.safetensors"))


def test_push_wipe_pull_through_seaweedfs(pipeline, s3_server, tmp_path):
    repo = pipeline["repo"]
    bucket = s3_server.create_bucket()
    run(repo, "dvc", "remote", "modify", "--local", "storage", "url", f"s3://{bucket}/dvc")
    run(
        repo, "dvc", "remote", "modify", "--local", "storage", "endpointurl", s3_server.endpoint_url
    )
    # Credentials from the AWS chain (env); dvc-s3 reads AWS_CONFIG_FILE itself and rejects
    # /dev/null (not a regular file), so an empty file keeps ~/.aws out instead.
    (tmp_path / "aws_config").write_text("")
    aws = dict(
        s3_server.env(),
        AWS_CONFIG_FILE=str(tmp_path / "aws_config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws_config"),
    )
    env = _env(**{k: v for k, v in aws.items() if k != "AWS_ENDPOINT_URL"})
    before = {
        d: snapshot(repo / d)
        for d in ("data/raw/toy", "data/prepared/toy", "runs/toy-random_uniform-p2")
    }
    run(repo, "dvc", "push", env=env)
    assert s3_server.client().list_objects_v2(Bucket=bucket, Prefix="dvc/")["KeyCount"] > 0

    shutil.rmtree(repo / ".dvc" / "cache")
    for d in before:
        shutil.rmtree(repo / d)
    run(repo, "dvc", "pull", env=env)
    assert {d: snapshot(repo / d) for d in before} == before
    assert "Data and pipelines are up to date" in run(repo, "dvc", "status")

    # The endpoint may come from the environment instead of .dvc/config.local.
    run(repo, "dvc", "remote", "modify", "--local", "--unset", "storage", "endpointurl")
    assert "in sync" in run(repo, "dvc", "status", "--cloud", env=_env(**aws))


# ------------------------------------------------------------------ code deps (no dvc)
def test_static_import_model_matches_what_python_loads():
    """The AST model of import-time loading misses nothing that Python really loads."""
    code = (
        "import json, sys; from softprompt.cli import build_parser; build_parser(); "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'softprompt')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    assert "softprompt.training" in loaded and loaded <= loaded_by_every_command()


def test_every_stage_depends_on_the_code_its_commands_import():
    commands_seen = set()
    for name, stage in stages().items():
        commands = stage_commands(stage)
        assert commands, f"stage {name} runs no softprompt command: {stage['cmd']}"
        needed = set().union(*(command_files(c) for c in commands))
        listed = {d for d in stage["deps"] if d.startswith("softprompt/")}
        missing, extra = sorted(needed - listed), sorted(listed - needed)
        assert not missing, f"dvc.yaml stage {name} ({commands}) misses code deps {missing}"
        assert not extra, f"dvc.yaml stage {name} ({commands}) lists code it never imports: {extra}"
        commands_seen |= set(commands)
    assert {"ingest", "prepare", "train", "curves", "evaluate"} <= commands_seen
    # The lists are per command: only train runs the data-parallel code.
    assert "softprompt/distributed.py" in command_files("train") - command_files("evaluate")
    # scripts/dvc_code_deps.py writes exactly these lists.
    assert rewrite() == (REPO_ROOT / "dvc.yaml").read_text()
