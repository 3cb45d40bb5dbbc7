"""Prompt training on several GPUs as a Kubeflow Trainer job, built here and launched from a step.

One run is `torchrun -m softprompt.cli train --run-dir RUN ...` on every node of a job:

    TrainJob    trainer.kubeflow.org/v1alpha1 (Kubeflow Trainer v2.2+) on the
                ClusterTrainingRuntime `torch-distributed`: its torch plugin sets PET_NNODES,
                PET_NPROC_PER_NODE (from the GPUs in resourcesPerNode), PET_NODE_RANK,
                PET_MASTER_ADDR and PET_MASTER_PORT, which torchrun reads, so the command names
                none of them. The GPU pool, the checkpoint volume and the restricted security
                context go in a runtime patch.
    PyTorchJob  kubeflow.org/v1 (Training Operator v1, older clusters): a Master and nodes - 1
                Workers, nprocPerNode GPUs each; the operator sets the same PET_* variables.

Every process reads and resumes the same run directory on the ReadWriteMany checkpoint volume,
so a job started again on a run directory holding checkpoint.pt resumes it
(softprompt/distributed.py, softprompt.training).

`train_job()` and `pytorch_job()` are pure: the same functions render the committed manifests
(`python -m components.trainjob render --help`; infra/k8s/training/) and the jobs the pipeline
launches. `launch()` creates a job through the Kubernetes API (the official client's
CustomObjectsApi), waits for its terminal condition until a deadline, deletes or keeps it, and
raises TrainJobError naming the job, its namespace and the condition's reason and message.
`train_on_cluster()` is what the pipeline's train step calls when a run asks for more than one
GPU: it stages the step's inputs on the checkpoint volume, launches the job and returns the
run's result.json.

This module imports only the standard library at module level (the kubernetes client and
softprompt lazily): the pipeline embeds this file in the train step, whose image does not hold
the components package.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import posixpath
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

SETTINGS_ENV = "SOFTPROMPT_TRAIN_JOB"  # JSON of JobSettings, set on the train step by the pipeline
KINDS = ("TrainJob", "PyTorchJob")
KEEP = ("failed", "all", "none")
PATCH_MANAGER = "softprompt.io/pipeline"  # owner of the TrainJob's runtime patch
NODE = "node"  # the torch runtime's replicated job and container
# JobSet names pods <job>-node-<i>-<j> with the job name as subdomain too, so a label holding both
# must stay within 63 characters: 2 x 26 + the rest.
MAX_NAME = 26
NAME_PATTERN = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
PART_OF = {"app.kubernetes.io/part-of": "softprompt",
           "app.kubernetes.io/component": "prompt-training"}
RUN_DIR_ANNOTATION = "softprompt.io/run-dir"


class Resource(NamedTuple):
    """Where a kind of job lives in the Kubernetes API, and its terminal conditions."""

    group: str
    version: str
    plural: str
    succeeded: str
    failed: str = "Failed"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


RESOURCES = {
    "TrainJob": Resource("trainer.kubeflow.org", "v1alpha1", "trainjobs", "Complete"),
    "PyTorchJob": Resource("kubeflow.org", "v1", "pytorchjobs", "Succeeded"),
}


@dataclass
class JobSettings:
    """Where and how training jobs run: components.cluster.ClusterConfig fills it for a cluster."""

    namespace: str = field(metadata={"help": "Namespace the jobs are created in."})
    image: str = field(metadata={"help": "The project image every node runs."})
    node_selector: tuple[str, str] = field(metadata={"help": "GPU pool node label (key, value)."})
    toleration: tuple[str, str, str] = field(
        metadata={"help": "The GPU pool's taint (key, value, effect)."})
    checkpoint_pvc: str = field(metadata={"help": "ReadWriteMany PVC holding the run dirs."})
    checkpoint_mount: str = field(
        default="/mnt/checkpoints", metadata={"help": "Where the PVC is mounted in every pod."})
    accelerator_type: str = field(
        default="nvidia.com/gpu", metadata={"help": "Resource name of a GPU."})
    node_gpus: int = field(
        default=1, metadata={"help": "GPUs on one node of the pool: larger runs span nodes."})
    kind: str = field(default="TrainJob", metadata={"help": "TrainJob or PyTorchJob."})
    runtime: str = field(
        default="torch-distributed", metadata={"help": "ClusterTrainingRuntime of TrainJobs."})
    cpu: str = field(default="4", metadata={"help": "CPU request of each node's pod."})
    memory: str = field(default="16Gi", metadata={"help": "Memory of each node's pod."})
    timeout_s: int = field(
        default=24 * 3600, metadata={"help": "Deadline of a job, also set on the job itself."})
    keep: str = field(
        default="failed",
        metadata={"help": "Finished jobs left in the cluster: failed (for their pods' logs), all "
                  "or none."})
    poll_s: float = field(default=10.0, metadata={"help": "Seconds between status reads."})

    def __post_init__(self) -> None:
        self.node_selector = tuple(self.node_selector)
        self.toleration = tuple(self.toleration)
        if self.kind not in KINDS:
            raise ValueError(f"JobSettings.kind must be one of {KINDS}, got {self.kind!r}")
        if self.keep not in KEEP:
            raise ValueError(f"JobSettings.keep must be one of {KEEP}, got {self.keep!r}")
        if self.node_gpus < 1 or self.timeout_s < 1 or self.poll_s <= 0:
            raise ValueError("JobSettings.node_gpus, timeout_s and poll_s must be positive, got "
                             f"{self.node_gpus}, {self.timeout_s}, {self.poll_s}")
        if len(self.node_selector) != 2 or len(self.toleration) != 3:
            raise ValueError("JobSettings.node_selector is (key, value) and toleration (key, "
                             f"value, effect), got {self.node_selector!r}, {self.toleration!r}")
        if not posixpath.isabs(self.checkpoint_mount):
            raise ValueError(f"JobSettings.checkpoint_mount must be absolute: "
                             f"{self.checkpoint_mount!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_env(cls) -> JobSettings:
        """The settings the pipeline compiled into the step's environment."""
        raw = os.environ.get(SETTINGS_ENV)
        if not raw:
            raise RuntimeError(f"{SETTINGS_ENV} is not set: a run with num_gpus > 1 trains on "
                               "the cluster, from a pipeline compiled by components.pipelines")
        return cls(**json.loads(raw))


@dataclass
class TrainRun:
    """One prompt-training run on nodes x gpus_per_node processes."""

    name: str = field(metadata={"help": f"The job's name: a DNS-1035 label, {MAX_NAME} at most."})
    run_dir: str = field(metadata={"help": "The run directory, on the checkpoint volume."})
    train_flags: list[str] = field(
        metadata={"help": "`softprompt train` flags besides --run-dir (--task=..., --config=...)."})
    nodes: int = field(default=1, metadata={"help": "Nodes, one torchrun each."})
    gpus_per_node: int = field(default=1, metadata={"help": "GPUs (processes) per node."})
    annotations: dict[str, str] = field(
        default_factory=dict, metadata={"help": "Extra annotations (task, prompt) for people."})

    def __post_init__(self) -> None:
        if len(self.name) > MAX_NAME or not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(f"job name {self.name!r} must be a DNS-1035 label of at most "
                             f"{MAX_NAME} characters (lower-case letters, digits, '-')")
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise ValueError(f"a run needs nodes >= 1 and gpus_per_node >= 1, got {self.nodes} "
                             f"and {self.gpus_per_node}")
        if any(f.startswith("--run-dir") for f in self.train_flags):
            raise ValueError("give the run directory as TrainRun.run_dir, not in train_flags")


class Placement(NamedTuple):
    nodes: int
    gpus_per_node: int


def placement(num_gpus: int, node_gpus: int) -> Placement:
    """Whole nodes of the pool for `num_gpus` GPUs: one node while they fit on one."""
    if num_gpus < 1:
        raise ValueError(f"num_gpus must be >= 1, got {num_gpus}")
    if num_gpus <= node_gpus:
        return Placement(1, num_gpus)
    if num_gpus % node_gpus:
        raise ValueError(f"num_gpus={num_gpus} does not fill whole nodes of {node_gpus} GPUs "
                         "(the pool's node_gpus): ask for a multiple")
    return Placement(num_gpus // node_gpus, node_gpus)


# ------------------------------------------------------------------ manifests
def torchrun_args(run: TrainRun) -> list[str]:
    """Arguments of `torchrun`: the rendezvous and process counts come from PET_* variables."""
    return ["-m", "softprompt.cli", "train", f"--run-dir={run.run_dir}", *run.train_flags,
            "--no-progress"]


def _metadata(run: TrainRun, settings: JobSettings) -> dict:
    annotations = {RUN_DIR_ANNOTATION: run.run_dir, **run.annotations}
    return {"name": run.name, "namespace": settings.namespace, "labels": dict(PART_OF),
            "annotations": annotations}


def _resources(run: TrainRun, settings: JobSettings) -> dict:
    gpus = str(run.gpus_per_node)
    return {"requests": {"cpu": settings.cpu, "memory": settings.memory,
                         settings.accelerator_type: gpus},
            "limits": {"memory": settings.memory, settings.accelerator_type: gpus}}


def _volumes(settings: JobSettings) -> list[dict]:
    return [
        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": settings.checkpoint_pvc}},
        # NCCL and the data loader exchange tensors through shared memory.
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
    ]


def _volume_mounts(settings: JobSettings) -> list[dict]:
    return [{"name": "checkpoints", "mountPath": settings.checkpoint_mount},
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "cache", "mountPath": "/home/softprompt/.cache"}]


# The namespace enforces the restricted Pod Security Standard; the root filesystem stays read-only.
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                      "capabilities": {"drop": ["ALL"]}}


def _placement(settings: JobSettings) -> dict:
    """The GPU pool: its node label and the taint its nodes carry."""
    label, value = settings.node_selector
    key, taint, effect = settings.toleration
    return {"nodeSelector": {label: value},
            "tolerations": [{"key": key, "operator": "Equal", "value": taint, "effect": effect}]}


def train_job(run: TrainRun, settings: JobSettings) -> dict:
    """The TrainJob (trainer.kubeflow.org/v1alpha1) of `run` on the torch runtime."""
    # No serviceAccountName: the pods need no identity (data, model and run directory are on
    # the volume), so they keep the runtime's, which is the namespace's default account.
    pod = {**_placement(settings), "securityContext": dict(POD_SECURITY),
           "volumes": _volumes(settings),
           "containers": [{"name": NODE, "securityContext": dict(CONTAINER_SECURITY),
                           "volumeMounts": _volume_mounts(settings)}]}
    replicated = {"name": NODE, "template": {"spec": {"template": {"spec": pod}}}}
    patch = {"manager": PATCH_MANAGER,
             "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [replicated]}}}}
    trainer = {"image": settings.image, "command": ["torchrun"], "args": torchrun_args(run),
               "numNodes": run.nodes, "resourcesPerNode": _resources(run, settings)}
    spec = {"runtimeRef": {"name": settings.runtime, "kind": "ClusterTrainingRuntime"},
            "activeDeadlineSeconds": settings.timeout_s, "trainer": trainer,
            "runtimePatches": [patch]}
    return {"apiVersion": RESOURCES["TrainJob"].api_version, "kind": "TrainJob",
            "metadata": _metadata(run, settings), "spec": spec}


def pytorch_job(run: TrainRun, settings: JobSettings) -> dict:
    """The PyTorchJob (kubeflow.org/v1) of `run`: a Master and nodes - 1 Workers."""
    container = {"name": "pytorch", "image": settings.image, "command": ["torchrun"],
                 "args": torchrun_args(run), "resources": _resources(run, settings),
                 "securityContext": dict(CONTAINER_SECURITY),
                 "volumeMounts": _volume_mounts(settings)}
    # Training pods need no identity: data, model and run directory are on the volume.
    pod = {**_placement(settings), "automountServiceAccountToken": False,
           "securityContext": dict(POD_SECURITY), "volumes": _volumes(settings),
           "containers": [container]}
    # Never restarted in place: one lost process stops them all, and a new job resumes.
    replica = {"restartPolicy": "Never", "template": {"spec": pod}}
    replicas = {"Master": {"replicas": 1, **replica}}
    if run.nodes > 1:
        replicas["Worker"] = {"replicas": run.nodes - 1, **replica}
    spec = {"nprocPerNode": str(run.gpus_per_node), "pytorchReplicaSpecs": replicas,
            "runPolicy": {"backoffLimit": 0, "cleanPodPolicy": "None",
                          "activeDeadlineSeconds": settings.timeout_s}}
    return {"apiVersion": RESOURCES["PyTorchJob"].api_version, "kind": "PyTorchJob",
            "metadata": _metadata(run, settings), "spec": spec}


def manifest(run: TrainRun, settings: JobSettings) -> dict:
    """The job of `run` in the kind `settings` asks for."""
    return train_job(run, settings) if settings.kind == "TrainJob" else pytorch_job(run, settings)


# ------------------------------------------------------------------ launcher
class TrainJobError(RuntimeError):
    """A training job that failed, ran past its deadline or could not be started."""


class JobOutcome(NamedTuple):
    kind: str
    name: str
    namespace: str
    condition: str  # the terminal condition's type (Complete, Succeeded)
    reason: str
    message: str
    attached: bool  # True: the job already existed (a retried step) and was waited for
    seconds: float


def custom_objects_api(api_client=None):
    """The official client's CustomObjectsApi: in a pod its service account, else kubeconfig."""
    from kubernetes import client, config

    if api_client is None:
        configuration = client.Configuration()  # not the process-wide default
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
        api_client = client.ApiClient(configuration)
    return client.CustomObjectsApi(api_client)


def _where(job: dict) -> str:
    meta = job["metadata"]
    return f"{job['kind']} {meta['name']} in namespace {meta['namespace']}"


def _api_error(err, job: dict, verb: str) -> TrainJobError:
    """A TrainJobError for an API answer, with what to do about the usual ones."""
    res = RESOURCES[job["kind"]]
    try:
        detail = json.loads(err.body).get("message", "")
    except (TypeError, ValueError):
        detail = str(err.body or "")
    hint = {404: f" (no {res.plural}.{res.group}/{res.version} in this cluster: install the "
                 "Kubeflow Trainer or the Training Operator, or choose the other kind)",
            403: f" (the service account may not {verb} {res.plural} here: "
                 "infra/k8s/base/pipeline-rbac.yaml)"}.get(err.status, "")
    return TrainJobError(f"cannot {verb} {_where(job)}: {err.status} {err.reason}: "
                         f"{detail}{hint}")


def terminal_condition(job: dict) -> dict | None:
    """The job's terminal condition (succeeded or failed, status True), if it has one."""
    res = RESOURCES[job["kind"]]
    for cond in reversed((job.get("status") or {}).get("conditions") or []):
        if cond.get("type") in (res.succeeded, res.failed) and cond.get("status") == "True":
            return cond
    return None


def _get(api, job: dict) -> dict | None:
    from kubernetes.client.exceptions import ApiException

    res, meta = RESOURCES[job["kind"]], job["metadata"]
    try:
        return api.get_namespaced_custom_object(res.group, res.version, meta["namespace"],
                                                res.plural, meta["name"])
    except ApiException as err:
        if err.status == 404:
            return None
        raise _api_error(err, job, "get") from None


def _delete(api, job: dict, timeout_s: float, poll_s: float) -> None:
    """Deletes the job (its pods go with it) and waits until it is gone."""
    from kubernetes.client.exceptions import ApiException

    res, meta = RESOURCES[job["kind"]], job["metadata"]
    try:
        api.delete_namespaced_custom_object(res.group, res.version, meta["namespace"],
                                            res.plural, meta["name"],
                                            propagation_policy="Background")
    except ApiException as err:
        if err.status != 404:
            raise _api_error(err, job, "delete") from None
    deadline = time.monotonic() + timeout_s
    while _get(api, job) is not None:
        if time.monotonic() > deadline:
            raise TrainJobError(f"{_where(job)} was deleted but is still there after "
                                f"{timeout_s:.0f} s")
        time.sleep(poll_s)


def _create(api, job: dict, settings: JobSettings, log) -> bool:
    """Creates the job; True when one of the same name and run directory was there already.

    A job of that name for another run directory is an error. The same run's job is waited
    for while it runs or once it completed; a failed one is replaced, and the new one resumes
    from the run's checkpoint.pt."""
    from kubernetes.client.exceptions import ApiException

    res, meta = RESOURCES[job["kind"]], job["metadata"]
    try:
        api.create_namespaced_custom_object(res.group, res.version, meta["namespace"],
                                            res.plural, job)
        log(f"created {_where(job)}")
        return False
    except ApiException as err:
        if err.status != 409:
            raise _api_error(err, job, "create") from None
    existing = _get(api, job)
    if existing is None:  # deleted since: create it once more
        return _create(api, job, settings, log)
    theirs = (existing.get("metadata", {}).get("annotations") or {}).get(RUN_DIR_ANNOTATION)
    if theirs != meta["annotations"][RUN_DIR_ANNOTATION]:
        raise TrainJobError(f"{_where(job)} already exists for another run directory "
                            f"({theirs}); delete it or choose another name")
    cond = terminal_condition(existing)
    if cond is None or cond["type"] == res.succeeded:
        log(f"{_where(job)} exists for this run directory: waiting for it")
        return True
    log(f"{_where(job)} failed before ({cond.get('reason')}): replacing it")
    _delete(api, job, settings.timeout_s, settings.poll_s)
    api.create_namespaced_custom_object(res.group, res.version, meta["namespace"], res.plural,
                                        job)
    return False


def _wait(api, job: dict, deadline: float, poll_s: float, log) -> dict:
    """Reads the job until it has a terminal condition; returns that condition."""
    seen = None
    while True:
        current = _get(api, job)
        if current is None:
            raise TrainJobError(f"{_where(job)} was deleted before it finished")
        conditions = (current.get("status") or {}).get("conditions") or []
        latest = [(c.get("type"), c.get("status")) for c in conditions[-1:]]
        if latest != seen:
            seen = latest
            log(f"{_where(job)}: {', '.join(f'{t}={s}' for t, s in latest) or 'no condition'}")
        cond = terminal_condition(current)
        if cond is not None:
            return cond
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{_where(job)} has no terminal condition after its deadline; "
                               f"last conditions: {conditions}")
        time.sleep(poll_s)


def launch(job: dict, settings: JobSettings, api=None, log=print) -> JobOutcome:
    """Creates `job`, waits for its terminal condition until settings.timeout_s, deletes or
    keeps it (settings.keep), and returns how it ended; raises TrainJobError on failure."""
    api = api or custom_objects_api()
    res, meta = RESOURCES[job["kind"]], job["metadata"]
    started = time.monotonic()
    attached = _create(api, job, settings, log)
    try:
        cond = _wait(api, job, started + settings.timeout_s, settings.poll_s, log)
    except TimeoutError as err:
        if settings.keep != "all":  # a job past its deadline must not hold GPUs on
            _delete(api, job, settings.timeout_s, settings.poll_s)
        raise TrainJobError(f"{err} ({settings.timeout_s} s)") from None
    failed = cond["type"] == res.failed
    if settings.keep == "none" or (settings.keep == "failed" and not failed):
        _delete(api, job, settings.timeout_s, settings.poll_s)
    reason, message = cond.get("reason", ""), cond.get("message", "")
    if failed:
        raise TrainJobError(f"{_where(job)} failed: {reason}: {message}")
    return JobOutcome(job["kind"], meta["name"], meta["namespace"], cond["type"], reason,
                      message, attached, round(time.monotonic() - started, 1))


# ------------------------------------------------------------------ the pipeline's train step
def job_name(run_dir: str) -> str:
    """A job name that is the same for every retry of one run directory."""
    return "softprompt-" + hashlib.sha256(run_dir.encode()).hexdigest()[:10]


def stage_inputs(config, run_dir: str, spec_path: str) -> Path:
    """Copies the step's prepared data and task spec beside the run directory on the volume
    (the job's pods cannot see the step's artifacts) and writes the run's config there; returns
    the config file. The paths depend on run_dir only, so a retry writes the same config."""
    stage = Path(f"{run_dir}.inputs")
    stage.mkdir(parents=True, exist_ok=True)
    prepared = str(stage / "prepared") if config.prepared_dir else None
    staged = dataclasses.replace(config, task=str(stage / "spec.yaml"), prepared_dir=prepared)
    shutil.copyfile(spec_path, staged.task)
    if prepared:
        shutil.copytree(config.prepared_dir, prepared, dirs_exist_ok=True)
    path = stage / "train-config.json"
    path.write_text(json.dumps(staged.to_dict(), indent=2))
    return path


def train_on_cluster(config, run_dir: str, spec_path: str, num_gpus: int,
                     settings: JobSettings | None = None, api=None, log=print) -> dict:
    """Trains `config` (a TrainConfig) on `num_gpus` GPUs as a job of the cluster and returns
    the run's result (run_dir/result.json), as softprompt.training.prompt_tuning.train does.

    run_dir must be on the checkpoint volume, which every pod of the job mounts; holding a
    checkpoint.pt, the run resumes from it."""
    from softprompt.training.config import check_world_split

    settings = settings or JobSettings.from_env()
    mount = settings.checkpoint_mount.rstrip("/") + "/"
    if not os.path.abspath(run_dir).startswith(mount):
        raise ValueError(f"num_gpus={num_gpus} trains on a {settings.kind} whose pods see only "
                         f"the checkpoint volume ({settings.checkpoint_mount}), but the run "
                         f"directory is {run_dir}: set checkpoint_root under it")
    nodes, per_node = placement(num_gpus, settings.node_gpus)
    check_world_split(config.batch_size, config.micro_batch_size, nodes * per_node)
    config_file = stage_inputs(config, run_dir, spec_path)
    if os.path.isfile(os.path.join(run_dir, "checkpoint.pt")):
        log(f"{run_dir} holds checkpoint.pt: the job resumes it")
    run = TrainRun(job_name(run_dir), run_dir, [f"--config={config_file}"], nodes, per_node,
                   {"softprompt.io/prompt": f"{config.prompt.init}-seed{config.seed}"})
    outcome = launch(manifest(run, settings), settings, api, log)
    log(f"{outcome.kind} {outcome.name}: {outcome.condition} after {outcome.seconds} s")
    return json.loads(Path(run_dir, "result.json").read_text())


# ------------------------------------------------------------------ render
EXAMPLE_FLAGS = ["--task=sst2", "--data-dir=/mnt/checkpoints/data", "--train-batch-size=32",
                 "--micro-batch-size=8", "--max-steps=2000", "--eval-every=100"]
HEADER = """\
# Written by
#   python -m components.trainjob {args}
# Change that command's options, not this file: tests/test_trainjob.py checks the two agree.
# {what}
# NODES x GPUS_PER_NODE processes, one torchrun per node; every step's batch is split over all
# of them and the prompt gradient all-reduced, so the result matches one process on the same
# batch. The train batch size must be a multiple of micro-batch x processes.
# A run directory that holds checkpoint.pt is resumed: after a failure, delete the job and
# apply it again.
"""
WHAT = {"TrainJob": "Kubeflow Trainer v2.2+ (ClusterTrainingRuntime torch-distributed): "
                    "kubectl apply -k infra/k8s/training",
        "PyTorchJob": "Training Operator v1 (older clusters): "
                      "kubectl apply -k infra/k8s/training/pytorchjob"}


def render(run: TrainRun, settings: JobSettings, command: str) -> str:
    """The job's YAML, under a header naming the `command` that wrote it."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data) -> bool:  # repeated pod templates written out in full
            return True

    text = yaml.dump(manifest(run, settings), Dumper=Dumper, sort_keys=False, width=100)
    return HEADER.format(args=command, what=WHAT[settings.kind]) + text


def main(argv: list[str] | None = None) -> int:
    from components.cluster import ClusterConfig

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m components.trainjob",
                                     description="Multi-GPU training jobs as YAML.")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="write the TrainJob or PyTorchJob of one run",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--kind", choices=KINDS, default="TrainJob")
    r.add_argument("--name", default="softprompt-train-sst2", help="the job's name")
    r.add_argument("--run-dir", default="/mnt/checkpoints/runs/sst2-ddp",
                   help="on the checkpoint volume; an existing run there is resumed")
    r.add_argument("--nodes", type=int, default=2)
    r.add_argument("--gpus-per-node", type=int, default=1)
    r.add_argument("--image", default="softprompt",
                   help="the kustomization's images: entry replaces the name softprompt")
    r.add_argument("--out", default="-", help="output file ('-': stdout)")
    r.add_argument("train_flags", nargs="*", metavar="FLAG",
                   help="`softprompt train` flags, after `--` (default: "
                   f"{' '.join(EXAMPLE_FLAGS)})")
    args = parser.parse_args(argv)
    settings = ClusterConfig().job_settings(image=args.image, kind=args.kind)
    run = TrainRun(args.name, args.run_dir, args.train_flags or EXAMPLE_FLAGS, args.nodes,
                   args.gpus_per_node)
    text = render(run, settings, " ".join(argv))
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
