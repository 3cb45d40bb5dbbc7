"""
### softprompt retraining

Keeps the registry in step with the task catalogue: add a task (its spec in the catalogue folder,
its data under the data folder) and the next scheduled run trains, evaluates and registers a
prompt for it.

1. **resolve_settings**, then **plan**: reads the catalogue and, for each task, compares what training would see now (the
   prepared data's version, the spec's template / label words / metric, the base model) with the
   lineage of the task's latest registered prompt (`softprompt.catalogue.plan_retraining`).
   Unchanged tasks stop here and cost nothing.
2. **retrain** (one mapped task per new or changed task): runs the prompt-tuning pipeline
   (prepare, N prompts, ensemble, evaluate, register behind the quality gate) on Kubeflow when
   `softprompt_kfp_host` is set, else in-process with kfp.local; waits for it with a timeout, then
   checks that the registry holds a new version recording the planned data version. A failure
   names the task and the failing pipeline step, fails only that mapped task, and is not retried
   (the pipeline already retried its steps).
3. **summarize** (runs whatever happened upstream): unchanged, retrained (version, gate decision)
   and failed tasks; **verdict** then fails the run if any task failed.

**Manual runs**: trigger with `tasks` = `["sst2"]` to retrain those tasks now even if unchanged
(only those are planned); `pipeline_params` overrides prompt-tuning pipeline parameters for this
run (e.g. `{"max_steps": 200}`). Settings (Variables / environment): see `dags/README.md`.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta

from airflow.sdk import Param, TriggerRule, dag, get_current_context, task
from softprompt_settings import DEFAULT_ARGS, PIPELINE_TIMEOUT, json_setting, runner_mode, setting

DAG_ID = "softprompt_retraining"
TAGS = ["softprompt", "prompt-tuning", "retraining"]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_INNER = re.compile(r"Inner task failed: (.+?)\.?$")


def _resolve_config(params: dict) -> dict:
    """Every setting a run uses, resolved once in `plan` and handed to the mapped tasks, so that a
    Variable edited mid-run cannot make them disagree."""
    from components.pipelines import prompt_tuning_pipeline
    from components.runner import pipeline_parameters
    from softprompt.tasks import TASKS_DIR, default_data_dir

    mode, host = runner_mode()
    defaults = pipeline_parameters(prompt_tuning_pipeline)
    runs_dir = os.path.abspath(setting("runs_dir", "runs"))
    pipeline = json_setting("pipeline_params") | dict(params.get("pipeline_params") or {})
    for reserved in ("task", "data_version"):
        if reserved in pipeline:
            raise ValueError(f"pipeline_params: {reserved!r} is set per task by the DAG; remove it")
    pipeline.setdefault("base_model", setting("base_model", defaults["base_model"]))
    pipeline.setdefault("data_dir", setting("data_dir", str(default_data_dir())))
    local_registry = os.path.join(runs_dir, "registry")
    pipeline.setdefault("registry_uri", setting("registry", local_registry if mode == "local" else defaults["registry_uri"]))
    unknown = sorted(set(pipeline) - set(defaults))
    if unknown:
        raise ValueError(f"pipeline_params: unknown prompt-tuning parameter(s) {unknown}; known: {', '.join(sorted(defaults))}")
    return {
        "mode": mode,
        "kfp_host": host,
        "tasks_dir": setting("tasks_dir", str(TASKS_DIR)),
        "runs_dir": runs_dir,
        "timeout_s": int(PIPELINE_TIMEOUT.total_seconds()),
        "pipeline_params": pipeline,
        "caps": {k: pipeline.get(k, defaults[k]) for k in ("max_train_examples", "max_dev_examples", "max_test_examples", "data_seed")},
    }


def _prepared_version(config: dict, entry) -> str:
    """The data version the pipeline's prepare step will record for `entry`: that very step's
    code, run here on the same spec, data and caps, into a scratch folder."""
    import tempfile

    from kfp.dsl import Dataset

    from components.steps import prepare_data

    caps = config["caps"]
    with tempfile.TemporaryDirectory(prefix="softprompt-plan-") as tmp:
        return prepare_data.python_func(
            task=entry.spec_path, data_dir=config["pipeline_params"]["data_dir"], data_version="",
            max_train_examples=caps["max_train_examples"], max_dev_examples=caps["max_dev_examples"],
            max_test_examples=caps["max_test_examples"], seed=caps["data_seed"],
            train_dev=Dataset(uri=os.path.join(tmp, "train_dev")), test_set=Dataset(uri=os.path.join(tmp, "test")),
        )


def _step_failure(task_name: str, err: Exception) -> str:
    """kfp.local's "Pipeline ... Inner task failed: 'train-prompt' inside 'for-loop-1'." as
    "task <name>: prompt-tuning pipeline failed at step 'train-prompt' inside 'for-loop-1'"."""
    message = _ANSI.sub("", str(err))
    match = _INNER.search(message)
    step = match.group(1) if match else "unknown (see the log above)"
    return f"task {task_name}: prompt-tuning pipeline failed at step {step}: {message}"


def _kfp_failed_steps(host: str, run_id: str) -> list[str]:
    """Display names of the failed steps of a Kubeflow run."""
    import kfp

    run = kfp.Client(host=host).get_run(run_id)
    details = (run.run_details.task_details if run.run_details else None) or []
    return [d.display_name for d in details if str(d.state).upper() == "FAILED"]


@dag(
    dag_id=DAG_ID,
    schedule=os.environ.get("SOFTPROMPT_RETRAINING_SCHEDULE", "@daily"),
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,  # two runs would both see the same task as changed and train it twice
    default_args=DEFAULT_ARGS,
    tags=TAGS,
    doc_md=__doc__,
    params={
        "tasks": Param([], type="array", items={"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"},
                       title="Tasks to retrain now",
                       description="Retrain these catalogue tasks even if unchanged (only these are planned). "
                                   "Empty: every new or changed task (the scheduled behaviour)."),
        "pipeline_params": Param({}, type="object", title="Prompt-tuning pipeline parameters",
                                 description="Overrides for this run, over the softprompt_pipeline_params Variable, "
                                             "e.g. {\"max_steps\": 200, \"prompt_length\": 20}."),
    },
)
def softprompt_retraining():
    @task
    def resolve_settings() -> dict:
        """The settings of this run, resolved once (see _resolve_config)."""
        from airflow.sdk.exceptions import AirflowFailException

        try:
            return _resolve_config(get_current_context()["params"])
        except ValueError as err:  # a bad setting or param: retrying cannot fix it
            raise AirflowFailException(str(err)) from err

    @task
    def plan(config: dict) -> list[dict]:
        """The tasks that need a new prompt (returned, mapped over by `retrain`); the unchanged
        ones go to the summary under the XCom key "unchanged"."""
        from airflow.sdk.exceptions import AirflowFailException

        from softprompt.catalogue import CatalogueError, plan_retraining, read_catalogue
        from softprompt.registry import open_registry

        context = get_current_context()
        requested = context["params"]["tasks"]
        try:
            entries = read_catalogue(config["tasks_dir"], only=requested or None)
        except CatalogueError as err:  # no catalogue, or a requested task that is not in it
            raise AirflowFailException(str(err)) from err
        registry = open_registry(config["pipeline_params"]["registry_uri"])
        plans = plan_retraining(entries, registry, data_version=lambda entry: _prepared_version(config, entry),
                                base_model=config["pipeline_params"]["base_model"], force=requested)
        for p in plans:
            print(f"{p.task}: {'RETRAIN' if p.retrain else 'skip'} ({p.reason})")
        context["ti"].xcom_push(key="unchanged", value=[p.task for p in plans if not p.retrain])
        return [p.to_dict() for p in plans if p.retrain]

    @task(map_index_template="{{ softprompt_task }}", execution_timeout=PIPELINE_TIMEOUT + timedelta(minutes=10))
    def retrain(config: dict, plan: dict) -> dict:
        """Runs the prompt-tuning pipeline for one task and checks what it registered."""
        from airflow.sdk.exceptions import AirflowFailException

        context = get_current_context()
        context["softprompt_task"] = plan["task"]  # the mapped instance's name in the UI

        def fail(message: str):
            context["ti"].xcom_push(key="error", value=message)  # for the summary
            return AirflowFailException(message)

        from components.runner import run_prompt_tuning
        from softprompt.catalogue import TaskPlan, verify_registered
        from softprompt.registry import open_registry

        p = TaskPlan.from_dict(plan)
        if p.error:  # a bad spec or data: fixing it, not retrying, is what helps
            raise fail(f"task {p.task}: {p.error}")
        params = config["pipeline_params"] | {"data_version": p.dataset_version}
        print(f"task {p.task}: {p.reason}; launching the prompt-tuning pipeline ({config['mode']})")
        try:
            result = run_prompt_tuning(
                p.spec_path, params, mode=config["mode"], kfp_host=config["kfp_host"], root=config["runs_dir"],
                run_name=f"{DAG_ID}-{p.task}-{context['run_id']}", experiment=DAG_ID, wait=True, timeout_s=config["timeout_s"],
            )
        except RuntimeError as err:  # kfp.local: a step failed after its retries
            raise fail(_step_failure(p.task, err)) from err
        except TimeoutError as err:  # Kubeflow: the run is still going; a retry would start a second one
            raise fail(f"task {p.task}: the Kubeflow run did not finish within {config['timeout_s']} s") from err
        if result["status"] != "SUCCEEDED":
            steps = _kfp_failed_steps(config["kfp_host"], result["run_id"])
            raise fail(f"task {p.task}: Kubeflow run {result['run_id']} ended {result['status']}; "
                       f"failed step(s): {', '.join(map(repr, steps)) or 'unknown'}")
        manifest = verify_registered(open_registry(params["registry_uri"]), p)
        out = {"task": p.task, "reason": p.reason, "version": manifest.version, "dataset_version": manifest.dataset_version,
               "dev_score": manifest.metrics.get("dev", {}).get("score"), "run_id": result["run_id"],
               "promoted": result.get("promoted"), "decision": result.get("decision")}
        print(f"task {p.task}: registered v{manifest.version}; {out['decision'] or ''}")
        return out

    @task(trigger_rule=TriggerRule.ALL_DONE, retries=0)  # reads XComs only: nothing to retry
    def summarize() -> dict:
        """What this run did, whatever happened upstream (XComs pulled here: a failed upstream
        task has none, which an argument could not express)."""
        ti = get_current_context()["ti"]
        planned = ti.xcom_pull(task_ids="plan")
        if planned is None:
            print("planning failed: nothing was launched (see resolve_settings / plan)")
            return {"planned": False, "unchanged": [], "retrained": [], "failed": []}
        retrained, failed = [], []
        for index, p in enumerate(planned):
            result = ti.xcom_pull(task_ids="retrain", map_indexes=index)
            if result is not None:
                retrained.append(result)
                print(f"retrained {p['task']} ({p['reason']}): v{result['version']}, dev {result['dev_score']}; {result['decision']}")
            else:
                error = ti.xcom_pull(task_ids="retrain", key="error", map_indexes=index) or "did not finish (see its log)"
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

    config = resolve_settings()
    planned = plan(config)
    summary = summarize()
    retrain.partial(config=config).expand(plan=planned) >> summary
    verdict(summary)


softprompt_retraining()
