"""
### softprompt LM adaptation

Run by hand, once per base checkpoint: adapts an encoder-decoder checkpoint (T5 1.1) with the
prefix-LM objective (the paper's "LM adaptation"), through the LM-adaptation pipeline, on Kubeflow
through the `kubeflow_pipelines` Connection (see dags/README.md), else in-process with kfp.local.

With `use_for_retraining` on, the adapted checkpoint's path is recorded in the Airflow Variable
`softprompt_base_model`, so every later retraining run tunes prompts on it (and, since the base
model changed, retrains every task). Decoder-only models need no adaptation: the pipeline refuses
them with a clear error.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, PokeReturnValue, Variable, dag, get_current_context, task
from softprompt_settings import (
    DEFAULT_ARGS,
    PIPELINE_TIMEOUT,
    POLL_SECONDS,
    kfp_endpoint,
    kfp_run_finished,
    runner_mode,
    setting,
)

DAG_ID = "softprompt_lm_adaptation"
TAGS = ["softprompt", "lm-adaptation"]
BASE_MODEL_VARIABLE = "softprompt_base_model"


@dag(
    dag_id=DAG_ID,
    schedule=None,  # by hand: one adaptation serves every task for a long time
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=TAGS,
    doc_md=__doc__,
    params={
        # No default: the project image is offline, so a hub name cannot load there. The
        # checkpoint is a directory every pipeline pod mounts (the checkpoint volume).
        "base_model": Param(
            type="string", minLength=1, title="Base checkpoint",
            description="Encoder-decoder checkpoint directory the pipeline can read, "
                        "e.g. /mnt/checkpoints/base-models/t5-v1_1-base."),
        "steps": Param(1000, type="integer", minimum=1, title="Steps",
                       description="Prefix-LM training steps (paper: 100K)."),
        "corpus": Param("sst2", type="string", minLength=1, title="Corpus",
                        description="A .txt file (one document per line) or a task name whose "
                                    "train inputs are used."),
        "lr": Param(1e-3, type="number", exclusiveMinimum=0, title="Learning rate"),
        "batch_size": Param(16, type="integer", minimum=1, title="Batch size"),
        "max_tokens": Param(128, type="integer", minimum=8, title="Max tokens per document"),
        "seed": Param(0, type="integer", minimum=0, title="Seed"),
        "use_for_retraining": Param(
            True, type="boolean", title="Use for retraining",
            description=f"Record the adapted checkpoint in the Variable {BASE_MODEL_VARIABLE}."),
    },
)
def softprompt_lm_adaptation():
    @task(execution_timeout=PIPELINE_TIMEOUT)
    def launch() -> dict:
        """Local: runs the LM-adaptation pipeline to the end. Kubeflow: submits it."""
        import os

        from airflow.sdk.exceptions import AirflowFailException

        from components.runner import run_lm_adaptation

        params = dict(get_current_context()["params"])
        record = params.pop("use_for_retraining")
        try:
            mode = runner_mode()
        except ValueError as err:
            raise AirflowFailException(str(err)) from err
        if mode == "local":
            params["data_dir"] = setting("data_dir", "")
        endpoint = kfp_endpoint() if mode == "kubeflow" else None
        try:
            result = run_lm_adaptation(params, mode="kfp" if endpoint else "local",
                                       kfp_host=endpoint, experiment=DAG_ID,
                                       root=os.path.abspath(setting("runs_dir", "runs")))
        except RuntimeError as err:  # kfp.local: the step failed after its retries
            raise AirflowFailException(f"LM adaptation of {params['base_model']} failed: "
                                       f"{err}") from err
        return {"record": record, "base_model": params["base_model"], **result}

    @task.sensor(poke_interval=POLL_SECONDS, timeout=PIPELINE_TIMEOUT.total_seconds(),
                 mode="reschedule", retries=0)
    def wait_for_run(launched: dict) -> PokeReturnValue:
        """Polls the Kubeflow run; between polls the task gives its worker slot back."""
        from airflow.sdk.exceptions import AirflowFailException

        if launched["mode"] == "local":
            return PokeReturnValue(is_done=True, xcom_value=launched)
        try:
            done = kfp_run_finished(launched["run_id"],
                                    f"LM adaptation of {launched['base_model']}")
        except ValueError as err:
            raise AirflowFailException(str(err)) from err
        return PokeReturnValue(is_done=done, xcom_value=launched if done else None)

    @task
    def record(result: dict) -> str | None:
        """Makes the adapted checkpoint the base model of later retraining runs."""
        path = result.get("model_path")
        if not result["record"]:
            print(f"adapted checkpoint: {path}; not recorded (use_for_retraining is off)")
            return path
        if not path:
            # Kubeflow mode: the runner returns the run, not its output parameters.
            print(f"run {result.get('run_id')} succeeded; set the Variable "
                  f"{BASE_MODEL_VARIABLE} to its model_path output to retrain on it")
            return None
        Variable.set(BASE_MODEL_VARIABLE, path, description="set by softprompt_lm_adaptation")
        print(f"{BASE_MODEL_VARIABLE} = {path}")
        return path

    record(wait_for_run(launch()))


softprompt_lm_adaptation()
