"""Choosing a run's prompt: cheap checks while training, a careful choice at the end.

Scoring the whole dev set every few steps eats the training budget, and scoring a small subset
picks the luckiest check rather than the best prompt. So a run does both, at different times:

- every check scores the prompt on a small fixed seeded subset (the check set), and the best
  `k` checks' prompts are kept as candidates (`Candidates`), the initial prompt among them;
- at the end each candidate, the mean of the candidates' prompts, and the template alone (no
  prompt: zero-shot) are scored on the larger selection set, and the best there is the run's
  prompt (`choose`). The mean wins a tie: an average of prompts from different steps sits in
  the middle of a region the checks found good. In four SST-2 runs it tied the best candidate
  on the selection set three times, and scored 0 to 0.5 points above the chosen candidate on
  GLUE dev (results/README.md).

A [P, E] prompt is a few kilobytes, so keeping k of them costs nothing; they travel in the
checkpoint, so a resumed run chooses among the same candidates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

import torch

log = logging.getLogger(__name__)


class Candidate(NamedTuple):
    """A prompt kept at a check."""

    step: int  # for the mean: the latest of the steps it averages
    check_score: float | None  # None for the mean: it was never checked
    prompt: torch.Tensor  # [P, E], detached, on the device it trained on
    mean_of: tuple[int, ...] = ()  # the steps whose prompts it averages; () for a check's prompt


class Candidates:
    """The `k` prompts with the best check scores so far (an earlier check wins a tie)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.kept: list[Candidate] = []

    def offer(self, step: int, check_score: float, prompt: torch.Tensor) -> None:
        """Keeps a copy of `prompt` if its check score is among the k best."""
        self.kept.append(Candidate(step, check_score, prompt.detach().clone()))
        # Sorted by score, best first; the stable sort keeps earlier checks first among equals.
        self.kept.sort(key=lambda c: -c.check_score)
        del self.kept[self.k :]

    def final_pool(self) -> list[Candidate]:
        """What the end of a run chooses from: the mean of the kept prompts (when two or more are
        kept; first, so that it wins a tie) and the kept prompts."""
        if len(self.kept) < 2:
            return list(self.kept)
        steps = tuple(sorted(c.step for c in self.kept))
        mean = torch.stack([c.prompt for c in self.kept]).mean(0)  # [P, E]
        return [Candidate(steps[-1], None, mean, steps), *self.kept]

    def state(self) -> dict:
        return {
            "steps": [c.step for c in self.kept],
            "scores": [c.check_score for c in self.kept],
            "prompts": [c.prompt for c in self.kept],
        }

    def load_state(self, saved: dict) -> None:
        self.kept = [
            Candidate(int(step), float(score), prompt)
            for step, score, prompt in zip(
                saved["steps"], saved["scores"], saved["prompts"], strict=True
            )
        ]


class Choice(NamedTuple):
    """The prompt a run keeps, and how every candidate and the template alone scored."""

    step: int
    prompt: torch.Tensor  # [P, E]
    metrics: dict  # the chosen prompt's metrics on the selection set
    candidates: list[dict]  # per candidate: step, check score, selection score (and mean_of)
    zero_shot: dict  # the template alone, on the selection set
    seconds: float
    mean_of: tuple[int, ...] = ()  # the steps averaged when the mean was chosen


def choose(pool: list[Candidate], score: Callable[[torch.Tensor], dict],
           empty_prompt: torch.Tensor) -> Choice:
    """Scores the candidates of `pool` (Candidates.final_pool) and `empty_prompt` [0, E] with
    `score` (prompt -> metrics with a "score") and returns the best candidate (the first in
    the pool wins a tie)."""
    began = time.monotonic()
    if not pool:
        raise ValueError("no candidate to choose from: the run never checked its prompt")
    rows, best, best_metrics = [], None, None
    for candidate in pool:
        metrics = score(candidate.prompt)
        row = {"step": candidate.step, "check_score": candidate.check_score,
               "selection_score": metrics["score"]}
        if candidate.mean_of:
            row["mean_of"] = list(candidate.mean_of)
        rows.append(row)
        if best_metrics is None or metrics["score"] > best_metrics["score"]:
            best, best_metrics = candidate, metrics
    zero_shot = score(empty_prompt)
    return Choice(best.step, best.prompt, best_metrics, rows, zero_shot,
                  time.monotonic() - began, best.mean_of)
