"""The decoder stack run only where read, and the LM head."""

import torch
from torch import nn

IDS = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])


def test_reading_few_positions_leaves_them_exact(tiny_causal):
    """The last MLP runs only at the read positions: those equal the full pass, the others lack
    the MLP."""
    stack = tiny_causal.decoder_stack
    full = stack.run(input_ids=IDS).hidden  # [B, T, H]
    read = (torch.tensor([0, 1]), torch.tensor([3, 1]))
    cut = stack.run(input_ids=IDS, read=read).hidden
    assert cut.shape == full.shape
    assert torch.allclose(cut[read], full[read], atol=1e-6)
    assert not torch.allclose(cut[0, 0], full[0, 0], atol=1e-3)


def test_head_gives_the_models_log_probabilities(tiny_causal):
    stack = tiny_causal.decoder_stack
    hidden = stack.run(input_ids=IDS).hidden
    expected = tiny_causal.model(input_ids=IDS).logits.float().log_softmax(-1)
    assert torch.allclose(stack.head(hidden.flatten(0, 1)), expected.flatten(0, 1), atol=1e-5)


def test_stack_sizes_come_from_the_model(tiny_causal):
    stack = tiny_causal.decoder_stack
    body = tiny_causal.model.base_model
    assert stack.last_mlp is body.layers[-1].mlp and tiny_causal.last_mlp is stack.last_mlp
    linear = sum(m.weight.numel() for m in body.modules() if isinstance(m, nn.Linear))
    assert stack.linear_params == linear == tiny_causal.decoder_linear_params
