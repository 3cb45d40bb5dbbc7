"""Scoring a frozen LM's predictions: label scores do not depend on batching or on how the prompts
are given, rows of mixed tasks score like each task alone, and evaluation reports its metrics."""

import pytest
import torch
from served_tasks import INPUTS, TASKS, random_prompt

from softprompt.scoring import (
    encode_examples,
    evaluate,
    generate_labels,
    label_scores,
    mixed_label_scores,
)
from softprompt.task_data import load_task
from softprompt.tasks import load_spec


def test_shared_prompt_equals_per_example_prompts(lm, reviews):
    prompt = torch.randn(3, lm.dim) * 0.1
    inputs = reviews(lm)
    shared = label_scores(lm, prompt, inputs, ["positive", "negative"])
    per_example = label_scores(
        lm, prompt.expand(3, -1, -1).clone(), inputs, ["positive", "negative"]
    )
    assert torch.allclose(shared, per_example, atol=1e-5)


def test_padding_does_not_change_scores(lm, reviews):
    prompt = torch.randn(2, lm.dim) * 0.1
    inputs = reviews(lm)
    together = label_scores(lm, prompt, inputs, ["positive", "negative"])
    alone = torch.cat([label_scores(lm, prompt, [x], ["positive", "negative"]) for x in inputs])
    assert torch.allclose(together, alone, atol=1e-4)


def test_mixed_prompts_in_one_batch_match_separate_runs(lm, reviews):
    """Different prompts per example (mixed tasks / ensembles) give each example its own
    prompt's scores."""
    p1, p2 = torch.randn(3, lm.dim) * 0.1, torch.randn(3, lm.dim) * 0.1
    inputs = reviews(lm)[:2]
    words = ["positive", "negative"]
    mixed = label_scores(lm, torch.stack([p1, p2]), inputs, words)
    assert torch.allclose(mixed[0], label_scores(lm, p1, inputs[:1], words)[0], atol=1e-4)
    assert torch.allclose(mixed[1], label_scores(lm, p2, inputs[1:], words)[0], atol=1e-4)


@pytest.mark.parametrize("by_prompt", [True, False])
def test_mixed_label_scores_equal_single_task_scores(tiny_causal, by_prompt):
    """Rows of three tasks (two prompt lengths, three label sets, prompts used by one or two rows)
    scored together, in one batch per prompt or per prompt length, give each task's own
    label_scores."""
    lm, rows = tiny_causal, []
    # Shared tensors, as the service's.
    prompts = {(task, seed): random_prompt(lm, task, seed) for task in INPUTS for seed in (0, 1)}
    for task, examples in INPUTS.items():
        for k, fields in enumerate(examples):
            ids = lm.encode_input(TASKS[task][0].format(**fields), 256)[0]
            rows.append((task, prompts[task, k % 2], ids))
    mixed = mixed_label_scores(
        lm,
        [r[1] for r in rows],
        [r[2] for r in rows],
        [TASKS[r[0]][1] for r in rows],
        by_prompt=by_prompt,
    )
    for (task, prompt, ids), got in zip(rows, mixed, strict=True):
        assert got.shape == (len(TASKS[task][1]),)
        assert torch.allclose(got, label_scores(lm, prompt, [ids], TASKS[task][1])[0], atol=1e-4)


def test_generate_mode_counts_outputs_that_are_no_label(tiny_causal, toy_task):
    spec = load_spec(toy_task["spec_path"])
    examples = load_task(spec, toy_task["data_dir"])["dev"][:6]
    encoded = encode_examples(tiny_causal, examples, 64)
    prompt = torch.randn(3, tiny_causal.dim) * 0.1
    metrics = evaluate(tiny_causal, prompt, spec, examples, encoded, mode="generate", batch_size=4)
    outputs = generate_labels(tiny_causal, prompt, encoded, batch_size=4)
    illegal = sum(o not in spec.label_words for o in outputs) / len(outputs)
    assert metrics["illegal_rate"] == illegal and metrics["n"] == 6
    assert 0 <= metrics["accuracy"] <= 1 and "score" in metrics


def test_unknown_evaluation_mode_is_refused(tiny_causal, toy_task):
    spec = load_spec(toy_task["spec_path"])
    examples = load_task(spec, toy_task["data_dir"])["dev"][:2]
    encoded = encode_examples(tiny_causal, examples, 64)
    with pytest.raises(ValueError, match="unknown evaluation mode 'beam'"):
        evaluate(tiny_causal, torch.zeros(0, tiny_causal.dim), spec, examples, encoded, mode="beam")
