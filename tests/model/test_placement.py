"""Where the prompt goes, `[lead; P; X]` for decoder-only models and `[P; X]` for encoders."""

import copy

import pytest
import torch

from softprompt.model.placement import expand_prompts, prefix_prompt, prefix_prompt_after_bos
from softprompt.scoring import label_scores


def test_expand_prompts_gives_every_row_a_prompt():
    prompt = torch.randn(3, 4)
    assert torch.equal(expand_prompts(prompt, 2), torch.stack([prompt, prompt]))
    per_row = torch.randn(2, 3, 4)
    assert expand_prompts(per_row, 2) is per_row
    with pytest.raises(ValueError, match=r"prompts must be \[P, E\] or \[B=3, P, E\]"):
        expand_prompts(per_row, 3)


def test_prefix_prompt_after_bos_puts_lead_then_prompt_then_tokens():
    lead, prompts, tokens = torch.randn(1, 4), torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    seq = prefix_prompt_after_bos(lead, prompts, tokens)
    assert seq.shape == (2, 1 + 3 + 5, 4)
    assert torch.equal(seq[:, 0], lead.expand(2, 4))
    assert torch.equal(seq[:, 1:4], prompts) and torch.equal(seq[:, 4:], tokens)
    assert torch.equal(prefix_prompt_after_bos(lead, prompts), seq[:, :4])
    no_bos = prefix_prompt_after_bos(torch.zeros(0, 4), prompts, tokens)
    assert torch.equal(no_bos, prefix_prompt(prompts, tokens))


def test_prefix_prompt_puts_the_prompt_first():
    prompts, tokens = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    seq = prefix_prompt(prompts, tokens)
    assert seq.shape == (2, 8, 4)
    assert torch.equal(seq[:, :3], prompts) and torch.equal(seq[:, 3:], tokens)


def test_bos_lead_is_kept_first_on_every_path(tiny_causal, reviews):
    """Tokenizers that add BOS (Gemma) get [BOS; P; X]: shared-prefix and per-example paths
    agree."""
    lm = copy.copy(tiny_causal)
    lm.lead_ids = [lm.tokenizer.bos_token_id]
    prompt = torch.randn(3, lm.dim) * 0.1
    inputs = reviews(lm)
    words = ["positive", "negative"]
    shared = label_scores(lm, prompt, inputs, words)
    per_example = label_scores(lm, prompt.expand(3, -1, -1).clone(), inputs, words)
    assert torch.allclose(shared, per_example, atol=1e-5)
    without = label_scores(tiny_causal, prompt, inputs, words)
    assert not torch.allclose(shared, without, atol=1e-3)
