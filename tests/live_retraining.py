"""The retraining DAG in a real Airflow, end to end, as a team would see it.

`run_live_retraining` sets up what a deployment has: a task catalogue in a git + DVC repository
whose remote is a bucket on a real S3 server (SeaweedFS), a prompt registry in another bucket,
and Airflow's own scheduler, dag-processor and api-server (tests/airflow_live.py) with the
softprompt DAGs. It adds the tasks to the catalogue (spec + data, `dvc add`, `dvc push`, git
commit), triggers `softprompt_retraining` through the REST API as a person would from the UI,
waits for the run, and reads what the registry now holds. Pipelines run with kfp.local (the
local runner): there is no Kubeflow here.

Used by tests/test_airflow_live.py (tiny model, toy task) and by
`scripts/airflow_live_retraining.py` (a real model and real tasks from the data mirror).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from unittest import mock
from urllib.parse import quote

from airflow_live import LiveAirflow
from dvc_catalogue import DvcCatalogue

REPO = Path(__file__).resolve().parent.parent
DAG_ID = "softprompt_retraining"


def add_mirrored_task(catalogue: DvcCatalogue, name: str, spec_file: Path, data_dir: Path) -> str:
    """A catalogue task from an existing spec and its data folder (copied into the catalogue
    repository's data/<name>, tracked by DVC and pushed); returns the commit."""
    shutil.copytree(data_dir / name, catalogue.root / "data" / name)
    shutil.copyfile(spec_file, catalogue.root / "tasks" / f"{name}.yaml")
    catalogue.run("dvc", "add", "-q", f"data/{name}")
    catalogue.run("dvc", "push")
    catalogue.git("add", "-A")
    catalogue.git("commit", "-q", "-m", f"task {name}")
    return catalogue.head()


def run_live_retraining(workdir: Path, s3, base_model: str, pipeline_params: dict,
                        add_tasks, change=None, timeout: float = 900, log=print) -> dict:
    """Runs retraining through a live Airflow; returns {"runs": [one dict per run: "run_id",
    "run_type", "state", "tasks" (final task-instance states by (task_id, map_index)),
    "summary" (the summarize task's log)], "registered" ({task: [manifest dicts]}),
    "catalogue" ({task: DVC hash at the end}), "seconds"}.

    `s3` is a started tests/s3server.S3Server; `add_tasks(catalogue)` adds the tasks to the
    catalogue and returns their names. The first run is triggered over REST like the UI's
    button. With `change(catalogue)` (a commit to the catalogue), an event is then posted on
    the `softprompt_catalogue` Asset, as the catalogue's CI would, and the run it schedules is
    awaited too."""
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    catalogue = DvcCatalogue(workdir / "catalogue", s3)
    names = add_tasks(catalogue)
    registry_uri = f"s3://{s3.create_bucket()}/prompts"
    empty = workdir / "aws-config"
    empty.touch()
    env = s3.env() | {
        "AWS_CONFIG_FILE": str(empty), "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AIRFLOW_VAR_SOFTPROMPT_RUNNER": "local",
        "AIRFLOW_VAR_SOFTPROMPT_CATALOGUE_REPO": str(catalogue.root),
        "AIRFLOW_VAR_SOFTPROMPT_REGISTRY": registry_uri,
        "AIRFLOW_VAR_SOFTPROMPT_RUNS_DIR": str(workdir / "runs"),
        "AIRFLOW_VAR_SOFTPROMPT_BASE_MODEL": base_model,
        "AIRFLOW_VAR_SOFTPROMPT_PIPELINE_PARAMS": json.dumps(pipeline_params),
        "SOFTPROMPT_REGISTRY_CACHE": str(workdir / "registry-cache"),
        # No cron run on unpause: only the runs asked for here.
        "SOFTPROMPT_RETRAINING_SCHEDULE": "none",
    }
    runs = []
    with LiveAirflow(REPO / "dags", workdir / "airflow", env=env) as af:
        log(f"Airflow up in {af.startup_seconds:.1f} s at {af.url}")
        af.wait_for_dag(DAG_ID, timeout=120)
        af.unpause(DAG_ID)
        run_id = af.trigger(DAG_ID, {})
        log(f"triggered {DAG_ID} run {run_id} through the REST API")
        runs.append(_await(af, run_id, timeout, log))
        if change is not None:
            change(catalogue)
            run_id = _catalogue_event(af, {run_id}, timeout)
            log(f"catalogue event posted; it scheduled run {run_id}")
            runs.append(_await(af, run_id, timeout, log))
    registered = _registered(registry_uri, names, env)
    return {"runs": runs, "registered": registered, "seconds": round(time.monotonic() - started, 1),
            "catalogue": {n: catalogue.version(n) for n in names}}


def _await(af: LiveAirflow, run_id: str, timeout: float, log) -> dict:
    state = af.wait_for_run(DAG_ID, run_id, timeout=timeout)
    log(f"run {run_id}: {state}")
    run = af.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}").json()
    tasks = {(ti["task_id"], ti["map_index"]): ti["state"]
             for ti in af.task_instances(DAG_ID, run_id)}
    return {"run_id": run_id, "run_type": run["run_type"], "state": state, "tasks": tasks,
            "summary": af.task_log(DAG_ID, run_id, "summarize")}


def _catalogue_event(af: LiveAirflow, seen: set[str], timeout: float) -> str:
    """Posts an event on the catalogue's Asset; returns the id of the run it schedules."""
    assets = af.request("GET", "/api/v2/assets",
                        params={"name_pattern": "softprompt_catalogue"}).json()["assets"]
    (asset,) = [a for a in assets if a["name"] == "softprompt_catalogue"]
    af.request("POST", "/api/v2/assets/events", json={"asset_id": asset["id"]})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = af.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns").json()["dag_runs"]
        new = [r["dag_run_id"] for r in listed if r["dag_run_id"] not in seen]
        if new:
            return new[0]
        time.sleep(1)
    raise TimeoutError(f"no {DAG_ID} run was scheduled by the catalogue event in {timeout} s")


def _registered(registry_uri: str, names: list[str], env: dict) -> dict:
    """The latest manifest of each task, read with the same S3 settings the tasks had."""
    from softprompt.registry import open_registry

    with mock.patch.dict(os.environ, env):
        registry = open_registry(registry_uri)
        return {n: [m.to_dict() for m in registry.list_versions(n)] for n in names}
