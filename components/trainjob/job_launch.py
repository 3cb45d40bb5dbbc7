"""Launching a training job through the Kubernetes API and waiting for it; the pipeline's train
step calls `train_on_cluster` when a run asks for more than one GPU."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import NamedTuple

if __package__:
    from .job_spec import RESOURCES, RUN_DIR_ANNOTATION, JobSettings, TrainRun, manifest, placement
else:  # embedded in the pipeline's train step, where this folder's modules are top-level
    from job_spec import RESOURCES, RUN_DIR_ANNOTATION, JobSettings, TrainRun, manifest, placement


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
