"""Adafactor (Shazeer and Stern 2018) as prompt tuning uses it, with stacked independent members.

It has the paper's settings (Lester et al. 2021, section 3) and no others. The learning rate is
set from outside (no relative step), parameters are not scaled, the second-moment decay is
beta2_t = 1 - t^decay_rate (decay_rate -0.8), and updates are clipped to an RMS of at most
`clip_threshold`. A first moment (`beta1`) is optional. `update_clamp`, off by default and not
part of the paper's settings, then bounds every entry of the clipped update to +-update_clamp
(before the learning rate multiplies it). Weight decay is applied as transformers'
Adafactor applies it, p <- p - weight_decay x lr x p, then p <- p - update.

What differs from transformers' Adafactor is what a parameter of 3 or more dimensions means.
Every leading dimension of such a parameter indexes independent members, each a matrix over the
last two dimensions. A [N, P, E] parameter holding N prompts gets per-member row statistics
[N, P], column statistics [N, E] and per-member update clipping, so member n moves exactly as a
lone [P, E] prompt under transformers' Adafactor would. The step is a few whole-tensor
operations over all members at once (no Python loop over members), which is what lets N prompts
train in one batch (softprompt.training.prompt_group). 1-D and 2-D parameters are updated
exactly as transformers' Adafactor updates them; its only other difference for 3-D and larger
parameters is the clipping, which it applies over the whole tensor.

The state keeps transformers' names (step, exp_avg_sq_row, exp_avg_sq_col, exp_avg_sq,
exp_avg), and a parameter group keeps its `eps` pair, so a checkpoint written with
transformers' Adafactor resumes here.
"""

from __future__ import annotations

import math

import torch

HALF = (torch.float16, torch.bfloat16)


class Adafactor(torch.optim.Optimizer):
    """Adafactor with a given learning rate, no parameter scaling and stacked members (see the
    module docstring).

    `eps` is transformers' pair; only its first entry (added to squared gradients) is used,
    since the second one scales by the parameter's RMS, which this optimizer never does."""

    def __init__(
        self,
        params,
        lr: float,
        eps: tuple[float, float] = (1e-30, 1e-3),
        clip_threshold: float = 1.0,
        decay_rate: float = -0.8,
        beta1: float | None = None,
        weight_decay: float = 0.0,
        update_clamp: float | None = None,
    ) -> None:
        if lr is None or lr < 0:
            raise ValueError(f"Adafactor needs a learning rate >= 0, got {lr}")
        if decay_rate >= 0:
            raise ValueError(
                f"decay_rate must be < 0 (beta2_t = 1 - t^decay_rate), got {decay_rate}"
            )
        if update_clamp is not None and not update_clamp > 0:
            raise ValueError(f"update_clamp must be > 0 or None, got {update_clamp}")
        defaults = {
            "lr": lr,
            "eps": tuple(eps),
            "clip_threshold": clip_threshold,
            "decay_rate": decay_rate,
            "beta1": beta1,
            "weight_decay": weight_decay,
            "update_clamp": update_clamp,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adafactor does not support sparse gradients")
                self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict) -> None:
        grad = p.grad.float() if p.grad.dtype in HALF else p.grad
        state = self.state[p]
        if not state:
            _init_state(state, grad, group["beta1"] is not None)
        state["step"] += 1
        lr = group["lr"]
        beta2t = 1.0 - math.pow(state["step"], group["decay_rate"])
        squared = grad**2 + group["eps"][0]
        if grad.dim() >= 2:
            # Factored second moments: row means [..., P] and column means [..., E] per member.
            row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            row.mul_(beta2t).add_(squared.mean(dim=-1), alpha=1.0 - beta2t)
            col.mul_(beta2t).add_(squared.mean(dim=-2), alpha=1.0 - beta2t)
            row_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1)
            update = torch.mul(row_factor, col.unsqueeze(-2).rsqrt()).mul_(grad)
        else:
            second = state["exp_avg_sq"]
            second.mul_(beta2t).add_(squared, alpha=1.0 - beta2t)
            update = second.rsqrt().mul_(grad)
        update.div_((member_rms(update) / group["clip_threshold"]).clamp_(min=1.0))
        if group.get("update_clamp") is not None:
            # The RMS clip bounds the update as a whole, not its entries: where the factored
            # second moment underestimates one entry's, that entry alone can move many times lr.
            update.clamp_(-group["update_clamp"], group["update_clamp"])
        update.mul_(lr)
        if group["beta1"] is not None:
            first = state["exp_avg"]
            first.mul_(group["beta1"]).add_(update, alpha=1.0 - group["beta1"])
            update = first
        weights = p.float() if p.dtype in HALF else p
        if group["weight_decay"] != 0:
            weights.add_(weights, alpha=-group["weight_decay"] * lr)
        weights.add_(-update)
        if p.dtype in HALF:
            p.copy_(weights)


def _init_state(state: dict, grad: torch.Tensor, first_moment: bool) -> None:
    """Zero moments shaped for `grad`: factored over its last two dimensions when it has two."""
    state["step"] = 0
    if first_moment:
        state["exp_avg"] = torch.zeros_like(grad)
    if grad.dim() >= 2:
        state["exp_avg_sq_row"] = torch.zeros(grad.shape[:-1]).to(grad)
        state["exp_avg_sq_col"] = torch.zeros(grad.shape[:-2] + grad.shape[-1:]).to(grad)
    else:
        state["exp_avg_sq"] = torch.zeros_like(grad)


def member_rms(update: torch.Tensor) -> torch.Tensor:
    """The root mean square of each member of `update`: over the last two dimensions ([..., 1, 1],
    one per member), or over the whole tensor when it has fewer than two."""
    if update.dim() < 2:
        return update.norm(2) / (update.numel() ** 0.5)
    size = update.shape[-2] * update.shape[-1]
    return torch.linalg.vector_norm(update, dim=(-2, -1), keepdim=True) / (size**0.5)
