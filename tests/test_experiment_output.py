"""What an experiment writes: the markdown table with its notes and command, the same numbers as
JSON, and a plot file."""

import json

import pytest

from softprompt.experiment_output import (
    class_shares,
    mean_spread,
    plot,
    shares_from_f1,
    shares_text,
    write_results,
)


def test_results_are_written_as_a_table_and_as_json(tmp_path):
    path = write_results(tmp_path / "out", "ablation", "Ablation", ["length", "score"],
                         [[1, 0.5], [5, 0.75]], {"task": "toy"}, "softprompt ablate", ["a note"])
    assert path == tmp_path / "out" / "ablation.md"
    text = path.read_text()
    assert text.startswith("# Ablation\n") and "```\nsoftprompt ablate\n```" in text
    assert "- a note\n" in text and "| 1 | 0.5000 |" in text and "| 5 | 0.7500 |" in text
    payload = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert payload == {"task": "toy", "command": "softprompt ablate",
                       "table": {"header": ["length", "score"], "rows": [[1, 0.5], [5, 0.75]]}}


def test_plot_writes_a_png(tmp_path):
    plot(tmp_path / "p.png", "t", "x", "y", {"a": ([1, 10], [0.5, 0.7], [0.1, 0.0]),
                                             "b": ([1, 10], [0.4, 0.6], [0.0, 0.0])}, logx=True)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mean_spread_is_the_sample_deviation():
    assert mean_spread([1.0, 3.0]) == (2.0, pytest.approx(2**0.5))
    assert mean_spread([4.0]) == (4.0, 0.0)


def test_class_shares_of_predictions_and_gold():
    shares = class_shares(["no", "yes"], ["no", "no", "no", "yes"], ["no", "yes", "yes", "yes"])
    assert shares == {"predicted": {"no": 0.75, "yes": 0.25}, "gold": {"no": 0.25, "yes": 0.75}}
    assert shares_text(shares, "predicted") == "0.75 / 0.25" and shares_text(None, "gold") == "n/a"


@pytest.mark.parametrize("seed", range(6))
def test_shares_from_f1_match_the_predictions_they_came_from(seed):
    """Accuracy and F1 with the gold labels pin down how many positives were predicted."""
    import random

    from softprompt.task_metrics import _f1

    rng = random.Random(seed)
    gold = [rng.choice(["no", "yes"]) for _ in range(rng.randint(5, 60))]
    # Seeds 0 and 1 answer one class to everything, the others mix them.
    predicted = (
        ["no"] * len(gold) if seed == 0 else ["yes"] * len(gold) if seed == 1
        else [rng.choice(["no", "yes"]) for _ in gold]
    )
    accuracy = sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)
    f1 = _f1(predicted, gold, "yes")
    derived = shares_from_f1(["no", "yes"], "yes", gold, accuracy, f1)
    direct = class_shares(["no", "yes"], predicted, gold)
    for which in ("predicted", "gold"):
        assert derived[which] == pytest.approx(direct[which])
