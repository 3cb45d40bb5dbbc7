"""The decoder stack under torch.compile, padded to static shapes, equal to the plain passes,
compiled once per wrapper, with few graphs over a run of batches of varied lengths."""

import pytest
import torch
from torch._dynamo.utils import counters

from softprompt.model import Batch, load_frozen_lm
from softprompt.model.compiled import PAD_MULTIPLE, pad_pass
from softprompt.scoring import label_scores

WORDS = ["positive", "negative", "neutral contradiction"]


def _train_pass(lm, inputs, targets, length: int = 4):
    """Target log-probs [N] and the prompt's gradient [P, E] of one training pass."""
    prompt = torch.nn.Parameter(torch.linspace(-0.3, 0.3, length * lm.dim).view(length, lm.dim))
    lp, _ = lm.target_logprobs(prompt, Batch(inputs, targets))
    lp.sum().backward()
    return lp.detach(), prompt.grad


def _assert_equal_passes(got, expected) -> None:
    """Log-probs within 1e-5, and gradients within 1e-5 of their largest entry (the tiny model's
    large random weights make the prompt's gradient entries reach tens)."""
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    scale = float(expected[1].abs().max())
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=1e-5 * scale)


def _graphs() -> int:
    """Graphs torch.compile has compiled in this process so far."""
    return counters["stats"]["unique_graphs"]


def test_padding_hides_the_pad_positions():
    """A pass of 5 positions pads to 32. Pad keys are blocked in every real row (2-D and 4-D
    masks), pad rows see everything, and pad positions repeat the last position id."""
    embeds = torch.randn(2, 5, 3)
    positions = torch.arange(5)[None].expand(2, -1)
    flat = pad_pass(embeds, torch.ones(2, 5, dtype=torch.long), positions)
    assert flat.width == 5 and flat.inputs_embeds.shape == (2, PAD_MULTIPLE, 3)
    assert torch.equal(flat.inputs_embeds[:, :5], embeds) and not flat.inputs_embeds[:, 5:].any()
    assert flat.attention_mask[:, 5:].sum() == 0 and flat.attention_mask[:, :5].all()
    assert (flat.position_ids[:, 5:] == 4).all()
    additive = torch.zeros(2, 1, 5, 5)
    padded = pad_pass(embeds, additive, positions).attention_mask
    assert padded.shape == (2, 1, PAD_MULTIPLE, PAD_MULTIPLE)
    assert (padded[:, :, :5, 5:] == torch.finfo(torch.float32).min).all()
    assert (padded[:, :, 5:] == 0).all() and (padded[:, :, :5, :5] == 0).all()
    allowed = pad_pass(embeds, torch.ones(2, 1, 5, 5, dtype=torch.bool), positions).attention_mask
    assert not allowed[:, :, :5, 5:].any() and allowed[:, :, 5:].all()
    whole = pad_pass(torch.randn(2, PAD_MULTIPLE, 3), torch.ones(2, PAD_MULTIPLE), positions)
    assert whole.width == PAD_MULTIPLE and whole.inputs_embeds.shape[1] == PAD_MULTIPLE


@pytest.mark.parametrize("fill", [False, True], ids=["padded", "a-whole-multiple"])
def test_the_compiled_training_pass_equals_the_plain_one(tiny_causal, reviews, fill):
    """Target log-probs and the prompt's gradient through the compiled stack equal the plain
    pass's, for a batch padded up to the next multiple and for one that fills it exactly."""
    inputs = reviews(tiny_causal)
    targets = [tiny_causal.encode_target(w) for w in WORDS]
    rows = max(len(x) + len(y) - 1 for x, y in zip(inputs, targets, strict=True))
    lead = len(tiny_causal.lead_ids)
    length = (-(lead + rows) % PAD_MULTIPLE or PAD_MULTIPLE) if fill else 4
    width = lead + length + rows
    assert (width % PAD_MULTIPLE == 0) == fill
    plain = tiny_causal.with_options(share_prompt_prefix=False)
    compiled = tiny_causal.with_compile("default", backend="aot_eager")
    assert not compiled.shares_prefix()  # a compiled pass reads no cache
    expected = _train_pass(plain, inputs, targets, length)
    _assert_equal_passes(_train_pass(compiled, inputs, targets, length), expected)
    padded = -(-width // PAD_MULTIPLE) * PAD_MULTIPLE
    assert (len(inputs), padded, 2) in compiled.decoder_stack.compiled.shapes


def test_compiled_rank_scores_equal_the_plain_ones(tiny_causal, reviews):
    """Rank classification packs the choices behind a 4-D mask; padded and compiled, it scores
    as the plain pass does."""
    inputs = reviews(tiny_causal)
    prompt = torch.randn(3, tiny_causal.dim, generator=torch.Generator().manual_seed(0)) * 0.1
    plain = label_scores(tiny_causal.with_options(share_prompt_prefix=False), prompt, inputs, WORDS)
    compiled = tiny_causal.with_compile("default", backend="aot_eager")
    scores = label_scores(compiled, prompt, inputs, WORDS)
    torch.testing.assert_close(scores, plain, rtol=1e-5, atol=1e-5)
    assert any(dims == 4 for *_, dims in compiled.decoder_stack.compiled.shapes)


def test_a_run_of_varied_batches_compiles_few_graphs(tiny_causal_dir):
    """Eight training batches of rows from 2 to 40 tokens pad to two widths (32 and 64), so the
    compiled stack compiles two graphs, not one per batch."""
    lm = load_frozen_lm(str(tiny_causal_dir))
    words = ["the", "movie", "was", "plot", "acting", "really", "quite", "and", "a", "story"]
    compiled = lm.with_compile("default", backend="aot_eager")
    before = _graphs()
    for n in (1, 3, 5, 8, 12, 20, 30, 38):
        text = " ".join(words[k % len(words)] for k in range(n))
        inputs = [lm.encode_input(text, 64)[0], lm.encode_input("awful", 64)[0]]
        _train_pass(compiled, inputs, [lm.encode_target("negative")] * 2)
    widths = {width for _, width, _ in compiled.decoder_stack.compiled.shapes}
    assert widths == {32, 64}
    assert _graphs() - before <= len(widths)


def test_each_wrapper_compiles_once_and_views_keep_it(tiny_causal_dir):
    """The stack of a compile mode is built once per wrapper and shared by its views; "off" is
    the plain stack, and other options leave a view's stack as it is."""
    lm = load_frozen_lm(str(tiny_causal_dir), compile="default")
    assert lm.options.compile == "default" and lm.decoder_stack.compiled.mode == "default"
    assert lm.with_options(target_prefix="x").decoder_stack is lm.decoder_stack
    plain = lm.with_options(compile="off")
    assert plain.decoder_stack is lm.plain_stack and plain.decoder_stack.compiled is None
    assert plain.with_options(compile="default").decoder_stack is lm.decoder_stack
    quick = lm.with_compile("default", backend="aot_eager")
    assert quick.decoder_stack is lm.with_compile("default", backend="aot_eager").decoder_stack
    assert quick.decoder_stack is not lm.decoder_stack
    assert quick.decoder_stack.compiled.backend == "aot_eager"


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_cuda_graph_modes_are_refused_on_cpu(tiny_causal, mode):
    with pytest.raises(ValueError, match=f"compile mode '{mode}' captures CUDA graphs"):
        tiny_causal.with_options(compile=mode)
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        tiny_causal.with_compile("fast")


def test_the_inductor_training_pass_equals_the_plain_one(tiny_causal, reviews):
    """The default backend (inductor, generating C++ kernels on CPU) too gives the plain pass's
    log-probs and gradient."""
    inputs = reviews(tiny_causal)
    targets = [tiny_causal.encode_target(w) for w in WORDS]
    expected = _train_pass(tiny_causal.with_options(share_prompt_prefix=False), inputs, targets)
    got = _train_pass(tiny_causal.with_options(compile="default"), inputs, targets)
    _assert_equal_passes(got, expected)
