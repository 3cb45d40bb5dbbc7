"""Training rows end to end in one sequence instead of padded, where that saves work.

Behind one shared prompt's `[lead; P]` prefix (see prefix_cache), short rows of mixed lengths
go end to end in one sequence of S = the sum of their lengths. A block mask lets each row see
the prefix and its own earlier tokens only, at its own positions, so every log-probability and
gradient equals the padded pass's while the padding's work is gone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from softprompt.model.masks import Rows, packed_rows_mask
from softprompt.model.prefix_cache import prefix_cache
from softprompt.model.stack import DecoderStack


def packs_rows(lengths: Sequence[int], prefix: int, config, linear_params: int) -> bool:
    """Whether rows of these lengths behind a shared prefix of `prefix` positions cost fewer
    FLOPs packed than padded.

    Packing removes the padding's linear work (2 N per position, N = `linear_params`) but lets
    attention span the whole pack (4 d L per query-key pair, weighted x2 because on a CPU it
    runs at about half the matmul rate, bench/results/utilization.md). Short rows of mixed
    lengths (SST-2 has 46% padding at B=8) pack, long equal rows do not. A sliding window shorter
    than the pack rules it out (a custom 4-D mask would bypass the window). `config` is the
    model's config.
    """
    packed, width = sum(lengths), max(lengths)
    window = getattr(config, "sliding_window", None)
    if window is not None and prefix + packed > window:
        return False
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    pair = 2 * 4 * head_dim * config.num_attention_heads * config.num_hidden_layers

    def cost(positions: int, pairs: int) -> int:
        return 2 * linear_params * positions + pair * pairs

    padded = len(lengths) * width
    return cost(packed, packed * (prefix + packed)) < cost(padded, padded * (prefix + width))


class PackLayout(NamedTuple):
    """Where each token of rows packed end to end sits."""

    segment: torch.Tensor  # [S] the row each token belongs to
    index: torch.Tensor  # [S] its place in that row
    starts: torch.Tensor  # [B] where each row begins in the pack


def pack_layout(lengths: torch.Tensor) -> PackLayout:
    """[B] row lengths -> the layout of those rows packed end to end (S = their sum)."""
    dev = lengths.device
    starts = lengths.cumsum(0) - lengths
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=dev), lengths)
    index = torch.arange(int(lengths.sum()), device=dev) - torch.repeat_interleave(starts, lengths)
    return PackLayout(segment, index, starts)


def run_packed_rows(
    stack: DecoderStack,
    embed: Callable[[torch.Tensor], torch.Tensor],
    lead: torch.Tensor,
    prompt: torch.Tensor,
    rows: Rows,
    read: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """The rows `[lead; P; row]` with one shared prompt, packed behind the prefix's cache.

    `lead` [l, E] and `prompt` [P, E] make the prefix, `embed` maps ids to embeddings. Returns
    hidden [B, T, H] laid out as the padded pass's (zeros at padding), exact where `read` =
    (rows [N], positions [N]) says it is read.
    """
    dev = lead.device
    lengths = torch.tensor([len(r) for r in rows], device=dev)
    flat = torch.tensor([t for r in rows for t in r], dtype=torch.long, device=dev)  # [S]
    layout = pack_layout(lengths)
    K = lead.shape[0] + prompt.shape[0]
    mask = packed_rows_mask(layout.segment, layout.index, K, lead.dtype)  # [S, K + S]
    owner = torch.zeros(1, dtype=torch.long, device=dev)
    cache = prefix_cache(stack, lead, prompt[None].to(dev), owner, keep=False)
    hidden, _ = stack.run(
        inputs_embeds=embed(flat)[None],
        attention_mask=mask[None, None],
        position_ids=(K + layout.index)[None],
        cache=cache,
        use_cache=True,
        read=(torch.zeros_like(read[0]), layout.starts[read[0]] + read[1]),
    )  # [1, S, H]
    out = hidden.new_zeros(len(rows), int(lengths.max()), hidden.shape[-1])
    return out.index_put((layout.segment, layout.index), hidden[0])
