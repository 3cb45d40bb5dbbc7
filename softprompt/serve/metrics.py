"""The service's Prometheus metrics."""

from __future__ import annotations

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)  # seconds
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
TASKS_BUCKETS = (1, 2, 3, 4, 6, 8, 16)


class Metrics:
    """Prometheus metrics on a registry of their own (several apps can live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("softprompt_http_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("softprompt_classify_latency_seconds",
                                 "Classify latency, queueing included", ["task"], registry=r,
                                 buckets=LATENCY_BUCKETS)
        self.predictions = Counter("softprompt_predictions", "Answered classify requests",
                                   ["task"], registry=r)
        self.batch_rows = Histogram("softprompt_batch_rows", "Rows per forward", registry=r,
                                    buckets=ROWS_BUCKETS)
        self.batch_tasks = Histogram("softprompt_batch_tasks", "Distinct tasks per forward",
                                     registry=r, buckets=TASKS_BUCKETS)
        self.errors = Counter("softprompt_errors", "Errors by kind", ["kind"], registry=r)
        self.reloads = Counter("softprompt_prompt_reloads", "Prompt (re)loads by outcome",
                               ["task", "outcome"], registry=r)
        self.version = Gauge("softprompt_prompt_version",
                             "Served prompt version (newest for ensembles)", ["task"], registry=r)
