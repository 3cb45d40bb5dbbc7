"""Padding and attention masks, as pure functions (tensors in, tensors out).

A boolean mask says which key each query may see; `additive_mask` turns it into what attention
adds to its scores. The 4-D masks here are what lets the decoder-only passes pack tokens that
must not see each other into one sequence (`packed_choices_mask` for rank classification,
`packed_rows_mask` for training rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

# Rows of token ids, unpadded (one sequence of ids per row; padding happens per pass).
Rows = Sequence[Sequence[int]]


class Padded(NamedTuple):
    """Rows of token ids right-padded to one width."""

    ids: torch.Tensor  # [B, T]
    lengths: torch.Tensor  # [B] each row's own length


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor moved to `device`. To a CUDA device it goes through pinned (page-locked)
    memory without blocking, so the host goes on queueing kernels while the copy runs; the copy
    is ordered before any kernel that reads it on the same stream. Elsewhere it is a plain
    `.to(device)` (on CPU no copy at all)."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def pad_rows(rows: Rows, pad_id: int, device: torch.device | str = "cpu") -> Padded:
    """Right-pads rows of ids to [B, T] (T the longest row); returns them with their [B] lengths."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = int(lengths.max()) if len(rows) else 0
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
    return Padded(to_device(ids, device), to_device(lengths, device))


def padding_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[B] lengths -> [B, width] attention mask, ones over each row's tokens then zeros."""
    return (torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]).long()


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean "query may see key" [..., Q, K] -> the additive mask attention takes [..., Q, K].

    It holds 0 where the query may look and the dtype's minimum where it may not."""
    zeros = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return zeros.masked_fill(~allowed, torch.finfo(dtype).min)


def packed_choices_mask(
    tok_len: torch.Tensor,
    prefix_len: int,
    sees: torch.Tensor,
    with_prefix_queries: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Additive 4-D mask [B, 1, Q, prefix + T + F] for rows with F packed tokens after them.

    Keys are the prefix, the T (padded) row tokens and the F packed tokens. Queries are the row
    tokens (causal over the prefix and the row's real tokens), then the packed tokens (the
    prefix, the row's real tokens and the packed tokens `sees` [F, F] allows). With
    `with_prefix_queries` the prefix's own causal queries come first, for a pass that runs the
    prefix too. `tok_len` [B] holds the rows' real lengths, T is its maximum.
    """
    B, F = tok_len.shape[0], sees.shape[0]
    T = int(tok_len.max())
    dev = tok_len.device
    t = torch.arange(T, device=dev)
    real = t[None] < tok_len[:, None]  # [B, T] key is a real token
    row_q = torch.cat(
        [
            torch.ones(B, T, prefix_len, dtype=torch.bool, device=dev),
            (t[None, :] <= t[:, None])[None] & real[:, None, :],
            torch.zeros(B, T, F, dtype=torch.bool, device=dev),
        ],
        dim=2,
    )  # [B, T, K]
    packed_q = torch.cat(
        [
            torch.ones(B, F, prefix_len, dtype=torch.bool, device=dev),
            real[:, None, :].expand(B, F, T),
            sees[None].expand(B, F, F),
        ],
        dim=2,
    )  # [B, F, K]
    allowed = [row_q, packed_q]
    if with_prefix_queries:
        causal = torch.ones(prefix_len, prefix_len, dtype=torch.bool, device=dev).tril()
        unseen = torch.zeros(prefix_len, T + F, dtype=torch.bool, device=dev)
        allowed.insert(0, torch.cat([causal, unseen], dim=1)[None].expand(B, -1, -1))
    return additive_mask(torch.cat(allowed, dim=1)[:, None], dtype)  # [B, 1, Q, K]


def packed_rows_mask(
    segment: torch.Tensor, index: torch.Tensor, prefix_len: int, dtype: torch.dtype
) -> torch.Tensor:
    """Additive block mask [S, prefix + S] for rows packed end to end into one sequence of S.

    `segment` [S] says which row each token belongs to and `index` [S] its place in that row.
    Every token sees the whole prefix, then only its own row's tokens up to itself.
    """
    S = segment.shape[0]
    own_row = (segment[:, None] == segment[None, :]) & (index[None, :] <= index[:, None])
    prefix = torch.ones(S, prefix_len, dtype=torch.bool, device=segment.device)
    return additive_mask(torch.cat([prefix, own_row], dim=1), dtype)  # [S, K + S]
