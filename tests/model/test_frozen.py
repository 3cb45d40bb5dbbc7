"""FrozenLM on both tiny architectures, with frozen weights, gradients into the prompt only, rank
scores equal to the full-sequence likelihood, generation that does not depend on padding,
tokenization, the fingerprint, and float32 prompts in front of bfloat16 weights."""

from types import SimpleNamespace

import pytest
import torch

from softprompt.model import Batch, CausalLM, Seq2SeqLM
from softprompt.scoring import encode_examples, label_scores, lm_loss
from softprompt.task_data import load_task
from softprompt.tasks import load_spec


def test_all_weights_frozen(lm):
    assert all(not p.requires_grad for p in lm.model.parameters())


def test_gradient_reaches_only_the_prompt(lm, reviews):
    prompt = torch.nn.Parameter(torch.randn(4, lm.dim) * 0.1)
    inputs = reviews(lm)
    targets = [lm.encode_target(w) for w in ["positive", "negative", "negative"]]
    lp, row = lm.target_logprobs(prompt, Batch(inputs, targets))
    (-lp.mean()).backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in lm.model.parameters())
    assert row.tolist() == sorted(row.tolist()) and lp.shape == row.shape


def test_architecture_is_chosen_once_from_the_config(tiny_causal, tiny_t5):
    """The wrapper picks its architecture from the model's config; every view binds it to
    itself, so a view's passes run under the view's options."""
    assert tiny_causal.architecture_type is CausalLM and tiny_t5.architecture_type is Seq2SeqLM
    view = tiny_causal.with_options(share_prompt_prefix=False)
    assert view.architecture.lm is view and tiny_causal.architecture.lm is tiny_causal
    assert tiny_causal.options.share_prompt_prefix is None


def test_cached_rank_scores_equal_full_sequence_likelihood(lm, reviews):
    """Scoring from the cache (one input pass, short label passes) equals scoring each label
    alone."""
    prompt = torch.randn(3, lm.dim) * 0.1
    inputs = reviews(lm)
    words = ["positive", "negative", "neutral contradiction"]  # a multi-token choice too
    cached = label_scores(lm, prompt, inputs, words)
    for j, w in enumerate(words):
        target = lm.encode_target(w)
        lp, row = lm.target_logprobs(prompt, Batch(inputs, [target] * len(inputs)))
        full = torch.zeros(len(inputs)).index_add_(0, row, lp)
        assert torch.allclose(cached[:, j], full, atol=1e-4), (w, cached[:, j], full)


def test_greedy_generation_follows_argmax(lm, reviews):
    prompt = torch.randn(2, lm.dim) * 0.1
    inputs = reviews(lm)
    outs = lm.generate(prompt, inputs, max_new_tokens=3)
    assert len(outs) == 3 and all(len(o) <= 3 for o in outs)
    # Each example decoded alone gives the same tokens (padding-independent decoding).
    for x, o in zip(inputs, outs, strict=True):
        assert lm.generate(prompt, [x], max_new_tokens=3)[0] == o


def test_prompt_shape_errors(lm, reviews):
    with pytest.raises(ValueError, match=r"prompts must be \[P, E\] or \[B=3, P, E\]"):
        label_scores(lm, torch.randn(2, 2, lm.dim), reviews(lm), ["positive"], batch_size=8)


def test_fingerprint_tracks_the_embedding(tiny_causal_dir):
    from softprompt.model import load_frozen_lm

    a, b = load_frozen_lm(str(tiny_causal_dir)), load_frozen_lm(str(tiny_causal_dir))
    assert a.fingerprint == b.fingerprint and a.fingerprint.startswith("sha256:")
    with torch.no_grad():
        b.embedding.weight[0, 0] += 1
    del b.fingerprint  # computed once per wrapper: recompute it after the edit
    assert a.fingerprint != b.fingerprint


def test_truncation_keeps_the_end(tiny_causal):
    ids, cut = tiny_causal.encode_input("the movie was really quite great and the plot", 3)
    full = tiny_causal.tokenize("the movie was really quite great and the plot")
    assert cut and ids == full[-3:]


@pytest.mark.real_model
def test_a_training_step_moves_only_the_prompt(smollm):
    spec = load_spec("sst2")
    enc = encode_examples(smollm, load_task(spec)["train"][:4], 256)
    before = {k: v.clone() for k, v in smollm.model.state_dict().items()}
    prompt = torch.nn.Parameter(torch.randn(5, smollm.dim) * 0.05)
    lm_loss(smollm, prompt, Batch(enc.inputs, enc.targets)).backward()
    assert prompt.grad.abs().sum() > 0
    assert all(torch.equal(v, smollm.model.state_dict()[k]) for k, v in before.items())


def test_vocab_max_norm_is_the_largest_embedded_row(tiny_causal):
    """Read through the embedding module in chunks, it equals the largest row of the matrix (the
    tiny model does not scale its embeddings)."""
    weight = tiny_causal.embedding.weight.detach().float()  # [V, E]
    assert tiny_causal.vocab_max_norm == pytest.approx(float(weight.norm(dim=1).max()))


@pytest.mark.parametrize("optimizer", ["adafactor", "adamw"])
def test_bfloat16_weights_keep_the_prompt_and_its_optimizer_float32(
    tiny_causal, tiny_causal_dir, reviews, optimizer
):
    """With bfloat16 frozen weights the prompt, its gradient and the optimizer's state stay
    float32 (the prompt is cast on the way in), and the loss stays near the float32 model's."""
    from softprompt.model import load_frozen_lm
    from softprompt.training.optim import make_optimizer

    half = load_frozen_lm(str(tiny_causal_dir), dtype="bfloat16")
    assert half.embedding.weight.dtype == torch.bfloat16
    batch = Batch(reviews(half), [half.encode_target(w) for w in ["positive", "negative", "no"]])
    init = torch.linspace(-0.3, 0.3, 4 * half.dim).view(4, half.dim)
    prompt = torch.nn.Parameter(init.clone())
    config = SimpleNamespace(optimizer=optimizer, lr=0.1, weight_decay=1e-5, beta2_decay=0.8)
    opt = make_optimizer(config, [prompt])
    loss = lm_loss(half, prompt, batch)
    loss.backward()
    opt.step()
    assert loss.dtype == prompt.dtype == prompt.grad.dtype == torch.float32
    state = [v for v in opt.state[prompt].values() if torch.is_tensor(v) and v.is_floating_point()]
    assert state and all(v.dtype == torch.float32 for v in state)
    with torch.no_grad():
        full = lm_loss(tiny_causal, init, batch)
    assert float(loss.detach()) == pytest.approx(float(full), rel=0.05)
