"""Task metrics as the spec names them: accuracy, macro-F1 (CB), MultiRC's EM and F1a."""

import pytest

from softprompt.task_metrics import compute_metrics
from softprompt.tasks import Example, load_spec


def test_metrics():
    spec = load_spec("cb")
    ex = [Example("a", t) for t in ["entailment", "contradiction", "neutral", "neutral"]]
    m = compute_metrics(spec, ["entailment", "contradiction", "neutral", "entailment"], ex)
    assert m["accuracy"] == 0.75
    assert m["score"] == m["macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    mr = load_spec("multirc")
    ex = [Example("a", "yes", "q1"), Example("b", "no", "q1"), Example("c", "yes", "q2")]
    m = compute_metrics(mr, ["yes", "no", "no"], ex)
    assert m["em"] == 0.5 and m["f1a"] == pytest.approx(2 / 3)
