"""The real kfp.Client (kfp 2.17) against the KFP API stand-in (tests/kfp_api_server.py).

Checks that what kfp.Client sends lands where the real API server would put it (experiment,
namespace, parameters, service account, pipeline spec, bearer token), and that what the
stand-in answers is read back by the SDK as intended: scripted states, waits, failed tasks,
401s, the on_create hook. (No `from __future__ import annotations`: kfp reads the components'
annotations as types, and strings would not do.)
"""

import json
import threading
import time
import types

import kfp
import kfp.client.client as kfp_client_module
import pytest
from kfp import compiler, dsl
from kfp_api_server import API, TEST_TOKEN, KfpApiServer
from kfp_server_api.exceptions import ApiException

NS = "team-softprompt"
ARGUMENTS = {"message": "hello", "repeat": 3}
SERVICE_ACCOUNT = "softprompt-pipeline"

pytestmark = pytest.mark.filterwarnings("ignore:This client only works:FutureWarning")


@dsl.component(base_image="python:3.11-slim")
def prepare_data(message: str) -> str:
    return message.strip()


@dsl.component(base_image="python:3.11-slim")
def train_prompt(data: str, repeat: int) -> str:
    return data * repeat


@dsl.pipeline(name="tiny-prompt-pipeline")
def tiny_pipeline(message: str, repeat: int = 2):
    prepared = prepare_data(message=message)
    train_prompt(data=prepared.output, repeat=repeat)


@pytest.fixture(autouse=True)
def _isolated_kfp_context(tmp_path, monkeypatch):
    """kfp.Client reads (and set_user_namespace writes) ~/.config/kfp/context.json, and in a pod
    the service account's namespace file: both point into this test's folder."""
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp" / "context.json"))
    monkeypatch.setattr(kfp.Client, "_NAMESPACE_PATH", str(tmp_path / "no-namespace-file"))


def _client(server: KfpApiServer, token: str | None = TEST_TOKEN, namespace: str = NS):
    return kfp.Client(host=server.url, existing_token=token, namespace=namespace)


def _submit(client, **overrides):
    kwargs = {"arguments": ARGUMENTS, "run_name": "nightly retrain",
              "experiment_name": "softprompt", "namespace": NS,
              "service_account": SERVICE_ACCOUNT, **overrides}
    return client.create_run_from_pipeline_func(tiny_pipeline, **kwargs)


def _calls(requests: list[dict]) -> list[tuple[str, str]]:
    return [(r["method"], r["path"]) for r in requests]


def test_submission_stores_run_experiment_and_service_account(kfp_api):
    client = _client(kfp_api)
    other = client.create_experiment("other-experiment", namespace=NS)
    start = len(kfp_api.requests)

    result = _submit(client)

    run = kfp_api.runs[result.run_id]
    assert result.run_info.run_id == result.run_id and result.run_info.state == "PENDING"
    assert run["display_name"] == "nightly retrain"
    assert run["service_account"] == SERVICE_ACCOUNT
    assert run["runtime_config"]["parameters"] == ARGUMENTS
    assert run["pipeline_spec"]["pipelineInfo"]["name"] == "tiny-prompt-pipeline"
    assert set(run["pipeline_spec"]["root"]["dag"]["tasks"]) == {"prepare-data", "train-prompt"}
    experiment = kfp_api.experiments[run["experiment_id"]]
    assert experiment["display_name"] == "softprompt" and experiment["namespace"] == NS
    assert experiment["experiment_id"] != other.experiment_id
    # The experiment is looked up by name in the namespace, created, then the run is posted.
    sent = kfp_api.requests[start:]
    assert _calls(sent) == [("GET", f"{API}/experiments"), ("POST", f"{API}/experiments"),
                            ("POST", f"{API}/runs")]
    lookup = json.loads(sent[0]["query"]["filter"])["predicates"]
    assert sent[0]["query"]["namespace"] == NS
    assert lookup == [{"operation": 1, "key": "display_name", "stringValue": "softprompt"}]
    assert sent[1]["body"] == {"display_name": "softprompt", "namespace": NS}
    assert sent[2]["body"]["experiment_id"] == experiment["experiment_id"]

    again = _submit(client, run_name="second")  # the experiment now exists: reused
    assert kfp_api.runs[again.run_id]["experiment_id"] == experiment["experiment_id"]
    assert _calls(kfp_api.requests).count(("POST", f"{API}/experiments")) == 2  # other + one
    assert len(kfp_api.experiments) == 2
    # Namespace given: no healthz probe at construction; every request carried the token.
    assert ("GET", f"{API}/healthz") not in _calls(kfp_api.requests)
    assert {r["authorization"] for r in kfp_api.requests} == {f"Bearer {TEST_TOKEN}"}


def test_package_submission_follows_the_scripted_states(kfp_api, tmp_path):
    package = tmp_path / "tiny.yaml"
    compiler.Compiler().compile(tiny_pipeline, str(package))
    kfp_api.script_next_run(["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"])
    client = _client(kfp_api)

    result = client.create_run_from_pipeline_package(
        str(package), arguments=ARGUMENTS, run_name="from package", experiment_name="packages",
        namespace=NS, service_account=SERVICE_ACCOUNT)

    assert [client.get_run(result.run_id).state for _ in range(2)] == ["PENDING", "RUNNING"]
    assert kfp_api.gets_of(result.run_id) == 2
    final = client.wait_for_run_completion(result.run_id, timeout=10, sleep_duration=0)
    assert final.state == "SUCCEEDED" and kfp_api.gets_of(result.run_id) == 4
    again = client.get_run(result.run_id)
    assert again.state == "SUCCEEDED" and kfp_api.gets_of(result.run_id) == 5
    assert [s.state for s in again.state_history] == ["PENDING", "RUNNING", "SUCCEEDED"]
    assert again.finished_at.year > 1970 and again.error is None
    assert {d.display_name: d.state for d in again.run_details.task_details} == {
        "prepare-data": "SUCCEEDED", "train-prompt": "SUCCEEDED"}
    stored = kfp_api.runs[result.run_id]
    assert stored["runtime_config"]["parameters"] == ARGUMENTS
    assert kfp_api.experiments[stored["experiment_id"]]["display_name"] == "packages"


def test_default_script_and_a_wait_that_needs_no_sleep(kfp_api):
    client = _client(kfp_api)
    unscripted = _submit(client)
    assert [client.get_run(unscripted.run_id).state for _ in range(3)] == [
        "RUNNING", "SUCCEEDED", "SUCCEEDED"]

    # RunPipelineResult.wait_for_run_completion polls every 5 s: a run already final on the
    # first GET returns without sleeping.
    kfp_api.script_next_run(["SUCCEEDED"])
    result = _submit(client)
    started = time.monotonic()
    assert result.wait_for_run_completion(timeout=30).state == "SUCCEEDED"
    assert time.monotonic() - started < 4
    assert kfp_api.gets_of(result.run_id) == 1


def test_wait_for_run_completion_times_out_on_a_run_that_never_ends(kfp_api):
    client = _client(kfp_api)
    kfp_api.script_next_run(["RUNNING"])
    result = _submit(client)
    with pytest.raises(TimeoutError, match="Run timeout"):
        client.wait_for_run_completion(result.run_id, timeout=1, sleep_duration=0.1)
    assert kfp_api.gets_of(result.run_id) >= 2
    assert kfp_api.runs[result.run_id]["state"] == "RUNNING"


def test_failed_run_names_the_failed_task(kfp_api):
    client = _client(kfp_api)
    kfp_api.script_next_run(["RUNNING", "FAILED"], failed_tasks=["train-prompt"])
    result = _submit(client)

    run = client.wait_for_run_completion(result.run_id, timeout=10, sleep_duration=0)

    assert run.state == "FAILED"
    details = run.run_details.task_details
    assert {d.display_name: d.state for d in details} == {
        "prepare-data": "SUCCEEDED", "train-prompt": "FAILED"}
    assert [d.display_name for d in details if str(d.state).upper() == "FAILED"] == [
        "train-prompt"]
    assert "train-prompt" in run.error.message
    assert all(d.run_id == result.run_id and d.end_time is not None for d in details)


@pytest.mark.parametrize("token", ["wrong-token", None])
def test_wrong_or_missing_token_gets_401(kfp_api, token):
    client = _client(kfp_api, token=token)
    with pytest.raises(ApiException) as err:
        _submit(client)
    assert err.value.status == 401
    body = json.loads(err.value.body)
    assert body["code"] == 16 and "Unauthenticated" in body["message"]
    assert kfp_api.experiments == {} and kfp_api.runs == {}
    expected = f"Bearer {token}" if token else None
    assert [r["authorization"] for r in kfp_api.requests] == [expected]
    with pytest.raises(ApiException) as err:
        client.get_run("any-run")
    assert err.value.status == 401


def test_construction_without_namespace_probes_healthz(kfp_api, tmp_path, monkeypatch):
    client = kfp.Client(host=kfp_api.url, existing_token=TEST_TOKEN)
    assert _calls(kfp_api.requests) == [("GET", f"{API}/healthz")]
    # Multi-user and no service-account namespace file (not in a pod): no namespace, and the
    # server refuses experiments without one.
    assert client.get_user_namespace() == ""
    with pytest.raises(ApiException) as err:
        client.create_experiment("softprompt")
    assert err.value.status == 400 and "empty namespace" in json.loads(err.value.body)["message"]

    # A rejected healthz is retried 5 times, 5 s apart, then construction fails.
    sleeps: list[float] = []
    with monkeypatch.context() as patch:
        patch.setattr(kfp_client_module, "time", types.SimpleNamespace(sleep=sleeps.append))
        kfp_api.reset()
        with pytest.raises(TimeoutError, match="healthz"):
            kfp.Client(host=kfp_api.url, existing_token="wrong-token")
    assert sleeps == [5] * 5
    assert _calls(kfp_api.requests) == [("GET", f"{API}/healthz")] * 5

    # In a pod, the client takes its service account's namespace and saves it in the local
    # context file, which later clients read instead of probing healthz.
    namespace_file = tmp_path / "pod-namespace"
    namespace_file.write_text("from-pod")
    monkeypatch.setattr(kfp.Client, "_NAMESPACE_PATH", str(namespace_file))
    kfp_api.reset()
    assert kfp.Client(host=kfp_api.url, existing_token=TEST_TOKEN).get_user_namespace() == (
        "from-pod")
    assert json.loads((tmp_path / "kfp" / "context.json").read_text()) == {"namespace": "from-pod"}
    later = kfp.Client(host=kfp_api.url, existing_token=TEST_TOKEN)
    assert later.get_user_namespace() == "from-pod"
    assert _calls(kfp_api.requests) == [("GET", f"{API}/healthz")]


def test_single_user_server_drops_namespaces():
    with KfpApiServer(multi_user=False) as server:
        client = kfp.Client(host=server.url)  # no token: this server accepts any request
        assert client.get_user_namespace() == ""
        result = _submit(client, service_account=None)
        run = server.runs[result.run_id]
        assert server.experiments[run["experiment_id"]]["namespace"] == ""
        assert run["service_account"] == "pipeline-runner"
        assert [r.run_id for r in client.list_runs().runs] == [result.run_id]
        assert server.requests[0]["authorization"] is None


def test_listing_and_getting_experiments_and_runs(kfp_api):
    client = _client(kfp_api)
    ids = {name: _submit(client, run_name=name).run_id for name in ("run-b", "run-a", "run-c")}
    _submit(client, run_name="elsewhere", namespace="other-team")  # same experiment name
    client.create_experiment("empty", namespace=NS)

    experiment = client.get_experiment(experiment_name="softprompt", namespace=NS)
    assert experiment.namespace == NS
    assert client.get_experiment(experiment_id=experiment.experiment_id).display_name == (
        "softprompt")
    with pytest.raises(ValueError, match="No experiment is found"):
        client.get_experiment(experiment_name="missing", namespace=NS)
    listed = client.list_experiments(namespace=NS)
    assert listed.total_size == 2
    assert {e.display_name for e in listed.experiments} == {"softprompt", "empty"}
    assert len(client.list_experiments(namespace="other-team").experiments) == 1
    with pytest.raises(ApiException) as err:  # the raw create, past kfp.Client's lookup
        client._experiment_api.experiment_service_create_experiment(
            experiment={"display_name": "softprompt", "namespace": NS})
    assert err.value.status == 409

    assert client.list_runs(experiment_id=experiment.experiment_id).total_size == 3
    assert client.list_runs(namespace="other-team").runs[0].display_name == "elsewhere"
    first = client.list_runs(namespace=NS, page_size=2, sort_by="display_name desc")
    assert [r.display_name for r in first.runs] == ["run-c", "run-b"] and first.total_size == 3
    rest = client.list_runs(namespace=NS, page_size=2, page_token=first.next_page_token,
                            sort_by="display_name desc")
    assert [r.display_name for r in rest.runs] == ["run-a"] and rest.next_page_token is None
    only_a = json.dumps({"predicates": [
        {"operation": "EQUALS", "key": "display_name", "stringValue": "run-a"}]})
    assert [r.run_id for r in client.list_runs(namespace=NS, filter=only_a).runs] == [
        ids["run-a"]]
    with pytest.raises(ApiException) as err:
        client.get_run("no-such-run")
    assert err.value.status == 404 and json.loads(err.value.body)["code"] == 5


def test_on_create_hook_decides_the_final_state(kfp_api):
    client = _client(kfp_api)
    release = threading.Event()
    seen: list[dict] = []

    def backend(run: dict) -> str:
        seen.append(run)
        if not release.wait(10):
            raise TimeoutError("never released")
        return "SUCCEEDED"

    kfp_api.on_create = backend
    result = _submit(client)
    assert [client.get_run(result.run_id).state for _ in range(3)] == ["RUNNING"] * 3
    release.set()
    run = client.wait_for_run_completion(result.run_id, timeout=10, sleep_duration=0.05)
    assert run.state == "SUCCEEDED"
    assert seen[0]["run_id"] == result.run_id
    assert seen[0]["runtime_config"]["parameters"] == ARGUMENTS
    assert "train-prompt" in seen[0]["pipeline_spec"]["root"]["dag"]["tasks"]

    def broken(run: dict) -> str:
        raise RuntimeError("out of GPUs")

    kfp_api.on_create = broken
    run = client.wait_for_run_completion(_submit(client).run_id, timeout=10, sleep_duration=0.05)
    assert run.state == "FAILED" and "out of GPUs" in run.error.message

    kfp_api.on_create = lambda run: ("FAILED", ["train-prompt"])
    run = client.wait_for_run_completion(_submit(client).run_id, timeout=10, sleep_duration=0.05)
    assert run.state == "FAILED"
    assert [d.display_name for d in run.run_details.task_details if d.state == "FAILED"] == [
        "train-prompt"]

    kfp_api.script_next_run(["SUCCEEDED"])  # a queued script takes precedence over the hook
    kfp_api.on_create = seen.append
    assert client.get_run(_submit(client).run_id).state == "SUCCEEDED"
    assert len(seen) == 1
