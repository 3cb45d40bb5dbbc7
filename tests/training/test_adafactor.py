"""Adafactor: transformers' updates for 1-D and 2-D parameters, and every member of a stacked
[N, P, E] parameter moving exactly as a lone [P, E] one would."""

import copy

import pytest
import torch
from transformers.optimization import Adafactor as Reference

from softprompt.training.adafactor import Adafactor, member_rms

PAPER = dict(decay_rate=-0.8, weight_decay=1e-5)


def _reference(params, lr, **kw):
    return Reference(params, lr=lr, scale_parameter=False, relative_step=False,
                     warmup_init=False, **(PAPER | kw))


def _grads(shape, steps, seed=0):
    """Seeded gradients of very different scales, so clipping and the moments both matter."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) * 10.0 ** (k % 3 - 1) for k in range(steps)]


def _run(optimizer, param, grads, lrs=None):
    for k, grad in enumerate(grads):
        if lrs is not None:
            for group in optimizer.param_groups:
                group["lr"] = lrs[k]
        param.grad = grad.clone()
        optimizer.step()
    return param.detach().clone()


@pytest.mark.parametrize("shape", [(7,), (4, 8)])
@pytest.mark.parametrize("kw", [{}, {"weight_decay": 0.1}, {"beta1": 0.9}])
def test_1d_and_2d_parameters_match_transformers(shape, kw):
    start = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    grads = _grads(shape, 6)
    lrs = [0.3, 0.1, 0.3, 0.05, 0.2, 0.3]  # a changing lr (a warmup) is honoured
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    a = _run(Adafactor([ours], lr=0.3, **(PAPER | kw)), ours, grads, lrs)
    b = _run(_reference([theirs], lr=0.3, **kw), theirs, grads, lrs)
    assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert not torch.equal(a, start)


@pytest.mark.parametrize("kw", [{}, {"weight_decay": 0.1}, {"beta1": 0.9}])
def test_each_member_of_a_stack_moves_as_a_lone_prompt(kw):
    """Three [P, E] prompts under transformers' Adafactor, one each, against the stack [3, P, E]
    under one optimizer; the members' gradients differ in scale by 100x, so a clip shared
    over the stack would show."""
    n, shape = 3, (4, 8)
    starts = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in range(n)]
    grads = [[g * 10.0 ** (m - 1) for g in _grads(shape, 5, seed=m)] for m in range(n)]
    lrs = [0.1, 0.2, 0.3, 0.3, 0.3]
    lone = []
    for m in range(n):
        param = torch.nn.Parameter(starts[m].clone())
        lone.append(_run(_reference([param], lr=0.3, **kw), param, grads[m], lrs))
    stack = torch.nn.Parameter(torch.stack(starts))
    stacked = [torch.stack([grads[m][k] for m in range(n)]) for k in range(5)]
    optimizer = Adafactor([stack], lr=0.3, **(PAPER | kw))
    result = _run(optimizer, stack, stacked, lrs)
    for m in range(n):
        assert torch.allclose(result[m], lone[m], atol=1e-6, rtol=0), m
    state = optimizer.state[stack]
    assert state["exp_avg_sq_row"].shape == (n, 4) and state["exp_avg_sq_col"].shape == (n, 8)


def test_member_rms_is_per_member():
    update = torch.stack([torch.full((2, 3), 1.0), torch.full((2, 3), 4.0)])
    assert member_rms(update).flatten().tolist() == [1.0, 4.0]
    assert member_rms(torch.tensor([3.0, 4.0])).item() == pytest.approx(12.5**0.5)


def test_state_dict_round_trip_resumes_exactly():
    shape, grads = (2, 4, 8), _grads((2, 4, 8), 6)
    start = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    straight = torch.nn.Parameter(start.clone())
    expected = _run(Adafactor([straight], lr=0.3, **PAPER), straight, grads)

    first = torch.nn.Parameter(start.clone())
    optimizer = Adafactor([first], lr=0.3, **PAPER)
    _run(optimizer, first, grads[:3])
    saved = optimizer.state_dict()
    resumed = torch.nn.Parameter(first.detach().clone())
    again = Adafactor([resumed], lr=0.3, **PAPER)
    again.load_state_dict(saved)
    assert again.state[resumed]["step"] == 3
    assert torch.equal(_run(again, resumed, grads[3:]), expected)


def test_a_checkpoint_of_transformers_adafactor_resumes_here():
    shape, grads = (4, 8), _grads((4, 8), 4)
    start = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    theirs = torch.nn.Parameter(start.clone())
    reference = _reference([theirs], lr=0.3)
    _run(reference, theirs, grads[:2])
    ours = torch.nn.Parameter(theirs.detach().clone())
    optimizer = Adafactor([ours], lr=0.3, **PAPER)
    # A copy: a loaded state of the same dtype and device shares the saved tensors.
    optimizer.load_state_dict(copy.deepcopy(reference.state_dict()))
    assert torch.allclose(_run(optimizer, ours, grads[2:]), _run(reference, theirs, grads[2:]),
                          atol=1e-6, rtol=0)


def test_bfloat16_parameters_update_in_float32_like_transformers():
    start = torch.randn(4, 8, generator=torch.Generator().manual_seed(5)).bfloat16()
    grads = [g.bfloat16() for g in _grads((4, 8), 3)]
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    a = _run(Adafactor([ours], lr=0.3, **PAPER), ours, grads)
    b = _run(_reference([theirs], lr=0.3), theirs, grads)
    assert a.dtype == torch.bfloat16 and torch.equal(a, b)


def test_bad_settings_are_refused():
    param = [torch.nn.Parameter(torch.zeros(2, 2))]
    with pytest.raises(ValueError, match="learning rate"):
        Adafactor(param, lr=-1.0)
    with pytest.raises(ValueError, match="decay_rate"):
        Adafactor(param, lr=0.1, decay_rate=0.8)
    with pytest.raises(ValueError, match="update_clamp"):
        Adafactor(param, lr=0.1, update_clamp=0.0)


def _one_hot_surge(steps: int = 40):
    """Small even gradients, then one entry 30 times larger: the factored second moment (a row
    mean times a column mean) underestimates that entry's, so its update dwarfs the rest."""
    quiet = [torch.full((16, 64), 1e-3) for _ in range(steps)]
    surge = torch.full((16, 64), 1e-3)
    surge[2, 5] = 3e-2
    return quiet + [surge]


def test_the_update_clamp_bounds_each_entry_and_leaves_the_rest():
    lr, clamp, grads = 0.1, 2.0, _one_hot_surge()
    free = torch.nn.Parameter(torch.zeros(16, 64))
    bounded = torch.nn.Parameter(torch.zeros(16, 64))
    plain = Adafactor([free], lr=lr, decay_rate=-0.8)
    clamped = Adafactor([bounded], lr=lr, decay_rate=-0.8, update_clamp=clamp)
    before_free = _run(plain, free, grads[:-1])
    before_bounded = _run(clamped, bounded, grads[:-1])
    # Before the surge no entry reaches the bound, so the clamp changes nothing.
    assert torch.equal(before_free, before_bounded)
    moved_free = before_free - _run(plain, free, grads[-1:])  # [16, 64]
    moved_bounded = before_bounded - _run(clamped, bounded, grads[-1:])
    assert moved_free[2, 5] > 3 * clamp * lr  # unbounded, the one entry jumps
    assert moved_bounded[2, 5] == pytest.approx(clamp * lr)
    assert moved_bounded.abs().max() <= clamp * lr + 1e-7
    others = torch.ones(16, 64, dtype=torch.bool)
    others[2, 5] = False
    assert torch.equal(moved_free[others], moved_bounded[others])


def _last_step(beta1, grads, lr=0.01):
    """The change of one entry in the last of `grads`' steps, in units of lr."""
    param = torch.nn.Parameter(torch.zeros(16, 64))
    optimizer = Adafactor([param], lr=lr, decay_rate=-0.8, beta1=beta1)
    before = _run(optimizer, param, grads[:-1])
    return float((_run(optimizer, param, grads[-1:]) - before)[0, 0]) / lr


def test_a_first_moment_keeps_one_odd_batch_from_reversing_the_course():
    """Without a first moment every normalized step moves each entry by about lr in the direction
    of its own batch alone, so one odd batch sends the prompt back a full step; with beta1 0.9
    that batch enters at a tenth of its size and the prompt keeps its course."""
    steady = [torch.ones(16, 64) for _ in range(20)]  # descent moves every entry down
    grads = steady + [-torch.ones(16, 64)]  # then one batch that points the other way
    assert _last_step(None, steady) == pytest.approx(-1.0, rel=1e-3)
    assert _last_step(None, grads) == pytest.approx(1.0, rel=1e-3)
    assert -1.0 < _last_step(0.9, grads) < -0.5
