"""Reaching the Kubeflow Pipelines API: where, as whom, and what became of a run.

`KfpEndpoint` is what the Airflow Connection `kubeflow_pipelines` (or a command line) says: the
API's URL, a bearer token (static, or a file re-read for every client, such as a projected
ServiceAccount token with audience `pipelines.kubeflow.org`), and the Kubeflow profile namespace
that multi-user Kubeflow creates runs in.
"""

from dataclasses import dataclass
from pathlib import Path

from components.cluster import PIPELINE_SERVICE_ACCOUNT

# v2beta1 RuntimeState values after which a run changes no more.
FINISHED_STATES = ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED")


@dataclass(frozen=True)
class KfpEndpoint:
    """Where and as whom to reach the Kubeflow Pipelines API."""

    host: str
    token: str = ""  # a static bearer token (never logged)
    token_path: str = ""  # a file holding a bearer token, read anew for every client
    namespace: str = ""  # the Kubeflow profile namespace ('' = the client's default)

    def __repr__(self) -> str:  # keeps the token out of logs and tracebacks
        return f"KfpEndpoint(host={self.host!r}, namespace={self.namespace!r})"

    def bearer_token(self) -> str | None:
        if self.token:
            return self.token
        if not self.token_path:
            return None
        try:
            return Path(self.token_path).read_text().strip()
        except OSError as err:
            raise RuntimeError(f"Kubeflow Pipelines token file {self.token_path}: {err}") from err

    def client(self):
        import kfp

        kwargs = {"namespace": self.namespace} if self.namespace else {}
        return kfp.Client(host=self.host, existing_token=self.bearer_token(), **kwargs)


@dataclass(frozen=True)
class RunStatus:
    """A Kubeflow run's state; for a failed run, the display names of its failed steps."""

    run_id: str
    state: str
    failed_steps: tuple[str, ...] = ()
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


def submit(endpoint: KfpEndpoint, pipeline, params: dict, run_name: str | None,
           experiment: str | None) -> str:
    """Creates a run of `pipeline` with `params`; returns its id. The run's service account holds
    the registry and DVC remote access (infra/k8s); no key travels in the parameters."""
    result = endpoint.client().create_run_from_pipeline_func(
        pipeline, arguments=params, run_name=run_name, experiment_name=experiment,
        namespace=endpoint.namespace or None, service_account=PIPELINE_SERVICE_ACCOUNT)
    return result.run_id


def run_status(endpoint: KfpEndpoint, run_id: str) -> RunStatus:
    """The run's current state (one API call)."""
    run = endpoint.client().get_run(run_id)
    state = str(run.state or "RUNTIME_STATE_UNSPECIFIED").upper()
    details = (run.run_details.task_details if run.run_details else None) or []
    failed = tuple(d.display_name for d in details if str(d.state).upper() == "FAILED")
    error = run.error.message if getattr(run, "error", None) and run.error.message else ""
    return RunStatus(run_id, state, failed, error)
