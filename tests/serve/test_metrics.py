"""The service's Prometheus metrics (softprompt.serve.metrics)."""

from __future__ import annotations

from prometheus_client import generate_latest

from softprompt.serve.metrics import Metrics


def test_each_metrics_object_has_a_registry_of_its_own():
    """Two services in one process count apart, and neither exports the process-wide series."""
    first, second = Metrics(), Metrics()
    first.predictions.labels("senti").inc()
    assert b'softprompt_predictions_total{task="senti"} 1.0' in generate_latest(first.registry)
    assert b"softprompt_predictions_total{" not in generate_latest(second.registry)
    assert b"process_cpu_seconds_total" not in generate_latest(first.registry)
