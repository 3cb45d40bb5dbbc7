"""Training recipes: the stable recipe's learning rate follows the embedding's scale, its warmup
and norm cap, and the paper's settings one flag away."""

import copy

import pytest
import torch

from softprompt.training import recipe as recipe_lib
from softprompt.training.config import TrainConfig
from softprompt.training.optim import make_optimizer


def _scaled(lm, factor):
    """A copy of `lm` whose input embeddings are `factor` times larger."""
    scaled = copy.deepcopy(lm)
    with torch.no_grad():
        scaled.embedding.weight.mul_(factor)
    scaled.__dict__.pop("vocab_scale", None)
    return scaled


def test_the_vocab_scale_is_measured_on_the_embedded_vocabulary(tiny_causal):
    weight = tiny_causal.embed(torch.arange(tiny_causal.vocab_size)).float()  # [V, E]
    scale = tiny_causal.vocab_scale
    assert scale.entry_rms == pytest.approx(float(weight.pow(2).mean().sqrt()), rel=1e-5)
    assert scale.max_row_norm == pytest.approx(float(weight.norm(dim=1).max()), rel=1e-5)


@pytest.mark.parametrize("factor", [0.1, 10.0])
def test_the_stable_lr_follows_the_embedding_scale(tiny_causal, factor):
    """One setting means the same on models whose embeddings differ in scale: lr, and so the
    first update measured in units of the embedding's entries, scale with it."""
    base, scaled = tiny_causal, _scaled(tiny_causal, factor)
    lr_base = recipe_lib.resolve("stable", None, base.vocab_scale.entry_rms).lr
    lr_scaled = recipe_lib.resolve("stable", None, scaled.vocab_scale.entry_rms).lr
    assert lr_scaled == pytest.approx(factor * lr_base, rel=1e-5)
    assert lr_base == pytest.approx(recipe_lib.LR_SCALE * base.vocab_scale.entry_rms)

    def relative_update(lm):
        recipe = recipe_lib.resolve("stable", None, lm.vocab_scale.entry_rms)
        start = torch.randn(3, lm.dim, generator=torch.Generator().manual_seed(0))  # [3, E]
        prompt = torch.nn.Parameter(start * lm.vocab_scale.entry_rms)
        optimizer = make_optimizer(TrainConfig(), [prompt], recipe)
        recipe_lib.set_lr(optimizer, recipe, recipe.warmup_steps)  # past warmup
        before = prompt.detach().clone()
        prompt.grad = torch.randn_like(prompt)
        optimizer.step()
        return float((prompt.detach() - before).pow(2).mean().sqrt()) / lm.vocab_scale.entry_rms

    assert relative_update(scaled) == pytest.approx(relative_update(base), rel=1e-3)


def test_the_paper_recipe_and_an_explicit_lr():
    paper = recipe_lib.resolve("paper", None, 0.13)
    assert (paper.lr, paper.warmup_steps, paper.norm_cap) == (0.3, 0, None)
    given = recipe_lib.resolve("stable", 0.05, 0.13)
    assert given.lr == 0.05 and given.lr_rule == "given (--lr)" and given.warmup_steps > 0
    assert TrainConfig().batch_size == 16
    assert TrainConfig(batch_size=24).batch_size == 24
    with pytest.raises(ValueError, match="unknown recipe 'fast'"):
        TrainConfig(recipe="fast")
    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainConfig(lr=0.0)


def test_warmup_is_linear_and_a_pure_function_of_the_step():
    recipe = recipe_lib.Recipe("stable", 0.1, 4, 2.0, None, "test")
    factors = [recipe_lib.warmup_factor(recipe, step) for step in range(6)]
    assert factors == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    prompt = torch.nn.Parameter(torch.zeros(2, 3))
    optimizer = make_optimizer(TrainConfig(), [prompt], recipe)
    recipe_lib.set_lr(optimizer, recipe, 1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_the_norm_cap_scales_down_only_long_rows():
    prompt = torch.tensor([[3.0, 4.0], [0.3, 0.4]])  # row norms 5 and 0.5
    recipe_lib.cap_row_norms(prompt, 1.0)
    assert prompt.norm(dim=1).tolist() == pytest.approx([1.0, 0.5])
    assert prompt[0].tolist() == pytest.approx([0.6, 0.8])  # direction kept


def test_length_buckets_auto_only_for_long_inputs():
    short, long = [20] * 10, [200] * 10
    assert not recipe_lib.use_length_buckets("auto", short)
    assert recipe_lib.use_length_buckets("auto", long)
    assert recipe_lib.use_length_buckets("on", short)
    assert not recipe_lib.use_length_buckets("off", long)


def test_the_moving_average_follows_the_prompt():
    average, prompt = torch.zeros(2, 3), torch.ones(2, 3)
    recipe_lib.update_average(average, prompt, 0.9)
    assert torch.allclose(average, torch.full((2, 3), 0.1))
    for _ in range(100):
        recipe_lib.update_average(average, prompt, 0.9)
    assert torch.allclose(average, prompt, atol=1e-4)
    assert recipe_lib.resolve("stable", None, 0.1).average_decay == recipe_lib.AVERAGE_DECAY
    assert recipe_lib.resolve("paper", None, 0.1).average_decay is None


def test_only_the_stable_recipe_bounds_update_entries():
    stable = recipe_lib.resolve("stable", None, 0.1)
    paper = recipe_lib.resolve("paper", None, 0.1)
    assert stable.update_clamp == recipe_lib.UPDATE_CLAMP and paper.update_clamp is None
    assert stable.to_dict()["update_clamp"] == recipe_lib.UPDATE_CLAMP  # recorded in results
    prompt = torch.nn.Parameter(torch.zeros(2, 3))
    made = make_optimizer(TrainConfig(), [prompt], stable)
    assert made.defaults["update_clamp"] == recipe_lib.UPDATE_CLAMP


def test_only_the_stable_recipe_keeps_a_first_moment():
    stable = recipe_lib.resolve("stable", None, 0.1)
    assert stable.beta1 == recipe_lib.BETA1 and recipe_lib.resolve("paper", None, 0.1).beta1 is None
    assert stable.to_dict()["beta1"] == recipe_lib.BETA1  # recorded in results and manifests
    prompt = torch.nn.Parameter(torch.zeros(2, 3))
    assert make_optimizer(TrainConfig(), [prompt], stable).defaults["beta1"] == recipe_lib.BETA1
