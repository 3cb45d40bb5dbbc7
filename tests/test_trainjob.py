"""Multi-GPU training jobs (components/trainjob/): the TrainJob and PyTorchJob manifests,
strictly valid against the Kubeflow packages' models; the committed manifests as their
rendering; the launcher and the pipeline's train step driving the official `kubernetes` client.

No Kubernetes runs here. The launcher talks to tests/kube_api.py's KubeApiServer, a stand-in
that answers the custom-object REST paths the client uses (create, read, delete, Status bodies,
bearer token) and validates what is created; it runs no job, so each test scripts the job's
conditions and writes what its pods would.
"""

import base64
import dataclasses
import gzip
import io
import json
import shlex
import tarfile
from pathlib import Path

import pytest
import yaml
from kube_api import KubeApiServer, validate_strict

from components import trainjob
from components.cluster import CHECKPOINT_MOUNT, PROJECT_IMAGE, ClusterConfig
from components.trainjob import (
    JobSettings,
    TrainJobError,
    TrainRun,
    launch,
    manifest,
    placement,
    pytorch_job,
    render,
    train_job,
    train_on_cluster,
)

ROOT = Path(__file__).resolve().parent.parent
TRAINING = ROOT / "infra" / "k8s" / "training"
COMMITTED = [TRAINING / "trainjob.yaml", TRAINING / "pytorchjob" / "pytorchjob.yaml"]
KUBERNETES_VERSION = "1.33.0"


def _run(**changes) -> TrainRun:
    run = TrainRun("softprompt-test", f"{CHECKPOINT_MOUNT}/runs/rte", ["--task=rte"], nodes=2,
                   gpus_per_node=4)
    return dataclasses.replace(run, **changes)


def _settings(mount: Path | str = CHECKPOINT_MOUNT, **changes) -> JobSettings:
    settings = ClusterConfig().job_settings()
    return dataclasses.replace(settings, checkpoint_mount=str(mount), poll_s=0.01, **changes)


def _done(kind: str = "TrainJob", ok: bool = True, reason: str = "JobSetCompleted",
          message: str = "") -> dict:
    done = {"TrainJob": "Complete", "PyTorchJob": "Succeeded"}[kind] if ok else "Failed"
    return {"conditions": [{"type": "Created", "status": "True", "reason": "Created"},
                           {"type": done, "status": "True", "reason": reason,
                            "message": message}]}


RUNNING = {"conditions": [{"type": "Created", "status": "True", "reason": "Created"}]}


@pytest.fixture()
def kube():
    with KubeApiServer() as server:
        yield server


# ------------------------------------------------------------------ manifests
def test_trainjob_is_strictly_valid_and_runs_torchrun_on_the_gpu_pool():
    job = train_job(_run(), _settings())
    validate_strict(job)
    cluster = ClusterConfig()
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["metadata"]["namespace"] == "softprompt"
    spec = job["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed", "kind": "ClusterTrainingRuntime"}
    trainer = spec["trainer"]
    assert trainer["image"] == PROJECT_IMAGE and trainer["numNodes"] == 2
    # torchrun takes the node count, processes per node and rendezvous from the PET_* variables
    # of the torch runtime: the command names none of them.
    assert trainer["command"] == ["torchrun"]
    assert trainer["args"] == ["-m", "softprompt.cli", "train",
                               f"--run-dir={CHECKPOINT_MOUNT}/runs/rte", "--task=rte",
                               "--no-progress"]
    assert trainer["resourcesPerNode"]["limits"][cluster.accelerator_type] == "4"
    (patch,) = spec["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    assert node["name"] == "node" and pod["containers"][0]["name"] == "node"
    assert pod["nodeSelector"] == dict([cluster.node_selector])
    assert pod["tolerations"] == [{"key": cluster.toleration[0], "operator": "Equal",
                                   "value": cluster.toleration[1],
                                   "effect": cluster.toleration[2]}]
    claims = {v["name"]: v for v in pod["volumes"]}
    assert claims["checkpoints"]["persistentVolumeClaim"]["claimName"] == cluster.checkpoint_pvc
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts[CHECKPOINT_MOUNT] == "checkpoints" and "/dev/shm" in mounts
    assert pod["securityContext"]["runAsNonRoot"]
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"]


def test_pytorchjob_is_strictly_valid_with_a_master_and_workers():
    import kubernetes_validate

    job = pytorch_job(_run(nodes=3), _settings())
    validate_strict(job)
    spec = job["spec"]
    assert spec["nprocPerNode"] == "4" and spec["runPolicy"]["backoffLimit"] == 0
    replicas = spec["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    for replica in replicas.values():
        # The pod templates are core Kubernetes objects: the cluster's own schema checks them.
        template = {"apiVersion": "v1", "kind": "PodTemplate",
                    "metadata": {"name": "pytorch"}, "template": replica["template"]}
        kubernetes_validate.validate(template, KUBERNETES_VERSION, strict=True)
        (container,) = replica["template"]["spec"]["containers"]
        assert container["name"] == "pytorch" and container["command"] == ["torchrun"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert "Worker" not in pytorch_job(_run(nodes=1), _settings())["spec"]["pytorchReplicaSpecs"]
    assert manifest(_run(), _settings(kind="PyTorchJob"))["kind"] == "PyTorchJob"


def test_strict_validation_names_a_field_the_model_does_not_know():
    job = train_job(_run(), _settings())
    job["spec"]["trainer"]["numNode"] = 2
    with pytest.raises(ValueError, match=r"\.spec\.trainer\.numNode: not in the schema"):
        validate_strict(job)
    job = pytorch_job(_run(), _settings())
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["nodeSelectors"] = {}
    with pytest.raises(ValueError, match=r"Master\.template\.spec\.nodeSelectors"):
        validate_strict(job)
    job = pytorch_job(_run(), _settings())
    job["spec"]["nprocPerNode"] = 4  # the schema's type is a string
    with pytest.raises(ValueError, match="nprocPerNode"):
        validate_strict(job)


def test_bad_runs_placements_and_settings_are_refused():
    with pytest.raises(ValueError, match="DNS-1035 label of at most 26"):
        _run(name="Softprompt")
    with pytest.raises(ValueError, match="at most 26"):
        _run(name="softprompt-a-very-long-job-name")
    with pytest.raises(ValueError, match="nodes >= 1"):
        _run(nodes=0)
    with pytest.raises(ValueError, match="TrainRun.run_dir"):
        _run(train_flags=["--run-dir=/x"])
    assert placement(1, 8) == (1, 1) and placement(8, 8) == (1, 8)
    assert placement(16, 8) == (2, 8) and placement(3, 1) == (3, 1)
    with pytest.raises(ValueError, match="does not fill whole nodes of 8 GPUs"):
        placement(12, 8)
    with pytest.raises(ValueError, match="keep must be one of"):
        _settings(keep="sometimes")
    with pytest.raises(ValueError, match="train_job_kind must be one of"):
        ClusterConfig(train_job_kind="MPIJob")
    settings = ClusterConfig(node_gpus=8, train_job_kind="PyTorchJob").job_settings()
    assert (settings.node_gpus, settings.kind) == (8, "PyTorchJob")


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_committed_manifests_are_the_rendering(path, tmp_path, monkeypatch):
    """Each committed manifest is what the command in its header writes (one source)."""
    command = path.read_text().splitlines()[1].removeprefix("#   python -m components.trainjob ")
    monkeypatch.chdir(tmp_path)  # the header's relative --out lands here
    assert render.main(shlex.split(command)) == 0
    out = tmp_path / path.relative_to(ROOT)
    assert out.read_text() == path.read_text(), f"render {path.name} again: {command}"
    validate_strict(yaml.safe_load(path.read_text()))


# ------------------------------------------------------------------ launcher
def test_launch_waits_for_complete_and_deletes_the_job(kube):
    job = train_job(_run(), _settings())
    kube.statuses["softprompt-test"] = [{}, RUNNING, RUNNING, _done()]
    lines = []
    outcome = launch(job, _settings(), kube.client(), log=lines.append)
    assert (outcome.condition, outcome.reason, outcome.attached) == ("Complete",
                                                                    "JobSetCompleted", False)
    assert (outcome.name, outcome.namespace) == ("softprompt-test", "softprompt")
    assert kube.objects == {}  # keep="failed": a completed job is deleted
    created = kube.requests[0]
    assert created["method"] == "POST" and created["body"] == job
    assert created["path"] == "/apis/trainer.kubeflow.org/v1alpha1/namespaces/softprompt/trainjobs"
    assert lines[0] == "created TrainJob softprompt-test in namespace softprompt"
    assert "TrainJob softprompt-test in namespace softprompt: Complete=True" in lines
    # The service account's Role grants every verb the launcher used.
    role = yaml.safe_load_all((ROOT / "infra/k8s/base/pipeline-rbac.yaml").read_text())
    rules = next(iter(role))["rules"]
    granted = {(v, r) for rule in rules for r in rule["resources"] for v in rule["verbs"]}
    assert kube.verbs() <= granted


def test_launch_of_a_pytorchjob_keeps_it_when_asked(kube):
    settings = _settings(kind="PyTorchJob", keep="all")
    kube.statuses["softprompt-test"] = [RUNNING, _done("PyTorchJob")]
    outcome = launch(manifest(_run(), settings), settings, kube.client(), log=lambda _: None)
    assert outcome.condition == "Succeeded"
    assert list(kube.objects) == [("pytorchjobs", "softprompt", "softprompt-test")]


def test_a_failed_job_raises_naming_job_namespace_and_reason_and_stays(kube):
    kube.statuses["softprompt-test"] = [RUNNING, _done(ok=False, reason="TrainingFailed",
                                                       message="node-0-0: exit code 1")]
    with pytest.raises(TrainJobError) as err:
        launch(train_job(_run(), _settings()), _settings(), kube.client(), log=lambda _: None)
    assert str(err.value) == ("TrainJob softprompt-test in namespace softprompt failed: "
                              "TrainingFailed: node-0-0: exit code 1")
    assert list(kube.objects)  # kept for its pods' logs


def test_a_job_past_its_deadline_is_deleted_and_fails(kube):
    kube.statuses["softprompt-test"] = [RUNNING]
    settings = _settings(timeout_s=1)
    with pytest.raises(TrainJobError, match=r"softprompt-test in namespace softprompt has no "
                       r"terminal condition after its deadline.*\(1 s\)"):
        launch(train_job(_run(), settings), settings, kube.client(), log=lambda _: None)
    assert kube.objects == {}  # it must not hold GPUs on
    assert kube.requests[-2]["method"] == "DELETE"


def test_an_existing_job_of_the_same_name(kube):
    """A retried step finds its own job: it waits for a running or completed one and replaces a
    failed one (the new job resumes from checkpoint.pt); another run's job is an error."""
    settings, quiet = _settings(), (lambda _: None)
    job = train_job(_run(), settings)
    kube.client().create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1",
                                                  "softprompt", "trainjobs", job)
    kube.statuses["softprompt-test"] = [RUNNING, _done()]
    assert launch(job, settings, kube.client(), log=quiet).attached is True
    assert [r["method"] for r in kube.requests].count("POST") == 2  # one refused with 409

    kube.client().create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1",
                                                  "softprompt", "trainjobs", job)
    kube.statuses["softprompt-test"] = [_done(ok=False, reason="DeadlineExceeded"), RUNNING,
                                        _done()]
    kube.linger = 2  # pods still stopping: the launcher waits until the old job is gone
    outcome = launch(job, settings, kube.client(), log=quiet)
    assert outcome.attached is False and outcome.condition == "Complete"
    assert [r["method"] for r in kube.requests[-12:]].count("DELETE") == 2  # old, then done

    kube.linger = 0
    other = train_job(_run(run_dir=f"{CHECKPOINT_MOUNT}/runs/other"), settings)
    kube.client().create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1",
                                                  "softprompt", "trainjobs", other)
    with pytest.raises(TrainJobError, match=r"TrainJob softprompt-test in namespace softprompt "
                       r"already exists for another run directory \(/mnt/checkpoints/runs/"
                       r"other\); delete it or choose another name"):
        launch(job, settings, kube.client(), log=quiet)


def test_api_refusals_say_what_to_do(kube):
    settings = _settings()
    job = train_job(_run(), settings)
    kube.absent.add("trainjobs")
    with pytest.raises(TrainJobError, match=r"cannot create TrainJob softprompt-test in namespace "
                       r"softprompt: 404 .*install the Kubeflow Trainer"):
        launch(job, settings, kube.client(), log=lambda _: None)
    kube.absent.clear()
    with pytest.raises(TrainJobError, match="401 Unauthorized"):
        launch(job, settings, kube.client(token="expired"), log=lambda _: None)
    job["spec"]["trainer"]["numNode"] = 2  # what a real API server refuses, as the schema does
    with pytest.raises(TrainJobError, match=r"422 .*numNode: not in the schema"):
        launch(job, settings, kube.client(), log=lambda _: None)


# ------------------------------------------------------------------ the pipeline's train step
def _pods_write_the_run(kube, records: list[dict], result: dict):
    """What the job's pods leave in the run directory, written when the job is created."""

    def write(obj):
        run_dir = Path(obj["metadata"]["annotations"]["softprompt.io/run-dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (run_dir / "result.json").write_text(json.dumps(result))
        (run_dir / "prompt.safetensors").write_bytes(b"prompt")
        kube.statuses[obj["metadata"]["name"]] = [RUNNING, _done()]

    return write


def test_train_on_cluster_stages_inputs_and_the_pods_command_parses(kube, toy_task, tmp_path):
    from softprompt.cli import build_parser, train_config
    from softprompt.training.config import TrainConfig

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "train.jsonl").write_text("{}\n")
    config = TrainConfig(task="toy", prepared_dir=str(prepared), batch_size=8,
                         micro_batch_size=4, seed=3)
    mount = tmp_path / "mnt"
    run_dir = str(mount / "prompt-runs" / "job-1" / "class_label-seed3")
    result = {"best_step": 2, "steps": 4, "dev": {"score": 0.75}, "train_seconds": 1.0}
    kube.on_create = _pods_write_the_run(kube, [], result)
    settings = _settings(mount)
    assert train_on_cluster(config, run_dir, str(toy_task["spec_path"]), 2, settings,
                            kube.client(), log=lambda _: None) == result
    created = kube.requests[0]["body"]
    assert created["metadata"]["name"] == trainjob.job_name(run_dir)
    assert created["metadata"]["annotations"]["softprompt.io/prompt"] == "class_label-seed3"
    trainer = created["spec"]["trainer"]
    assert trainer["numNodes"] == 2  # node_gpus 1: two nodes of one GPU
    # The pods' command, read by the real command line: the same config, inputs on the volume.
    assert trainer["args"][:2] == ["-m", "softprompt.cli"]
    args = build_parser().parse_args(trainer["args"][2:])
    stage = Path(f"{run_dir}.inputs")
    assert args.run_dir == run_dir
    assert train_config(args) == dataclasses.replace(config, task=str(stage / "spec.yaml"),
                                                     prepared_dir=str(stage / "prepared"))
    assert (stage / "spec.yaml").read_text() == toy_task["spec_path"].read_text()
    assert (stage / "prepared" / "train.jsonl").is_file()

    with pytest.raises(ValueError, match="pods see only the checkpoint volume"):
        train_on_cluster(config, str(tmp_path / "elsewhere"), str(toy_task["spec_path"]), 2,
                         settings, kube.client())
    with pytest.raises(ValueError, match="micro-batches of 4 on 4 processes"):  # before a job
        train_on_cluster(config, run_dir, str(toy_task["spec_path"]), 4,
                         dataclasses.replace(settings, node_gpus=4), kube.client())


def test_train_step_with_num_gpus_launches_a_trainjob(kube, toy_task, tmp_path, monkeypatch):
    """train_prompt with num_gpus=2, as the compiled step runs it: `job_launch` importable by its
    bare name (the pipeline embeds its folder), the settings in its environment, the client
    configured from a kubeconfig naming the stand-in."""
    from kfp.dsl import HTML, Artifact, Dataset, Metrics, Model

    from components.steps import prepare_data, train_prompt

    monkeypatch.syspath_prepend(str(ROOT / "components" / "trainjob"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
        "clusters": [{"name": "stand-in", "cluster": {"server": kube.url}}],
        "users": [{"name": "pipeline", "user": {"token": kube.token}}],
        "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in",
                                                       "user": "pipeline"}}]}))
    # The client reads $KUBECONFIG when it is imported, so the test sets what it read.
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION",
                        str(kubeconfig))
    mount = tmp_path / "mnt"
    monkeypatch.setenv(trainjob.SETTINGS_ENV, _settings(mount).to_json())
    spec, train_dev = Artifact(uri=str(tmp_path / "spec")), Dataset(uri=str(tmp_path / "td"))
    prepare_data.python_func(
        task="toy", task_spec=toy_task["spec_path"].read_text(), data_dir=str(toy_task["data_dir"]),
        data_repo="", data_rev="", data_remote="", data_path="", data_version="",
        max_train_examples=0, max_dev_examples=16, max_test_examples=0, seed=0,
        spec=spec, train_dev=train_dev, test_set=Dataset(uri=str(tmp_path / "test")))
    result = {"best_step": 2, "steps": 4, "dev": {"score": 0.5}, "train_seconds": 3.0}
    records = [{"event": "eval", "step": s, "score": v} for s, v in ((0, 0.25), (2, 0.5))]
    kube.on_create = _pods_write_the_run(kube, records, result)
    run = Model(uri=str(tmp_path / "run"))
    train_prompt.python_func(
        task="toy", spec=spec, train_dev=train_dev, base_model="smollm2-135m",
        prompt_config={"seed": 1.0, "init": "class_label"}, prompt_length=4, recipe="stable",
        optimizer="adafactor", lr=0.3, batch_size=8, micro_batch_size=4, max_steps=4,
        max_minutes=0.0, eval_every=2, patience=0, eval_max_examples=0, eval_batch_size=16,
        max_input_tokens=64, checkpoint_root=str(mount / "prompt-runs"), run_key="job-1",
        run=run, metrics=Metrics(uri=str(tmp_path / "metrics")),
        curve=HTML(uri=str(tmp_path / "curve")), num_gpus=2)
    assert kube.requests[0]["body"]["kind"] == "TrainJob"
    assert run.metadata["dev_score"] == 0.5 and run.metadata["dev_curve"] == [[0, 0.25], [2, 0.5]]
    assert (tmp_path / "run" / "prompt.safetensors").read_bytes() == b"prompt"


# ------------------------------------------------------------------ the pipeline
def test_pipeline_compiles_with_num_gpus_and_its_train_step_carries_the_launcher(tmp_path):
    """num_gpus (default 1) reaches the train step, which holds the job launcher and the
    cluster's job settings. KFP cannot collect a dsl.OneOf of two loop branches, so the train
    step launches the job itself (components/pipelines.py, _train_step) instead of a separate
    step under a condition: no launcher step and no condition exist in the IR."""
    from components.compile import compile_pipelines

    paths = {p.stem: p for p in compile_pipelines(tmp_path, ClusterConfig(node_gpus=8))}
    spec = next(yaml.safe_load_all(paths["prompt_tuning"].read_text()))
    param = spec["root"]["inputDefinitions"]["parameters"]["num_gpus"]
    assert param["parameterType"] == "NUMBER_INTEGER" and param["defaultValue"] == 1
    tasks = {name: task for comp in spec["components"].values()
             for name, task in comp.get("dag", {}).get("tasks", {}).items()}
    assert tasks["train-prompt"]["inputs"]["parameters"]["num_gpus"] == {
        "componentInputParameter": "pipelinechannel--num_gpus"}
    assert not any("condition" in name or "triggerPolicy" in task for name, task in
                   tasks.items())
    container = spec["deploymentSpec"]["executors"]["exec-train-prompt"]["container"]
    (env,) = [e for e in container["env"] if e["name"] == trainjob.SETTINGS_ENV]
    assert JobSettings(**json.loads(env["value"])) == ClusterConfig(node_gpus=8).job_settings()
    source = container["command"][-1]
    archive = source.split("__KFP_EMBEDDED_ARCHIVE_B64 = '", 1)[1].split("'", 1)[0]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(base64.b64decode(archive)))) as tar:
        embedded = {m.name.removeprefix("./"): tar.extractfile(m).read()
                    for m in tar.getmembers() if m.isfile()}
    folder = ROOT / "components" / "trainjob"
    assert embedded == {name: (folder / name).read_bytes() for name in trainjob.EMBEDDED}
    assert "from job_launch import train_on_cluster" in source
