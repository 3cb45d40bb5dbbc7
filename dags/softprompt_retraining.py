"""
### softprompt retraining

Keeps the registry in step with the task catalogue: a team commits a task's spec
(`tasks/<name>.yaml`) and its DVC-tracked data (`data/<name>.dvc`, after `dvc push`) to the
catalogue repository, and the next run trains, evaluates and registers a prompt for it.

1. **resolve_settings**, then **plan**: reads the catalogue at one git revision (or the local
   folders of the embedded default) and, for each task, compares what training would see now
   (the data's DVC hash from DVC's own records, the spec, the base model) with the lineage of
   the task's latest registered prompt (`softprompt.catalogue.plan_retraining`). No data is read
   here. Unchanged tasks stop here.
2. **retrain.launch** (a mapped group per new or changed task): hands the pipeline the spec's
   text and the data reference (DVC remote, hash, commit), never a local path. Kubeflow:
   submits the run through the `kubeflow_pipelines` Connection and returns. Local: runs it with
   kfp.local.
3. **retrain.wait_for_run**: a sensor in reschedule mode; between polls it gives its worker
   slot back. A failed run fails the task with the failing step's name (no retry: the pipeline
   already retried its steps).
4. **retrain.record**: checks that the registry holds a new version recording the planned data
   version,
   and emits an event on the task's prompt Asset (through the `softprompt_prompts` alias), which
   consumers such as the serving reload are scheduled on.
5. **summarize** (runs whatever happened upstream), then **verdict** fails the run if any task
   failed.

Runs daily and whenever the `softprompt_catalogue` Asset gets an event (the catalogue's CI posts
one after `dvc push` and the git push). **Manual runs**: trigger with `tasks` = `["sst2"]` to
retrain those now even if unchanged; `pipeline_params` overrides pipeline parameters for this
run (e.g. `{"max_steps": 200}`). Settings (Variables / environment): see `dags/README.md`.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta

from airflow.sdk import Param, PokeReturnValue, TriggerRule, dag, task, task_group
from airflow.sdk import get_current_context as context_now
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable
from softprompt_settings import (
    CATALOGUE,
    DEFAULT_ARGS,
    PIPELINE_TIMEOUT,
    POLL_SECONDS,
    PROMPTS,
    json_setting,
    kfp_endpoint,
    kfp_run_finished,
    prompt_asset,
    runner_mode,
    setting,
)

DAG_ID = "softprompt_retraining"
TAGS = ["softprompt", "prompt-tuning", "retraining"]
SCHEDULE = os.environ.get("SOFTPROMPT_RETRAINING_SCHEDULE", "@daily")
# Set per task by the plan; pipeline_params may not override them.
RESERVED = ("task", "task_spec", "data_repo", "data_rev", "data_remote", "data_path",
            "data_version", "data_dir")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_INNER = re.compile(r"Inner task failed: (.+?)\.?$")


def _resolve_config(params: dict) -> dict:
    """Every setting a run uses, resolved once and handed to the later tasks, so that a Variable
    edited mid-run cannot make them disagree. Holds no credential (it travels through XCom)."""
    from components.pipelines import prompt_tuning_pipeline
    from components.runner import pipeline_parameters
    from softprompt.tasks import TASKS_DIR, default_data_dir

    mode = runner_mode()
    host = kfp_endpoint().host if mode == "kubeflow" else None
    defaults = pipeline_parameters(prompt_tuning_pipeline)
    runs_dir = os.path.abspath(setting("runs_dir", "runs"))
    pipeline = json_setting("pipeline_params") | dict(params.get("pipeline_params") or {})
    for reserved in RESERVED:
        if reserved in pipeline:
            raise ValueError(f"pipeline_params: {reserved!r} is set per task by the plan; "
                             "remove it")
    unknown = sorted(set(pipeline) - set(defaults))
    if unknown:
        raise ValueError(f"pipeline_params: unknown prompt-tuning parameter(s) {unknown}; "
                         f"known: {', '.join(sorted(defaults))}")
    pipeline.setdefault("base_model", setting("base_model", defaults["base_model"]))
    local_registry = os.path.join(runs_dir, "registry")
    pipeline.setdefault("registry_uri", setting(
        "registry", local_registry if mode == "local" else defaults["registry_uri"]))
    repo = setting("catalogue_repo")
    if mode == "kubeflow" and not repo:
        raise ValueError("runner is kubeflow but softprompt_catalogue_repo is not set: pipeline "
                         "pods cannot read this worker's folders; put the catalogue in a git + "
                         "DVC repository")
    return {
        "mode": mode,
        "kfp_host": host,
        "catalogue": {"repo": repo, "rev": setting("catalogue_rev", ""),
                      "remote": setting("dvc_remote", ""),
                      "tasks_dir": setting("tasks_dir", str(TASKS_DIR)),
                      "data_dir": setting("data_dir", str(default_data_dir()))},
        "runs_dir": runs_dir,
        "pipeline_params": pipeline,
    }


def _read_catalogue(catalogue: dict, only: list[str] | None) -> list:
    from softprompt.catalogue import read_catalogue, read_catalogue_at

    if catalogue["repo"]:
        entries, sha = read_catalogue_at(catalogue["repo"], catalogue["rev"], only,
                                         remote=catalogue["remote"])
        print(f"catalogue {catalogue['repo']} at {catalogue['rev'] or 'HEAD'} = commit {sha}")
        return entries
    return read_catalogue(catalogue["tasks_dir"], only, catalogue["data_dir"])


def _step_failure(task_name: str, err: Exception) -> str:
    """kfp.local's "Pipeline ... Inner task failed: 'train-prompt' inside 'for-loop-1'." as
    "task <name>: prompt-tuning pipeline failed at step 'train-prompt' inside 'for-loop-1'"."""
    message = _ANSI.sub("", str(err))
    match = _INNER.search(message)
    step = match.group(1) if match else "unknown (see the log above)"
    return f"task {task_name}: prompt-tuning pipeline failed at step {step}: {message}"


def _failure(message: str):
    """Records the error for the summary and returns the exception that fails the task for
    good (a bad spec, bad data or a failed pipeline is not fixed by retrying)."""
    from airflow.sdk.exceptions import AirflowFailException

    context_now()["ti"].xcom_push(key="error", value=message)
    return AirflowFailException(message)


def _name_instance(plan: dict) -> None:
    context_now()["softprompt_task"] = plan["task"]  # the mapped instance's name in the UI


def _launch(config: dict, plan: dict) -> dict:
    """Runs (local) or submits (kubeflow) the prompt-tuning pipeline for one planned task."""
    from components.pipelines import prompt_tuning_pipeline
    from components.runner import run_prompt_tuning
    from softprompt.catalogue import TaskPlan

    p = TaskPlan.from_dict(plan)
    if p.error:  # a bad spec or data: fixing it, not retrying, is what helps
        raise _failure(f"task {p.task}: {p.error}")
    params = config["pipeline_params"] | p.run_params()
    run_name = f"{DAG_ID}-{p.task}-{context_now()['run_id']}"
    print(f"task {p.task}: {p.reason}; data {p.dataset_version}; launching ({config['mode']})")
    if config["mode"] == "kubeflow":
        from components.kubeflow import submit

        run_id = submit(kfp_endpoint(), prompt_tuning_pipeline, params, run_name, DAG_ID)
        print(f"task {p.task}: Kubeflow run {run_id} submitted to {config['kfp_host']}")
        return {"plan": plan, "mode": "kubeflow", "run_id": run_id}
    try:
        result = run_prompt_tuning(p.task, params, mode="local", root=config["runs_dir"])
    except RuntimeError as err:  # kfp.local: a step failed after its retries
        raise _failure(_step_failure(p.task, err)) from err
    return {"plan": plan, "mode": "local", "run_id": result["run_id"],
            "decision": result["decision"]}


def _schedule():
    """The daily (or $SOFTPROMPT_RETRAINING_SCHEDULE) cron or a catalogue event, whichever comes
    first; "none": catalogue events only."""
    if SCHEDULE.strip().lower() == "none":
        return [CATALOGUE]
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(SCHEDULE, timezone="UTC"),
                               assets=[CATALOGUE])


@dag(
    dag_id=DAG_ID,
    schedule=_schedule(),
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,  # two runs would both see the same task as changed and train it twice
    default_args=DEFAULT_ARGS,
    tags=TAGS,
    doc_md=__doc__,
    params={
        "tasks": Param([], type="array", title="Tasks to retrain now",
                       items={"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"},
                       description="Retrain these catalogue tasks even if unchanged (only these "
                                   "are planned). Empty: every new or changed task."),
        "pipeline_params": Param({}, type="object", title="Prompt-tuning pipeline parameters",
                                 description="Overrides for this run, over the "
                                             "softprompt_pipeline_params Variable, e.g. "
                                             "{\"max_steps\": 200, \"prompt_length\": 20}."),
    },
)
def softprompt_retraining():
    @task
    def resolve_settings() -> dict:
        """The settings of this run, resolved once (see _resolve_config)."""
        from airflow.sdk.exceptions import AirflowFailException

        try:
            return _resolve_config(context_now()["params"])
        except ValueError as err:  # a bad setting or param: retrying cannot fix it
            raise AirflowFailException(str(err)) from err

    @task
    def plan(config: dict) -> list[dict]:
        """The tasks that need a new prompt (mapped over by `launch`); the unchanged ones go to
        the summary under the XCom key "unchanged"."""
        from airflow.sdk.exceptions import AirflowFailException

        from softprompt.catalogue import CatalogueError, plan_retraining
        from softprompt.registry import open_registry

        context = context_now()
        requested = context["params"]["tasks"]
        try:
            entries = _read_catalogue(config["catalogue"], requested or None)
        except CatalogueError as err:  # no catalogue or revision, or an unknown requested task
            raise AirflowFailException(str(err)) from err
        registry = open_registry(config["pipeline_params"]["registry_uri"])
        plans = plan_retraining(entries, registry, config["pipeline_params"]["base_model"],
                                force=requested)
        for p in plans:
            print(f"{p.task}: {'RETRAIN' if p.retrain else 'skip'} ({p.reason})")
        context["ti"].xcom_push(key="unchanged", value=[p.task for p in plans if not p.retrain])
        return [p.to_dict() for p in plans if p.retrain]

    @task(map_index_template="{{ softprompt_task }}",
          execution_timeout=PIPELINE_TIMEOUT + timedelta(minutes=10))
    def launch(config: dict, plan: dict) -> dict:
        """Runs (local) or submits (kubeflow) the pipeline for one task."""
        _name_instance(plan)
        return _launch(config, plan)

    @task.sensor(poke_interval=POLL_SECONDS, timeout=PIPELINE_TIMEOUT.total_seconds(),
                 mode="reschedule", retries=0, map_index_template="{{ softprompt_task }}")
    def wait_for_run(launched: dict) -> PokeReturnValue:
        """Polls the Kubeflow run; between polls the task gives its worker slot back."""
        _name_instance(launched["plan"])
        if launched["mode"] == "local":  # kfp.local ran to the end inside `launch`
            return PokeReturnValue(is_done=True, xcom_value=launched)
        try:
            done = kfp_run_finished(launched["run_id"], f"task {launched['plan']['task']}")
        except ValueError as err:
            raise _failure(str(err)) from err
        return PokeReturnValue(is_done=done, xcom_value=launched if done else None)

    @task(map_index_template="{{ softprompt_task }}", outlets=[PROMPTS])
    def record(config: dict, finished: dict) -> dict:
        """Checks what the run registered and emits the task's prompt Asset event."""
        from softprompt.catalogue import TaskPlan, verify_registered
        from softprompt.registry import open_registry

        _name_instance(finished["plan"])
        p = TaskPlan.from_dict(finished["plan"])
        registry_uri = config["pipeline_params"]["registry_uri"]
        try:
            manifest = verify_registered(open_registry(registry_uri), p)
        except RuntimeError as err:
            raise _failure(str(err)) from err
        context_now()["outlet_events"][PROMPTS].add(
            prompt_asset(p.task, registry_uri),
            extra={"version": manifest.version, "dataset_version": manifest.dataset_version})
        out = {"task": p.task, "reason": p.reason, "version": manifest.version,
               "dataset_version": manifest.dataset_version,
               "dev_score": manifest.metrics.get("dev", {}).get("score"),
               "run_id": finished["run_id"], "decision": finished.get("decision")}
        print(f"task {p.task}: registered v{manifest.version}; {out['decision'] or ''}")
        return out

    @task(trigger_rule=TriggerRule.ALL_DONE, retries=0)  # reads XComs only: nothing to retry
    def summarize() -> dict:
        """What this run did, whatever happened upstream (XComs pulled here: a failed upstream
        task has none, which an argument could not express)."""
        ti = context_now()["ti"]
        planned = ti.xcom_pull(task_ids="plan")
        if planned is None:
            print("planning failed: nothing was launched (see resolve_settings / plan)")
            return {"planned": False, "unchanged": [], "retrained": [], "failed": []}
        retrained, failed = [], []
        for index, p in enumerate(planned):
            result = ti.xcom_pull(task_ids="retrain.record", map_indexes=index)
            if result is not None:
                retrained.append(result)
                print(f"retrained {p['task']} ({p['reason']}): v{result['version']}, "
                      f"dev {result['dev_score']}; {result['decision']}")
                continue
            errors = [ti.xcom_pull(task_ids=f"retrain.{step}", key="error", map_indexes=index)
                      for step in ("launch", "wait_for_run", "record")]
            error = next((e for e in errors if e), "did not finish (see its log)")
            failed.append({"task": p["task"], "reason": p["reason"], "error": error})
            print(f"FAILED {p['task']}: {error}")
        unchanged = ti.xcom_pull(task_ids="plan", key="unchanged") or []
        print(f"unchanged: {', '.join(unchanged) or 'none'}")
        return {"planned": True, "unchanged": unchanged, "retrained": retrained, "failed": failed}

    @task
    def verdict(summary: dict) -> None:
        """Fails the run when a task failed, so the run's state tells the truth."""
        from airflow.sdk.exceptions import AirflowFailException

        if not summary["planned"]:
            raise AirflowFailException("planning failed; see the resolve_settings and plan tasks")
        if summary["failed"]:
            raise AirflowFailException(f"{len(summary['failed'])} task(s) failed: "
                                       + "; ".join(f["error"] for f in summary["failed"]))

    @task_group(group_id="retrain")
    def retrain(config: dict, plan: dict):
        """One task's launch, wait and record; a failure stops only its own task."""
        record(config, wait_for_run(launch(config, plan)))

    config = resolve_settings()
    summary = summarize()
    retrain.partial(config=config).expand(plan=plan(config)) >> summary
    verdict(summary)


softprompt_retraining()
