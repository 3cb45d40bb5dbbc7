"""Each distinct [lead; P] prefix runs once and its cache serves the rows that use it."""

import pytest
import torch

from softprompt.model import Batch
from softprompt.model.prefix_cache import distinct_prompts
from softprompt.scoring import encode_examples, label_scores
from softprompt.task_data import load_task
from softprompt.tasks import load_spec

WORDS = ["positive", "negative", "neutral contradiction"]


def test_distinct_prompts_are_taken_from_their_first_rows():
    table = torch.nn.Parameter(torch.arange(12.0).view(3, 2, 2))
    rows = table[torch.tensor([2, 0, 2, 0, 1])]  # [B=5, P, E]
    distinct, owner = distinct_prompts(rows, 5)
    assert torch.equal(distinct[owner], rows.detach())
    assert distinct.shape == (3, 2, 2)
    (grad,) = torch.autograd.grad(distinct.sum(), table)
    assert grad.sum() == 3 * 4  # every distinct prompt's gradient reaches its table row
    one, owner = distinct_prompts(table[0], 4)
    assert one.shape == (1, 2, 2) and owner.tolist() == [0, 0, 0, 0]


def test_prefix_sharing_is_a_switch_with_equal_results(tiny_causal, reviews, monkeypatch):
    """On CPU the [lead; P] prefix runs as its own decoder pass by default; switched off, the
    prompt goes through with the rows in one pass (the GPU default) and the scores agree."""
    lm = tiny_causal
    prompt = torch.randn(3, lm.dim) * 0.1
    inputs = reviews(lm)
    calls = []
    run = lm.decoder_stack.run
    monkeypatch.setattr(lm.decoder_stack, "run", lambda *a, **k: calls.append(1) or run(*a, **k))
    shared = label_scores(lm, prompt, inputs, ["positive", "negative"])
    shared_calls = len(calls)
    calls.clear()
    lm = lm.with_options(share_prompt_prefix=False)
    single = label_scores(lm, prompt, inputs, ["positive", "negative"])
    assert shared_calls == len(calls) + 1
    assert torch.allclose(shared, single, atol=1e-5)


def test_repeated_prompts_in_a_batch_share_their_prefix(tiny_causal, reviews, monkeypatch):
    """Rows using the same prompt (an ensemble's N prompts, a mixed batch's tasks) run each distinct
    [lead; P] once; scores and gradients equal the unshared pass's."""
    lm = tiny_causal
    lm = lm.with_options(share_prompt_prefix=True)
    gen = torch.Generator().manual_seed(0)
    table = torch.nn.Parameter(torch.randn(2, 3, lm.dim, generator=gen) * 0.1)
    owner = torch.tensor([0, 1, 0])
    inputs = reviews(lm)
    batch = Batch(inputs, [lm.encode_target(w) for w in WORDS])
    shapes = []
    run = lm.decoder_stack.run

    def spy(*args, **kwargs):
        shapes.append(tuple(kwargs["inputs_embeds"].shape))
        return run(*args, **kwargs)

    monkeypatch.setattr(lm.decoder_stack, "run", spy)
    lp, _ = lm.target_logprobs(table[owner], batch)
    assert shapes[0] == (2, len(lm.lead_ids) + 3, lm.dim)  # one prefix per distinct prompt
    (grad_shared,) = torch.autograd.grad(lp.sum(), table)
    lm = lm.with_options(share_prompt_prefix=False)
    lp_plain, _ = lm.target_logprobs(table[owner], batch)
    (grad_plain,) = torch.autograd.grad(lp_plain.sum(), table)
    assert torch.allclose(lp, lp_plain, atol=1e-5)
    assert torch.allclose(grad_shared, grad_plain, rtol=1e-4, atol=1e-4)


@pytest.mark.real_model
def test_shared_prefix_and_per_example_paths_agree_on_the_real_model(smollm):
    spec = load_spec("sst2")
    examples = load_task(spec)["test"][:6]
    enc = encode_examples(smollm, examples, 256)
    prompt = torch.randn(20, smollm.dim) * 0.05
    shared = label_scores(smollm, prompt, enc.inputs, spec.label_words)
    per_example = label_scores(
        smollm, prompt.expand(6, -1, -1).clone(), enc.inputs, spec.label_words
    )
    assert torch.allclose(shared, per_example, atol=1e-3)
