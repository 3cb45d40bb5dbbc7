"""Every saving of the decoder-only passes leaves the plain model's results unchanged."""

import pytest
import torch

from softprompt.model import Batch

WORDS = ["positive", "negative", "neutral contradiction"]


@pytest.mark.parametrize("share", [True, False])
def test_packed_and_repeated_label_passes_agree(tiny_causal, reviews, monkeypatch, share):
    """All labels' later tokens packed after the input in its own pass (a 4-D mask) score as one
    pass per label over the repeated cache does, with and without a shared prompt prefix; models
    whose sliding window is shorter than the packed sequence (a custom 4-D mask would bypass the
    window) take the repeated pass."""
    lm = tiny_causal
    lm = lm.with_options(share_prompt_prefix=share)
    causal = lm.architecture
    prompt = torch.randn(3, lm.dim) * 0.1
    inputs = reviews(lm)
    choices = [lm.encode_target(w) for w in WORDS]
    prefix = causal.run(prompt, inputs, use_cache=True)
    first = causal.first_token_scores(prefix.last, choices)
    repeated = first + causal.repeated_choice_scores(prefix, choices)
    fed_ids = []  # per decoder pass: the shape of the token ids it feeds (repeated passes only)
    run = lm.decoder_stack.run

    def spy(*args, **kwargs):
        fed_ids.append(tuple(kwargs["input_ids"].shape) if "input_ids" in kwargs else None)
        return run(*args, **kwargs)

    monkeypatch.setattr(lm.decoder_stack, "run", spy)
    assert torch.allclose(lm.score_choices(prompt, inputs, choices), repeated, atol=1e-5)
    assert fed_ids and all(shape is None for shape in fed_ids)
    fed_ids.clear()
    monkeypatch.setattr(lm.model.config, "sliding_window", 8, raising=False)
    lm.score_choices(prompt, inputs, choices)
    # One pass feeds every choice's tokens after its first, for every row: [B * L, M - 1].
    longest = max(map(len, choices))
    assert [s for s in fed_ids if s is not None] == [(len(inputs) * len(choices), longest - 1)]


def test_choices_are_packed_only_within_the_sliding_window(tiny_causal, monkeypatch):
    causal = tiny_causal.architecture
    assert causal.packs_choices(10_000)
    monkeypatch.setattr(tiny_causal.model.config, "sliding_window", 8, raising=False)
    assert causal.packs_choices(8) and not causal.packs_choices(9)


@pytest.mark.parametrize("share", [True, False])
def test_target_logprobs_equal_a_plain_forward_of_the_model(tiny_causal, reviews, share):
    """Everything target_logprobs skips (the prefix run once, rows packed, the last target token
    not fed, the last layer's MLP and the head only where targets are predicted) leaves the
    log-probabilities and the prompt's gradient of the plain model over [lead; P; x; y]
    unchanged."""
    lm = tiny_causal
    lm = lm.with_options(share_prompt_prefix=share)
    inputs = reviews(lm)
    targets = [lm.encode_target(w) for w in WORDS]
    init = torch.linspace(-0.3, 0.3, 4 * lm.dim).view(4, lm.dim)
    ours = torch.nn.Parameter(init.clone())
    lp, _ = lm.target_logprobs(ours, Batch(inputs, targets))
    lp.sum().backward()
    plain = torch.nn.Parameter(init.clone())
    expected = []
    lead = len(lm.lead_ids)
    for x, y in zip(inputs, targets, strict=True):
        ids = torch.tensor(lm.lead_ids + [0] * 4 + x + y)
        embeds = torch.cat([lm.embed(ids[:lead]), plain, lm.embed(ids[lead + 4 :])])[None]
        logits = lm.model(inputs_embeds=embeds).logits[0].log_softmax(-1)  # [S, V]
        start = len(ids) - len(y)
        expected.append(logits[start - 1 : -1].gather(1, torch.tensor(y)[:, None]).squeeze(1))
    expected = torch.cat(expected)
    expected.sum().backward()
    assert torch.allclose(lp.detach(), expected.detach(), atol=1e-5)
    assert torch.allclose(ours.grad, plain.grad, rtol=1e-4, atol=1e-4)


def test_a_decoder_pass_names_its_results(tiny_causal, reviews):
    """run() returns hidden states at the rows' own positions, each row's last state, the mask
    and lengths over [lead; P; row], and the cache only when asked to keep it."""
    lm = tiny_causal.with_options(share_prompt_prefix=False)
    inputs = reviews(lm)
    out = lm.architecture.run(torch.zeros(2, lm.dim), inputs)
    B, T, P = len(inputs), max(map(len, inputs)), 2 + len(lm.lead_ids)
    assert out.hidden.shape == (B, T, lm.dim) and out.last.shape == (B, lm.dim)
    assert out.mask.shape == (B, P + T) and out.lengths.tolist() == [P + len(x) for x in inputs]
    assert out.cache is None
    assert torch.equal(out.last[1], out.hidden[1, len(inputs[1]) - 1])
    assert lm.architecture.run(torch.zeros(2, lm.dim), inputs, use_cache=True).cache is not None
