"""Settings shared by the softprompt DAGs (a plain module: it defines no DAG).

Every setting is read at run time, inside a task, from the Airflow Variable `softprompt_<name>`
(which Airflow also takes from the environment as AIRFLOW_VAR_SOFTPROMPT_<NAME>), else from the
environment variable SOFTPROMPT_<NAME> (the names the softprompt library already reads), else a
default. No secret lives here: the Kubeflow Pipelines credentials come from the Airflow Connection
`kubeflow_pipelines`, registry and DVC credentials from the worker's standard AWS chain.

  name            what                                              default
  runner          kubeflow | local: where pipelines run             kubeflow if the Connection
                                                                      exists, else local
  kfp_host        overrides the Connection's host                   the Connection's
  kfp_namespace   overrides the Connection's extra.namespace        the Connection's
  catalogue_repo  git URL of the catalogue (a git + DVC repository:  unset: the local folders
                  tasks/<name>.yaml and data/<name>.dvc)               tasks_dir and data_dir
  catalogue_rev   its branch, tag or commit                         HEAD
  dvc_remote      overrides the catalogue's default DVC remote      the repository's
  tasks_dir       local catalogue: one spec YAML per task            the repo's tasks/
  data_dir        local catalogue: data folders <data_dir>/<task>/   softprompt's default mirror
  registry        prompt registry URI (dir, file://, s3://)          local: <runs_dir>/registry;
                                                                      kubeflow: the pipeline's
  runs_dir        local runs: kfp.local outputs, cache, registry     runs
  base_model      base checkpoint for prompt tuning (the LM-         the pipeline's default
                  adaptation DAG sets it)
  pipeline_params JSON object of prompt-tuning pipeline parameters   {}
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

from airflow.sdk import Asset, AssetAlias

OWNER = "ml-platform"
DEFAULT_ARGS = {
    "owner": OWNER,
    # Infrastructure hiccups (API or registry unreachable); pipeline steps retry inside KFP.
    "retries": 2,
    "retry_delay": timedelta(minutes=5),
    "retry_exponential_backoff": True,
}
# How long a retraining task waits for its pipeline before giving up on it.
PIPELINE_TIMEOUT = timedelta(
    minutes=int(os.environ.get("SOFTPROMPT_PIPELINE_TIMEOUT_MINUTES", "360")))
# How often a sensor asks Kubeflow about a run (it holds no worker slot in between).
POLL_SECONDS = float(os.environ.get("SOFTPROMPT_KFP_POLL_SECONDS", "60"))
VARIABLE_PREFIX = "softprompt_"


def setting(name: str, default: str | None = None) -> str | None:
    """Variable `softprompt_<name>`, else $SOFTPROMPT_<NAME>, else `default`; empty counts as unset.
    Call it inside a task (Variables are read through the task's API connection)."""
    from airflow.sdk import Variable

    value = Variable.get(VARIABLE_PREFIX + name, default=None)
    if value in (None, ""):
        value = os.environ.get(f"SOFTPROMPT_{name.upper()}")
    return value if value not in (None, "") else default


def json_setting(name: str) -> dict:
    """A setting holding a JSON object ({} when unset); a malformed value is an error naming it."""
    raw = setting(name)
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"setting {VARIABLE_PREFIX}{name}: not JSON "
                         f"({err.msg} at column {err.colno})") from err
    if not isinstance(value, dict):
        raise ValueError(f"setting {VARIABLE_PREFIX}{name}: expected a JSON object, "
                         f"got {type(value).__name__}")
    return value


CONNECTION_ID = "kubeflow_pipelines"
SERVE_CONNECTION_ID = "softprompt_serve"
RUNNERS = ("kubeflow", "local")
# The catalogue's Asset: its CI posts an event after `dvc push` and the git push.
CATALOGUE = Asset(name="softprompt_catalogue", uri="softprompt://catalogue")
# Resolves to one Asset per task's registered prompts (prompt_asset); consumers schedule on it.
PROMPTS = AssetAlias("softprompt_prompts")


def prompt_asset(task_name: str, registry_uri: str) -> Asset:
    """The Asset of a task's registered prompts: its folder in the registry."""
    root = registry_uri.rstrip("/")
    if "://" not in root:
        root = "file://" + os.path.abspath(root)
    return Asset(name=f"softprompt_prompt_{task_name}", uri=f"{root}/prompts/{task_name}")


def _connection(conn_id: str = CONNECTION_ID):
    """The Connection `conn_id`, or None when it is not defined."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        return None


def runner_mode() -> str:
    """"kubeflow" or "local". The `runner` setting decides (a cluster deployment sets
    SOFTPROMPT_RUNNER=kubeflow); unset, pipelines go to Kubeflow exactly when the Connection
    exists. Kubeflow without the Connection is an error, never a quiet local run."""
    mode = setting("runner")
    if mode is None:
        return "kubeflow" if _connection() is not None else "local"
    if mode not in RUNNERS:
        raise ValueError(f"setting {VARIABLE_PREFIX}runner: {mode!r} is not one of {RUNNERS}")
    if mode == "kubeflow" and _connection() is None:
        raise ValueError(f"runner is kubeflow but the Airflow Connection {CONNECTION_ID!r} is not "
                         "defined (infra/k8s/base/airflow-kfp-connection.yaml)")
    return mode


def connection_url(conn) -> str:
    """The API's URL: a host given as a URL, else <schema or http>://host[:port]."""
    host = (conn.host or "").rstrip("/")
    if "://" in host:
        return host
    if not host:
        raise ValueError(f"Airflow Connection {conn.conn_id!r} has no host")
    port = f":{conn.port}" if conn.port else ""
    return f"{conn.schema or 'http'}://{host}{port}"


def kfp_endpoint():
    """The Kubeflow Pipelines API and credentials (components.kubeflow.KfpEndpoint) from the
    Connection: host (Variable `softprompt_kfp_host` overrides it), password = a bearer token,
    extra.token_path = a token file read for every call, extra.namespace = the profile namespace
    (Variable `softprompt_kfp_namespace` overrides it). Read inside each task, so no credential
    ever travels through XCom."""
    from components.kubeflow import KfpEndpoint

    conn = _connection()
    if conn is None:
        raise ValueError(f"the Airflow Connection {CONNECTION_ID!r} is not defined")
    extra = conn.extra_dejson
    return KfpEndpoint(
        host=setting("kfp_host") or connection_url(conn),
        token=conn.password or "",
        token_path=extra.get("token_path", ""),
        namespace=setting("kfp_namespace") or extra.get("namespace", ""),
    )


def kfp_run_finished(run_id: str, what: str) -> bool:
    """One poll of a Kubeflow run for a sensor: False while it runs, True once it succeeded.
    A run that ended otherwise raises ValueError naming `what` and the failed steps."""
    from components.kubeflow import run_status

    status = run_status(kfp_endpoint(), run_id)
    print(f"{what}: Kubeflow run {run_id} is {status.state}")
    if not status.finished:
        return False
    if status.state != "SUCCEEDED":
        steps = ", ".join(map(repr, status.failed_steps)) or "unknown"
        detail = f"; {status.error}" if status.error else ""
        raise ValueError(f"{what}: Kubeflow run {run_id} ended {status.state}; "
                         f"failed step(s): {steps}{detail}")
    return True
