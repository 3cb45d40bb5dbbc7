"""Where the cost model packs training rows end to end, and that packing them is exact."""

from types import SimpleNamespace

import torch

from softprompt.model import Batch
from softprompt.model.packing import pack_layout, packs_rows


def test_pack_layout_places_each_token():
    layout = pack_layout(torch.tensor([2, 3, 1]))
    assert layout.segment.tolist() == [0, 0, 1, 1, 1, 2]
    assert layout.index.tolist() == [0, 1, 0, 1, 2, 0]
    assert layout.starts.tolist() == [0, 2, 5]


def test_the_cost_model_weighs_padding_against_attention():
    """Mostly padding packs; equal rows have no padding to save; a window shorter than the pack
    rules packing out whatever it costs."""
    config = SimpleNamespace(
        hidden_size=32, num_attention_heads=4, num_hidden_layers=2, sliding_window=None
    )
    assert packs_rows([3, 3, 3, 40], prefix=4, config=config, linear_params=10_000)
    assert not packs_rows([16] * 4, prefix=4, config=config, linear_params=10_000)
    config.sliding_window = 32
    assert not packs_rows([3, 3, 3, 40], prefix=4, config=config, linear_params=10_000)


def test_packed_rows_train_exactly_as_padded_rows(tiny_causal, reviews):
    """Training rows packed end to end behind a block mask give the padded batch's target
    log-probabilities and prompt gradient."""
    lm = tiny_causal
    lm = lm.with_options(share_prompt_prefix=True)
    inputs = reviews(lm)
    words = ["positive", "negative", "neutral contradiction"]
    batch = Batch(inputs, [lm.encode_target(w) for w in words])
    results = {}
    for pack in (True, False):
        lm = lm.with_options(pack_rows=pack)
        prompt = torch.nn.Parameter(torch.linspace(-0.3, 0.3, 4 * lm.dim).view(4, lm.dim))
        lp, row = lm.target_logprobs(prompt, batch)
        (-lp.mean()).backward()
        results[pack] = (lp.detach(), row, prompt.grad)
    assert torch.equal(results[True][1], results[False][1])
    assert torch.allclose(results[True][0], results[False][0], atol=1e-5)
    assert torch.allclose(results[True][2], results[False][2], atol=1e-5)


def test_rows_are_packed_only_when_that_saves_work(tiny_causal, monkeypatch):
    lm = tiny_causal
    assert lm.pack_rows is None
    assert lm.packs_rows([3, 3, 3, 40], prompt_length=4)  # mostly padding
    # no padding; attention would span 512 positions
    assert not lm.packs_rows([64] * 8, prompt_length=4)
    monkeypatch.setattr(lm.model.config, "sliding_window", 32, raising=False)
    assert not lm.packs_rows([3, 3, 3, 40], prompt_length=4)  # longer than the window
    lm = lm.with_options(pack_rows=False)
    monkeypatch.setattr(lm.model.config, "sliding_window", None, raising=False)
    assert not lm.packs_rows([3, 3, 3, 40], prompt_length=4)


def test_rows_without_a_prefix_run_padded(tiny_causal, reviews):
    """With no BOS and an empty [0, E] prompt (model tuning's input) there is no prefix whose
    cache packed rows could read: the rows run padded, even where packing is asked for."""
    lm = tiny_causal.with_options(share_prompt_prefix=True, pack_rows=True)
    assert lm.lead_ids == []
    assert not lm.packs_rows([3, 3, 3, 40], prompt_length=0)
    inputs = reviews(lm)
    batch = Batch(inputs, [lm.encode_target(w) for w in ["positive", "negative", "neutral"]])
    lp, row = lm.target_logprobs(torch.zeros(0, lm.dim), batch)
    assert lp.shape == row.shape and torch.isfinite(lp).all()
