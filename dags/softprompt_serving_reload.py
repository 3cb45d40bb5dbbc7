"""
### softprompt serving reload

Scheduled on the registered-prompt Assets (the `softprompt_prompts` alias that the retraining
DAG's `record` task emits through): when a task's new prompt is registered, the inference
service re-reads the registry at once (`POST /v1/reload`) instead of at its next poll. The
service verifies every prompt and only swaps in the ones whose alias moved.

The service is reached through the Airflow Connection `softprompt_serve`: host = its URL,
password = its bearer token. Without that Connection the task fails and says so.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, get_current_context, task
from softprompt_settings import DEFAULT_ARGS, PROMPTS, SERVE_CONNECTION_ID

DAG_ID = "softprompt_serving_reload"


@dag(
    dag_id=DAG_ID,
    schedule=[PROMPTS],
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["softprompt", "serving"],
    doc_md=__doc__,
)
def softprompt_serving_reload():
    @task
    def reload() -> dict:
        """POST /v1/reload on the service; returns its report (per task: versions, changed)."""
        import json
        import urllib.request

        from airflow.sdk.exceptions import AirflowFailException
        from softprompt_settings import _connection, connection_url

        events = get_current_context().get("triggering_asset_events") or {}
        print(f"new prompts: {sorted(str(asset) for asset in events)}")
        conn = _connection(SERVE_CONNECTION_ID)
        if conn is None:
            raise AirflowFailException(f"the Airflow Connection {SERVE_CONNECTION_ID!r} "
                                       "(the inference service's URL and token) is not defined")
        request = urllib.request.Request(connection_url(conn) + "/v1/reload", method="POST",
                                         data=b"", headers={"Content-Type": "application/json"})
        if conn.password:
            request.add_header("Authorization", f"Bearer {conn.password}")
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 (our service)
            report = json.loads(response.read())
        print(f"reload: {report}")
        return report

    reload()


softprompt_serving_reload()
