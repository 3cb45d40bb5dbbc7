import pytest
import torch

from softprompt import prompt as P


def _embed_table(vocab=50, dim=8):
    table = torch.randn(vocab, dim, generator=torch.Generator().manual_seed(0))
    return table, (lambda ids: table[ids])


def test_random_uniform_respects_range_and_seed():
    g = torch.Generator().manual_seed(1)
    x = P.random_uniform(100, 16, g, 0.5)
    assert x.shape == (100, 16)
    assert x.min() >= -0.5 and x.max() <= 0.5
    assert x.min() < -0.4 and x.max() > 0.4  # uses both halves, unlike the official [0, r) default
    assert torch.equal(x, P.random_uniform(100, 16, torch.Generator().manual_seed(1), 0.5))


def test_sampled_vocab_draws_from_common_ids_without_replacement():
    table, embed = _embed_table()
    x = P.sampled_vocab(5, list(range(10)), embed, torch.Generator().manual_seed(0))
    rows = [int((table[:10] == r).all(1).nonzero()) for r in x]
    assert len(set(rows)) == 5 and all(r < 10 for r in rows)


def test_class_label_averages_subtokens_and_fills_rest():
    table, embed = _embed_table()
    x = P.class_label(
        4, [[3], [5, 7]], list(range(20, 30)), embed, torch.Generator().manual_seed(0)
    )
    assert torch.allclose(x[0], table[3])
    assert torch.allclose(x[1], (table[5] + table[7]) / 2)
    assert x.shape == (4, 8)


def test_class_label_with_more_labels_than_positions_is_an_error():
    _, embed = _embed_table()
    with pytest.raises(ValueError, match="3 labels but prompt length 2"):
        P.class_label(2, [[1], [2], [3]], [4, 5], embed, torch.Generator())


def test_from_text_repeats_to_fill():
    table, embed = _embed_table()
    x = P.from_text(5, [1, 2], embed)
    assert torch.equal(x, table[[1, 2, 1, 2, 1]])


def test_file_roundtrip_and_shape_check(tmp_path):
    x = torch.randn(3, 8)
    P.save_prompt(x, tmp_path / "p.safetensors")
    assert torch.equal(P.load_prompt(tmp_path / "p.safetensors", (3, 8)), x)
    with pytest.raises(ValueError, match="does not match expected"):
        P.load_prompt(tmp_path / "p.safetensors", (4, 8))
    cfg = P.PromptConfig(length=3, init="file", init_file=str(tmp_path / "p.safetensors"))
    _, embed = _embed_table()
    assert torch.equal(P.initialize(cfg, 8, embed, [1], lambda s: [1]), x)


@pytest.mark.parametrize("kwargs, message", [
    ({"length": 0}, "length must be >= 1"),
    ({"init": "zeros"}, "unknown prompt init"),
    ({"init": "text"}, "needs init_text"),
    ({"uniform_range": 0}, "uniform_range"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        P.PromptConfig(**kwargs)


def test_init_uses_embedding_module_output(tiny_causal):
    """Models that scale embeddings (Gemma: sqrt(E)) must get prompts on the scaled scale."""
    lm = tiny_causal
    scale = 7.0
    cfg = P.PromptConfig(length=2, init="text", init_text="great")
    x = P.initialize(
        cfg, lm.dim, lambda ids: lm.embed(ids) * scale, lm.common_token_ids(), lm.tokenize
    )
    ids = torch.tensor(lm.tokenize("great") * 2)[:2]
    assert torch.allclose(x, lm.embedding.weight[ids] * scale)


def test_prompt_norm_flags_rows_far_beyond_the_vocabulary():
    from softprompt.prompt import EXPLODED_NORM_RATIO, prompt_norm

    prompt = torch.zeros(3, 4)
    prompt[1, 0] = 6.0  # the largest row: norm 6
    norm = prompt_norm(prompt, vocab_max_norm=2.0)
    assert (norm.max_row_norm, norm.ratio, norm.exploded) == (6.0, 3.0, False)
    prompt[2, 1] = 2.0 * EXPLODED_NORM_RATIO * 1.01
    assert prompt_norm(prompt, vocab_max_norm=2.0).exploded is True
    assert prompt_norm(prompt, vocab_max_norm=0.0).exploded is True
    assert norm.to_dict() == {"max_row_norm": 6.0, "vocab_max_row_norm": 2.0, "ratio": 3.0,
                              "exploded": False}
