"""Prompt design: the frozen model with no soft prompt, primed with k labelled examples."""

from softprompt.prompt_design import empty_prompt, eval_split, prompt_design_evaluate
from softprompt.task_data import load_task
from softprompt.tasks import load_spec


def test_empty_prompt_has_no_vectors(tiny_causal):
    prompt = empty_prompt(tiny_causal)
    assert prompt.shape == (0, tiny_causal.dim) and prompt.device == tiny_causal.device


def test_results_are_reported_on_test_where_a_task_has_one():
    assert eval_split({"train": [], "dev": [], "test": []}) == "test"
    assert eval_split({"train": [], "dev": []}) == "dev"


def test_prompt_design_scores_the_report_split(tiny_causal, toy_task):
    spec = load_spec(toy_task["spec_path"])
    data = load_task(spec, toy_task["data_dir"])
    for k in (0, 2):
        metrics = prompt_design_evaluate(tiny_causal, spec, data, k, limit=8)
        assert metrics["split"] == "test" and metrics["k"] == k and metrics["n"] == 8
        assert 0 <= metrics["accuracy"] <= 1 and metrics["truncated_inputs"] == 0


def test_few_shot_inputs_prime_with_labelled_examples(tiny_causal, toy_task):
    import pytest

    from softprompt.prompt_design import few_shot_inputs

    data = load_task(load_spec(toy_task["spec_path"]), toy_task["data_dir"])
    primed = few_shot_inputs(tiny_causal, data["train"], data["test"][:3], k=2, seed=0)
    for p, e in zip(primed, data["test"][:3], strict=True):
        assert p.input.endswith(e.input) and p.target == e.target
        assert p.input.count("Sentiment: ") == 2 and p.input.count("\n\n") == 2
    with pytest.raises(ValueError, match="k=500 demonstrations"):
        few_shot_inputs(tiny_causal, data["train"], data["test"], k=500)
