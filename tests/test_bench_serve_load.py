"""The service in a background thread (bench.server_thread), as the load benchmark
bench/serve_load.py runs it, with the Python client for its untimed requests."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path


def test_load_benchmark_quick(tiny_causal_dir, tmp_path):
    """bench/serve_load.py --quick: the bounded loopback load test runs with no errors in both
    modes, and the closing batch request (sent with softprompt.client) answers every item."""
    path = Path(__file__).resolve().parents[1] / "bench" / "serve_load.py"
    spec = importlib.util.spec_from_file_location("serve_load", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(
        [
            "--quick",
            "--model",
            str(tiny_causal_dir),
            "--out",
            str(tmp_path),
            "--requests",
            "18",
            "--concurrency",
            "6",
            "--max-seconds",
            "120",
        ]
    )
    saved = json.loads((tmp_path / "serve_load.json").read_text())
    assert saved["summary"] == result["summary"]
    for mode in ("mixed", "per_task"):
        summary = saved["summary"][mode]
        assert summary["ok"] == 18 and summary["errors"] == 0 and summary["throughput_rps"] > 0
        assert 0 < summary["p50_ms"] <= summary["p99_ms"]
    for run in saved["runs"]["mixed"] + saved["runs"]["per_task"]:
        assert run["batch_check"]["items"] == run["batch_check"]["answered"] == 3
    # Per-task batching can only form single-task forwards: never more rows per forward than mixed.
    assert (
        saved["summary"]["per_task"]["mean_rows_per_forward"]
        <= saved["summary"]["mixed"]["mean_rows_per_forward"]
    )
    assert "| mixed |" in (tmp_path / "serve_load.md").read_text()
