"""Prompt ensembling in one forward pass (Lester et al. 2021, section 6).

N prompts trained for one task share the frozen model. Each example is replicated N times in a
single batch, row `b * N + n` carrying prompt n: the per-example prompts are [N*B, P, E], so one
forward scores all N prompts (PEFT's prompt tuning holds one prompt per model and cannot do this).
Predictions are combined by majority vote; a tie between labels is broken by the labels'
log-likelihood summed over the N prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from softprompt.model import FrozenLM
from softprompt.scoring import Encoded, label_scores
from softprompt.task_metrics import compute_metrics
from softprompt.tasks import Example, TaskSpec

TIE_BREAK = "summed log-likelihood over the N prompts"


def stack_prompts(prompts: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """A list of [P, E] prompts (or one [N, P, E] tensor) -> [N, P, E]; all must share P and E."""
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 3:
            raise ValueError(f"an ensemble tensor must be [N, P, E], got {list(prompts.shape)}")
        return prompts.float()
    if not prompts:
        raise ValueError("an ensemble needs at least one prompt")
    shapes = {tuple(p.shape) for p in prompts}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        got = [list(p.shape) for p in prompts]
        raise ValueError(f"ensemble prompts must all be [P, E] of one shape, got {got}")
    return torch.stack([p.float() for p in prompts])


def ensemble_scores(
    lm: FrozenLM,
    prompts: Sequence[torch.Tensor] | torch.Tensor,
    inputs: Sequence[Sequence[int]],
    label_words: Sequence[str],
    batch_size: int = 32,
) -> torch.Tensor:
    """[N, B, L] summed log-likelihood of each label after each input, under each of N prompts.

    Every forward holds `batch_size` examples, each replicated N times ([N*batch_size, P, E]
    prompts), so the N prompts cost one pass over the data instead of N.
    """
    stacked = stack_prompts(prompts).to(lm.device)
    n = stacked.shape[0]
    if stacked.shape[2] != lm.dim:
        raise ValueError(f"prompt width {stacked.shape[2]} does not match model width {lm.dim}")
    out = torch.empty(n, len(inputs), len(label_words))
    # Similar lengths share a forward (less padding); results go back to input order.
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        rows = [inputs[i] for i in idx for _ in range(n)]  # row b*N + n: example b, prompt n
        per_row = stacked.repeat(len(idx), 1, 1)  # [N*b, P, E], prompt index = row % N
        scores = label_scores(lm, per_row, rows, label_words, batch_size=len(rows))  # [N*b, L]
        out[:, idx] = scores.view(len(idx), n, -1).transpose(0, 1)
    return out


def majority_vote(scores: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[N, B, L] scores -> ([B] winning label index, number of tied votes broken).

    Each prompt votes for its argmax label; among the labels with the most votes the one with the
    highest log-likelihood summed over the N prompts wins.
    """
    n, b, labels = scores.shape
    votes = torch.zeros(b, labels).scatter_add_(1, scores.argmax(2).T, torch.ones(b, n))  # [B, L]
    top = votes == votes.max(1, keepdim=True).values
    summed = scores.sum(0).masked_fill(~top, float("-inf"))
    return summed.argmax(1), int((top.sum(1) > 1).sum())


def ensemble_evaluate(
    lm: FrozenLM,
    prompts: Sequence[torch.Tensor] | torch.Tensor,
    spec: TaskSpec,
    examples: Sequence[Example],
    encoded: Encoded,
    batch_size: int = 32,
) -> dict:
    """Metrics of each prompt alone and of their majority vote, from one ensemble pass.

    Returns {"per_prompt": [metrics...], "average": mean score, "best": best single score,
    "ensemble": metrics, "predictions": [label word per example], "ties": votes tied,
    "tie_break": how ties were broken}; as in the paper's Table 3.
    """
    scores = ensemble_scores(lm, prompts, encoded.inputs, spec.label_words, batch_size)
    words = spec.label_words
    per_prompt = []
    for n in range(scores.shape[0]):
        metrics = compute_metrics(
            spec, [words[i] for i in scores[n].argmax(1).tolist()], list(examples)
        )
        per_prompt.append(metrics | {"n": len(examples)})
    winners, ties = majority_vote(scores)
    predictions = [words[i] for i in winners.tolist()]
    single = [m["score"] for m in per_prompt]
    return {
        "per_prompt": per_prompt,
        "average": sum(single) / len(single),
        "best": max(single),
        "ensemble": compute_metrics(spec, predictions, list(examples)) | {"n": len(examples)},
        "predictions": predictions,
        "ties": ties,
        "tie_break": TIE_BREAK,
    }
