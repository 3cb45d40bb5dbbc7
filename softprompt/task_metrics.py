"""A task's metrics from predicted and gold label words, as its spec names them.

Accuracy always; F1 (binary), macro-F1 (CB) or MultiRC's EM and F1a as the spec's `metric` says.
"""

from __future__ import annotations

from softprompt.tasks import Example, TaskSpec


def _f1(pred: list[str], gold: list[str], positive: str) -> float:
    tp = sum(p == positive and g == positive for p, g in zip(pred, gold, strict=True))
    fp = sum(p == positive and g != positive for p, g in zip(pred, gold, strict=True))
    fn = sum(p != positive and g == positive for p, g in zip(pred, gold, strict=True))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def compute_metrics(
    spec: TaskSpec, predictions: list[str], examples: list[Example]
) -> dict[str, float]:
    """Accuracy always; F1 (binary), macro-F1 (CB) or MultiRC's EM and F1a per the spec.

    `score` is the spec's primary metric, the one early stopping and quality gates use."""
    gold = [e.target for e in examples]
    if len(predictions) != len(gold) or not gold:
        raise ValueError(f"{len(predictions)} predictions for {len(gold)} examples")
    out = {"accuracy": sum(p == g for p, g in zip(predictions, gold, strict=True)) / len(gold)}
    if spec.metric == "f1":
        out["f1"] = _f1(predictions, gold, spec.positive_label)
    elif spec.metric == "macro_f1":
        words = spec.label_words
        out["macro_f1"] = sum(_f1(predictions, gold, w) for w in words) / len(words)
    elif spec.metric == "multirc":
        positive = spec.positive_label or spec.label_words[-1]
        out["f1a"] = _f1(predictions, gold, positive)
        groups: dict[str, bool] = {}
        for p, e in zip(predictions, examples, strict=True):
            groups[e.group or e.source] = groups.get(e.group or e.source, True) and p == e.target
        out["em"] = sum(groups.values()) / len(groups)
    out["score"] = out[{"multirc": "f1a"}.get(spec.metric, spec.metric)]
    return out
