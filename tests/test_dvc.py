"""The DVC pipeline (dvc.yaml, params.yaml) on a tiny configuration, in a throwaway git+dvc repo.

One module-scoped repo runs `dvc repro` once (ingest, prepare, train, evaluate of the toy task with
the tiny causal model, offline); the tests then check what DVC does next: nothing on a second run,
only the dependents after a parameter or code change, the data version in the lock file and in a
registry manifest, a checkout of that version, and a push / wiped cache / pull through a real S3
server. Without dvc: each stage's code deps cover the softprompt modules its command imports.
"""

from __future__ import annotations

import argparse
import ast
import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import TOY_SPEC

from softprompt.data_version import commits_with_version, dataset_version, ingest, write_curves
from softprompt.tasks import TaskDataError, load_prepared, load_spec, load_task

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WORDS = {0: ["awful", "boring", "dreadful"], 1: ["great", "lovely", "superb"]}


def _write_toy(data_dir: Path, n_train: int = 16) -> None:
    (data_dir / "toy").mkdir(parents=True, exist_ok=True)
    for split, n in {"train": n_train, "dev": 8, "test": 8}.items():
        rows = [{"sentence": f"the film was {WORDS[i % 2][i % 3]}", "label": i % 2} for i in range(n)]
        (data_dir / "toy" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SOFTPROMPT_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", DVC_NO_ANALYTICS="1",
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra,
    )
    return env


def run(cwd: Path, *cmd: str, env: dict | None = None) -> str:
    """Runs a command (dvc / git from the test environment); returns stdout+stderr, fails loudly."""
    exe = str(BIN / "dvc") if cmd[0] == "dvc" else cmd[0]
    proc = subprocess.run([exe, *cmd[1:]], cwd=cwd, env=env or _env(), capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}"
    return output


def git(cwd: Path, *args: str) -> str:
    return run(cwd, "git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args)


def ran(output: str) -> set[str]:
    """Stages `dvc repro` ran, from its "Running stage 'name':" lines."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def lock_md5(repo: Path, stage: str, path: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == path)


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


TRAIN = "train@toy-random_uniform-2"
EVAL = "evaluate@toy-random_uniform-2"
ALL = {"ingest@toy", "prepare@toy", TRAIN, EVAL}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_causal_dir) -> dict:
    """A git+dvc repo running the real dvc.yaml on the toy task after one `dvc repro`.
    The mirror sits beside the repo (../mirror), as ../shared/data does beside a checkout."""
    base = tmp_path_factory.mktemp("dvc")
    _write_toy(base / "mirror")
    repo = base / "repo"
    (repo / "tasks").mkdir(parents=True)
    (repo / "tasks" / "toy.yaml").write_text(yaml.safe_dump(TOY_SPEC))
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "init", "-q")
    shutil.copy(REPO_ROOT / ".dvc" / "config", repo / ".dvc" / "config")  # the shipped remote config
    shutil.copy(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    # The stages depend on the softprompt code they run, so the repo carries a copy of it.
    shutil.copytree(REPO_ROOT / "softprompt", repo / "softprompt",
                    ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["tasks"] = ["toy"]
    params["data"].update(source="mirror", mirror="../mirror", tasks_dir="tasks")
    params["train"].update(
        inits=["random_uniform"], lengths=[2], model=str(tiny_causal_dir), batch_size=8, micro_batch_size=8,
        max_steps=4, eval_every=2, eval_max_examples=8, max_input_tokens=32,
    )
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    first = run(repo, "dvc", "repro")
    return {"repo": repo, "mirror": base / "mirror", "first": first}


def test_repro_runs_every_stage_then_nothing(pipeline):
    repo = pipeline["repo"]
    assert ran(pipeline["first"]) == ALL
    assert load_prepared(repo / "data/prepared/toy")["train"][0].target in ("negative", "positive")
    raw_info = json.loads((repo / "data/raw/toy/source.json").read_text())
    assert raw_info["source"] == "mirror" and set(raw_info["files"]) == {"toy/train.jsonl", "toy/dev.jsonl", "toy/test.jsonl", "toy.yaml"}
    metrics = json.loads((repo / "eval/toy-random_uniform-p2/metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n"] == 8 and 0 <= metrics["accuracy"] <= 1
    assert (repo / "eval/toy-random_uniform-p2/dev.csv").read_text().splitlines()[0] == "step,score,accuracy"

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
    assert json.loads((repo / "eval/toy-random_uniform-p2/metrics.json").read_text())["split"] == "dev"
    reproduced = params_path.read_text()  # the state dvc.lock now pins
    try:
        # train.lr: the train stage is stale (evaluate follows once train's output changes);
        # ingest and prepare are not
        params["train"]["lr"] = 0.1
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
        status = json.loads(run(repo, "dvc", "status", "--json"))
        assert set(status) == {TRAIN}, status
        assert {"changed deps": {"params.yaml": {"train.lr": "modified"}}} in status[TRAIN]
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
    assert dataset_version(repo / "data/prepared/toy") == lock_md5(repo, "prepare@toy", "data/prepared/toy")
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
    lineage = registry.lineage_from_run(run_dir, dataset_version=v1, spec=load_spec(repo / "data/raw/toy/toy.yaml"))
    manifest = reg.publish("toy", load_prompt(run_dir / "prompt.safetensors"), lineage)
    assert reg.manifest("toy", manifest.version).dataset_version == v1 == lock_md5(repo, "prepare@toy", "data/prepared/toy")

    _write_toy(pipeline["mirror"], n_train=24)  # new upstream data: a new data version
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
    _write_toy(pipeline["mirror"])  # the upstream data back at v1: everything matches the v1 lock
    assert "Data and pipelines are up to date" in run(repo, "dvc", "status")
    prompt, _ = reg.pull("toy", manifest.version)
    assert torch.equal(prompt, load_prompt(run_dir / "prompt.safetensors"))


def test_push_wipe_pull_through_seaweedfs(pipeline, s3_server, tmp_path):
    repo = pipeline["repo"]
    bucket = s3_server.create_bucket()
    run(repo, "dvc", "remote", "modify", "--local", "storage", "url", f"s3://{bucket}/dvc")
    run(repo, "dvc", "remote", "modify", "--local", "storage", "endpointurl", s3_server.endpoint_url)
    # Credentials from the AWS chain (env); dvc-s3 reads AWS_CONFIG_FILE itself and rejects
    # /dev/null (not a regular file), so an empty file keeps ~/.aws out instead.
    (tmp_path / "aws_config").write_text("")
    aws = dict(s3_server.env(), AWS_CONFIG_FILE=str(tmp_path / "aws_config"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws_config"))
    env = _env(**{k: v for k, v in aws.items() if k != "AWS_ENDPOINT_URL"})
    before = {d: snapshot(repo / d) for d in ("data/raw/toy", "data/prepared/toy", "runs/toy-random_uniform-p2")}
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


# ------------------------------------------------------------------ ingest / version units (no dvc)
def _toy_tree(tmp_path: Path) -> tuple[Path, Path]:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "toy.yaml").write_text(yaml.safe_dump(TOY_SPEC))
    _write_toy(tmp_path / "mirror")
    return tasks, tmp_path / "mirror"


def test_ingest_from_mirror_is_byte_identical_and_replaces_old_output(tmp_path):
    tasks, mirror = _toy_tree(tmp_path)
    (tmp_path / "a" / "stale.txt").parent.mkdir()
    (tmp_path / "a" / "stale.txt").write_text("old")
    ingest("toy", tmp_path / "a", "mirror", mirror, tasks)
    ingest("toy", tmp_path / "b", "auto", mirror, tasks)  # no hub source in the spec: the mirror
    assert not (tmp_path / "a" / "stale.txt").exists()
    assert filecmp.cmp(tmp_path / "a/toy/train.jsonl", mirror / "toy/train.jsonl", shallow=False)
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")
    assert dataset_version(tmp_path / "a") == dataset_version(tmp_path / "b")
    assert not list(tmp_path.glob(".*.ingest"))


def test_ingest_names_the_missing_mirror_file(tmp_path):
    tasks, mirror = _toy_tree(tmp_path)
    (mirror / "toy" / "dev.jsonl").unlink()
    with pytest.raises(TaskDataError, match=r"toy\.yaml: split 'dev' file toy/dev\.jsonl not found in mirror"):
        ingest("toy", tmp_path / "out", "mirror", mirror, tasks)
    assert not (tmp_path / "out").exists()


def test_ingest_from_hub_writes_rows_and_a_spec_that_reads_them(tmp_path, monkeypatch):
    import datasets

    tasks, _ = _toy_tree(tmp_path)
    spec = dict(TOY_SPEC, hub={"path": "org/toy", "name": "plain", "splits": {"train": "train", "test": "validation"}})
    (tasks / "toy.yaml").write_text(yaml.safe_dump(spec))
    calls = []

    def fake_load_dataset(path, name, split, revision=None):
        calls.append((path, name, split))
        return [{"sentence": f"{split} film {WORDS[i % 2][0]}", "label": i % 2, "idx": i} for i in range(20)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    info = ingest("toy", tmp_path / "raw", "auto", None, tasks)
    assert info["source"] == "hub" and sorted(calls) == [("org/toy", "plain", "train"), ("org/toy", "plain", "validation")]
    data = load_task(load_spec(tmp_path / "raw" / "toy.yaml"), tmp_path / "raw")
    assert {k: len(v) for k, v in data.items()} == {"train": 18, "dev": 2, "test": 20}  # dev carved from train
    assert data["test"][0].input == "Review: validation film awful\nSentiment:"

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: auto falls back to the mirror
    assert ingest("toy", tmp_path / "raw2", "auto", tmp_path / "mirror", tasks)["source"] == "mirror"


def test_dataset_version_errors_and_cli(tmp_path, capsys):
    from softprompt.cli import main

    with pytest.raises(FileNotFoundError, match="no_such_dir: not a directory"):
        dataset_version(tmp_path / "no_such_dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty directory"):
        dataset_version(tmp_path / "empty")
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "x.txt").write_text("x")
    assert main(["data-version", str(tmp_path / "d")]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == dataset_version(tmp_path / "d") and printed.endswith(".dir") and len(printed) == 36
    (tmp_path / "d" / "y.txt").write_text("y")
    assert dataset_version(tmp_path / "d") != printed
    with pytest.raises(ValueError, match="unknown ingest source 'bogus'"):
        ingest("toy", tmp_path / "o", "bogus")


def test_write_curves_names_a_malformed_log_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"event": "step", "step": 1, "loss": 0.5}\n{"event": "eval", "step": 1, "score": 0.75, "accuracy": 0.75}\n{oops\n'
    )
    with pytest.raises(ValueError, match=r"metrics\.jsonl:3: malformed JSON"):
        write_curves(tmp_path, tmp_path / "out")
    (tmp_path / "metrics.jsonl").write_text(
        '{"event": "start"}\n{"event": "step", "step": 1, "loss": 0.5}\n{"event": "eval", "step": 1, "score": 0.75, "accuracy": 0.75}\n'
    )
    assert write_curves(tmp_path, tmp_path / "out") == {"loss": 1, "dev": 1}
    assert (tmp_path / "out" / "dev.csv").read_text().splitlines() == ["step,score,accuracy", "1,0.75,0.75"]


# ------------------------------------------------------------------ code deps (no dvc)
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _module_file(name: str) -> Path | None:
    """softprompt.a.b -> softprompt/a/b.py or softprompt/a/b/__init__.py; None if not ours."""
    base = REPO_ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _parse(module: str) -> ast.Module:
    return ast.parse(_module_file(module).read_text())


def _import_targets(node: ast.AST, module: str) -> set[str]:
    """The softprompt modules one import statement loads (`from a import b` may name module a.b)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: resolved against the importing module's package
            is_package = _module_file(module).name == "__init__.py"
            package = module if is_package else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}".rstrip(".")
        names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
    else:
        return set()
    return {n for n in names if n.split(".")[0] == "softprompt" and _module_file(n)}


def _imports(nodes, module: str, *, into_functions: bool) -> set[str]:
    """Imports under `nodes`; without into_functions, only those that run when the module loads."""
    found, stack = set(), list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, FUNCTIONS) and not into_functions:
            continue
        found |= _import_targets(node, module)
        stack.extend(ast.iter_child_nodes(node))
    return found


def _function_imports(module: str, roots: list[str], *, references: bool) -> set[str]:
    """Imports inside the module-level functions `roots` and the module's functions they call.
    With references, a function merely named (a callback) counts as called too; without, only
    direct calls do, so that `set_defaults(func=_cmd_x)` does not pull in every command."""
    defs = {n.name: n for n in _parse(module).body if isinstance(n, FUNCTIONS[:2])}
    todo, seen = [r for r in roots if r in defs], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        nodes = list(ast.walk(defs[name]))
        if references:
            names = [n.id for n in nodes if isinstance(n, ast.Name)]
        else:
            calls = [n.func for n in nodes if isinstance(n, ast.Call)]
            names = [f.id for f in calls if isinstance(f, ast.Name)]
        todo += [n for n in names if n in defs]
    return set().union(*(_imports([defs[n]], module, into_functions=True) for n in seen))


def _closure(at_import: set[str], called: set[str]) -> set[str]:
    """Every module loaded: `at_import` with what they import when loaded, and `called` (code the
    command runs) with everything their functions may import; parent packages load too."""
    done: dict[str, bool] = {}
    todo = [(m, False) for m in at_import] + [(m, True) for m in called]
    while todo:
        name, deep = todo.pop()
        if done.get(name) is True or (name in done and not deep):
            continue
        done[name] = deep
        parts = name.split(".")
        todo += [(m, deep) for m in _imports(_parse(name).body, name, into_functions=deep)]
        todo += [(".".join(parts[:i]), False) for i in range(1, len(parts))]
    return set(done)


def _entry_point() -> tuple[str, str]:
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["softprompt"].split(":")
    return module, func


def _loaded_by_every_command() -> set[str]:
    """What `softprompt <anything>` imports before dispatching: the entry module, the extension
    modules build_parser imports by name (cli._EXTENSIONS), and what their setup functions call."""
    import importlib

    module, func = _entry_point()
    extensions = set(importlib.import_module(module)._EXTENSIONS)
    found = {module, *extensions}
    found |= _function_imports(module, [func, "build_parser"], references=False)
    for ext in extensions:
        found |= _function_imports(ext, ["add_commands"], references=False)
    return _closure(found, set())


def _command_files(command: str) -> set[str]:
    """Repo-relative files of every softprompt module `softprompt <command>` may import."""
    import importlib

    cli = importlib.import_module(_entry_point()[0])
    (sub,) = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    func = sub.choices[command].get_default("func")
    called = _function_imports(func.__module__, [func.__name__], references=True)
    modules = _closure(_loaded_by_every_command(), called)
    return {_module_file(m).relative_to(REPO_ROOT).as_posix() for m in modules}


def _stages() -> dict[str, dict]:
    """dvc.yaml's stages with foreach/matrix bodies unwrapped: {name: {"cmd", "deps"}}."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def test_static_import_model_matches_what_python_loads():
    """The AST model of import-time loading misses nothing that Python really loads."""
    code = ("import json, sys; from softprompt.cli import build_parser; build_parser(); "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'softprompt')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    assert "softprompt.training" in loaded and loaded <= _loaded_by_every_command()


def test_every_stage_depends_on_the_code_its_commands_import():
    commands_seen = set()
    for name, stage in _stages().items():
        commands = re.findall(r"(?:^|&&|;|\|\|)\s*softprompt\s+([a-z][\w-]*)", stage["cmd"])
        assert commands, f"stage {name} runs no softprompt command: {stage['cmd']}"
        needed = set().union(*(_command_files(c) for c in commands))
        listed = {d for d in stage["deps"] if d.startswith("softprompt/")}
        missing, extra = sorted(needed - listed), sorted(listed - needed)
        assert not missing, f"dvc.yaml stage {name} ({commands}) misses code deps {missing}"
        assert not extra, f"dvc.yaml stage {name} ({commands}) lists code it never imports: {extra}"
        commands_seen |= set(commands)
    assert {"ingest", "prepare", "train", "curves", "evaluate"} <= commands_seen
    # The lists are per command: only train runs the data-parallel code.
    assert "softprompt/distributed.py" in _command_files("train") - _command_files("evaluate")
