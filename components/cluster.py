"""Where the pipelines run on a cluster: the project image and the GPU node pool.

`PROJECT_IMAGE` is the one image every component runs from (built from infra/; it holds
softprompt, its dependencies and the offline model, so nothing is installed at run time).
`ClusterConfig` holds what the compiled pipeline asks of Kubernetes; its defaults match the GPU
node pool, taint and checkpoint volume that infra/ creates. Override them with
`python -m components.compile --help` flags, never by editing the compiled YAML. A run with
num_gpus > 1 trains as a Kubeflow Trainer job (components/trainjob/) built from the same
settings: `ClusterConfig.job_settings()`.
"""

import os
from dataclasses import dataclass, field

from components.trainjob import KEEP, KINDS, JobSettings

# Overridable at compile time (`SOFTPROMPT_IMAGE=... python -m components.compile`), so a release
# pins the exact tag or digest the infra build pushed.
PROJECT_IMAGE = os.environ.get("SOFTPROMPT_IMAGE", "ghcr.io/softprompt/softprompt:0.1.0")
DEFAULT_REGISTRY_URI = "s3://softprompt-registry/prompts"
CHECKPOINT_MOUNT = "/mnt/checkpoints"
PIPELINE_SERVICE_ACCOUNT = (
    "softprompt-pipeline"  # may write the registry and DVC prefixes (infra/k8s)
)
NAMESPACE = "softprompt"  # the Kubeflow profile's namespace: pipeline runs and training jobs


@dataclass
class ClusterConfig:
    """Kubernetes settings compiled into the pipelines (kfp.kubernetes platform config)."""

    accelerator_type: str = field(
        default="nvidia.com/gpu",
        metadata={"help": "Resource name of the GPU each model step requests."},
    )
    accelerator_limit: int = field(
        default=1, metadata={"help": "GPUs per model step (train, ensemble, evaluate, LM-adapt)."}
    )
    node_selector: tuple[str, str] = field(
        default=("softprompt.io/pool", "gpu"),
        metadata={"help": "Node label (key, value) of the GPU pool."},
    )
    toleration: tuple[str, str, str] = field(
        default=("nvidia.com/gpu", "present", "NoSchedule"),
        metadata={"help": "The GPU pool's taint (key, value, effect) tolerated by model steps."},
    )
    checkpoint_pvc: str = field(
        default="softprompt-checkpoints",
        metadata={
            "help": "ReadWriteMany PVC mounted at /mnt/checkpoints: training checkpoints "
            "(resume after preemption) and exported base models."
        },
    )
    cpu_request: str = field(default="2", metadata={"help": "CPU request of each model step."})
    memory_request: str = field(
        default="8Gi", metadata={"help": "Memory request of each model step."}
    )
    train_retries: int = field(
        default=3,
        metadata={
            "help": "Retries of a training step (preemption); each resumes from its checkpoint."
        },
    )
    node_gpus: int = field(
        default=1,
        metadata={
            "help": "GPUs on one node of the GPU pool: a run with num_gpus above it spans "
            "num_gpus / node_gpus nodes (one torchrun each)."
        },
    )
    train_job_kind: str = field(
        default="TrainJob",
        metadata={
            "help": "How a run with num_gpus > 1 trains: TrainJob (Kubeflow Trainer v2.2+) or "
            "PyTorchJob (Training Operator v1, older clusters)."
        },
    )
    training_runtime: str = field(
        default="torch-distributed",
        metadata={"help": "The ClusterTrainingRuntime of those TrainJobs."},
    )
    train_job_timeout_s: int = field(
        default=24 * 3600,
        metadata={"help": "Deadline of a training job; the step then deletes it and fails."},
    )
    keep_train_jobs: str = field(
        default="failed",
        metadata={
            "help": "Finished training jobs left in the cluster: failed (for their pods' "
            "logs), all or none."
        },
    )

    def __post_init__(self) -> None:
        if self.accelerator_limit < 0:
            raise ValueError(
                f"ClusterConfig.accelerator_limit must be >= 0, got {self.accelerator_limit}"
            )
        if self.train_retries < 0:
            raise ValueError(f"ClusterConfig.train_retries must be >= 0, got {self.train_retries}")
        if len(self.node_selector) != 2 or not all(self.node_selector):
            raise ValueError(
                f"ClusterConfig.node_selector must be (key, value), got {self.node_selector!r}"
            )
        if self.node_gpus < 1 or self.train_job_timeout_s < 1:
            raise ValueError(
                "ClusterConfig.node_gpus and train_job_timeout_s must be >= 1, got "
                f"{self.node_gpus} and {self.train_job_timeout_s}"
            )
        if self.train_job_kind not in KINDS or self.keep_train_jobs not in KEEP:
            raise ValueError(
                f"ClusterConfig.train_job_kind must be one of {KINDS} and keep_train_jobs one of "
                f"{KEEP}, got {self.train_job_kind!r} and {self.keep_train_jobs!r}"
            )
        if len(self.toleration) != 3 or self.toleration[2] not in (
            "NoSchedule",
            "PreferNoSchedule",
            "NoExecute",
        ):
            raise ValueError(
                "ClusterConfig.toleration must be (key, value, "
                f"NoSchedule|PreferNoSchedule|NoExecute), got {self.toleration!r}"
            )

    def job_settings(self, image: str = PROJECT_IMAGE, kind: str | None = None) -> JobSettings:
        """Where the training jobs of runs with num_gpus > 1 go: the same pool, taint, volume,
        requests and image as the pipeline's model steps."""
        return JobSettings(
            namespace=NAMESPACE,
            image=image,
            node_selector=self.node_selector,
            toleration=self.toleration,
            checkpoint_pvc=self.checkpoint_pvc,
            checkpoint_mount=CHECKPOINT_MOUNT,
            accelerator_type=self.accelerator_type,
            node_gpus=self.node_gpus,
            kind=kind or self.train_job_kind,
            runtime=self.training_runtime,
            cpu=self.cpu_request,
            memory=self.memory_request,
            timeout_s=self.train_job_timeout_s,
            keep=self.keep_train_jobs,
        )
