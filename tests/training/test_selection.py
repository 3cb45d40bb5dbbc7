"""Choosing a run's prompt: the best checks are kept as candidates and the best of them on the
selection set wins, next to the template alone's score."""

import pytest
import torch

from softprompt.training.selection import Candidates, choose


def test_candidates_keep_the_k_best_checks_earliest_first_on_ties():
    pool = Candidates(2)
    for step, score in [(0, 0.5), (10, 0.7), (20, 0.6), (30, 0.7)]:
        pool.offer(step, score, torch.full((1, 2), float(step)))
    assert [(c.step, c.check_score) for c in pool.kept] == [(10, 0.7), (30, 0.7)]
    restored = Candidates(2)
    restored.load_state(pool.state())
    assert [(c.step, c.check_score) for c in restored.kept] == [(10, 0.7), (30, 0.7)]
    assert torch.equal(restored.kept[1].prompt, torch.full((1, 2), 30.0))


def test_a_kept_candidate_is_a_copy():
    pool = Candidates(1)
    prompt = torch.zeros(1, 2)
    pool.offer(0, 0.5, prompt)
    prompt.add_(1.0)  # training goes on in place
    assert torch.equal(pool.kept[0].prompt, torch.zeros(1, 2))


def test_choose_scores_every_candidate_and_the_template_alone():
    pool = _three_checks()
    # On the selection set the second-best check is the best prompt.
    selection = {5.0: 0.6, 10.0: 0.75, 15.0: 0.7}

    def score(prompt):
        return {"score": 0.65 if prompt.numel() == 0 else selection[float(prompt[0, 0])]}

    choice = choose(pool.kept, score, torch.zeros(0, 2))
    assert choice.step == 10 and choice.metrics == {"score": 0.75} and choice.mean_of == ()
    assert choice.zero_shot == {"score": 0.65}
    assert [c["selection_score"] for c in choice.candidates] == [0.6, 0.75, 0.7]


def _three_checks() -> Candidates:
    """Candidates of steps 5, 10 and 15 (checks 0.9, 0.8, 0.7), each prompt filled with its step."""
    pool = Candidates(3)
    for step, check in [(5, 0.9), (10, 0.8), (15, 0.7)]:
        pool.offer(step, check, torch.full((1, 2), float(step)))
    return pool


def test_the_final_pool_puts_the_mean_of_the_kept_prompts_first():
    pool = _three_checks()
    mean, *kept = pool.final_pool()
    assert kept == pool.kept
    assert (mean.step, mean.check_score, mean.mean_of) == (15, None, (5, 10, 15))
    assert torch.equal(mean.prompt, torch.full((1, 2), 10.0))
    single = Candidates(3)
    single.offer(0, 0.5, torch.zeros(1, 2))
    assert single.final_pool() == single.kept  # one prompt: nothing to average


@pytest.mark.parametrize(("mean_score", "chosen_step", "mean_of"),
                         [(0.75, 15, (5, 10, 15)), (0.74, 10, ())])
def test_the_mean_wins_a_tie_and_loses_to_a_better_candidate(mean_score, chosen_step, mean_of):
    pool = _three_checks()
    # The mean's prompt is all 10.0, as is step 10's: the mean is the prompt no check kept.
    selection = {5.0: 0.6, 10.0: 0.75, 15.0: 0.7}

    def score(prompt):
        if prompt.numel() == 0:
            return {"score": 0.5}
        is_mean = not any(prompt is c.prompt for c in pool.kept)
        return {"score": mean_score if is_mean else selection[float(prompt[0, 0])]}

    choice = choose(pool.final_pool(), score, torch.zeros(0, 2))
    assert (choice.step, choice.mean_of) == (chosen_step, mean_of)
    assert choice.candidates[0] == {"step": 15, "check_score": None,
                                    "selection_score": mean_score, "mean_of": [5, 10, 15]}
