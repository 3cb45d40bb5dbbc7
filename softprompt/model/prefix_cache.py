"""A decoder-only batch's prompt prefixes `[lead; P]`, each distinct one run once.

When a batch has fewer distinct prompts U than rows B (one [P, E] prompt for the batch, the N
prompts of an ensemble, the K tasks of a mixed batch), each distinct `[lead; P]` is a causal
prefix: nothing before it changes it, so it runs once and its key/value cache is gathered to
the rows that use it. That saves P of every row's lead + P + T positions, exactly, and
gradients still reach the prompt through the cache.
"""

from __future__ import annotations

import types
from typing import NamedTuple

import torch

from softprompt.model.placement import prefix_prompt_after_bos
from softprompt.model.stack import DecoderStack

# `read` for a decoder pass whose outputs are not read at all (only its key/value cache is).
NOTHING = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))


class DistinctPrompts(NamedTuple):
    """A batch's prompts, each distinct one once, and which one each row uses."""

    prompts: torch.Tensor  # [U, P, E]
    owner: torch.Tensor  # [B] index into `prompts`


def distinct_prompts(prompts: torch.Tensor, batch: int) -> DistinctPrompts:
    """[P, E] or [B, P, E] -> the distinct prompts [U, P, E] and each row's owner [B].

    Each distinct prompt is taken from its first row (not torch.unique's values), so gradients
    still flow to where it came from."""
    if prompts.dim() == 2:
        return DistinctPrompts(
            prompts[None], torch.zeros(batch, dtype=torch.long, device=prompts.device)
        )
    _, owner = torch.unique(prompts.detach().flatten(1), dim=0, return_inverse=True)
    rows = torch.arange(len(owner), device=prompts.device)
    first = torch.full((int(owner.max()) + 1,), len(owner), device=prompts.device)
    first = first.scatter_reduce(0, owner, rows, "amin")
    return DistinctPrompts(prompts[first], owner)


def read_only(cache, owner: torch.Tensor):
    """Makes a prefix's key/value cache read-only for one pass of B rows.

    Each layer attends to row b's prefix (`owner` [B] picks it, gathered as the layer reads it)
    plus the new tokens, and stores nothing. Otherwise every layer's keys and values for the
    whole batch stay alive to the end of the pass, memory the plain pass frees layer by layer
    (bench.memory with SmolLM2 and 32 rows of 64 tokens saw the peak above start fall from 180
    to 62 MiB).
    Plain layers only. Others (sliding-window layers) get the prefix gathered up front and keep
    their own update.
    """
    from transformers.cache_utils import DynamicLayer

    def concat(layer, keys, values, *args, **kwargs):
        return (
            torch.cat([layer.keys[owner], keys], dim=-2),
            torch.cat([layer.values[owner], values], dim=-2),
        )

    for layer in cache.layers:
        if type(layer) is DynamicLayer:
            layer.update = types.MethodType(concat, layer)
        else:
            layer.batch_select_indices(owner)
    return cache


def prefix_cache(
    stack: DecoderStack, lead: torch.Tensor, distinct: torch.Tensor, owner: torch.Tensor, keep: bool
):
    """Runs each distinct `[lead; P]` once and returns its key/value cache for the rows.

    `lead` [l, E], `distinct` [U, P, E], `owner` [B] maps each row to its prompt. The cache is
    copied per row when the caller keeps it (generation goes on from it), else read-only for
    one pass (see `read_only`).
    """
    prefix = prefix_prompt_after_bos(lead, distinct.to(dtype=lead.dtype))  # [U, l + P, E]
    _, cache = stack.run(inputs_embeds=prefix, use_cache=True, read=NOTHING)
    if keep:
        cache.batch_select_indices(owner)
        return cache
    return read_only(cache, owner)
