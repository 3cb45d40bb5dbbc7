"""Where a soft prompt goes in the model's input.

Decoder-only models read `[lead; P; X]`, where `lead` is the BOS token for tokenizers that add
one (Gemma breaks without it) and is empty otherwise. Encoder-decoder models read `[P; X]` in
the encoder. Prompts are either one [P, E] for the whole batch or one per example [B, P, E], so
a batch can mix tasks, or replicate an example across the N prompts of an ensemble.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class TextLayout(NamedTuple):
    """How an architecture lays out input and target text around the prompt."""

    target_separator: str  # text between input and target (" " where targets follow the input)
    input_ends_with_eos: bool  # the input's ids end with EOS
    keeps_bos: bool  # the BOS token stays first where the tokenizer adds one


def expand_prompts(prompts: torch.Tensor, batch: int) -> torch.Tensor:
    """[P, E] or [B, P, E] -> [B, P, E]; any other shape is a ValueError."""
    if prompts.dim() == 2:
        return prompts.unsqueeze(0).expand(batch, -1, -1)
    if prompts.dim() != 3 or prompts.shape[0] != batch:
        raise ValueError(f"prompts must be [P, E] or [B={batch}, P, E], got {list(prompts.shape)}")
    return prompts


def prefix_prompt_after_bos(
    lead: torch.Tensor, prompts: torch.Tensor, tokens: torch.Tensor | None = None
) -> torch.Tensor:
    """Decoder-only placement `[lead; P; X]`.

    `lead` [l, E] (l is 1 for a BOS token, else 0), `prompts` [B, P, E], `tokens` [B, T, E] ->
    [B, l + P + T, E]. Without `tokens` it returns the prefix `[lead; P]` alone, [B, l + P, E].
    """
    parts = [lead[None].expand(prompts.shape[0], -1, -1), prompts]
    if tokens is not None:
        parts.append(tokens)
    return torch.cat(parts, dim=1)


def prefix_prompt(prompts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Encoder placement `[P; X]`, `prompts` [B, P, E] and `tokens` [B, T, E] -> [B, P + T, E]."""
    return torch.cat([prompts, tokens], dim=1)
