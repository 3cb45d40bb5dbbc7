"""The Airflow DAGs and the change detection under them (softprompt.catalogue).

Airflow runs on SQLite in a temporary AIRFLOW_HOME, migrated once for this module; the DAGs run
with dag.test() in this process. Most runs swap the prompt-tuning pipeline for a cheap stand-in
that really prepares the data and really registers a (random) prompt with the pipeline's lineage;
`test_retraining_dag_runs_the_real_pipeline` runs the real one (kfp.local, tiny model).
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import yaml

from softprompt.catalogue import (
    CatalogueError,
    TaskPlan,
    plan_retraining,
    read_catalogue,
    verify_registered,
)
from softprompt.data_version import dataset_version
from softprompt.registry import open_registry

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"
FINGERPRINT = "sha256:" + "0" * 64
# kfp.local's own message when a step fails (colours included), as raised by components.runner.
KFP_LOCAL_FAILURE = ("Pipeline \x1b[95m'softprompt-prompt-tuning'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m. "
                     "Inner task failed: \x1b[96m'train-prompt'\x1b[0m inside \x1b[96m'for-loop-1'\x1b[0m.")


# ---------------------------------------------------------------------------- a catalogue on disk
def add_task(tasks_dir: Path, data_dir: Path, name: str, splits=("train", "dev", "test"), **spec_overrides) -> Path:
    """A toy sentiment task `name`: its spec in `tasks_dir`, its data in `data_dir/name/`."""
    from conftest import TOY_SPEC, _toy_rows

    (data_dir / name).mkdir(parents=True, exist_ok=True)
    for split, (n, seed) in {"train": (24, 1), "dev": (8, 2), "test": (8, 3)}.items():
        if split in splits:
            rows = _toy_rows(n, seed + sum(map(ord, name)))
            (data_dir / name / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = TOY_SPEC | {"name": name, "splits": {s: f"{name}/{s}.jsonl" for s in splits}} | spec_overrides
    path = tasks_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def append_row(data_dir: Path, name: str, row: dict) -> None:
    with (data_dir / name / "train.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")


@pytest.fixture()
def catalogue(tmp_path) -> dict:
    tasks_dir, data_dir = tmp_path / "tasks", tmp_path / "data"
    tasks_dir.mkdir()
    return {"tasks_dir": tasks_dir, "data_dir": data_dir, "registry": tmp_path / "registry", "runs": tmp_path / "runs"}


def publish_like_the_pipeline(registry, spec_path: str, version: str, base_model: str):
    """What the pipeline's register step publishes, with a random prompt."""
    from softprompt.tasks import load_spec

    spec = load_spec(spec_path)
    lineage = {"base_model": base_model, "base_model_fingerprint": FINGERPRINT, "init": "class_label", "objective": "target_nll",
               "dataset_version": version, "code_version": "test", "metrics": {"dev": {"score": 0.5}},
               "label_words": spec.label_words, "template": spec.template, "metric": spec.metric}
    return registry.publish(spec.name, torch.randn(4, 8), lineage)


# ---------------------------------------------------------------------------- change detection
def raw_version(catalogue):
    return lambda entry: dataset_version(catalogue["data_dir"] / entry.name)


def test_plan_retrains_new_and_changed_tasks_only(catalogue):
    cat, reg = catalogue, open_registry(catalogue["registry"])
    for name in ("alpha", "beta"):
        add_task(cat["tasks_dir"], cat["data_dir"], name)
    version = raw_version(cat)

    def plan(**kwargs):
        plans = plan_retraining(read_catalogue(cat["tasks_dir"]), reg, version, kwargs.pop("base_model", "m"), **kwargs)
        return {p.task: p for p in plans}

    first = plan()
    assert {t: (p.retrain, p.reason, p.latest_version) for t, p in first.items()} == {
        "alpha": (True, "new task", None), "beta": (True, "new task", None)}
    for p in first.values():
        publish_like_the_pipeline(reg, p.spec_path, p.dataset_version, "m")
    assert {t: (p.retrain, p.reason, p.latest_version) for t, p in plan().items()} == {
        "alpha": (False, "unchanged", 1), "beta": (False, "unchanged", 1)}
    # Reformatting a spec (same content) and editing its description change nothing.
    beta = cat["tasks_dir"] / "beta.yaml"
    raw = yaml.safe_load(beta.read_text())
    beta.write_text(yaml.safe_dump(raw | {"description": "now documented"}, default_flow_style=True))
    assert plan()["beta"].retrain is False

    append_row(cat["data_dir"], "alpha", {"sentence": "a great film", "label": 1, "idx": 99})
    plans = plan()
    assert plans["alpha"].retrain and plans["alpha"].reason.startswith(f"data changed ({first['alpha'].dataset_version} -> ")
    assert plans["beta"].retrain is False

    beta.write_text(yaml.safe_dump(raw | {"template": "Text: {sentence}\nMood:", "labels": {"0": "bad", "1": "good"}}))
    assert plan()["beta"].reason == "spec changed (template, label words)"
    assert plan(base_model="adapted")["beta"].reason == "spec changed (template, label words); base model changed (m -> adapted)"
    forced = plan(force=["alpha"])["alpha"]
    assert forced.retrain and forced.reason.startswith("requested; data changed")


def test_unusable_specs_and_data_fail_only_their_own_task(catalogue):
    cat, reg = catalogue, open_registry(catalogue["registry"])
    add_task(cat["tasks_dir"], cat["data_dir"], "good")
    add_task(cat["tasks_dir"], cat["data_dir"], "renamed")
    (cat["tasks_dir"] / "renamed.yaml").rename(cat["tasks_dir"] / "other.yaml")
    (cat["tasks_dir"] / "broken.yaml").write_text("name: broken\nformat: [unclosed\n")
    add_task(cat["tasks_dir"], cat["data_dir"], "badrow")
    append_row(cat["data_dir"], "badrow", {"sentence": "meh", "label": 7})

    def version(entry):
        from softprompt.tasks import load_task

        load_task(entry.spec, cat["data_dir"])  # validates every row, as the prepare step does
        return raw_version(cat)(entry)

    plans = {p.task: p for p in plan_retraining(read_catalogue(cat["tasks_dir"]), reg, version, "m")}
    assert plans["good"].retrain and plans["good"].error is None
    assert "invalid task spec" in plans["broken"].error and "broken.yaml" in plans["broken"].error
    assert "field 'name' is 'renamed' but the file is other.yaml" in plans["other"].error
    assert plans["badrow"].error.startswith("prepare data: ")
    assert "badrow/train.jsonl:25: field 'label' has unknown label '7'" in plans["badrow"].error
    assert all(p.retrain for p in plans.values())  # errors are launched, to fail visibly

    with pytest.raises(CatalogueError, match=r"task\(s\) \['nope'\] not in the catalogue .* \(available: .*good"):
        read_catalogue(cat["tasks_dir"], only=["nope"])
    with pytest.raises(CatalogueError, match="not a directory"):
        read_catalogue(cat["tasks_dir"] / "missing")
    assert [e.name for e in read_catalogue(cat["tasks_dir"], only=["good"])] == ["good"]


def test_verify_registered_checks_the_new_version(catalogue):
    cat, reg = catalogue, open_registry(catalogue["registry"])
    spec = str(add_task(cat["tasks_dir"], cat["data_dir"], "alpha"))
    plan = TaskPlan("alpha", spec, True, "new task", dataset_version="v1.dir")
    with pytest.raises(RuntimeError, match="task alpha: .*registered no new version"):
        verify_registered(reg, plan)
    publish_like_the_pipeline(reg, spec, "other.dir", "m")
    with pytest.raises(RuntimeError, match="v1 records dataset_version other.dir, expected v1.dir"):
        verify_registered(reg, plan)
    assert verify_registered(reg, TaskPlan.from_dict(plan.to_dict() | {"dataset_version": "other.dir"})).version == 1
    with pytest.raises(RuntimeError, match="registered no new version"):
        verify_registered(reg, TaskPlan.from_dict(plan.to_dict() | {"latest_version": 1, "dataset_version": "other.dir"}))


# ---------------------------------------------------------------------------- Airflow
@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    """A migrated SQLite metadata database; set before airflow is first imported here."""
    if "airflow" in sys.modules:
        pytest.skip("airflow was imported before its test configuration was set")
    home = tmp_path_factory.mktemp("airflow_home")
    env = {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db", "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS)}
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, timeout=600)
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
        f"bag = BundleDagBag(dag_folder={str(DAGS)!r}, bundle_path={str(DAGS)!r}, bundle_name='dags-folder')\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'kfp', 'softprompt', 'components') if m in sys.modules)\n"
        "print(json.dumps({'errors': bag.import_errors, 'dags': sorted(bag.dags), 'heavy': heavy}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=300)
    parsed = json.loads(out.stdout.strip().splitlines()[-1])
    assert parsed == {"errors": {}, "dags": ["softprompt_lm_adaptation", "softprompt_retraining"], "heavy": []}

    dags = load_dags()
    for dag_id, tags in (("softprompt_retraining", {"softprompt", "retraining"}), ("softprompt_lm_adaptation", {"softprompt", "lm-adaptation"})):
        dag = dags[dag_id]
        assert tags <= set(dag.tags) and dag.owner == "ml-platform" and "###" in dag.doc_md
        assert dag.catchup is False and dag.max_active_runs == 1
        for t in dag.tasks:
            assert t.owner == "ml-platform" and t.retry_delay.total_seconds() >= 60, t.task_id
            # The summary only reads XComs: it alone runs once.
            assert t.retries == 0 if t.task_id == "summarize" else t.retries >= 1, t.task_id
    retraining = dags["softprompt_retraining"]
    assert retraining.task_dict["summarize"].trigger_rule == "all_done"
    assert retraining.task_dict["retrain"].execution_timeout is not None
    assert retraining.params.get_param("tasks").schema["type"] == "array"
    lm = dags["softprompt_lm_adaptation"]
    assert type(lm.timetable).__name__ == "NullTimetable"  # manual only
    assert {k: lm.params.get_param(k).schema["type"] for k in ("base_model", "steps", "corpus")} == {
        "base_model": "string", "steps": "integer", "corpus": "string"}


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
        states[ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"] = str(ti.state) + tries
    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=dr.run_id, key="return_value", dag_ids=dag_id)).all()
        values = {row.task_id if row.map_index < 0 else f"{row.task_id}[{row.map_index}]": XComModel.deserialize_value(row)
                  for row in rows}
    return str(dr.state), states, values


@pytest.fixture()
def configured(airflow_home, catalogue, monkeypatch):
    """The retraining DAG pointed at this test's catalogue, registry and runs folder."""
    for name, key in (("tasks_dir", "tasks_dir"), ("data_dir", "data_dir"), ("registry", "registry"), ("runs_dir", "runs")):
        monkeypatch.setenv(f"AIRFLOW_VAR_SOFTPROMPT_{name.upper()}", str(catalogue[key]))
    monkeypatch.delenv("AIRFLOW_VAR_SOFTPROMPT_KFP_HOST", raising=False)
    monkeypatch.delenv("SOFTPROMPT_KFP_HOST", raising=False)
    monkeypatch.setenv("AIRFLOW_VAR_SOFTPROMPT_BASE_MODEL", "tiny-base")
    return catalogue


@pytest.fixture()
def stand_in_pipeline(monkeypatch):
    """Swaps the prompt-tuning pipeline for a cheap one: the real prepare step, then a random
    prompt registered with the lineage the real register step writes. Tasks in `failing` fail
    the way kfp.local reports a failed step. Records the tasks it ran."""
    from kfp.dsl import Dataset

    import components.runner
    from components.steps import prepare_data
    from softprompt.tasks import load_spec

    calls: list[str] = []
    failing: set[str] = set()

    def run_prompt_tuning(task, params, mode="local", kfp_host=None, *, root, **kwargs):
        spec = load_spec(task)
        calls.append(spec.name)
        assert mode == "local" and kwargs["wait"] is True and params["data_version"].endswith(".dir")
        if spec.name in failing:
            raise RuntimeError(KFP_LOCAL_FAILURE)
        out = Path(root) / "stand-in" / f"{spec.name}-{len(calls)}"
        version = prepare_data.python_func(
            task=task, data_dir=params["data_dir"], data_version=params["data_version"], max_train_examples=0,
            max_dev_examples=0, max_test_examples=0, seed=0, train_dev=Dataset(uri=str(out / "train_dev")),
            test_set=Dataset(uri=str(out / "test")))
        m = publish_like_the_pipeline(open_registry(params["registry_uri"]), task, version, params["base_model"])
        return {"mode": "local", "status": "SUCCEEDED", "run_id": out.name, "version": m.version, "promoted": True,
                "decision": f"promoted production to v{m.version}"}

    monkeypatch.setattr(components.runner, "run_prompt_tuning", run_prompt_tuning)
    return {"calls": calls, "failing": failing}


def test_retraining_dag_trains_only_what_changed(configured, stand_in_pipeline):
    cat, calls = configured, stand_in_pipeline["calls"]
    reg = open_registry(cat["registry"])
    for name in ("alpha", "beta", "gamma"):
        add_task(cat["tasks_dir"], cat["data_dir"], name)
    stand_in_pipeline["failing"].add("beta")

    # 1. Three new tasks; beta's pipeline fails at its train step: only beta's mapped task fails.
    state, states, values = run_dag("softprompt_retraining")
    assert sorted(calls) == ["alpha", "beta", "gamma"]
    assert {k: v for k, v in states.items() if k.startswith("retrain")} == {
        "retrain[0]": "success", "retrain[1]": "failed", "retrain[2]": "success"}
    assert states["summarize"] == "success" and states["verdict"] == "failed" and state == "failed"
    summary = values["summarize"]
    assert [r["task"] for r in summary["retrained"]] == ["alpha", "gamma"] and summary["unchanged"] == []
    assert [f["task"] for f in summary["failed"]] == ["beta"]
    error = summary["failed"][0]["error"]
    assert error.startswith("task beta: prompt-tuning pipeline failed at step 'train-prompt' inside 'for-loop-1'")
    assert "\x1b" not in error
    assert [m.version for m in reg.list_versions("alpha")] == [1] and reg.list_versions("beta") == []

    # 2. beta leaves the catalogue; nothing changed: nothing is launched.
    (cat["tasks_dir"] / "beta.yaml").unlink()
    calls.clear()
    state, states, values = run_dag("softprompt_retraining")
    assert calls == [] and state == "success"
    assert not any(k.startswith("retrain[") for k in states) and states["retrain"] == "skipped"
    assert values["summarize"] == {"planned": True, "unchanged": ["alpha", "gamma"], "retrained": [], "failed": []}

    # 3. One data file changes: only that task is retrained, and its new version records the new data.
    append_row(cat["data_dir"], "gamma", {"sentence": "a superb film", "label": 1, "idx": 500})
    state, states, values = run_dag("softprompt_retraining")
    assert calls == ["gamma"] and state == "success"
    (retrained,) = values["summarize"]["retrained"]
    assert retrained["task"] == "gamma" and retrained["version"] == 2 and retrained["reason"].startswith("data changed")
    assert retrained["dataset_version"] == reg.manifest("gamma", 2).dataset_version != reg.manifest("gamma", 1).dataset_version
    assert values["summarize"]["unchanged"] == ["alpha"] and [m.version for m in reg.list_versions("alpha")] == [1]

    # 4. On demand: alpha, unchanged, retrained because it is named; nothing else is planned.
    calls.clear()
    state, _, values = run_dag("softprompt_retraining", {"tasks": ["alpha"], "pipeline_params": {"max_steps": 3}})
    assert calls == ["alpha"] and state == "success"
    assert values["summarize"]["retrained"][0]["reason"] == "requested" and values["summarize"]["unchanged"] == []
    assert reg.manifest("alpha", 2).version == 2

    # 5. A bad pipeline parameter, or an unknown task, fails the run at once (no retry) before anything is launched.
    calls.clear()
    for conf, failing in (({"pipeline_params": {"max_step": 3}}, "resolve_settings"), ({"tasks": ["delta"]}, "plan")):
        state, states, values = run_dag("softprompt_retraining", conf)
        assert state == "failed" and states[failing] == "failed" and states["verdict"] == "failed" and calls == []
        assert values["summarize"]["planned"] is False


def test_retraining_dag_reports_pipeline_failures_from_kubeflow(configured, monkeypatch):
    """Kubeflow mode: the run is submitted through kfp.Client and its failed step is named."""
    import kfp

    cat = configured
    add_task(cat["tasks_dir"], cat["data_dir"], "alpha")
    monkeypatch.setenv("AIRFLOW_VAR_SOFTPROMPT_KFP_HOST", "http://kfp.test:8888")
    submitted = {}

    class Detail:
        def __init__(self, name, state):
            self.display_name, self.state = name, state

    class FakeClient:
        def __init__(self, host=None):
            assert host == "http://kfp.test:8888"

        def create_run_from_pipeline_func(self, pipeline, arguments, run_name=None, experiment_name=None, **kwargs):
            submitted.update(pipeline=pipeline.name, arguments=arguments, run_name=run_name, experiment=experiment_name)
            return type("Run", (), {"run_id": "run-42"})()

        def wait_for_run_completion(self, run_id, timeout):
            assert run_id == "run-42" and timeout > 0
            return type("Run", (), {"state": "FAILED"})()

        def get_run(self, run_id):
            details = [Detail("prepare data", "SUCCEEDED"), Detail("train prompt", "FAILED")]
            return type("Run", (), {"run_details": type("Details", (), {"task_details": details})()})()

    monkeypatch.setattr(kfp, "Client", FakeClient)
    state, states, values = run_dag("softprompt_retraining")
    assert state == "failed" and states["retrain[0]"] == "failed"
    assert values["summarize"]["failed"][0]["error"] == "task alpha: Kubeflow run run-42 ended FAILED; failed step(s): 'train prompt'"
    assert submitted["pipeline"] == "softprompt-prompt-tuning" and submitted["experiment"] == "softprompt_retraining" and submitted["run_name"].startswith("softprompt_retraining-alpha-")
    assert submitted["arguments"]["registry_uri"] == str(cat["registry"])
    assert submitted["arguments"]["data_version"].endswith(".dir") and submitted["arguments"]["base_model"] == "tiny-base"


def test_lm_adaptation_dag_records_the_adapted_checkpoint(configured, monkeypatch):
    import components.runner

    seen = {}

    def run_lm_adaptation(params, mode="local", kfp_host=None, **kwargs):
        seen.update(params=params, mode=mode)
        return {"mode": "local", "status": "SUCCEEDED", "model_path": "/ckpt/t5-lm-adapted", "checkpoint": "/ckpt/t5-lm-adapted",
                "metadata": {"steps": params["steps"]}, "seconds": 1.0}

    monkeypatch.setattr(components.runner, "run_lm_adaptation", run_lm_adaptation)
    monkeypatch.delenv("AIRFLOW_VAR_SOFTPROMPT_BASE_MODEL")  # an environment Variable would shadow the recorded one
    state, _, values = run_dag("softprompt_lm_adaptation", {"base_model": "tiny-t5", "steps": 2, "corpus": "toy"})
    assert state == "success" and values["record"] == "/ckpt/t5-lm-adapted"
    assert seen["mode"] == "local" and seen["params"]["base_model"] == "tiny-t5" and seen["params"]["steps"] == 2
    assert "use_for_retraining" not in seen["params"]
    from airflow.models.variable import Variable

    assert Variable.get("softprompt_base_model") == "/ckpt/t5-lm-adapted"
    Variable.delete("softprompt_base_model")


@pytest.mark.pipeline
def test_retraining_dag_runs_the_real_pipeline(configured, tiny_causal_dir, monkeypatch):
    """The real prompt-tuning pipeline (kfp.local, tiny model) behind the DAG: a task added to the
    catalogue gets a registered prompt; a task with a bad data row fails alone, naming the step
    and the row; with nothing changed, the next run launches nothing."""
    cat = configured
    add_task(cat["tasks_dir"], cat["data_dir"], "toy")
    add_task(cat["tasks_dir"], cat["data_dir"], "broken")
    append_row(cat["data_dir"], "broken", {"sentence": "meh", "label": 3})
    monkeypatch.setenv("AIRFLOW_VAR_SOFTPROMPT_BASE_MODEL", str(tiny_causal_dir))
    monkeypatch.setenv("AIRFLOW_VAR_SOFTPROMPT_PIPELINE_PARAMS", json.dumps({
        "prompt_configs": [{"seed": 0, "init": "class_label"}], "prompt_length": 4, "batch_size": 8, "micro_batch_size": 8,
        "max_steps": 2, "eval_every": 2, "max_input_tokens": 64, "eval_batch_size": 16, "nearest_k": 2}))

    state, states, values = run_dag("softprompt_retraining")
    assert state == "failed" and states["retrain[0]"] == "failed" and states["retrain[1]"] == "success"
    (failed,) = values["summarize"]["failed"]
    assert failed["task"] == "broken" and failed["error"].startswith("task broken: prepare data: ")
    assert "broken/train.jsonl:25: field 'label' has unknown label '3'" in failed["error"]
    (done,) = values["summarize"]["retrained"]
    manifest = open_registry(cat["registry"]).manifest("toy", "production")
    assert done["task"] == "toy" and done["version"] == manifest.version == 1 and done["decision"].startswith("promoted production to v1")
    assert manifest.base_model == str(tiny_causal_dir) and manifest.dataset_version == done["dataset_version"]
    assert manifest.prompt_length == 4 and 0 <= manifest.metrics["test"]["score"] <= 1
    assert Path(cat["runs"], "pipelines").is_dir()  # kfp.local ran under the configured runs folder

    (cat["tasks_dir"] / "broken.yaml").unlink()
    state, states, values = run_dag("softprompt_retraining")
    assert state == "success" and states["retrain"] == "skipped"
    assert values["summarize"] == {"planned": True, "unchanged": ["toy"], "retrained": [], "failed": []}
    assert [m.version for m in open_registry(cat["registry"]).list_versions("toy")] == [1]
