"""Training recipes: the optimizer settings a prompt-tuning run gets when it names none.

The paper's settings (Adafactor, lr 0.3, constant, batch 32) were tuned for T5. Adafactor
without parameter scaling clips each update to an RMS of about 1, so every step moves each
prompt entry by about lr, whatever the model. An lr that is small next to T5's embedding
entries is large next to SmolLM2's (entry RMS about 0.13): there lr 0.3 moves an entry by about
twice its typical size in one step, and the prompt drifts far from anything the model has
seen. The "stable" recipe therefore states its learning rate relative to the embedding's scale,
so one setting means the same on T5, SmolLM2 and Gemma:

    lr = LR_SCALE x RMS(input-embedding entries)

It warms up linearly over the first WARMUP_STEPS steps (the first updates, taken on an
uninformed second-moment estimate, are the largest), trains at batch 16 (twice the updates per
minute of batch 32, at the same cost per example), and keeps every prompt row's norm at most
NORM_CAP times the vocabulary's largest row norm, so the prompt stays where the model's inputs
live. Checks score, and the run keeps, an exponential moving average of the prompt (decay
AVERAGE_DECAY per step): single batch-16 steps move the prompt enough to swing the dev score by
several points from one check to the next, and the average smooths that out at no cost.
Adafactor's update clipping bounds each update's RMS, not its entries, and its factored second
moment can underestimate a single entry's: one entry then moves by many times lr in one step
(15 x lr, four times the embedding's entry RMS, just before a loss spike from 0.17 to 3.1 on
SST-2). The stable recipe therefore also bounds every entry of the normalized update by
UPDATE_CLAMP, so no entry moves by more than UPDATE_CLAMP x lr (half the entry RMS) per step.
Even bounded, each normalized step moves every entry by about lr in the direction of its own
batch alone, and single steps still sent the SST-2 loss from 0.2 to 6-15 at P=100, after which
the checks fell by up to 27 points. The stable recipe therefore keeps Adafactor's first moment
(BETA1): each step applies an average of the recent normalized updates, so one odd batch enters
at a tenth of its size; the runs with it had no such spike.
results/README.md has the curves this was chosen by. The paper's recipe stays one flag
away (`--recipe paper`); a run's result.json and its registry manifest record the recipe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

RECIPES = ("stable", "paper")
DEFAULT_RECIPE = "stable"

# The stable recipe's constants (see the module docstring).
LR_SCALE = 0.25
WARMUP_STEPS = 10
NORM_CAP = 2.0
AVERAGE_DECAY = 0.9
UPDATE_CLAMP = 2.0
BETA1 = 0.9
STABLE_BATCH = 16
PAPER_LR = 0.3
# length_buckets "auto" turns bucketing on above this mean training input length (tokens).
BUCKET_MIN_MEAN_TOKENS = 96
PAPER_BATCH = 32


@dataclass(frozen=True)
class Recipe:
    """The resolved optimizer settings of one run."""

    name: str
    lr: float  # the absolute learning rate the optimizer steps with after warmup
    warmup_steps: int  # linear warmup from lr / warmup_steps; 0: constant from the start
    norm_cap: float | None  # prompt rows kept at most this x the vocabulary's largest row norm
    # Checks score (and a run keeps) an exponential moving average of the prompt with this
    # decay per step, not the last step's prompt; None: the prompt itself.
    average_decay: float | None
    lr_rule: str  # how lr was chosen, in words, for the result and the manifest
    # Every entry of Adafactor's clipped, normalized update is kept within +-update_clamp (so
    # within +-update_clamp x lr once scaled); None: no per-entry bound (the paper's Adafactor).
    update_clamp: float | None = None
    # Adafactor's first moment: an exponential average of the normalized updates with this
    # decay; None: each step applies its own update (the paper's Adafactor).
    beta1: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def resolve(recipe: str, lr: float | None, entry_rms: float) -> Recipe:
    """The settings of `recipe` on a model whose input-embedding entries have RMS `entry_rms`.

    An explicit `lr` wins over the recipe's rule and is recorded as such."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if recipe == "paper":
        chosen = PAPER_LR if lr is None else lr
        rule = "paper: constant 0.3" if lr is None else "given (--lr)"
        return Recipe("paper", chosen, 0, None, None, rule)
    if not entry_rms > 0:
        raise ValueError(f"the embedding's entry RMS must be > 0 to scale lr, got {entry_rms}")
    if lr is None:
        chosen = LR_SCALE * entry_rms
        rule = f"{LR_SCALE} x embedding entry RMS {entry_rms:.4g}"
    else:
        chosen, rule = lr, "given (--lr)"
    return Recipe(
        "stable", chosen, WARMUP_STEPS, NORM_CAP, AVERAGE_DECAY, rule, UPDATE_CLAMP, BETA1
    )


def warmup_factor(recipe: Recipe, step: int) -> float:
    """The fraction of lr used by optimizer step `step` (counted from 0)."""
    if recipe.warmup_steps <= 0 or step >= recipe.warmup_steps:
        return 1.0
    return (step + 1) / recipe.warmup_steps


def set_lr(optimizer: torch.optim.Optimizer, recipe: Recipe, step: int) -> None:
    """Sets the learning rate of optimizer step `step`: a pure function of the step, so a resumed
    run continues the warmup exactly where the killed one was."""
    for group in optimizer.param_groups:
        group["lr"] = recipe.lr * warmup_factor(recipe, step)


def update_average(average: torch.Tensor, prompt: torch.Tensor, decay: float) -> None:
    """average <- decay x average + (1 - decay) x prompt, in place (both [P, E])."""
    with torch.no_grad():
        average.mul_(decay).add_(prompt.detach(), alpha=1.0 - decay)


def cap_row_norms(prompt: torch.Tensor, max_norm: float) -> None:
    """Scales down, in place, every row of `prompt` [P, E] whose norm exceeds `max_norm`."""
    with torch.no_grad():
        norms = prompt.norm(dim=1, keepdim=True)  # [P, 1]
        prompt.mul_(torch.clamp(max_norm / norms.clamp_min(1e-12), max=1.0))


def use_length_buckets(setting: str, input_lengths: list[int]) -> bool:
    """Whether a run groups inputs of similar length into its steps (TrainConfig.length_buckets).

    Bucketing saves padding only where inputs are long, and on short-input tasks its steps of
    similar inputs made the checks swing, so "auto" keeps it to long inputs."""
    if setting != "auto":
        return setting == "on"
    mean = sum(input_lengths) / max(1, len(input_lengths))
    return mean > BUCKET_MIN_MEAN_TOKENS
