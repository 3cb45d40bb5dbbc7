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

`job_spec.py`: `train_job()` and `pytorch_job()` are pure; the same functions render the
committed manifests (`render.py`: `python -m components.trainjob render --help`;
infra/k8s/training/) and the jobs the pipeline launches.
`job_launch.py`: `launch()` creates a job through the Kubernetes API (the official client's
CustomObjectsApi), waits for its terminal condition until a deadline, deletes or keeps it, and
raises TrainJobError naming the job, its namespace and the condition's reason and message.
`train_on_cluster()` is what the pipeline's train step calls when a run asks for more than one
GPU: it stages the step's inputs on the checkpoint volume, launches the job and returns the
run's result.json.

job_spec.py and job_launch.py import only the standard library at module level (the kubernetes
client and softprompt lazily): the pipeline embeds this folder in the train step, whose image
does not hold the components package, and imports `job_launch` there by its bare name.
"""

from components.trainjob.job_launch import (
    JobOutcome,
    TrainJobError,
    custom_objects_api,
    job_name,
    launch,
    stage_inputs,
    terminal_condition,
    train_on_cluster,
)
from components.trainjob.job_spec import (
    KEEP,
    KINDS,
    RESOURCES,
    SETTINGS_ENV,
    JobSettings,
    Placement,
    TrainRun,
    manifest,
    placement,
    pytorch_job,
    torchrun_args,
    train_job,
)

EMBEDDED = ("job_spec.py", "job_launch.py")  # what the pipeline embeds in the train step

__all__ = [
    "EMBEDDED",
    "KEEP",
    "KINDS",
    "RESOURCES",
    "SETTINGS_ENV",
    "JobOutcome",
    "JobSettings",
    "Placement",
    "TrainJobError",
    "TrainRun",
    "custom_objects_api",
    "job_name",
    "launch",
    "manifest",
    "placement",
    "pytorch_job",
    "stage_inputs",
    "terminal_condition",
    "torchrun_args",
    "train_job",
    "train_on_cluster",
]

