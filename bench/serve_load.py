"""Bounded loopback load test of the inference service, and mixed-task vs per-task batching.

Starts the real service (uvicorn, 127.0.0.1, a free port) on one frozen model with three tasks'
prompts in a temporary local registry, sends a fixed number of requests of the three tasks in
round-robin order from a fixed number of concurrent clients (stopping early at --max-seconds),
and reports throughput, p50/p99 latency, errors and rows per forward. The same load runs against
the service with mixed-task batches and with one forward per task (`mixed_batches=False`), in
alternating rounds so that background load hits both alike.

The timed loop sends raw requests from one asyncio httpx client, so that what is measured is
the service and not a client library: the Python client (softprompt.client) is synchronous and
adds its own retry handling, so it only does the untimed work, the warm-up, the metrics and a
closing check that one POST /v1/classify:batch of one input per task is answered.

Full run (SmolLM2-135M; the SST-2 prompt is the trained one in results/sst2_smollm2, the RTE and
CB prompts are untrained random-uniform prompts: speed does not depend on what a prompt learned):
    nice -n 19 .venv/bin/python bench/serve_load.py
Quick run on a tiny model folder (what the test suite runs):
    .venv/bin/python bench/serve_load.py --quick --model <dir> --out <dir>
Writes serve_load.json and serve_load.md to --out (default bench/results).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.server_thread import ServerThread  # noqa: E402
from softprompt.client import Client, Prediction  # noqa: E402
from softprompt.model import load_frozen_lm  # noqa: E402
from softprompt.prompt import load_prompt, random_uniform  # noqa: E402
from softprompt.registry import lineage_from_run, open_registry  # noqa: E402
from softprompt.serve.config import ServeConfig, TaskServing  # noqa: E402
from softprompt.serve.http import create_app  # noqa: E402
from softprompt.tasks import default_data_dir, load_spec  # noqa: E402

TRAINED_RUN = ROOT / "results" / "sst2_smollm2"
QUICK_TASKS = {  # name: (template, label words, rows)
    "senti": (
        "Review: {sentence}\nSentiment:",
        ["negative", "positive"],
        [
            {"sentence": s}
            for s in (
                "the movie was great",
                "awful boring plot",
                "quite a lovely story",
                "terrible acting",
            )
        ],
    ),
    "nli": (
        "Premise: {premise}\nHypothesis: {hypothesis}\nEntailment, contradiction or neutral?",
        ["entailment", "contradiction", "neutral"],
        [
            {"premise": "The fox jumps.", "hypothesis": "A fox moves."},
            {"premise": "the cast was brilliant", "hypothesis": "it was bad"},
        ],
    ),
    "yesno": (
        "Question: {question}\nAnswer:",
        ["yes", "no"],
        [{"question": "is the fox lazy"}, {"question": "was the film boring"}],
    ),
}


def _lineage(lm, task: str, template: str, words: list[str], length: int) -> dict:
    return {
        "task": task,
        "base_model": lm.name,
        "base_model_fingerprint": lm.fingerprint,
        "init": "random_uniform",
        "prompt_length": length,
        "objective": "lm",
        "hyperparameters": {"untrained": True},
        "dataset_version": None,
        "code_version": None,
        "metrics": {},
        "label_words": words,
        "template": template,
        "metric": "accuracy",
    }


def _real_rows(task: str, limit: int) -> tuple[list[dict], list[str]]:
    """Raw template fields (and gold label words) of a task's evaluation file."""
    spec = load_spec(task)
    path = default_data_dir() / spec.splits["test"]
    if spec.format == "tsv":
        with path.open(encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:limit]
    else:
        with path.open(encoding="utf-8") as f:
            rows = [json.loads(line) for line, _ in zip(f, range(limit), strict=False)]
    fields = [{k: r[k] for k in spec.fields()} for r in rows]
    return fields, [spec.labels[str(r[spec.label_field]).strip()] for r in rows]


def setup(args, registry_dir: Path):
    """Loads the model and publishes one prompt per task.

    Returns (lm, registry, tasks {name: (rows, gold)})."""
    lm = load_frozen_lm(args.model)
    reg = open_registry(str(registry_dir))
    tasks: dict[str, tuple[list[dict], list[str] | None]] = {}
    g = torch.Generator().manual_seed(0)
    if args.quick:
        for name, (template, words, rows) in QUICK_TASKS.items():
            m = reg.publish(
                name, random_uniform(4, lm.dim, g), _lineage(lm, name, template, words, 4)
            )
            reg.promote(name, "production", m.version)
            tasks[name] = (rows, None)
        return lm, reg, tasks
    sst2 = load_prompt(TRAINED_RUN / "prompt.safetensors")
    m = reg.publish("sst2", sst2, lineage_from_run(TRAINED_RUN))
    reg.promote("sst2", "production", m.version)
    tasks["sst2"] = _real_rows("sst2", args.rows_per_task)
    for name in ("rte", "cb"):
        spec = load_spec(name)
        m = reg.publish(name, random_uniform(sst2.shape[0], lm.dim, g),
                        _lineage(lm, name, spec.template, spec.label_words, sst2.shape[0]))
        reg.promote(name, "production", m.version)
        tasks[name] = _real_rows(name, args.rows_per_task)
    return lm, reg, tasks


async def _load(
    url: str, jobs: list[tuple[str, dict, str | None]], concurrency: int, max_seconds: float
) -> dict:
    """Sends `jobs` from `concurrency` clients; stops issuing new ones after `max_seconds`."""
    latencies, statuses, answers = [], [], {}
    queue = list(enumerate(jobs))[::-1]
    start = time.perf_counter()

    async def client_loop(client):
        while queue and time.perf_counter() - start < max_seconds:
            i, (task, fields, _) = queue.pop()
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/classify", json={"task": task, "input": fields})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    answers[i] = r.json()["label"]
            except httpx.HTTPError as err:
                statuses.append(type(err).__name__)
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    ok = sum(s == 200 for s in statuses)
    lat = np.array(latencies) * 1000
    return {
        "sent": len(statuses),
        "ok": ok,
        "errors": len(statuses) - ok,
        "wall_s": round(wall, 2),
        "throughput_rps": round(ok / wall, 3),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "answers": answers,
    }


def _batch_stats(client: Client) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    values = {
        s.name: s.value
        for f in text_string_to_metric_families(client.metrics())
        for s in f.samples
        if not s.labels
    }
    forwards = values.get("softprompt_batch_rows_count", 0)
    return {
        "forwards": int(forwards),
        "mean_rows_per_forward": round(
            values.get("softprompt_batch_rows_sum", 0) / max(forwards, 1), 2
        ),
    }


def _check_batch(client: Client, jobs, answers: dict) -> dict:
    """One batch request with the first job of each task: how many items were answered, and how
    many of those agree with the label the timed loop got for the same job."""
    first = {}
    for i, (task, fields, _) in enumerate(jobs):
        first.setdefault(task, (i, fields))
    results = client.classify_batch([(task, fields) for task, (_, fields) in first.items()])
    answered = [
        (i, r)
        for (i, _), r in zip(first.values(), results, strict=True)
        if isinstance(r, Prediction)
    ]
    agree = sum(i in answers and answers[i] == r.label for i, r in answered)
    return {"items": len(results), "answered": len(answered), "agree_with_single": agree}


def run_mode(lm, reg, registry_dir, task_names, jobs, mixed: bool, args) -> dict:
    config = ServeConfig(
        registry=str(registry_dir),
        tasks=[TaskServing(t) for t in task_names],
        mixed_batches=mixed,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        poll_seconds=0,
        max_input_tokens=args.max_input_tokens,
    )
    with (
        ServerThread(create_app(config, lm=lm, registry=reg)) as srv,
        Client(srv.url, timeout=600, retries=0) as client,
    ):
        assert client.ready().ready, "the service did not load every task's prompt"
        for task in task_names:  # warm-up, not counted in the load but in the forward count
            client.classify(task, next(f for t, f, _ in jobs if t == task))
        warm = _batch_stats(client)
        result = asyncio.run(_load(srv.url, jobs, args.concurrency, args.max_seconds))
        stats = _batch_stats(client)
        result["batch_check"] = _check_batch(client, jobs, result["answers"])
    result["forwards"] = stats["forwards"] - warm["forwards"]
    rows = (
        stats["mean_rows_per_forward"] * stats["forwards"]
        - warm["mean_rows_per_forward"] * warm["forwards"]
    )
    result["mean_rows_per_forward"] = round(rows / max(result["forwards"], 1), 2)
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny synthetic tasks and a short load (needs --model)"
    )
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument(
        "--requests", type=int, default=None, help="requests per round (default 96; quick 24)"
    )
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument(
        "--max-seconds", type=float, default=300, help="stop issuing requests after this long"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="alternating mixed / per-task rounds (default 2; quick 1)",
    )
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=20)
    p.add_argument("--max-input-tokens", type=int, default=256)
    p.add_argument("--rows-per-task", type=int, default=64)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    n_requests = args.requests or (24 if args.quick else 96)
    rounds = args.rounds or (1 if args.quick else 2)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        registry_dir = Path(tmp) / "registry"
        lm, reg, tasks = setup(args, registry_dir)
        setup_s = time.perf_counter() - t0
        names = list(tasks)
        jobs = []  # (task, fields, gold label word or None), tasks in round-robin
        for i in range(n_requests):
            rows, gold = tasks[names[i % len(names)]]
            k = (i // len(names)) % len(rows)
            jobs.append((names[i % len(names)], rows[k], gold[k] if gold else None))
        runs = {"mixed": [], "per_task": []}
        for _ in range(rounds):
            for mode in ("mixed", "per_task"):
                runs[mode].append(
                    run_mode(lm, reg, registry_dir, names, jobs, mode == "mixed", args)
                )
                shown = {k: v for k, v in runs[mode][-1].items() if k != "answers"}
                print(f"{mode} round {len(runs[mode])}: {shown}", flush=True)
    load_after = os.getloadavg()

    accuracy = {}
    answers = runs["mixed"][0]["answers"]
    for name in names:
        hits = [
            answers[i] == gold
            for i, (t, _, gold) in enumerate(jobs)
            if t == name and gold and i in answers
        ]
        if hits:
            accuracy[name] = round(sum(hits) / len(hits), 3)
    for mode_runs in runs.values():
        for r in mode_runs:
            r.pop("answers")

    def summary(mode):
        rs = runs[mode]
        return {
            k: round(float(np.median([r[k] for r in rs])), 3)
            for k in ("throughput_rps", "p50_ms", "p99_ms", "mean_rows_per_forward")
        } | {"errors": sum(r["errors"] for r in rs), "ok": sum(r["ok"] for r in rs)}

    result = {
        "model": lm.name,
        "quick": args.quick,
        "tasks": names,
        "requests_per_round": n_requests,
        "rounds": rounds,
        "concurrency": args.concurrency,
        "max_batch_size": args.max_batch_size,
        "max_wait_ms": args.max_wait_ms,
        "max_seconds": args.max_seconds,
        "setup_s": round(setup_s, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "nice": os.nice(0),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "runs": runs,
        "summary": {m: summary(m) for m in runs},
        "served_accuracy_on_sent_requests": accuracy,
        "note": (
            "sst2: the trained prompt; other tasks' prompts are untrained "
            "(accuracy meaningless, speed unaffected)"
            if not args.quick
            else "tiny random model and prompts"
        ),
    }
    s = result["summary"]
    result["speedup_mixed_over_per_task"] = round(
        s["mixed"]["throughput_rps"] / max(s["per_task"]["throughput_rps"], 1e-9), 3
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_load.json").write_text(json.dumps(result, indent=2))
    (out / "serve_load.md").write_text(_markdown(result))
    print(_markdown(result))
    return result


def _markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"# Inference service load test ({r['model']})",
        "",
        f"{r['requests_per_round']} requests per round, tasks {', '.join(r['tasks'])} in "
        f"round-robin, {r['concurrency']} concurrent loopback clients, max batch "
        f"{r['max_batch_size']} rows, max wait {r['max_wait_ms']} ms, {r['rounds']} alternating "
        f"round(s) per mode (medians shown). {m['cpus']} CPUs, {m['torch_threads']} torch threads, "
        f"nice {m['nice']}, load average {m['loadavg_before'][0]} before / {m['loadavg_after'][0]} "
        "after.",
        "",
        "| batching | ok | errors | throughput (req/s) | p50 (ms) | p99 (ms) | rows per forward |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, s in r["summary"].items():
        lines.append(
            f"| {mode} | {s['ok']} | {s['errors']} | {s['throughput_rps']} | {s['p50_ms']} | "
            f"{s['p99_ms']} | {s['mean_rows_per_forward']} |"
        )
    lines += [
        "",
        "Mixed-task batching throughput / per-task batching: "
        f"**{r['speedup_mixed_over_per_task']}x**.",
        "",
    ]
    if r["served_accuracy_on_sent_requests"]:
        lines.append(
            f"Served accuracy on the requests sent: {r['served_accuracy_on_sent_requests']} "
            f"({r['note']})."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
