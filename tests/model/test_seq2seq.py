"""Encoder-decoder passes read [P; X] in the encoder and score targets as the plain model."""

import torch

from softprompt.model import Batch


def test_the_encoder_reads_the_prompt_then_the_input(tiny_t5, reviews):
    inputs = reviews(tiny_t5)
    enc = tiny_t5.architecture.encode(torch.zeros(2, tiny_t5.dim), inputs)
    width = 2 + max(map(len, inputs))
    assert enc.hidden.shape == (3, width, tiny_t5.dim) and enc.mask.shape == (3, width)
    assert enc.mask.sum(1).tolist() == [2 + len(x) for x in inputs]


def test_target_logprobs_equal_a_plain_forward_of_the_model(tiny_t5, reviews):
    """Padded batches give each example the log-probabilities and prompt gradient of the plain
    model over [P; x] with y as its labels."""
    lm = tiny_t5
    inputs = reviews(lm)
    targets = [lm.encode_target(w) for w in ["positive", "negative", "neutral contradiction"]]
    init = torch.linspace(-0.3, 0.3, 4 * lm.dim).view(4, lm.dim)
    ours = torch.nn.Parameter(init.clone())
    lp, row = lm.target_logprobs(ours, Batch(inputs, targets))
    lp.sum().backward()
    plain = torch.nn.Parameter(init.clone())
    expected = []
    for x, y in zip(inputs, targets, strict=True):
        embeds = torch.cat([plain, lm.embed(torch.tensor(x))])[None]
        logits = lm.model(inputs_embeds=embeds, labels=torch.tensor([y])).logits[0]  # [Ty, V]
        expected.append(logits.log_softmax(-1).gather(1, torch.tensor(y)[:, None]).squeeze(1))
    expected = torch.cat(expected)
    expected.sum().backward()
    assert row.tolist() == [i for i, y in enumerate(targets) for _ in y]
    assert torch.allclose(lp.detach(), expected.detach(), atol=1e-5)
    assert torch.allclose(ours.grad, plain.grad, rtol=1e-4, atol=1e-4)
