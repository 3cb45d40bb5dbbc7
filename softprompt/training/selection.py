"""Choosing a run's prompt: cheap checks while training, a careful choice at the end.

Scoring the whole dev set every few steps eats the training budget, and scoring a small subset
picks the luckiest check rather than the best prompt. So a run does both, at different times:

- every check scores the prompt on a small fixed seeded subset (the check set), and the best
  `k` checks' prompts are kept as candidates (`Candidates`), the initial prompt among them;
- at the end each candidate, and the template alone (no prompt: zero-shot), is scored on the
  larger selection set, and the best candidate there is the run's prompt (`choose`).

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

    step: int
    check_score: float
    prompt: torch.Tensor  # [P, E], detached, on the device it trained on


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
    candidates: list[dict]  # per candidate: step, check score, selection score
    zero_shot: dict  # the template alone, on the selection set
    seconds: float


def choose(candidates: Candidates, score: Callable[[torch.Tensor], dict],
           empty_prompt: torch.Tensor) -> Choice:
    """Scores the candidates and `empty_prompt` [0, E] with `score` (prompt -> metrics with a
    "score") and returns the best candidate (an earlier check wins a tie)."""
    began = time.monotonic()
    if not candidates.kept:
        raise ValueError("no candidate to choose from: the run never checked its prompt")
    rows, best, best_metrics = [], None, None
    for candidate in candidates.kept:
        metrics = score(candidate.prompt)
        rows.append(
            {"step": candidate.step, "check_score": candidate.check_score,
             "selection_score": metrics["score"]}
        )
        if best_metrics is None or metrics["score"] > best_metrics["score"]:
            best, best_metrics = candidate, metrics
    zero_shot = score(empty_prompt)
    return Choice(best.step, best.prompt, best_metrics, rows, zero_shot,
                  time.monotonic() - began)
