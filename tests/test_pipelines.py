"""The KFP pipelines: compiled specs (what the cluster gets) and a whole local run (kfp.local)."""

import builtins
import io
import json
from pathlib import Path

import pytest
import yaml

from components.cluster import CHECKPOINT_MOUNT, PROJECT_IMAGE, ClusterConfig
from components.compile import compile_pipelines
from components.compile import main as compile_main
from components.pipelines import prompt_tuning_pipeline
from components.runner import (
    _parse_sets,
    describe,
    pipeline_parameters,
    run_lm_adaptation,
    run_prompt_tuning,
)
from components.runner import main as runner_main
from softprompt.training.progress import format_step_line

MODEL_STEPS = ("train-prompt", "ensemble-prompts", "evaluate")


def _load(path: Path) -> tuple[dict, dict]:
    """A compiled pipeline file: (pipeline spec, Kubernetes platform spec)."""
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 2, "the compiled file must carry the kubernetes platform spec"
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _tasks(spec: dict) -> dict:
    """Every task of the pipeline, nested DAGs (the ParallelFor body) included."""
    out = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        out.update(comp.get("dag", {}).get("tasks", {}))
    return out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, Path]:
    paths = compile_pipelines(tmp_path_factory.mktemp("compiled"))
    return {p.stem: p for p in paths}


def test_prompt_tuning_spec_requests_gpus_on_the_gpu_pool(compiled):
    spec, k8s = _load(compiled["prompt_tuning"])
    cluster = ClusterConfig()
    executors = spec["deploymentSpec"]["executors"]
    for step in MODEL_STEPS:
        container = executors[f"exec-{step}"]["container"]
        accelerator = container["resources"]["accelerator"]
        assert accelerator["resourceType"] == "nvidia.com/gpu"
        assert accelerator["resourceCount"] == "1"
        platform = k8s[f"exec-{step}"]
        assert platform["nodeSelector"]["labels"] == {"softprompt.io/pool": "gpu"}
        assert platform["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Equal",
                                            "value": "present", "effect": "NoSchedule"}]
        assert platform["pvcMount"][0]["mountPath"] == CHECKPOINT_MOUNT
        pvc = platform["pvcMount"][0]["pvcNameParameter"]["runtimeValue"]["constant"]
        assert pvc == cluster.checkpoint_pvc
    for step in ("prepare-data", "register-prompt"):
        assert "accelerator" not in executors[f"exec-{step}"]["container"].get("resources", {})
        assert f"exec-{step}" not in k8s  # CPU steps are not pinned to the GPU pool
    # One project image, nothing installed at run time.
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == PROJECT_IMAGE, name
        assert "pip install" not in " ".join(container["command"] + container.get("args", [])), name


def test_prompt_tuning_spec_retries_caching_and_loop(compiled):
    spec, _ = _load(compiled["prompt_tuning"])
    tasks = _tasks(spec)
    train = tasks["train-prompt"]
    assert train["retryPolicy"]["maxRetryCount"] == 3
    assert train["retryPolicy"]["backoffDuration"] == "60s"
    assert train["retryPolicy"]["backoffFactor"] == 2.0
    assert train["cachingOptions"]["enableCache"] is True
    # Caching off: the gate must see the live alias.
    assert tasks["register-prompt"]["cachingOptions"] == {}
    assert "retryPolicy" not in tasks["register-prompt"]
    # A data error (missing revision or object, hash mismatch) fails at once: no retries.
    assert "retryPolicy" not in tasks["prepare-data"]
    loop = spec["root"]["dag"]["tasks"]["for-loop-1"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--prompt_configs"
    # The ensemble collects every iteration's run (dsl.Collected).
    runs = tasks["ensemble-prompts"]["inputs"]["artifacts"]["runs"]["taskOutputArtifact"]
    assert runs == {"producerTask": "for-loop-1",
                    "outputArtifactKey": "pipelinechannel--train-prompt-run"}
    # The run key is the pipeline run's id, the same across a step's retries.
    run_key = tasks["train-prompt"]["inputs"]["parameters"]["run_key"]
    assert run_key["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"


def test_prompt_tuning_parameter_defaults(compiled):
    spec, _ = _load(compiled["prompt_tuning"])
    params = spec["root"]["inputDefinitions"]["parameters"]
    defaults = {name: p.get("defaultValue") for name, p in params.items()}
    assert defaults["task"] == "sst2" and defaults["base_model"] == "smollm2-135m"
    # lr 0 travels as None: the recipe's rule decides it.
    assert defaults["lr"] == 0.0 and defaults["optimizer"] == "adafactor"
    assert defaults["recipe"] == "stable"
    assert defaults["prompt_length"] == 20
    assert defaults["max_steps"] == 1000 and defaults["batch_size"] == 16
    assert defaults["eval_every"] == 25 and defaults["patience"] == 0  # 0: no early stopping
    assert defaults["registry_uri"].startswith("s3://") and defaults["alias"] == "production"
    assert defaults["checkpoint_root"].startswith(CHECKPOINT_MOUNT)
    assert [c["seed"] for c in defaults["prompt_configs"]] == [0, 1, 2]
    assert params["prompt_configs"]["parameterType"] == "LIST"
    assert params["lr"]["parameterType"] == "NUMBER_DOUBLE"
    # Every parameter has a default: a run can be launched from the UI as is.
    assert all("defaultValue" in p or p.get("isOptional") for p in params.values())
    assert set(defaults) == set(pipeline_parameters(prompt_tuning_pipeline))


def test_lm_adaptation_spec(compiled):
    spec, k8s = _load(compiled["lm_adaptation"])
    container = spec["deploymentSpec"]["executors"]["exec-lm-adapt-model"]["container"]
    assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert k8s["exec-lm-adapt-model"]["nodeSelector"]["labels"] == {"softprompt.io/pool": "gpu"}
    task = spec["root"]["dag"]["tasks"]["lm-adapt-model"]
    assert task["retryPolicy"]["maxRetryCount"] == 2
    assert task["cachingOptions"]["enableCache"] is True
    params = spec["root"]["inputDefinitions"]["parameters"]
    defaults = {n: p.get("defaultValue") for n, p in params.items()}
    assert defaults["steps"] == 1000 and defaults["export_dir"] == CHECKPOINT_MOUNT + "/base-models"
    # No hub default that the offline image could not load: the checkpoint is required.
    assert "defaultValue" not in params["base_model"] and not params["base_model"].get("isOptional")
    with pytest.raises(ValueError, match="needs base_model"):
        run_lm_adaptation({"steps": 2})
    assert set(spec["root"]["outputDefinitions"]["parameters"]) == {"model_path"}


def test_compile_command_overrides_cluster_settings(tmp_path, capsys):
    compile_main(["--out", str(tmp_path), "--accelerator-type", "nvidia.com/mig-1g.10gb",
                  "--accelerator-limit", "2", "--node-selector", "pool", "a100",
                  "--train-retries", "5"])
    written = {Path(p).name for p in capsys.readouterr().out.split()}
    assert written == {"prompt_tuning.yaml", "lm_adaptation.yaml"}
    spec, k8s = _load(tmp_path / "prompt_tuning.yaml")
    container = spec["deploymentSpec"]["executors"]["exec-train-prompt"]["container"]
    accel = container["resources"]["accelerator"]
    assert accel["resourceType"] == "nvidia.com/mig-1g.10gb" and accel["resourceCount"] == "2"
    assert k8s["exec-train-prompt"]["nodeSelector"]["labels"] == {"pool": "a100"}
    assert _tasks(spec)["train-prompt"]["retryPolicy"]["maxRetryCount"] == 5


def test_bad_cluster_config_and_params_are_refused():
    with pytest.raises(ValueError, match="toleration"):
        ClusterConfig(toleration=("k", "v", "Sometimes"))
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['max_step'\]"):
        run_prompt_tuning("toy", {"max_step": 3})
    with pytest.raises(ValueError, match="unknown mode"):
        run_prompt_tuning("toy", {}, mode="cloud")
    assert _parse_sets(["max_steps=3", "task=sst2", 'prompt_configs=[{"seed": 1}]']) == {
        "max_steps": 3, "task": "sst2", "prompt_configs": [{"seed": 1}]}


def test_kfp_mode_submits_to_the_api_with_token_and_namespace(kfp_api, tmp_path, monkeypatch):
    """Against the stand-in KFP API server: the run is created in the profile namespace with the
    pipeline's service account, and every request carries the bearer token (read from a file,
    as a projected ServiceAccount token is)."""
    from components.kubeflow import KfpEndpoint, run_status

    token_file = tmp_path / "token"
    token_file.write_text("test-token\n")
    endpoint = KfpEndpoint(kfp_api.url, token_path=str(token_file), namespace="team")
    out = run_prompt_tuning("sst2", {"max_steps": 50}, mode="kfp", kfp_host=endpoint,
                            experiment="nightly", run_name="nightly-sst2")
    assert out == {"mode": "kfp", "host": kfp_api.url, "run_id": out["run_id"],
                   "status": "SUBMITTED"}
    run = kfp_api.runs[out["run_id"]]
    assert run["service_account"] == "softprompt-pipeline" and run["display_name"] == "nightly-sst2"
    assert run["runtime_config"]["parameters"] == {"max_steps": 50, "task": "sst2"}
    assert {r["authorization"] for r in kfp_api.requests} == {"Bearer test-token"}
    assert run_status(endpoint, out["run_id"]).state == "RUNNING"
    assert run_status(endpoint, out["run_id"]).finished
    token_file.write_text("rotated")  # a new token is read for the next call, and refused here
    with pytest.raises(Exception, match="401"):
        run_status(endpoint, out["run_id"])
    assert "rotated" not in repr(endpoint)
    assert "test-token" not in repr(KfpEndpoint("h", "test-token"))


def test_train_step_retry_resumes_from_its_checkpoint(tiny_causal_dir, toy_task, tmp_path,
                                                      monkeypatch):
    """What a retry sees: the same output path, holding the killed attempt's checkpoint.pt."""
    from kfp.dsl import HTML, Artifact, Dataset, Metrics, Model

    import softprompt.training.prompt_tuning as train_mod
    from components.steps import prepare_data, train_prompt
    from softprompt.data_version import dataset_version

    train_dev = Dataset(uri=str(tmp_path / "train_dev"))
    test_set = Dataset(uri=str(tmp_path / "test"))
    spec = Artifact(uri=str(tmp_path / "spec"))
    prepared = prepare_data.python_func(
        task="toy", task_spec=toy_task["spec_path"].read_text(), data_dir=str(toy_task["data_dir"]),
        data_repo="", data_rev="", data_remote="", data_path="", data_version="",
        max_train_examples=0, max_dev_examples=16, max_test_examples=0, seed=0,
        spec=spec, train_dev=train_dev, test_set=test_set)
    assert not (tmp_path / "train_dev" / "test.jsonl").exists()
    assert (tmp_path / "test" / "test.jsonl").exists()
    assert train_dev.metadata["dev_examples"] == 16
    assert prepared.dataset_version == dataset_version(toy_task["data_dir"] / "toy")
    assert prepared.data_source["kind"] == "local"
    assert (tmp_path / "spec").read_text() == toy_task["spec_path"].read_text()

    def attempt():
        run, metrics = Model(uri=str(tmp_path / "run")), Metrics(uri=str(tmp_path / "metrics"))
        train_prompt.python_func(
            task="toy", spec=spec, train_dev=train_dev, base_model=str(tiny_causal_dir),
            prompt_config={"seed": 1.0, "init": "class_label"}, prompt_length=4,
            recipe="stable", optimizer="adafactor", lr=0.3, batch_size=8, micro_batch_size=4,
            max_steps=6,
            max_minutes=0.0, eval_every=2, patience=0, eval_max_examples=0, eval_batch_size=16,
            max_input_tokens=64, checkpoint_root="", run_key="job", run=run, metrics=metrics,
            curve=HTML(uri=str(tmp_path / "curve")))
        return run

    real = train_mod.lm_loss
    calls = {"n": 0}

    def preempted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * 3 + 1:  # in step 4, after the step-2 checkpoint
            raise KeyboardInterrupt("pod preempted")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "lm_loss", preempted)
    with pytest.raises(KeyboardInterrupt):
        attempt()
    monkeypatch.setattr(train_mod, "lm_loss", real)
    run = attempt()
    assert run.metadata["resumed"] is True
    assert run.metadata["steps"] == 6 and run.metadata["seed"] == 1
    log = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"event": "resume", "step": 2' in log
    assert json.loads((tmp_path / "metrics").read_text())["best_step"] == run.metadata["best_step"]
    # The learning curve: dev scores in the run's metadata, and a plot the Kubeflow UI shows.
    assert [step for step, _ in run.metadata["dev_curve"]] == [0, 2, 4, 6]
    assert "<svg" in (tmp_path / "curve").read_text()


def test_a_seeds_item_trains_its_members_in_one_step_and_ensembles_them(tiny_causal_dir,
                                                                         toy_task, tmp_path):
    """An item with "seeds" trains both prompts in one train step, whose run holds the member
    runs; the ensemble step takes them as it takes single runs (here beside one)."""
    from kfp.dsl import HTML, Artifact, Dataset, Metrics, Model

    from components.steps import ensemble_prompts, prepare_data, train_prompt

    train_dev, spec = Dataset(uri=str(tmp_path / "train_dev")), Artifact(uri=str(tmp_path / "spec"))
    prepare_data.python_func(
        task="toy", task_spec=toy_task["spec_path"].read_text(), data_dir=str(toy_task["data_dir"]),
        data_repo="", data_rev="", data_remote="", data_path="", data_version="",
        max_train_examples=0, max_dev_examples=16, max_test_examples=0, seed=0,
        spec=spec, train_dev=train_dev, test_set=Dataset(uri=str(tmp_path / "test")))

    def train_step(item, name):
        run = Model(uri=str(tmp_path / name))
        train_prompt.python_func(
            task="toy", spec=spec, train_dev=train_dev, base_model=str(tiny_causal_dir),
            prompt_config=item, prompt_length=4, recipe="stable", optimizer="adafactor", lr=0.3,
            batch_size=8, micro_batch_size=4, max_steps=4, max_minutes=0.0, eval_every=2,
            patience=0, eval_max_examples=0, eval_batch_size=16, max_input_tokens=64,
            checkpoint_root=str(tmp_path / "volume"), run_key="job", run=run,
            metrics=Metrics(uri=str(tmp_path / f"{name}-metrics")),
            curve=HTML(uri=str(tmp_path / f"{name}-curve")))
        return run

    group = train_step({"seeds": [0.0, 1.0], "init": "class_label"}, "group")
    assert group.metadata["name"] == "class_label-seeds0-1" and group.metadata["seeds"] == [0, 1]
    assert [m["dir"] for m in group.metadata["members"]] == ["seed0", "seed1"]
    for member in group.metadata["members"]:
        result = json.loads((tmp_path / "group" / member["dir"] / "result.json").read_text())
        assert result["group"]["members"] == 2 and result["best_step"] == member["best_step"]
        assert [step for step, _ in member["dev_curve"]] == [0, 2, 4]
    assert (tmp_path / "volume" / "job" / "class_label-seeds0-1" / "seed0" / "group").is_dir()
    values = json.loads((tmp_path / "group-metrics").read_text())
    assert {"dev_score_seed0", "dev_score_seed1", "train_seconds"} <= set(values)
    assert "<svg" in (tmp_path / "group-curve").read_text()
    with pytest.raises(ValueError, match="seed or seeds, not both"):
        train_step({"seed": 0, "seeds": [1, 2]}, "both")

    lone = train_step({"seed": 2, "init": "sampled_vocab"}, "lone")
    ensemble = Model(uri=str(tmp_path / "ensemble"))
    ensemble_prompts.python_func(
        task="toy", spec=spec, runs=[group, lone], train_dev=train_dev,
        base_model=str(tiny_causal_dir), max_input_tokens=64, eval_batch_size=16,
        ensemble=ensemble, metrics=Metrics(uri=str(tmp_path / "ensemble-metrics")))
    assert ensemble.metadata["n_prompts"] == 3
    summary = json.loads((tmp_path / "ensemble" / "ensemble.json").read_text())
    assert [(m["name"], m["seed"]) for m in summary["members"]] == [
        ("class_label-seed0", 0), ("class_label-seed1", 1), ("sampled_vocab-seed2", 2)]


@pytest.mark.pipeline
def test_local_pipeline_registers_and_caches(tiny_causal_dir, toy_task, tmp_path):
    """The whole prompt-tuning pipeline on kfp.local with a tiny model, then again with caching."""
    from softprompt.registry import open_registry

    params = {
        "base_model": str(tiny_causal_dir), "data_dir": str(toy_task["data_dir"]),
        "prompt_configs": [{"seed": 0, "init": "class_label"},
                           {"seed": 1, "init": "sampled_vocab"}],
        "prompt_length": 4, "batch_size": 8, "micro_batch_size": 4, "max_steps": 4, "eval_every": 2,
        "max_input_tokens": 64, "eval_batch_size": 16, "nearest_k": 3,
    }
    task = str(toy_task["spec_path"])
    print_before = builtins.print
    first = run_prompt_tuning(task, params, root=tmp_path)
    assert first["status"] == "SUCCEEDED" and first["version"] == 1 and first["promoted"] is True
    # kfp.local's indenting print, swapped around each of the parallel steps, is not left behind.
    assert builtins.print is print_before
    reg = open_registry(tmp_path / "registry")
    manifest = reg.manifest("toy", "production")
    assert manifest.version == 1 and manifest.base_model == str(tiny_causal_dir)
    assert manifest.metrics["dev"]["n"] == 32 and 0 <= manifest.metrics["test"]["score"] <= 1
    assert manifest.metrics["ensemble"]["n_prompts"] == 2
    assert manifest.dataset_version.endswith(".dir") and manifest.prompt_length == 4
    prompt, _ = reg.pull("toy", "production")
    assert tuple(prompt.shape) == (4, 32)
    report = Path(first["report"]).read_text()
    assert "nearest tokens" in report and "ensemble (majority vote)" in report
    assert set(first["metrics"]) >= {"test_ensemble", "test_prompt_0", "test_prompt_1",
                                     "dev_selected"}
    pattern = "for-loop-1-iteration-*/train-prompt/run/prompt.safetensors"
    trains = sorted(Path(first["run_dir"]).glob(pattern))
    assert len(trains) == 2

    # The second run goes through the command line (what scripts/demo.sh calls).
    sets = [arg for key, value in params.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    argv = ["prompt-tuning", "--task", task, "--root", str(tmp_path),
            "--output", str(tmp_path / "out.json"), *sets]
    assert runner_main(argv) == 0
    second = json.loads((tmp_path / "out.json").read_text())
    printed = describe(second)
    assert f"manifest:  {tmp_path / 'registry'}/prompts/toy/2/manifest.json" in printed
    assert (tmp_path / "registry" / "prompts" / "toy" / "2" / "manifest.json").is_file()
    # Every step but registration came from the cache: no training ran in the second run.
    assert second["run_dir"] != first["run_dir"]
    assert not list(Path(second["run_dir"]).glob("for-loop-1-iteration-*"))
    assert not (Path(second["run_dir"]) / "train-prompt").exists()
    assert second["metrics"] == first["metrics"]
    # Registered again (always), but the gate keeps production: the same dev score is no
    # improvement.
    assert second["version"] == 2 and second["promoted"] is False
    assert reg.manifest("toy", "production").version == 1
    assert second["decision"].startswith("kept production at v1: new v2 dev")

    # The gate, both ways: a better dev score moves production, a gain within min_improvement
    # does not.
    from kfp.dsl import Artifact, Model

    from components.steps import register_prompt

    scores = json.loads((Path(first["run_dir"]) / "evaluate" / "summary").read_text())
    ensemble = Model(uri=str(Path(first["run_dir"]) / "ensemble-prompts" / "ensemble"))
    for bump, min_improvement, version, promoted in ((0.25, 0.0, 3, True), (0.30, 0.1, 4, False)):
        scores["selected"]["dev"]["score"] = manifest.metrics["dev"]["score"] + bump
        path = tmp_path / f"summary-{version}.json"
        path.write_text(json.dumps(scores))
        out = register_prompt.python_func(
            task="toy", spec=Artifact(uri=task), ensemble=ensemble, summary=Artifact(uri=str(path)),
            registry_uri=str(tmp_path / "registry"), alias="production",
            min_improvement=min_improvement,
            dataset_version="", data_source={}, code_version="test",
            registration=Artifact(uri=str(tmp_path / f"registration-{version}")))
        assert (out.version, out.promoted) == (version, promoted)
    assert reg.manifest("toy", "production").version == 3
    assert [h["version"] for h in reg.alias("toy", "production").history] == [1, 3]


@pytest.mark.pipeline
def test_local_lm_adaptation_pipeline(tiny_t5_dir, toy_task, tmp_path):
    from softprompt.model import load_frozen_lm

    params = {"base_model": str(tiny_t5_dir), "corpus": str(toy_task["spec_path"]),
              "data_dir": str(toy_task["data_dir"]), "steps": 2, "batch_size": 4, "max_tokens": 32}
    out = run_lm_adaptation(params, root=tmp_path)
    assert out["status"] == "SUCCEEDED" and out["model_path"] == out["checkpoint"]
    assert out["metadata"]["objective"] == "prefix_lm" and out["metadata"]["steps"] == 2
    adapted = load_frozen_lm(out["model_path"]).model.state_dict()
    base = load_frozen_lm(str(tiny_t5_dir)).model.state_dict()
    assert adapted.keys() == base.keys() and any(not (adapted[k] == base[k]).all() for k in base)
    assert (Path(out["model_path"]) / "lm_adapt.json").is_file()


@pytest.mark.pipeline
def test_bad_data_references_fail_at_prepare_and_register_nothing(tiny_causal_dir, s3_server,
                                                                  tmp_path, monkeypatch, capfd):
    """A wrong revision, a missing remote object and tampered bytes each stop the pipeline at its
    first step with an error naming the task, revision and path; no version is registered."""
    from dvc_catalogue import DvcCatalogue

    from softprompt.registry import open_registry

    cat = DvcCatalogue(tmp_path / "catalogue", s3_server)
    head = cat.add_task("alpha")
    empty = tmp_path / "aws-config"
    empty.touch()
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    registry_uri = f"s3://{s3_server.create_bucket()}/prompts"
    monkeypatch.setenv("SOFTPROMPT_REGISTRY_CACHE", str(tmp_path / "cache"))
    base = {"task_spec": (cat.root / "tasks" / "alpha.yaml").read_text(),
            "base_model": str(tiny_causal_dir), "registry_uri": registry_uri,
            "prompt_configs": [{"seed": 0}], "prompt_length": 4, "max_steps": 2}
    version = cat.version("alpha")
    wrong_rev = {"data_repo": str(cat.root), "data_rev": "no-such-rev"}
    missing = {"data_remote": cat.remote, "data_version": "f" * 32 + ".dir", "data_rev": head}
    client = s3_server.client()
    key = cat.file_objects("alpha")[0]
    client.put_object(Bucket=cat.bucket, Key=key, Body=b'{"sentence": "forged", "label": 1}\n')
    tampered = {"data_remote": cat.remote, "data_version": version, "data_rev": head}
    expected = {
        "wrong rev": (wrong_rev, "task alpha, rev no-such-rev, path data/alpha"),
        "missing object": (missing, f"task alpha, rev {head}, path data/alpha, remote "
                                    f"{cat.remote}: cannot download the data"),
        "tampered": (tampered, f"but {version} was promised; refusing to train on it"),
    }
    for name, (data, message) in expected.items():
        with pytest.raises(RuntimeError, match="Inner task failed: .*prepare-data"):
            run_prompt_tuning("alpha", base | data, root=tmp_path / name, cache=False)
        captured = capfd.readouterr()
        assert message in captured.out + captured.err, name
    assert open_registry(registry_uri).list_versions("alpha") == []


# ------------------------------------------------------------------ live progress (--log)
def _demo_params(tiny_causal_dir, toy_task) -> list[str]:
    """The demo's parameters, scaled to the tiny model: two prompts trained in parallel."""
    params = {
        "base_model": str(tiny_causal_dir), "data_dir": str(toy_task["data_dir"]),
        "prompt_configs": [{"seed": 0, "init": "class_label"}, {"seed": 1, "init": "class_label"}],
        "prompt_length": 4, "batch_size": 8, "micro_batch_size": 4, "max_steps": 4, "eval_every": 2,
        "max_input_tokens": 64, "eval_batch_size": 16, "nearest_k": 3,
    }
    return [arg for key, value in params.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def _stamped(lines: list[str]) -> list[str]:
    """The lines' text without their "[m:ss] " elapsed-time stamp."""
    return [line.split("] ", 1)[1] for line in lines if line.startswith("[")]


@pytest.mark.pipeline
def test_log_option_shows_live_progress_and_keeps_the_summary(tiny_causal_dir, toy_task,
                                                              tmp_path, capsys, monkeypatch):
    """What `make demo` runs (scripts/demo.sh: the runner with --log), on the tiny model: the
    terminal gets one line per step event, the training progress and the summary lines; the
    log file gets everything. The (thread, line, time) triples the runner's filter saw are
    recorded, and replaying them through a fresh StepProgress gives the same lines."""
    from components.live_progress import StepProgress

    recorded = []
    feed = StepProgress.feed

    def recording(self, source, line, now=None):
        now = self.clock() if now is None else now
        recorded.append((source, line, now))
        return feed(self, source, line, now)

    monkeypatch.setattr(StepProgress, "feed", recording)
    # What an earlier run with parallel steps can leave behind: kfp.local's indenting print.
    real_print = builtins.print
    monkeypatch.setattr(builtins, "print", lambda *a, **k: real_print("    ", *a, **k))
    log = tmp_path / "runs" / "last-run.log"
    argv = ["prompt-tuning", "--task", str(toy_task["spec_path"]), "--root", str(tmp_path),
            "--output", str(tmp_path / "out.json"), "--log", str(log),
            *_demo_params(tiny_causal_dir, toy_task)]
    assert runner_main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    result = json.loads((tmp_path / "out.json").read_text())
    summary = describe(result).splitlines()
    # The summary lines come last, exactly as describe() writes them; the JSON only in the log.
    assert out[-len(summary):] == summary and summary[0].startswith("registered: task toy")
    assert '"manifest_uri"' not in "\n".join(out)
    events = _stamped(out[: -len(summary)])
    assert len(events) == len(out) - len(summary)  # every progress line carries its time
    for step in ("prepare-data", "train-prompt", "train-prompt#2", "ensemble-prompts",
                 "evaluate", "register-prompt"):
        assert f"{step}: started" in events, (step, events)
        ended = [e for e in events if e.startswith(f"{step}: done in ")]
        assert len(ended) == 1 and ended[0].endswith(" (ran)"), (step, events)
    for label in ("train-prompt", "train-prompt#2"):
        evals = [e for e in events if e.startswith(f"{label}: step ") and " | dev " in e]
        assert [e.split(" | ")[0] for e in evals] == [
            f"{label}: step 0/4", f"{label}: step 2/4", f"{label}: step 4/4"
        ]
        assert all(" | dev accuracy " in e and " | ETA " in e for e in evals)
        assert all(" | loss " in e for e in evals[1:])  # step 0 has no training loss yet
        assert f"{label}: training stopped at step 4/4 (max_steps)" in "\n".join(events)
    text = log.read_text()
    # The full log: kfp.local's lines and the steps' own output, as they were printed.
    assert "Executing task" in text and " INFO]: step 2/4 | train loss " in text
    assert '"manifest_uri"' in text and text.rstrip().endswith(summary[-1])

    # The recorded run, replayed: the filter's output depends only on what it was fed.
    replay = io.StringIO()
    view = StepProgress(replay, tty=False)
    for source, line, now in list(recorded):
        feed(view, source, line, now)
    assert replay.getvalue().splitlines() == out[: -len(summary)]

    # On a terminal the step lines between evaluations (none in so short a run: add one per
    # training thread) share one status line, redrawn in place under the permanent lines.
    monkeypatch.setenv("COLUMNS", "300")
    step_line = format_step_line(step=1, max_steps=4, loss=0.5, loss_steps=1, metric="accuracy",
                                 best_score=float("-inf"), elapsed=10.0, eta=(10.0, "step budget"))
    screen = io.StringIO()
    view = StepProgress(screen, tty=True)
    for source, line, now in list(recorded):
        feed(view, source, line, now)
        if "Executing task" in line and "'train-prompt'" in line:
            feed(view, source, f"    [KFP Executor INFO]: {step_line}", now)
    view.close()
    text = screen.getvalue()
    status = "train-prompt: step 1/4 | loss 0.5000 | ETA 10s (step budget)"
    assert f"\r\x1b[K{status} ; train-prompt#2: step 1/4 | loss 0.5000" in text
    assert "(step budget)\n" not in text.replace("ETA 0s (step budget)\n", "")
    shown = [segment.split("\r\x1b[K")[-1] for segment in text.split("\n")]
    assert shown[:-1] == out[: -len(summary)] and shown[-1] == ""

    # Again: every step but the registration comes from the cache, and says so.
    recorded.clear()
    assert runner_main(argv) == 0
    events = _stamped(capsys.readouterr().out.splitlines())
    for step in ("prepare-data", "train-prompt", "ensemble-prompts", "evaluate"):
        assert f"{step}: cached" in events, (step, events)
    assert "train-prompt: started" not in events and "register-prompt: started" in events


@pytest.mark.pipeline
def test_log_option_shows_a_failed_steps_last_lines(tiny_causal_dir, toy_task, tmp_path, capsys):
    """A step that fails: the terminal says which, and shows its last output lines (the error),
    without the need to open the log."""
    log = tmp_path / "last-run.log"
    argv = ["prompt-tuning", "--task", str(toy_task["spec_path"]), "--root", str(tmp_path),
            "--log", str(log), "--no-cache", *_demo_params(tiny_causal_dir, toy_task),
            "--set", f"data_dir={tmp_path / 'no-such-data'}"]
    with pytest.raises(RuntimeError, match="Inner task failed: .*prepare-data"):
        runner_main(argv)
    captured = capsys.readouterr()
    events = _stamped(captured.out.splitlines())
    failed = [e for e in events if e.startswith("prepare-data: FAILURE after ")]
    assert len(failed) == 1 and failed[0].endswith("; its last output lines:"), events
    tail = captured.out.split(failed[0], 1)[1]
    assert "no-such-data" in tail and "train-prompt" not in captured.out
    assert f"the run failed; full log: {log}" in captured.err
    assert "no-such-data" in log.read_text()


def test_runner_help_has_a_worked_example_of_the_log_option(capsys):
    with pytest.raises(SystemExit):
        runner_main(["prompt-tuning", "--help"])
    text = capsys.readouterr().out
    assert "--log FILE" in text and "example:" in text
    assert "--log runs/demo/last-run.log" in text and "train-prompt: step 10/30 | loss" in text


def test_demo_script_shows_progress_and_logs_everything():
    """scripts/demo.sh runs the runner with --log (live progress, then the summary lines) and
    prints where the result, the full log and the pipeline runs are."""
    script = (Path(__file__).parent.parent / "scripts" / "demo.sh").read_text()
    assert '--log "$root/last-run.log"' in script and "| sed" not in script
    assert 'echo "result JSON: $root/last-run.json   full log: $root/last-run.log' in script
