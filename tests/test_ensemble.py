import json

import pytest
import torch

from softprompt.cli import main
from softprompt.ensemble import ensemble_evaluate, ensemble_scores, majority_vote
from softprompt.scoring import encode_examples, label_scores
from softprompt.task_data import load_task
from softprompt.tasks import load_spec


def _toy(lm, toy_task, n=12):
    spec = load_spec(toy_task["spec_path"])
    examples = load_task(spec, toy_task["data_dir"])["test"][:n]
    return spec, examples, encode_examples(lm, examples, 64)


@pytest.mark.parametrize("arch", ["tiny_causal", "tiny_t5"])
def test_one_pass_matches_each_prompt_alone(arch, toy_task, request):
    lm = request.getfixturevalue(arch)
    spec, _, encoded = _toy(lm, toy_task)
    assert (
        len({len(x) for x in encoded.inputs}) > 1
    )  # padding inside the ensemble batch is exercised
    prompts = [
        torch.randn(4, lm.dim, generator=torch.Generator().manual_seed(s)) * 0.5 for s in range(3)
    ]
    together = ensemble_scores(
        lm, prompts, encoded.inputs, spec.label_words, batch_size=5
    )  # [N, B, L]
    assert together.shape == (3, len(encoded.inputs), len(spec.label_words))
    for n, prompt in enumerate(prompts):
        alone = label_scores(lm, prompt, encoded.inputs, spec.label_words, batch_size=5)
        torch.testing.assert_close(together[n], alone, atol=1e-4, rtol=1e-4)


def test_majority_vote_breaks_ties_by_summed_log_likelihood():
    # 2 prompts, 2 examples, 2 labels. Example 0: both vote label 1. Example 1: a 1-1 tie; label 0
    # wins on the summed log-likelihood (-1 + -3 = -4 against -2 + -2.5 = -4.5).
    scores = torch.tensor([[[-5.0, -1.0], [-1.0, -2.0]],
                           [[-4.0, -2.0], [-3.0, -2.5]]])
    winners, ties = majority_vote(scores)
    assert winners.tolist() == [1, 0] and ties == 1
    # Three prompts: the majority wins even against a larger summed likelihood.
    three = torch.tensor([[[-1.0, -1.1]], [[-1.0, -1.1]], [[-50.0, -0.1]]])
    assert majority_vote(three)[0].tolist() == [0]


def test_ensemble_evaluate_reports_singles_and_vote(tiny_causal, toy_task):
    spec, examples, encoded = _toy(tiny_causal, toy_task)
    prompts = torch.randn(3, 4, tiny_causal.dim, generator=torch.Generator().manual_seed(0))
    res = ensemble_evaluate(tiny_causal, prompts, spec, examples, encoded, batch_size=4)
    singles = [m["score"] for m in res["per_prompt"]]
    assert res["best"] == max(singles) and res["average"] == pytest.approx(sum(singles) / 3)
    assert len(res["predictions"]) == len(examples) and set(res["predictions"]) <= set(
        spec.label_words
    )
    assert res["ensemble"]["n"] == len(examples) and "log-likelihood" in res["tie_break"]


def test_prompts_of_different_shapes_are_refused(tiny_causal):
    with pytest.raises(ValueError, match="one shape"):
        ensemble_scores(
            tiny_causal,
            [torch.zeros(4, tiny_causal.dim), torch.zeros(5, tiny_causal.dim)],
            [[1, 2]],
            ["a"],
        )
    with pytest.raises(ValueError, match="model width"):
        ensemble_scores(tiny_causal, [torch.zeros(4, 7), torch.zeros(4, 7)], [[1, 2]], ["a"])


def test_ensemble_command_trains_and_votes(tiny_causal_dir, toy_task, tmp_path, capsys):
    out = tmp_path / "ens"
    rc = main(
        [
            "ensemble",
            "--out",
            str(out),
            "--task",
            str(toy_task["spec_path"]),
            "--model",
            str(tiny_causal_dir),
            "--data-dir",
            str(toy_task["data_dir"]),
            "--prompt-length",
            "4",
            "--train-batch-size",
            "8",
            "--micro-batch-size",
            "8",
            "--max-steps",
            "2",
            "--eval-every",
            "2",
            "--seeds",
            "0",
            "1",
            "--test-limit",
            "16",
        ]
    )
    assert rc == 0
    payload = json.loads((out / "ensemble.json").read_text())
    assert len(payload["per_prompt"]) == 2 and payload["n"] == 16
    assert "softprompt ensemble" in payload["command"] and "--seeds 0 1" in payload["command"]
    assert "ensemble (majority vote of 2)" in (out / "ensemble.md").read_text()
    assert "| prompt |" in capsys.readouterr().out
