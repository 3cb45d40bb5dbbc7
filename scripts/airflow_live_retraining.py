"""The retraining DAG end to end in a real Airflow on this machine, as a team would run it.

Starts a real S3 server (SeaweedFS) and Airflow's own scheduler, dag-processor and api-server
on SQLite on 127.0.0.1; puts the given tasks (specs from tasks/, data from the local mirror)
into a throwaway git + DVC catalogue whose remote is an S3 bucket; triggers
`softprompt_retraining` through the REST API as a person would from the UI; waits for the run;
and prints what the registry (another bucket) holds. Pipelines run with kfp.local.

    .venv/bin/python scripts/airflow_live_retraining.py --task sst2 --max-steps 10
    .venv/bin/python scripts/airflow_live_retraining.py --task rte --model gemma3-270m --keep

Everything is written under --workdir (a temporary folder by default, removed unless --keep).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from live_retraining import add_mirrored_task, run_live_retraining  # noqa: E402
from s3server import S3Server  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from softprompt.tasks import default_data_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--task", action="append", help="catalogue task (repeatable; default sst2)")
    parser.add_argument("--model", default="smollm2-135m", help="base model")
    parser.add_argument("--data-dir", default=str(default_data_dir()), help="the local mirror")
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--examples", type=int, default=128,
                        help="seeded subset size of each split (0 = all)")
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the run")
    args = parser.parse_args(argv)
    tasks = args.task or ["sst2"]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="softprompt-live-"))
    params = {"prompt_configs": [{"seed": 0, "init": "class_label"}], "max_steps": args.max_steps,
              "eval_every": max(1, args.max_steps // 2), "batch_size": 8, "micro_batch_size": 8,
              "max_train_examples": args.examples, "max_dev_examples": args.examples,
              "max_test_examples": args.examples, "eval_max_examples": args.examples}

    def add_tasks(catalogue):
        for name in tasks:
            add_mirrored_task(catalogue, name, REPO / "tasks" / f"{name}.yaml", Path(args.data_dir))
        return tasks

    s3 = S3Server(workdir / "s3")
    s3.start()
    try:
        out = run_live_retraining(workdir, s3, args.model, params, add_tasks,
                                  timeout=args.timeout)
    finally:
        s3.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    (run,) = out["runs"]
    print(run["summary"])
    report = {"run_id": run["run_id"], "state": run["state"], "seconds": out["seconds"],
              "catalogue": out["catalogue"],
              "registered": {t: [{k: m[k] for k in ("version", "dataset_version", "metrics")}
                                 for m in manifests]
                             for t, manifests in out["registered"].items()}}
    print(json.dumps(report, indent=2, default=str))
    return 0 if run["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
