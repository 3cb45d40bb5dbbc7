"""Padding and attention masks, against small masks written out by hand (1 = may see)."""

import torch

from softprompt.model.masks import (
    additive_mask,
    packed_choices_mask,
    packed_rows_mask,
    pad_rows,
    padding_mask,
    to_device,
)


def _seen(mask: torch.Tensor) -> list:
    """An additive mask back to 1 (may see) and 0 (may not)."""
    return (mask == 0).long().tolist()


def test_pad_rows_right_pads_and_counts():
    ids, lengths = pad_rows([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and lengths.tolist() == [3, 1]
    ids, lengths = pad_rows([], pad_id=0)
    assert ids.shape == (0, 0) and lengths.shape == (0,)


def test_padding_mask_covers_each_row():
    mask = padding_mask(torch.tensor([2, 0, 3]), 3)
    assert mask.dtype == torch.long
    assert mask.tolist() == [[1, 1, 0], [0, 0, 0], [1, 1, 1]]


def test_additive_mask_adds_the_dtype_minimum_where_unseen():
    allowed = torch.tensor([[True, False], [True, True]])
    for dtype in (torch.float32, torch.bfloat16):
        mask = additive_mask(allowed, dtype)
        low = torch.finfo(dtype).min
        assert mask.dtype == dtype and mask.tolist() == [[0, low], [0, 0]]


def test_packed_choices_mask():
    """Two rows (2 real tokens, 1 real token) after a 1-position prefix, and F = 2 packed tokens
    where the second sees the first. Keys: prefix, t0, t1, f0, f1."""
    sees = torch.tensor([[True, False], [True, True]])
    mask = packed_choices_mask(torch.tensor([2, 1]), 1, sees, False, torch.float32)
    assert mask.shape == (2, 1, 4, 5)
    assert _seen(mask[:, 0]) == [
        [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]],
        [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 1, 0], [1, 1, 0, 1, 1]],
    ]
    with_prefix = packed_choices_mask(torch.tensor([2, 1]), 1, sees, True, torch.float32)
    assert with_prefix.shape == (2, 1, 5, 5)
    assert _seen(with_prefix[:, 0, :1]) == [[[1, 0, 0, 0, 0]], [[1, 0, 0, 0, 0]]]
    assert torch.equal(with_prefix[:, :, 1:], mask)


def test_packed_rows_mask():
    """Rows of 2 and 1 tokens packed after a 1-position prefix. Keys: prefix, then the pack."""
    mask = packed_rows_mask(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0]), 1, torch.float32)
    assert _seen(mask) == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 1]]


def test_host_tensors_reach_cuda_through_pinned_memory(monkeypatch):
    """On CPU the move is no copy at all; to CUDA a tensor is pinned and copied without blocking
    (the calls are recorded here, as this machine has no CUDA device)."""
    ids = torch.arange(4)
    assert to_device(ids, "cpu") is ids
    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: calls.append("pin") or t)
    monkeypatch.setattr(torch.Tensor, "to", lambda t, *a, **k: calls.append((a, k)) or t)
    to_device(ids, "cuda")
    assert calls == ["pin", ((torch.device("cuda"),), {"non_blocking": True})]
