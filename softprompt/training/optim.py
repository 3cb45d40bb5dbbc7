"""The optimizers a training config can name (config.OPTIMIZERS).

Adafactor takes the paper's settings (Lester et al. 2021, section 3): a constant learning rate,
no parameter scaling, no relative step, and the second-moment decay beta2_t = 1 - t^-0.8. It is
softprompt.training.adafactor's, which updates 1-D and 2-D parameters exactly as transformers'
Adafactor does and also trains a stack of [N, P, E] prompts as N independent ones.
"""

from __future__ import annotations

import torch

from softprompt.training.adafactor import Adafactor
from softprompt.training.recipe import Recipe


def make_optimizer(
    config, params: list[torch.nn.Parameter], recipe: Recipe | None = None
) -> torch.optim.Optimizer:
    """The optimizer `config.optimizer` over `params`. Any config with the fields optimizer, lr,
    weight_decay and beta2_decay will do (prompt tuning, model tuning, LM adaptation). A prompt-
    tuning run passes its resolved `recipe`: its lr replaces config.lr, and its update_clamp
    bounds each entry of Adafactor's normalized update (AdamW and SGD have no such update)."""
    lr = config.lr if recipe is None else recipe.lr
    update_clamp = None if recipe is None else recipe.update_clamp
    beta1 = None if recipe is None else recipe.beta1
    if lr is None:
        raise ValueError(
            "no learning rate: the config leaves it to its recipe; pass the resolved one "
            "(softprompt.training.recipe.resolve(...))"
        )
    if config.optimizer == "adafactor":
        # decay_rate is the exponent of beta2_t = 1 - t^decay_rate; the paper's "beta2 decay 0.8"
        # is -0.8.
        return Adafactor(
            params,
            lr=lr,
            weight_decay=config.weight_decay,
            decay_rate=-config.beta2_decay,
            update_clamp=update_clamp,
            beta1=beta1,
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=lr, weight_decay=config.weight_decay)
