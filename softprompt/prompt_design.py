"""Prompt design, the paper's baseline without training (Lester et al. 2021, section 4):
GPT-3 style few-shot priming, k labelled training examples before each input, on the frozen
model with no soft prompt (k = 0 is the template alone, zero-shot).
"""

from __future__ import annotations

import random
from dataclasses import replace

import torch

from softprompt.model import FrozenLM
from softprompt.scoring import encode_examples, evaluate
from softprompt.tasks import Example, TaskSpec


def empty_prompt(lm: FrozenLM) -> torch.Tensor:
    """[0, E]: no prompt at all, so the model sees the template alone."""
    return torch.zeros(0, lm.dim, device=lm.device)


def eval_split(data: dict) -> str:
    """The split results are reported on: test where the task has one, else dev."""
    return "test" if "test" in data else "dev"


def few_shot_inputs(
    lm: FrozenLM, train: list[Example], examples: list[Example], k: int, seed: int = 0
) -> list[Example]:
    """GPT-3 style priming: each input preceded by k training examples with their labels.

    Demonstrations are drawn per example (seeded) and written as "input label" blocks separated by
    blank lines, in the target format the model is scored on. Over-long inputs lose their oldest
    demonstrations first (encode_input keeps the last tokens).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k > len(train):
        raise ValueError(f"k={k} demonstrations but only {len(train)} training examples")
    rng = random.Random(seed)
    sep = "" if lm.is_encoder_decoder else " "
    out = []
    for e in examples:
        demos = rng.sample(train, k)
        context = "".join(f"{d.input}{sep}{lm.target_prefix}{d.target}\n\n" for d in demos)
        out.append(replace(e, input=context + e.input))
    return out


def prompt_design_evaluate(
    lm: FrozenLM,
    spec: TaskSpec,
    data: dict,
    k: int,
    seed: int = 0,
    max_input_tokens: int = 1024,
    batch_size: int = 16,
    limit: int | None = None,
) -> dict:
    """Few-shot priming (k = 0: zero-shot) on the task's report split, frozen model, no prompt."""
    split = eval_split(data)
    examples = data[split][:limit] if limit else data[split]
    primed = few_shot_inputs(lm, data["train"], examples, k, seed)
    encoded = encode_examples(lm, primed, max_input_tokens)
    metrics = evaluate(lm, empty_prompt(lm), spec, primed, encoded, batch_size=batch_size)
    return metrics | {"split": split, "k": k, "truncated_inputs": encoded.truncated}
