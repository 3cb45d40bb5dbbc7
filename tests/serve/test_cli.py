"""The `softprompt serve` subcommand (softprompt.serve.cli): its command line becomes the
ServeConfig, and the command serves for real in a process of its own, with its connection
limits installed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from served_tasks import (
    AUTH,
    INPUTS,
    TOKEN,
    check_answer,
    connect,
    free_port,
    read_until_closed,
)

from softprompt.cli import build_parser
from softprompt.serve.cli import config_from_args


def test_serve_command_line_builds_the_config(monkeypatch):
    argv = ["serve", "--registry", "/r", "--tasks", "sst2,rte,cb", "--alias", "staging"]
    argv += ["--ensemble", "rte=3", "--ensemble", "cb=1+4", "--token-env", "SP_TEST_TOKEN"]
    argv += ["--port", "9000", "--per-task-batches"]
    args = build_parser().parse_args(argv)
    monkeypatch.setenv("SP_TEST_TOKEN", "abc")
    config = config_from_args(args)
    assert config.token == "abc" and not config.mixed_batches and args.port == 9000
    assert [(t.task, t.ref, t.ensemble, t.versions) for t in config.tasks] == [
        ("sst2", "staging", 0, ()),
        ("rte", "staging", 3, ()),
        ("cb", "staging", 0, (1, 4)),
    ]
    monkeypatch.delenv("SP_TEST_TOKEN")
    with pytest.raises(ValueError, match="SP_TEST_TOKEN"):
        config_from_args(args)
    with pytest.raises(ValueError, match="'qqp'"):
        config_from_args(
            build_parser().parse_args(
                ["serve", "--registry", "/r", "--tasks", "sst2", "--ensemble", "qqp=3"]
            )
        )
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["serve", "--registry", "/r", "--tasks", "sst2", "--ensemble", "sst2"]
        )
    assert config.metrics_port == 0  # off unless asked for
    minimal = ["serve", "--registry", "/r", "--tasks", "sst2"]
    argv = [*minimal, "--host", "0.0.0.0", "--metrics-port", "9090"]
    on = config_from_args(build_parser().parse_args(argv))
    assert (on.metrics_port, on.metrics_host) == (9090, "0.0.0.0")
    with pytest.raises(ValueError, match="--metrics-port 8000"):
        config_from_args(build_parser().parse_args([*minimal, "--metrics-port", "8000"]))
    limits = ["--header-timeout-seconds", "2", "--body-timeout-seconds", "3"]
    limits += ["--max-header-bytes", "8192"]
    strict = config_from_args(build_parser().parse_args([*minimal, *limits]))
    assert (strict.header_timeout_seconds, strict.body_timeout_seconds) == (2.0, 3.0)
    assert strict.max_header_bytes == 8192


def test_the_command_line_does_not_import_the_web_stack():
    """FastAPI is an optional extra: adding the `serve` subcommand must not import it."""
    code = (
        "import sys; from softprompt.cli import build_parser; build_parser(); "
        "assert 'fastapi' not in sys.modules and 'softprompt.serve.http' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_softprompt_serve_command_end_to_end(tiny_causal_dir, tiny_causal, registry):
    port = free_port()
    metrics_port = next(p for p in iter(free_port, None) if p != port)
    env = os.environ | {"SP_SERVE_TOKEN": TOKEN}
    cmd = [
        sys.executable,
        "-m",
        "softprompt.cli",
        "serve",
        "--registry",
        registry.uri,
        "--model",
        str(tiny_causal_dir),
        "--tasks",
        "senti,yesno",
        "--ensemble",
        "yesno=3",
        "--token-env",
        "SP_SERVE_TOKEN",
        "--port",
        str(port),
        "--poll-seconds",
        "0",
        "--metrics-port",
        str(metrics_port),
        "--header-timeout-seconds",
        "1",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, proc.stdout.read().decode()
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "softprompt serve never became ready"
                time.sleep(0.3)
            assert (
                client.post("/v1/classify", json={"task": "senti", "input": "great"}).status_code
                == 401
            )
            for task in ("senti", "yesno"):
                fields = INPUTS[task][0]
                r = client.post("/v1/classify", json={"task": task, "input": fields}, headers=AUTH)
                assert r.status_code == 200, r.text
                check_answer(tiny_causal, registry, task, fields, r.json())
            assert client.get("/metrics").status_code == 401
            scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=60)
            assert scraped.status_code == 200
            assert 'softprompt_predictions_total{task="yesno"} 1.0' in scraped.text
            # The command installs the connection limits: a stalled request head is cut at 1 s.
            with connect(f"http://127.0.0.1:{port}") as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
                received, closed_after = read_until_closed(sock, 10)
            assert received == b"" and closed_after is not None
    finally:
        proc.terminate()
        proc.wait(30)
