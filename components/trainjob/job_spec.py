"""What a multi-GPU training job is: the cluster's job settings, one run's placement on the GPU
pool, and the TrainJob and PyTorchJob manifests, built by pure functions (no Kubernetes here)."""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
from dataclasses import dataclass, field
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
