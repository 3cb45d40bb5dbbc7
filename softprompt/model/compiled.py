"""The frozen decoder stack under torch.compile, fed static shapes.

On a GPU a prompt-tuning step of a small frozen LM is bound by kernel launches, not by FLOPs.
torch.compile fuses the stack's kernels, and its `reduce-overhead` mode replays the whole pass
as a CUDA graph. Both pay only when a run sees few shapes (`dynamic=False` compiles one graph
per shape), so every pass is right-padded to a multiple of PAD_MULTIPLE positions, behind a
mask that hides the padding from every real position.

Only cache-free passes run compiled (the training pass, and rank classification with its
choices packed behind a 4-D mask). Passes that read or keep a key/value cache (a shared prompt
prefix, packed rows, generation) run as before, uncompiled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

# What `compile` may be, "off" or one of torch.compile's modes.
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
# The modes that capture CUDA graphs, which exist on CUDA devices only.
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# Every compiled pass is padded to a multiple of this many positions. With one graph per shape,
# a run whose sequences span 20 to 300 positions then sees about ten widths instead of one per
# batch. 32 keeps the padding's extra work small next to a prompt of 20 and inputs of 100+
# tokens, and keeps every width a multiple of 8 and 16, the sizes tensor-core matmuls prefer.
PAD_MULTIPLE = 32
# Distinct shapes (widths x batch sizes x with or without gradients x mask kinds) one compiled
# stack may see before torch.compile stops compiling new ones and runs them uncompiled. Dynamo's
# own default (8) is below what one run needs (training and scoring widths, a last short batch).
MAX_SHAPES = 128


def check_mode(mode: str, device: torch.device) -> None:
    """Refuses a compile mode that is not one of COMPILE_MODES, and a CUDA-graph mode on a device
    that is not CUDA."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    if mode in CUDA_GRAPH_MODES and device.type != "cuda":
        raise ValueError(
            f"compile mode {mode!r} captures CUDA graphs and needs a CUDA device, not "
            f"{device.type}; use 'default' (or 'off') there"
        )


class PaddedPass(NamedTuple):
    """A pass's inputs right-padded to a multiple of PAD_MULTIPLE positions."""

    inputs_embeds: torch.Tensor  # [B, W, E]
    attention_mask: torch.Tensor  # [B, W] or [B, 1, W, W]
    position_ids: torch.Tensor  # [B, W]
    width: int  # S, the positions before padding


def pad_pass(
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    multiple: int = PAD_MULTIPLE,
) -> PaddedPass:
    """Right-pads a cache-free pass over S positions to W, the next multiple of `multiple`.

    No real position sees the padding. In the 2-D mask [B, S] the pad keys are masked out, and
    in a 4-D mask [B, 1, S, S] (additive or boolean) they are blocked in every real row, while
    the pad rows see everything (they are never read, and an all-blocked row could give NaN).
    Pad positions repeat the last position id, so no position table is indexed past its end.
    """
    B, S, E = inputs_embeds.shape
    extra = -S % multiple
    if extra == 0:
        return PaddedPass(inputs_embeds, attention_mask, position_ids, S)
    embeds = torch.cat([inputs_embeds, inputs_embeds.new_zeros(B, extra, E)], dim=1)
    positions = torch.cat([position_ids, position_ids[:, -1:].expand(-1, extra)], dim=1)
    if attention_mask.dim() == 2:
        mask = torch.cat([attention_mask, attention_mask.new_zeros(B, extra)], dim=1)
        return PaddedPass(embeds, mask, positions, S)
    if attention_mask.dtype == torch.bool:
        blocked, open_ = False, True
    else:
        blocked, open_ = torch.finfo(attention_mask.dtype).min, 0.0
    rows, heads = attention_mask.shape[0], attention_mask.shape[1]
    keys = attention_mask.new_full((rows, heads, S, extra), blocked)
    mask = torch.cat([attention_mask, keys], dim=3)  # [B, 1, S, W]
    pad_rows = attention_mask.new_full((rows, heads, extra, S + extra), open_)
    return PaddedPass(embeds, torch.cat([mask, pad_rows], dim=2), positions, S)


def plain_forward(model: nn.Module) -> Callable[..., torch.Tensor]:
    """The cache-free pass of `model`'s decoder stack without the LM head, which takes
    embeddings [B, W, E] with their mask and positions and returns the last hidden states
    [B, W, H]."""
    body = model.base_model

    def forward(
        inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        out = body(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
        return out.last_hidden_state

    return forward


class CompiledForward:
    """A decoder stack's cache-free pass through torch.compile, padded to static shapes.

    Compiled with `dynamic=False`, one graph per padded shape. `backend` is torch.compile's
    ("inductor" on a real run; tests use "aot_eager", which compiles in seconds). Counts every
    padded shape it is called with in `shapes`, so a run's variety can be checked.
    """

    def __init__(self, model: nn.Module, mode: str, backend: str = "inductor") -> None:
        self.mode = mode
        self.backend = backend
        self.shapes: set[tuple[int, ...]] = set()
        self.forward = torch.compile(
            plain_forward(model), mode=mode, backend=backend, dynamic=False
        )

    def __call__(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """[B, S, E] embeddings with their mask and positions -> hidden states [B, S, H]."""
        padded = pad_pass(inputs_embeds, attention_mask, position_ids)
        self.shapes.add((*padded.inputs_embeds.shape[:2], padded.attention_mask.dim()))
        with torch._dynamo.config.patch(recompile_limit=MAX_SHAPES):
            hidden = self.forward(padded.inputs_embeds, padded.attention_mask, padded.position_ids)
        return hidden[:, : padded.width]
