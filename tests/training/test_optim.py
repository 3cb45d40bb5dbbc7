"""The optimizers a config can name, with the paper's Adafactor settings."""

from types import SimpleNamespace

import pytest
import torch

from softprompt.training import recipe as recipe_lib
from softprompt.training.adafactor import Adafactor
from softprompt.training.config import TrainConfig
from softprompt.training.optim import make_optimizer


def _params():
    return [torch.nn.Parameter(torch.zeros(4, 8))]


def test_adafactor_takes_the_papers_settings():
    optimizer = make_optimizer(TrainConfig(recipe="paper", lr=0.3), _params())
    assert isinstance(optimizer, Adafactor)
    settings = optimizer.defaults
    assert settings["lr"] == 0.3 and settings["weight_decay"] == 1e-5
    # beta2_t = 1 - t^decay_rate: the paper's "beta2 decay 0.8" is the exponent -0.8.
    assert settings["decay_rate"] == -0.8 and settings["beta1"] is None
    # No parameter scaling and no relative step: softprompt's Adafactor has neither.
    assert "scale_parameter" not in settings and "relative_step" not in settings


def test_a_resolved_lr_replaces_the_configs():
    recipe = recipe_lib.resolve("stable", 0.0325, 0.13)
    optimizer = make_optimizer(TrainConfig(), _params(), recipe)
    assert optimizer.defaults["lr"] == 0.0325


@pytest.mark.parametrize("name, kind", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_adamw_and_sgd(name, kind):
    config = SimpleNamespace(optimizer=name, lr=0.01, weight_decay=0.1, beta2_decay=0.8)
    optimizer = make_optimizer(config, _params())  # any config with these four fields
    assert isinstance(optimizer, kind)
    assert optimizer.defaults["lr"] == 0.01 and optimizer.defaults["weight_decay"] == 0.1


def test_the_optimizer_updates_only_the_given_parameters():
    trained, other = _params()[0], torch.nn.Parameter(torch.ones(3))
    optimizer = make_optimizer(TrainConfig(optimizer="sgd", lr=0.5), [trained])
    (trained.sum() + other.sum()).backward()
    optimizer.step()
    assert torch.all(trained != 0) and torch.equal(other.detach(), torch.ones(3))
