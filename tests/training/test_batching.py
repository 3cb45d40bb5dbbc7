"""Length-bucketed batches give every example once per epoch in full steps, are a pure function
of the step, pad far less than random batches on long-tailed lengths, and leave the loss and the
prompt gradient unchanged however a step's examples are split into micro-batches."""

import random

import pytest
import torch
from conftest import FILLER

from softprompt.model import Batch, load_frozen_lm
from softprompt.scoring import lm_loss
from softprompt.training.batching import (
    BucketedOrder,
    bucketed_batch_indices,
    padding_fraction,
)
from softprompt.training.loop import batch_indices


def lognormal_lengths(n: int, seed: int = 0) -> list[int]:
    """Input lengths with a long tail, like real task inputs (median ~55 tokens, max 512)."""
    rng = random.Random(seed)
    return [max(1, min(512, round(rng.lognormvariate(4.0, 0.8)))) for _ in range(n)]


@pytest.mark.parametrize("n, batch_size", [(100, 7), (64, 8), (10, 4), (3, 8), (5, 5), (1, 1)])
def test_every_epoch_covers_every_example_once_in_full_steps(n, batch_size):
    """Steps always hold batch_size examples; cut into epochs of n, the stream of steps is a
    permutation of the examples per epoch, whether or not batch_size divides n (a step then spans
    the boundary) and even when one step spans several epochs."""
    order = BucketedOrder(lognormal_lengths(n), batch_size, seed=3, window_batches=2)
    steps = 6 * (n // batch_size + 1)
    batches = [order.step(s) for s in range(steps)]
    assert all(len(b) == batch_size for b in batches)
    stream = [i for b in batches for i in b]
    for epoch in range(len(stream) // n):
        assert sorted(stream[epoch * n : (epoch + 1) * n]) == list(range(n))


def test_batches_are_a_pure_function_of_the_step():
    """A step asked twice, out of order, by a fresh object or through the function gives the same
    examples (a resumed run sees the batches the killed run would have)."""
    lengths = lognormal_lengths(300)
    order = BucketedOrder(lengths, 16, seed=5)
    forward = [order.step(s) for s in range(60)]  # about three epochs
    assert [order.step(s) for s in reversed(range(60))] == forward[::-1]
    fresh = BucketedOrder(list(lengths), 16, seed=5)
    assert [fresh.step(s) for s in (41, 3, 59, 18)] == [forward[s] for s in (41, 3, 59, 18)]
    assert [bucketed_batch_indices(lengths, 16, s, seed=5) for s in range(60)] == forward


def test_seeds_and_epochs_differ():
    lengths = lognormal_lengths(320)
    a = BucketedOrder(lengths, 16, seed=1)
    b = BucketedOrder(lengths, 16, seed=2)
    epoch = 320 // 16
    assert [a.step(s) for s in range(epoch)] != [b.step(s) for s in range(epoch)]
    # The next epoch is a new draw, not the first one replayed.
    assert [a.step(s) for s in range(epoch)] != [a.step(s) for s in range(epoch, 2 * epoch)]


def test_batch_order_is_shuffled_not_sorted():
    """Within an epoch long and short batches alternate at random rather than climbing."""
    lengths = lognormal_lengths(3200)
    order = BucketedOrder(lengths, 32, seed=0, window_batches=100)  # one window per epoch
    longest = [max(lengths[i] for i in order.step(s)) for s in range(100)]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


def test_padding_fraction():
    assert padding_fraction([[3, 5, 8]]) == pytest.approx(8 / 24)
    assert padding_fraction([[4, 4], [7]]) == 0.0
    assert padding_fraction([]) == 0.0


def test_bucketing_pads_far_less_than_random_batches():
    """On 2000 lognormal lengths, batches of 32 over two epochs, random steps are about 75%
    padding, bucketed steps about 9%; micro-batches of 8 sorted within the step, about 37% and
    2%."""
    lengths = lognormal_lengths(2000)
    steps = 2 * 2000 // 32
    order = BucketedOrder(lengths, 32, seed=1)

    def padding(step_indices, micro: int) -> float:
        rows = []
        for s in range(steps):
            step = sorted(lengths[i] for i in step_indices(s))
            rows += [step[k : k + micro] for k in range(0, len(step), micro)]
        return padding_fraction(rows)

    plain = padding(lambda s: batch_indices(2000, 32, s, 1), 32)
    bucketed = padding(order.step, 32)
    assert plain > 0.6 and bucketed < 0.15 and bucketed < plain / 4
    plain_micro = padding(lambda s: batch_indices(2000, 32, s, 1), 8)
    bucketed_micro = padding(order.step, 8)
    assert bucketed_micro < 0.05 and bucketed_micro < plain_micro / 4


@pytest.mark.parametrize("model_dir", ["tiny_causal_dir", "tiny_t5_dir"])
def test_bucketing_leaves_the_loss_and_prompt_gradient_unchanged(model_dir, request):
    """Examples of mixed lengths scored as one padded batch, or as length-sorted micro-batches
    (each divided by the total target tokens), give the same summed loss and prompt gradient.

    The model runs in float64. The tiny T5's prompt gradients reach thousands, where float32
    rounding of a different summation order alone differs by 1e-3 relative; in float64 both ways
    agree to 1e-9, so any effect of padding would stand out."""
    lm = load_frozen_lm(str(request.getfixturevalue(model_dir)), dtype="float64")
    texts = [f"Review: {' '.join(FILLER[: 1 + 5 * k % 12] * (1 + k % 3))}" for k in range(8)]
    inputs = [lm.encode_input(t, 64)[0] for t in texts]
    targets = [lm.encode_target(w) for w in ["positive", "negative"] * 4]
    assert len({len(x) for x in inputs}) > 4  # really mixed lengths
    total = sum(len(t) for t in targets)
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(4, lm.dim, generator=generator, dtype=torch.float64) * 0.1  # [P, E]
    prompt = torch.nn.Parameter(start)

    whole = lm_loss(lm, prompt, Batch(inputs, targets), normalizer=total)
    whole.backward()
    whole_grad = prompt.grad.clone()
    prompt.grad = None

    ranked = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    split = torch.zeros_like(whole.detach())  # the loss is float32: logprobs are cast
    for k in range(0, len(ranked), 3):
        idx = ranked[k : k + 3]
        part = lm_loss(
            lm, prompt, Batch([inputs[i] for i in idx], [targets[i] for i in idx]), total
        )
        part.backward()
        split = split + part.detach()
    assert torch.allclose(whole.detach(), split, atol=1e-5), (whole, split)
    assert torch.allclose(prompt.grad, whole_grad, atol=1e-5, rtol=1e-7)
