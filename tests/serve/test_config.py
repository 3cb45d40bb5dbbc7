"""The service's settings (softprompt.serve.config): what TaskServing and ServeConfig refuse."""

from __future__ import annotations

import pytest
from served_tasks import serve_config

from softprompt.serve.config import TaskServing


def test_config_validation():
    with pytest.raises(ValueError, match="ensemble"):
        TaskServing("a", ensemble=1)
    with pytest.raises(ValueError, match="twice"):
        serve_config(tasks=[TaskServing("a"), TaskServing("a")])
    with pytest.raises(ValueError, match="max_batch_size"):
        serve_config(max_batch_size=0)
    with pytest.raises(ValueError, match="metrics_port"):
        serve_config(metrics_port=70000)


def test_task_serving_ensembles_by_count_or_pinned_versions():
    """An ensemble is the N newest versions or >= 2 pinned ones, never both."""
    assert not TaskServing("a").is_ensemble
    assert TaskServing("a", ensemble=3).is_ensemble
    pinned = TaskServing("a", versions=[1, "4"])
    assert pinned.is_ensemble and pinned.versions == (1, 4)
    with pytest.raises(ValueError, match="not both"):
        TaskServing("a", ensemble=2, versions=(1, 2))
    with pytest.raises(ValueError, match="not both"):
        TaskServing("a", versions=(3,))
    with pytest.raises(ValueError, match=">= 1"):
        TaskServing("a", versions=(0, 2))
    with pytest.raises(ValueError, match="task name"):
        TaskServing("")


def test_serve_config_refuses_empty_tasks_token_and_negative_waits():
    with pytest.raises(ValueError, match="at least one task"):
        serve_config(tasks=[])
    with pytest.raises(ValueError, match="token is empty"):
        serve_config(token="")
    with pytest.raises(ValueError, match="max_wait_ms"):
        serve_config(max_wait_ms=-1)
    with pytest.raises(ValueError, match="poll_seconds"):
        serve_config(poll_seconds=-1)
    assert "test-token" not in repr(serve_config())  # the token stays out of logs


def test_connection_limits_must_be_positive():
    for name in ("header_timeout_seconds", "body_timeout_seconds"):
        for bad in (0, -1, float("nan")):
            with pytest.raises(ValueError, match=f"{name} must be > 0"):
                serve_config(**{name: bad})
    with pytest.raises(ValueError, match="max_header_bytes must be >= 1"):
        serve_config(max_header_bytes=0)
