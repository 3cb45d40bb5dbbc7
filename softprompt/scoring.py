"""Turning a frozen LM plus prompts into predictions: rank classification and free generation.

Rank classification scores each label word's tokens (plus EOS, as in training) by summed
log-likelihood and takes the argmax. Generation decodes greedily and reports how often the output
is not a legal label at all (the paper's "invalid prediction" rate for span-corruption models).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from softprompt.model import Batch, FrozenLM
from softprompt.task_metrics import compute_metrics
from softprompt.tasks import Example, TaskSpec


@dataclass
class Encoded:
    """A split tokenized once: input ids, target ids, and how many inputs were truncated."""

    inputs: list[list[int]]
    targets: list[list[int]]
    truncated: int


def encode_examples(lm: FrozenLM, examples: Sequence[Example], max_input_tokens: int) -> Encoded:
    inputs, targets, truncated = [], [], 0
    for ex in examples:
        ids, cut = lm.encode_input(ex.input, max_input_tokens)
        inputs.append(ids)
        targets.append(lm.encode_target(ex.target))
        truncated += cut
    return Encoded(inputs, targets, truncated)


def _length_sorted_batches(inputs: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Index batches of similar length (less padding); callers restore the original order."""
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def label_scores(
    lm: FrozenLM,
    prompts: torch.Tensor,
    inputs: Sequence[Sequence[int]],
    label_words: Sequence[str],
    batch_size: int = 32,
) -> torch.Tensor:
    """[B, L] summed log-likelihood of each label word (with EOS) after each input.

    `prompts` is one [P, E] prompt or one per example [B, P, E] (mixed tasks, ensembles).
    """
    choices = [lm.encode_target(w) for w in label_words]
    scores = torch.empty(len(inputs), len(choices))
    per_example = prompts.dim() == 3
    prompts = lm.expand_prompts(prompts, len(inputs))
    for idx in _length_sorted_batches(inputs, batch_size):
        batch_prompts = prompts[idx] if per_example else prompts[0]
        scores[idx] = (
            lm.score_choices(batch_prompts, [inputs[i] for i in idx], choices).float().cpu()
        )
    return scores


def rank_classify(
    lm: FrozenLM,
    prompt: torch.Tensor,
    encoded: Encoded,
    label_words: Sequence[str],
    batch_size: int = 32,
) -> list[str]:
    scores = label_scores(lm, prompt, encoded.inputs, label_words, batch_size)
    return [label_words[i] for i in scores.argmax(1).tolist()]


def generate_labels(
    lm: FrozenLM,
    prompt: torch.Tensor,
    encoded: Encoded,
    batch_size: int = 32,
    max_new_tokens: int = 8,
) -> list[str]:
    """Greedy outputs as text (stripped); may be anything, not just a label."""
    out: list[str] = [""] * len(encoded.inputs)
    per_example = prompt.dim() == 3
    prompt = lm.expand_prompts(prompt, len(encoded.inputs))
    for idx in _length_sorted_batches(encoded.inputs, batch_size):
        batch_prompt = prompt[idx] if per_example else prompt[0]
        for i, ids in zip(
            idx,
            lm.generate(batch_prompt, [encoded.inputs[i] for i in idx], max_new_tokens),
            strict=True,
        ):
            out[i] = lm.decode(ids).strip()
    return out


def evaluate(
    lm: FrozenLM,
    prompt: torch.Tensor,
    spec: TaskSpec,
    examples: Sequence[Example],
    encoded: Encoded,
    mode: str = "rank",
    batch_size: int = 32,
) -> dict[str, float]:
    """Metrics of `prompt` on `examples` (already encoded). mode: "rank" or "generate"."""
    if mode == "rank":
        predictions = rank_classify(lm, prompt, encoded, spec.label_words, batch_size)
        metrics = compute_metrics(spec, predictions, list(examples))
    elif mode == "generate":
        predictions = generate_labels(lm, prompt, encoded, batch_size)
        legal = set(spec.label_words)
        metrics = compute_metrics(spec, predictions, list(examples))
        metrics["illegal_rate"] = sum(p not in legal for p in predictions) / len(predictions)
    else:
        raise ValueError(f"unknown evaluation mode {mode!r}; use 'rank' or 'generate'")
    metrics["n"] = len(examples)
    return metrics


def lm_loss(
    lm: FrozenLM, prompts: torch.Tensor, batch: Batch, normalizer: int | None = None
) -> torch.Tensor:
    """Negative log-likelihood of the target tokens, summed and divided by `normalizer` (default:
    this batch's target-token count, i.e. the mean): the prompt-tuning objective."""
    logprobs, _ = lm.target_logprobs(prompts, batch)
    return -logprobs.sum() / (normalizer or logprobs.numel())


def mixed_label_scores(
    lm: FrozenLM,
    prompts: Sequence[torch.Tensor],
    inputs: Sequence[Sequence[int]],
    label_words: Sequence[Sequence[str]],
    by_prompt: bool | None = None,
) -> list[torch.Tensor]:
    """Scores rows of any tasks together: row i is input i after its own prompt i [P_i, E],
    ranked over its own label words. Returns one [L_i] tensor of summed log-likelihoods per row.

    `by_prompt` (default: where FrozenLM shares prompt prefixes, i.e. on CPU): rows using the same
    prompt tensor (one task, or one ensemble member) form one batch: its [lead; P] runs once, its
    rows pad only among themselves and score only their own labels. One batch for all tasks pads
    every row to the longest input of any task and was slower on CPU (bench/results/mixed_tasks.md).
    Otherwise (a launch-bound GPU) rows sharing a prompt length go through one forward with
    per-example prompts [B, P, E], scored against the union of their label words, each row keeping
    its own columns: exact, as a label's score depends only on its row's prefix and the label.
    """
    by_prompt = lm.shares_prefix() if by_prompt is None else by_prompt
    out: list[torch.Tensor | None] = [None] * len(inputs)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(id(p) if by_prompt else p.shape[0], []).append(i)
    for idx in groups.values():
        union = list(dict.fromkeys(w for i in idx for w in label_words[i]))
        column = {w: j for j, w in enumerate(union)}
        group_prompts = (
            prompts[idx[0]] if by_prompt else torch.stack([prompts[i] for i in idx])
        )  # [P, E] or [B, P, E]
        scores = label_scores(
            lm, group_prompts, [inputs[i] for i in idx], union, batch_size=len(idx)
        )  # [B, U]
        for row, i in enumerate(idx):
            out[i] = scores[row, [column[w] for w in label_words[i]]]
    return out  # type: ignore[return-value]
