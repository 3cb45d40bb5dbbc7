"""Settings shared by the softprompt DAGs (a plain module: it defines no DAG).

Every setting is read at run time, inside a task, from the Airflow Variable `softprompt_<name>`
(which Airflow also takes from the environment as AIRFLOW_VAR_SOFTPROMPT_<NAME>), else from the
environment variable SOFTPROMPT_<NAME> (the names the softprompt library already reads), else a
default. No secret lives here: registry credentials come from the standard AWS chain of the
worker (or its IAM role), Kubeflow credentials from kfp.Client's own configuration.

  name            what                                              default
  kfp_host        Kubeflow Pipelines API; set -> runs go to Kubeflow  unset: in-process (kfp.local)
  registry        prompt registry URI (dir, file://, s3://)          local: <runs_dir>/registry;
                                                                      kfp: the pipeline's default
  tasks_dir       the task catalogue (one spec YAML per task)        the repo's tasks/
  data_dir        raw task data the specs point into                 softprompt's default mirror
  runs_dir        local runs: kfp.local outputs, cache, registry     runs
  base_model      base checkpoint for prompt tuning (the LM-         the pipeline's default
                  adaptation DAG sets it)
  pipeline_params JSON object of prompt-tuning pipeline parameters   {}
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

OWNER = "ml-platform"
DEFAULT_ARGS = {
    "owner": OWNER,
    "retries": 2,  # infrastructure hiccups (API or registry unreachable); pipeline steps retry inside KFP
    "retry_delay": timedelta(minutes=5),
    "retry_exponential_backoff": True,
}
# How long a retraining task waits for its pipeline before giving up on it.
PIPELINE_TIMEOUT = timedelta(minutes=int(os.environ.get("SOFTPROMPT_PIPELINE_TIMEOUT_MINUTES", "360")))
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
        raise ValueError(f"setting {VARIABLE_PREFIX}{name}: not JSON ({err.msg} at column {err.colno})") from err
    if not isinstance(value, dict):
        raise ValueError(f"setting {VARIABLE_PREFIX}{name}: expected a JSON object, got {type(value).__name__}")
    return value


def runner_mode() -> tuple[str, str | None]:
    """("kfp", host) when a Kubeflow Pipelines endpoint is configured, else ("local", None)."""
    host = setting("kfp_host")
    return ("kfp", host) if host else ("local", None)
