"""A DAG run through a real Airflow (tests/airflow_live.py), triggered over REST like the UI does.

The DAG is written into a temporary DAGs folder: `produce` returns a value, `third_poke` is a
sensor in reschedule mode that succeeds on its third poke (it counts pokes in a file), and
`consume` reads `produce`'s XCom and the run's conf. Between pokes the sensor's task instance
is `up_for_reschedule`: no worker slot is held while it waits.
"""

from __future__ import annotations

import textwrap
import time

import pytest
from airflow_live import LiveAirflow

DAG_ID = "live_probe"
DAG_FILE = '''
import os
from pathlib import Path

from airflow.sdk import dag, task


@dag(dag_id="live_probe", schedule=None, catchup=False, tags=["test"])
def live_probe():
    @task
    def produce():
        return {"answer": 42}

    @task.sensor(poke_interval=2, timeout=60, mode="reschedule")
    def third_poke():
        pokes = Path(os.environ["LIVE_PROBE_DIR"]) / "pokes"
        with pokes.open("a") as f:
            f.write("poke\\n")
        return len(pokes.read_text().splitlines()) >= 3

    @task
    def consume(value, dag_run=None):
        token = dag_run.conf["token"]
        assert value == {"answer": 42}, value
        print(f"consumed answer={value['answer']} token={token}")

    value = produce()
    value >> third_poke() >> consume(value)


live_probe()
'''


@pytest.mark.airflow_live
def test_dag_runs_through_scheduler_and_rest_api(tmp_path):
    dags, probe = tmp_path / "dags", tmp_path / "probe"
    dags.mkdir()
    probe.mkdir()
    (dags / "live_probe.py").write_text(textwrap.dedent(DAG_FILE))
    began = time.monotonic()
    with LiveAirflow(dags, tmp_path / "airflow", env={"LIVE_PROBE_DIR": str(probe)}) as af:
        print(f"Airflow started in {af.startup_seconds:.1f}s")
        af.wait_for_dag(DAG_ID, timeout=60)
        af.unpause(DAG_ID)
        run_id = af.trigger(DAG_ID, {"token": "from-rest"})
        seen: dict[str, set[str]] = {}

        def watch(instances):
            for ti in instances:
                seen.setdefault(ti["task_id"], set()).add(ti["state"])

        state = af.wait_for_run(DAG_ID, run_id, timeout=120, on_poll=watch)
        states = {ti["task_id"]: ti["state"] for ti in af.task_instances(DAG_ID, run_id)}
        assert state == "success", (states, af.task_log(DAG_ID, run_id, "consume"))
        assert states == {"produce": "success", "third_poke": "success", "consume": "success"}
        assert "up_for_reschedule" in seen["third_poke"], seen
        assert (probe / "pokes").read_text().count("poke") == 3
        assert "consumed answer=42 token=from-rest" in af.task_log(DAG_ID, run_id, "consume")
    print(f"whole test body: {time.monotonic() - began:.1f}s; states seen: {seen}")


@pytest.mark.airflow_live
@pytest.mark.pipeline
def test_retraining_dag_through_a_live_airflow(tmp_path, s3_server, tiny_causal_dir):
    """softprompt_retraining in a real Airflow, the catalogue a git + DVC repository on SeaweedFS
    and the registry on SeaweedFS. Triggered over REST: a new task gets a registered prompt that
    records the pushed data version, a task with a bad data row fails alone. The team then fixes
    the data (dvc add, dvc push, commit) and the catalogue's Asset event schedules a run that
    retrains only that task."""
    from live_retraining import run_live_retraining
    from test_catalogue import append_row

    def commit_task(catalogue, name):
        catalogue.run("dvc", "add", "-q", f"data/{name}")
        catalogue.run("dvc", "push")
        catalogue.git("add", "-A")
        catalogue.git("commit", "-q", "-m", f"task {name}")

    def add_tasks(catalogue):
        catalogue.add_task("toy")
        catalogue.write_task("broken")
        append_row(catalogue.root / "data", "broken", {"sentence": "meh", "label": 3})
        commit_task(catalogue, "broken")
        return ["broken", "toy"]

    def fix_broken(catalogue):
        catalogue.write_task("broken")  # the data files again, without the bad row
        commit_task(catalogue, "broken")

    params = {"prompt_configs": [{"seed": 0, "init": "class_label"}], "prompt_length": 4,
              "batch_size": 8, "micro_batch_size": 8, "max_steps": 2, "eval_every": 2,
              "max_input_tokens": 64, "eval_batch_size": 16, "nearest_k": 2}
    out = run_live_retraining(tmp_path / "live", s3_server, str(tiny_causal_dir), params,
                              add_tasks, change=fix_broken, timeout=600)
    first, second = out["runs"]
    print(f"live retraining: {out['seconds']} s; {first['tasks']}; {second['tasks']}")
    # broken (map index 0) fails at prepare, toy (1) is registered; the verdict fails the run.
    assert (first["run_type"], first["state"]) == ("manual", "failed")
    assert first["tasks"][("retrain.launch", 0)] == "failed"
    assert first["tasks"][("retrain.record", 1)] == "success"
    assert first["tasks"][("verdict", -1)] == "failed"
    assert "FAILED broken: task broken: prompt-tuning pipeline failed at step 'prepare-data'" \
        in first["summary"]
    # The data fix: the catalogue event schedules a run that retrains broken only.
    assert (second["run_type"], second["state"]) == ("asset_triggered", "success")
    assert [k for k in second["tasks"] if k[0] == "retrain.record"] == [("retrain.record", 0)]
    assert "unchanged: toy" in second["summary"]
    for task in ("toy", "broken"):
        (manifest,) = out["registered"][task]
        assert manifest["dataset_version"] == out["catalogue"][task]
        assert manifest["data_source"]["kind"] == "dvc-remote"
