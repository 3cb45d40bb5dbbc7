"""The Airflow DAGs, run with dag.test() on SQLite in this process.

Airflow's metadata database lives in a temporary AIRFLOW_HOME, migrated once for this module.
Most runs swap the prompt-tuning pipeline for a cheap stand-in that really fetches and checks
the data (softprompt.data_source.prepare) and really registers a (random) prompt with the
pipeline's lineage. The Kubeflow branch runs against the stand-in KFP API server
(tests/kfp_api_server.py) reached through the `kubeflow_pipelines` Connection, with the catalogue
in a git + DVC repository on the real SeaweedFS S3 server; `test_retraining_dag_runs_the_real_
pipeline_hermetically` runs the real pipeline (kfp.local, tiny model) from such a catalogue.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from dvc_catalogue import DvcCatalogue
from test_catalogue import add_task, append_row, publish_like_the_pipeline

from softprompt.registry import open_registry

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"
# kfp.local's own message when a step fails (colours included), as raised by components.runner.
KFP_LOCAL_FAILURE = ("Pipeline \x1b[95m'softprompt-prompt-tuning'\x1b[0m finished with status "
                     "\x1b[91mFAILURE\x1b[0m. Inner task failed: \x1b[96m'train-prompt'\x1b[0m "
                     "inside \x1b[96m'for-loop-1'\x1b[0m.")
ALL_DAGS = ["softprompt_lm_adaptation", "softprompt_retraining", "softprompt_serving_reload"]


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    """A migrated SQLite metadata database; set before airflow is first imported here."""
    if "airflow" in sys.modules:
        pytest.skip("airflow was imported before its test configuration was set")
    home = tmp_path_factory.mktemp("airflow_home")
    env = {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
           "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS)}
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                   capture_output=True, timeout=600)
    yield home
    patch.undo()


def load_dags() -> dict:
    from airflow.dag_processing.dagbag import BundleDagBag

    bag = BundleDagBag(dag_folder=str(DAGS), bundle_path=str(DAGS), bundle_name="dags-folder")
    assert bag.import_errors == {}
    return bag.dags


def test_dags_load_with_conventions(airflow_home):
    # Parsed in a fresh interpreter: no import errors, and nothing heavy imported at parse time.
    probe = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import BundleDagBag\n"
        f"bag = BundleDagBag(dag_folder={str(DAGS)!r}, bundle_path={str(DAGS)!r}, "
        "bundle_name='dags-folder')\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'kfp', 'dvc', 'softprompt', "
        "'components') if m in sys.modules)\n"
        "print(json.dumps({'errors': bag.import_errors, 'dags': sorted(bag.dags), "
        "'heavy': heavy}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True,
                         timeout=300)
    parsed = json.loads(out.stdout.strip().splitlines()[-1])
    assert parsed == {"errors": {}, "dags": ALL_DAGS, "heavy": []}

    dags = load_dags()
    for dag_id in ALL_DAGS:
        dag = dags[dag_id]
        assert "softprompt" in dag.tags and dag.owner == "ml-platform" and "###" in dag.doc_md
        assert dag.catchup is False and dag.max_active_runs == 1
        for t in dag.tasks:
            assert t.owner == "ml-platform" and t.retry_delay.total_seconds() >= 60, t.task_id
            # The summary only reads XComs and the wait is a sensor: they alone run once.
            once = t.task_id in ("summarize", "retrain.wait_for_run", "wait_for_run")
            assert t.retries == 0 if once else t.retries >= 1, t.task_id
    retraining = dags["softprompt_retraining"]
    tasks = retraining.task_dict
    assert tasks["summarize"].trigger_rule == "all_done"
    assert tasks["retrain.launch"].execution_timeout is not None
    # The wait gives its worker slot back between polls.
    assert tasks["retrain.wait_for_run"].mode == "reschedule"
    assert [o.name for o in tasks["retrain.record"].outlets] == [
        "softprompt_prompts"]
    assert retraining.params.get_param("tasks").schema["type"] == "array"
    # Time and data: a daily cron, or an event on the catalogue's Asset.
    assert type(retraining.timetable).__name__ == "AssetOrTimeSchedule"
    assert [key.name for key, _ in retraining.timetable.asset_condition.iter_assets()] == [
        "softprompt_catalogue"]
    assert retraining.timetable.summary == "Asset or 0 0 * * *"
    reload_dag = dags["softprompt_serving_reload"]
    assert "softprompt_prompts" in repr(reload_dag.timetable.asset_condition)
    lm = dags["softprompt_lm_adaptation"]
    assert type(lm.timetable).__name__ == "NullTimetable"  # manual only
    assert lm.task_dict["wait_for_run"].mode == "reschedule"
    base = lm.params.get_param("base_model")
    assert base.schema["type"] == "string" and not base.has_value  # required: no hub default


def run_dag(dag_id: str, conf: dict | None = None) -> tuple[str, dict, dict]:
    """dag.test(): (run state, {task_id or task_id[map_index]: state}, {task_id: return value}).
    Retries stay on, one second apart (dag.test() waits out retry delays); the state of a task
    that ran more than once gets its number of tries appended ("failed/3")."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag = load_dags()[dag_id]
    for t in dag.tasks:
        t.retry_delay, t.retry_exponential_backoff = timedelta(seconds=1), False
    dr = dag.test(run_conf=conf or {})
    states = {}
    for ti in dr.get_task_instances():
        tries = f"/{ti.try_number}" if ti.try_number > 1 else ""
        key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        states[key] = str(ti.state) + tries
    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=dr.run_id, key="return_value",
                                                  dag_ids=dag_id)).all()
        values = {row.task_id if row.map_index < 0 else f"{row.task_id}[{row.map_index}]":
                  XComModel.deserialize_value(row) for row in rows}
    run_dag.last_run_id = dr.run_id
    return str(dr.state), states, values


def reschedules(dag_id: str, run_id: str, task_id: str) -> dict[int, int]:
    """{map_index: times the task instance gave its slot back and was rescheduled}."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id)
        return {ti.map_index: session.query(TaskReschedule).filter_by(ti_id=ti.id).count()
                for ti in tis}


def asset_events(name: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                  .filter(AssetModel.name == name).all())
        return [e.extra for e in events]


@pytest.fixture()
def configured(airflow_home, catalogue, monkeypatch):
    """The retraining DAG pointed at this test's local catalogue, registry and runs folder; no
    Kubeflow Connection or runner setting from the caller's environment."""
    for name, key in (("tasks_dir", "tasks_dir"), ("data_dir", "data_dir"),
                      ("registry", "registry"), ("runs_dir", "runs")):
        monkeypatch.setenv(f"AIRFLOW_VAR_SOFTPROMPT_{name.upper()}", str(catalogue[key]))
    for name in ("AIRFLOW_CONN_KUBEFLOW_PIPELINES", "SOFTPROMPT_RUNNER", "SOFTPROMPT_KFP_HOST",
                 "AIRFLOW_VAR_SOFTPROMPT_KFP_HOST", "AIRFLOW_VAR_SOFTPROMPT_CATALOGUE_REPO"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIRFLOW_VAR_SOFTPROMPT_BASE_MODEL", "tiny-base")
    return catalogue


def stand_in_backend(params: dict) -> int:
    """What a pipeline run does to the registry, cheaply: the real prepare step's fetch and
    check of the data it is handed, then a random prompt registered with its lineage."""
    import tempfile

    from softprompt.data_source import DataRef, prepare, read_spec

    spec = read_spec(params["task"], params["task_spec"])
    ref = DataRef(task=params["task"], version=params.get("data_version", ""),
                  repo=params.get("data_repo", ""), rev=params.get("data_rev", ""),
                  remote=params.get("data_remote", ""), path=params.get("data_path", ""),
                  data_dir=params.get("data_dir", ""))
    with tempfile.TemporaryDirectory() as out:
        info = prepare(spec, ref, Path(out) / "train_dev", Path(out) / "test")
    registry = open_registry(params["registry_uri"])
    return publish_like_the_pipeline(registry, spec, info["dataset_version"],
                                     params["base_model"]).version


@pytest.fixture()
def stand_in_pipeline(monkeypatch):
    """Swaps the local prompt-tuning pipeline for `stand_in_backend`. Tasks in `failing` fail
    the way kfp.local reports a failed step. Records the tasks it ran and their parameters."""
    import components.runner

    calls: list[str] = []
    seen: dict[str, dict] = {}
    failing: set[str] = set()

    def run_prompt_tuning(task, params, mode="local", kfp_host=None, *, root, **kwargs):
        calls.append(task)
        seen[task] = params
        assert mode == "local" and params["data_version"].endswith(".dir")
        if task in failing:
            raise RuntimeError(KFP_LOCAL_FAILURE)
        version = stand_in_backend(params)
        return {"mode": "local", "status": "SUCCEEDED", "run_id": f"{task}-{len(calls)}",
                "version": version, "decision": f"promoted production to v{version}"}

    monkeypatch.setattr(components.runner, "run_prompt_tuning", run_prompt_tuning)
    return {"calls": calls, "failing": failing, "params": seen}


def test_retraining_dag_trains_only_what_changed(configured, stand_in_pipeline):
    cat, calls = configured, stand_in_pipeline["calls"]
    reg = open_registry(cat["registry"])
    for name in ("alpha", "beta", "gamma"):
        add_task(cat["tasks_dir"], cat["data_dir"], name)
    stand_in_pipeline["failing"].add("beta")

    # 1. Three new tasks; beta's pipeline fails at its train step: only beta's mapped task fails.
    state, states, values = run_dag("softprompt_retraining")
    assert sorted(calls) == ["alpha", "beta", "gamma"]
    assert {k: v for k, v in states.items() if k.startswith("retrain.")} == {
        "retrain.launch[0]": "success", "retrain.launch[1]": "failed",
        "retrain.launch[2]": "success", "retrain.wait_for_run[0]": "success",
        "retrain.wait_for_run[1]": "upstream_failed", "retrain.wait_for_run[2]": "success",
        "retrain.record[0]": "success", "retrain.record[1]": "upstream_failed",
        "retrain.record[2]": "success"}
    assert states["summarize"] == "success" and states["verdict"] == "failed" and state == "failed"
    summary = values["summarize"]
    assert [r["task"] for r in summary["retrained"]] == ["alpha", "gamma"]
    assert summary["unchanged"] == []
    assert [f["task"] for f in summary["failed"]] == ["beta"]
    error = summary["failed"][0]["error"]
    assert error.startswith("task beta: prompt-tuning pipeline failed at step 'train-prompt' "
                            "inside 'for-loop-1'")
    assert "\x1b" not in error
    assert [m.version for m in reg.list_versions("alpha")] == [1]
    assert reg.list_versions("beta") == []
    # The pipeline got the spec's text and the data reference, and the prompts are Assets.
    params = stand_in_pipeline["params"]["alpha"]
    assert params["task_spec"] == (cat["tasks_dir"] / "alpha.yaml").read_text()
    assert params["data_dir"] == str(cat["data_dir"])
    assert asset_events("softprompt_prompt_alpha")[-1]["version"] == 1

    # 2. beta leaves the catalogue; nothing changed: nothing is launched.
    (cat["tasks_dir"] / "beta.yaml").unlink()
    calls.clear()
    state, states, values = run_dag("softprompt_retraining")
    assert calls == [] and state == "success"
    assert not any("[" in k for k in states) and states["retrain.launch"] == "skipped"
    assert values["summarize"] == {"planned": True, "unchanged": ["alpha", "gamma"],
                                   "retrained": [], "failed": []}

    # 3. One data file changes: only that task is retrained; its new version records the new data.
    append_row(cat["data_dir"], "gamma", {"sentence": "a superb film", "label": 1, "idx": 500})
    state, states, values = run_dag("softprompt_retraining")
    assert calls == ["gamma"] and state == "success"
    (retrained,) = values["summarize"]["retrained"]
    assert retrained["task"] == "gamma" and retrained["version"] == 2
    assert retrained["reason"].startswith("data changed")
    assert retrained["dataset_version"] == reg.manifest("gamma", 2).dataset_version \
        != reg.manifest("gamma", 1).dataset_version
    assert values["summarize"]["unchanged"] == ["alpha"]

    # 4. On demand: alpha, unchanged, retrained because it is named; nothing else is planned.
    calls.clear()
    conf = {"tasks": ["alpha"], "pipeline_params": {"max_steps": 3}}
    state, _, values = run_dag("softprompt_retraining", conf)
    assert calls == ["alpha"] and state == "success"
    assert values["summarize"]["retrained"][0]["reason"] == "requested"
    assert values["summarize"]["unchanged"] == [] and reg.manifest("alpha", 2).version == 2
    assert stand_in_pipeline["params"]["alpha"]["max_steps"] == 3

    # 5. A bad pipeline parameter, a parameter the plan owns, or an unknown task fails the run
    # at once (no retry) before anything is launched.
    calls.clear()
    for conf, failing in (({"pipeline_params": {"max_step": 3}}, "resolve_settings"),
                          ({"pipeline_params": {"data_dir": "/x"}}, "resolve_settings"),
                          ({"tasks": ["delta"]}, "plan")):
        state, states, values = run_dag("softprompt_retraining", conf)
        assert state == "failed" and states[failing] == "failed" and calls == []
        assert states["verdict"] == "failed" and values["summarize"]["planned"] is False


def test_kubeflow_without_its_connection_is_an_error_not_a_local_run(configured, monkeypatch,
                                                                     stand_in_pipeline):
    add_task(configured["tasks_dir"], configured["data_dir"], "alpha")
    monkeypatch.setenv("SOFTPROMPT_RUNNER", "kubeflow")
    state, states, _ = run_dag("softprompt_retraining")
    assert state == "failed" and states["resolve_settings"] == "failed"
    assert stand_in_pipeline["calls"] == []
    # With the Connection but a catalogue only on this worker's disk: pods could not read it.
    monkeypatch.setenv("AIRFLOW_CONN_KUBEFLOW_PIPELINES", json.dumps(
        {"conn_type": "http", "host": "http://127.0.0.1:9", "extra": {"namespace": "team"}}))
    state, states, _ = run_dag("softprompt_retraining")
    assert state == "failed" and states["resolve_settings"] == "failed"
    assert stand_in_pipeline["calls"] == []


def test_settings_read_the_connection():
    """The Connection's URL forms, and no token in the endpoint's repr (logs, tracebacks)."""
    sys.path.insert(0, str(DAGS))
    try:
        from softprompt_settings import connection_url
    finally:
        sys.path.remove(str(DAGS))

    class Conn:
        conn_id, host, port, schema = "kubeflow_pipelines", "ml-pipeline.kubeflow", 8888, ""

    assert connection_url(Conn()) == "http://ml-pipeline.kubeflow:8888"
    Conn.host, Conn.schema = "https://kubeflow.example.com/pipeline/", "ignored"
    assert connection_url(Conn()) == "https://kubeflow.example.com/pipeline"
    Conn.host = ""
    with pytest.raises(ValueError, match="'kubeflow_pipelines' has no host"):
        connection_url(Conn())


@pytest.fixture()
def kubeflow(configured, kfp_api, s3_server, tmp_path, monkeypatch):
    """Kubeflow mode as a cluster deployment has it: the runner setting, the Connection (host,
    namespace, token file), the catalogue in a git + DVC repository on SeaweedFS. The stand-in
    KFP API server's backend runs `stand_in_backend` on each submitted run."""
    cat = DvcCatalogue(tmp_path / "catalogue", s3_server)
    token = tmp_path / "kfp-token"
    token.write_text("test-token")
    empty = tmp_path / "aws-config"
    empty.touch()
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))  # dvc-s3 refuses /dev/null
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("SOFTPROMPT_RUNNER", "kubeflow")
    monkeypatch.setenv("SOFTPROMPT_KFP_POLL_SECONDS", "1")
    monkeypatch.setenv("AIRFLOW_VAR_SOFTPROMPT_CATALOGUE_REPO", str(cat.root))
    monkeypatch.setenv("AIRFLOW_CONN_KUBEFLOW_PIPELINES", json.dumps({
        "conn_type": "http", "host": kfp_api.url,
        "extra": {"namespace": "team", "token_path": str(token)}}))
    return {"catalogue": cat, "registry": configured["registry"]}


def test_retraining_dag_drives_kubeflow_through_its_connection(kubeflow, kfp_api):
    """Submitted with the Connection's token and namespace, waited for without holding a worker
    slot, and a failed run fails its task with the failing step's name."""
    import time

    cat = kubeflow["catalogue"]
    cat.add_task("alpha")
    head = cat.add_task("beta")

    def backend(run: dict):
        params = run["runtime_config"]["parameters"]
        time.sleep(3)  # still RUNNING for a few polls
        if params["task"] == "beta":
            return "FAILED", ["train-prompt"]
        stand_in_backend(params)
        return "SUCCEEDED"

    kfp_api.on_create = backend
    state, states, values = run_dag("softprompt_retraining")
    assert state == "failed" and states["verdict"] == "failed"
    summary = values["summarize"]
    assert [r["task"] for r in summary["retrained"]] == ["alpha"]
    (failed,) = summary["failed"]
    beta_run = next(r for r in kfp_api.runs.values()
                    if r["runtime_config"]["parameters"]["task"] == "beta")
    assert failed["error"].startswith(f"task beta: Kubeflow run {beta_run['run_id']} ended "
                                      "FAILED; failed step(s): 'train-prompt'")

    # Every call carried the token from the Connection's token file.
    assert kfp_api.requests
    assert {r["authorization"] for r in kfp_api.requests} == {"Bearer test-token"}
    # The run got the spec's text and the data by DVC hash and commit; no local path.
    runs = [r["runtime_config"]["parameters"] for r in kfp_api.runs.values()]
    (params,) = [p for p in runs if p["task"] == "alpha"]
    assert params["task_spec"] == (cat.root / "tasks" / "alpha.yaml").read_text()
    data = tuple(params[k] for k in ("data_remote", "data_version", "data_rev", "data_path"))
    assert data == (cat.remote, cat.version("alpha"), head, "data/alpha")
    assert "data_dir" not in params
    assert {r["service_account"] for r in kfp_api.runs.values()} == {"softprompt-pipeline"}
    # The wait gave its worker slot back between polls (reschedule mode), for both runs.
    counts = reschedules("softprompt_retraining", run_dag.last_run_id, "retrain.wait_for_run")
    assert sorted(counts) == [0, 1] and min(counts.values()) >= 1
    manifest = open_registry(kubeflow["registry"]).manifest("alpha", 1)
    assert manifest.dataset_version == cat.version("alpha")
    assert summary["retrained"][0]["dataset_version"] == cat.version("alpha")


def test_lm_adaptation_dag_records_the_adapted_checkpoint(configured, monkeypatch):
    import components.runner

    seen = {}

    def run_lm_adaptation(params, mode="local", kfp_host=None, **kwargs):
        seen.update(params=params, mode=mode)
        return {"mode": "local", "status": "SUCCEEDED", "model_path": "/ckpt/t5-lm-adapted",
                "checkpoint": "/ckpt/t5-lm-adapted", "metadata": {"steps": params["steps"]},
                "seconds": 1.0}

    monkeypatch.setattr(components.runner, "run_lm_adaptation", run_lm_adaptation)
    # An environment Variable would shadow the recorded one.
    monkeypatch.delenv("AIRFLOW_VAR_SOFTPROMPT_BASE_MODEL")
    conf = {"base_model": "tiny-t5", "steps": 2, "corpus": "toy"}
    state, _, values = run_dag("softprompt_lm_adaptation", conf)
    assert state == "success" and values["record"] == "/ckpt/t5-lm-adapted"
    assert seen["mode"] == "local" and seen["params"]["base_model"] == "tiny-t5"
    assert seen["params"]["steps"] == 2 and "use_for_retraining" not in seen["params"]
    from airflow.models.variable import Variable

    assert Variable.get("softprompt_base_model") == "/ckpt/t5-lm-adapted"
    Variable.delete("softprompt_base_model")


@pytest.mark.pipeline
def test_retraining_dag_runs_the_real_pipeline_hermetically(kubeflow, tiny_causal_dir, s3_server,
                                                            tmp_path, monkeypatch, capfd):
    """The real prompt-tuning pipeline (kfp.local, tiny model) behind the DAG, from a working
    directory with no tasks/ and no data, the spec and data folders pointing at empty ones:
    the spec arrives as a parameter, the data from the git + DVC catalogue on SeaweedFS, and
    the registry is on SeaweedFS too. A task added to the catalogue is planned by the DAG's own
    plan step and registered with the pushed DVC hash; a bad data row fails that task alone at
    the prepare step; with nothing changed, the next run launches nothing."""
    cat = kubeflow["catalogue"]
    monkeypatch.delenv("SOFTPROMPT_RUNNER")
    monkeypatch.delenv("AIRFLOW_CONN_KUBEFLOW_PIPELINES")  # the local runner (kfp.local)
    work = tmp_path / "work"
    for empty in ("work", "empty-tasks", "empty-data"):
        (tmp_path / empty).mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("SOFTPROMPT_TASKS_DIR", str(tmp_path / "empty-tasks"))
    monkeypatch.setenv("SOFTPROMPT_DATA_DIR", str(tmp_path / "empty-data"))
    monkeypatch.delenv("AIRFLOW_VAR_SOFTPROMPT_TASKS_DIR")
    monkeypatch.delenv("AIRFLOW_VAR_SOFTPROMPT_DATA_DIR")
    bucket = s3_server.create_bucket()
    registry_uri = f"s3://{bucket}/prompts"
    monkeypatch.setenv("AIRFLOW_VAR_SOFTPROMPT_REGISTRY", registry_uri)
    monkeypatch.setenv("SOFTPROMPT_REGISTRY_CACHE", str(tmp_path / "registry-cache"))
    monkeypatch.setenv("AIRFLOW_VAR_SOFTPROMPT_BASE_MODEL", str(tiny_causal_dir))
    monkeypatch.setenv("AIRFLOW_VAR_SOFTPROMPT_PIPELINE_PARAMS", json.dumps({
        "prompt_configs": [{"seed": 0, "init": "class_label"}], "prompt_length": 4,
        "batch_size": 8, "micro_batch_size": 8, "max_steps": 2, "eval_every": 2,
        "max_input_tokens": 64, "eval_batch_size": 16, "nearest_k": 2}))
    cat.add_task("toy")
    cat.write_task("broken")
    append_row(cat.root / "data", "broken", {"sentence": "meh", "label": 3})
    cat.run("dvc", "add", "-q", "data/broken")
    cat.run("dvc", "push")
    cat.git("add", "-A")
    cat.git("commit", "-q", "-m", "task broken")

    state, states, values = run_dag("softprompt_retraining")
    assert state == "failed" and states["retrain.launch[0]"] == "failed"
    assert states["retrain.record[1]"] == "success"
    (failed,) = values["summarize"]["failed"]
    assert failed["task"] == "broken"
    assert failed["error"].startswith("task broken: prompt-tuning pipeline failed at step "
                                      "'prepare-data'")
    # The step's own error, in the task's log, names the file, line and field.
    captured = capfd.readouterr()
    row_error = "broken/train.jsonl:25: field 'label' has unknown label '3'"
    assert row_error in captured.out + captured.err
    (done,) = values["summarize"]["retrained"]
    registry = open_registry(registry_uri)
    manifest = registry.manifest("toy", "production")
    assert done["task"] == "toy" and done["version"] == manifest.version == 1
    assert manifest.dataset_version == cat.version("toy") == done["dataset_version"]
    assert manifest.data_source["kind"] == "dvc-remote"
    assert manifest.data_source["rev"] == cat.head()
    assert manifest.base_model == str(tiny_causal_dir) and manifest.prompt_length == 4
    assert registry.list_versions("broken") == []
    assert list(work.iterdir()) == []  # nothing read from or written to the working directory

    cat.git("rm", "-q", "-r", "--cached", "tasks/broken.yaml")
    cat.git("commit", "-q", "-m", "drop broken")
    state, states, values = run_dag("softprompt_retraining")
    assert state == "success" and states["retrain.launch"] == "skipped"
    assert values["summarize"] == {"planned": True, "unchanged": ["toy"], "retrained": [],
                                   "failed": []}
