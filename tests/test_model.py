import pytest
import torch

from softprompt.model import Batch
from softprompt.scoring import label_scores

ARCHS = ["tiny_causal", "tiny_t5"]


@pytest.fixture(params=ARCHS)
def lm(request):
    return request.getfixturevalue(request.param)


def _inputs(lm, texts):
    return [lm.encode_input(t, 64)[0] for t in texts]


TEXTS = ["Review: the movie was great\nSentiment:", "Review: awful\nSentiment:", "Review: a story and a plot and the cast was really quite boring\nSentiment:"]


def test_all_weights_frozen(lm):
    assert all(not p.requires_grad for p in lm.model.parameters())


def test_gradient_reaches_only_the_prompt(lm):
    prompt = torch.nn.Parameter(torch.randn(4, lm.dim) * 0.1)
    inputs = _inputs(lm, TEXTS)
    targets = [lm.encode_target(w) for w in ["positive", "negative", "negative"]]
    lp, row = lm.target_logprobs(prompt, Batch(inputs, targets))
    (-lp.mean()).backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in lm.model.parameters())
    assert row.tolist() == sorted(row.tolist()) and lp.shape == row.shape


def test_shared_prompt_equals_per_example_prompts(lm):
    prompt = torch.randn(3, lm.dim) * 0.1
    inputs = _inputs(lm, TEXTS)
    shared = label_scores(lm, prompt, inputs, ["positive", "negative"])
    per_example = label_scores(lm, prompt.expand(3, -1, -1).clone(), inputs, ["positive", "negative"])
    assert torch.allclose(shared, per_example, atol=1e-5)


def test_prefix_sharing_is_a_switch_with_equal_results(tiny_causal, monkeypatch):
    """On CPU the [lead; P] prefix runs as its own decoder pass by default; switched off, the
    prompt goes through with the rows in one pass (the GPU default) and the scores agree."""
    lm = tiny_causal
    prompt = torch.randn(3, lm.dim) * 0.1
    inputs = _inputs(lm, TEXTS)
    calls = []
    decoder = lm._decoder
    monkeypatch.setattr(lm, "_decoder", lambda *a, **k: calls.append(1) or decoder(*a, **k))
    shared = label_scores(lm, prompt, inputs, ["positive", "negative"])
    shared_calls = len(calls)
    calls.clear()
    lm = lm.with_options(share_prompt_prefix=False)
    single = label_scores(lm, prompt, inputs, ["positive", "negative"])
    assert shared_calls == len(calls) + 1
    assert torch.allclose(shared, single, atol=1e-5)


@pytest.mark.parametrize("share", [True, False])
def test_packed_and_repeated_label_passes_agree(tiny_causal, monkeypatch, share):
    """All labels' later tokens packed after the input in its own pass (a 4-D mask) score as one
    pass per label over the repeated cache does, with and without a shared prompt prefix; models
    whose sliding window is shorter than the packed sequence (a custom 4-D mask would bypass the
    window) take the repeated pass."""
    lm = tiny_causal
    lm = lm.with_options(share_prompt_prefix=share)
    prompt = torch.randn(3, lm.dim) * 0.1
    inputs = _inputs(lm, TEXTS)
    choices = [lm.encode_target(w) for w in ["positive", "negative", "neutral contradiction"]]
    _, last, mask, lengths, cache = lm._run_decoder(prompt, inputs, use_cache=True)
    repeated = lm._first_token_scores(last, choices) + lm._repeated_choice_scores(cache, mask, lengths, choices)
    calls = []
    spy = lm._repeated_choice_scores
    monkeypatch.setattr(lm, "_repeated_choice_scores", lambda *a: calls.append(1) or spy(*a))
    assert torch.allclose(lm.score_choices(prompt, inputs, choices), repeated, atol=1e-5)
    assert calls == []
    monkeypatch.setattr(lm.model.config, "sliding_window", 8, raising=False)
    lm.score_choices(prompt, inputs, choices)
    assert calls == [1]


def test_cached_rank_scores_equal_full_sequence_likelihood(lm):
    """Scoring from the cache (one input pass, short label passes) equals scoring each label alone."""
    prompt = torch.randn(3, lm.dim) * 0.1
    inputs = _inputs(lm, TEXTS)
    words = ["positive", "negative", "neutral contradiction"]  # a multi-token choice too
    cached = label_scores(lm, prompt, inputs, words)
    for j, w in enumerate(words):
        target = lm.encode_target(w)
        lp, row = lm.target_logprobs(prompt, Batch(inputs, [target] * len(inputs)))
        full = torch.zeros(len(inputs)).index_add_(0, row, lp)
        assert torch.allclose(cached[:, j], full, atol=1e-4), (w, cached[:, j], full)


def test_padding_does_not_change_scores(lm):
    prompt = torch.randn(2, lm.dim) * 0.1
    inputs = _inputs(lm, TEXTS)
    together = label_scores(lm, prompt, inputs, ["positive", "negative"])
    alone = torch.cat([label_scores(lm, prompt, [x], ["positive", "negative"]) for x in inputs])
    assert torch.allclose(together, alone, atol=1e-4)


def test_mixed_prompts_in_one_batch_match_separate_runs(lm):
    """Different prompts per example (mixed tasks / ensembles) give each example its own prompt's scores."""
    p1, p2 = torch.randn(3, lm.dim) * 0.1, torch.randn(3, lm.dim) * 0.1
    inputs = _inputs(lm, TEXTS[:2])
    mixed = label_scores(lm, torch.stack([p1, p2]), inputs, ["positive", "negative"])
    assert torch.allclose(mixed[0], label_scores(lm, p1, inputs[:1], ["positive", "negative"])[0], atol=1e-4)
    assert torch.allclose(mixed[1], label_scores(lm, p2, inputs[1:], ["positive", "negative"])[0], atol=1e-4)


def test_greedy_generation_follows_argmax(lm):
    prompt = torch.randn(2, lm.dim) * 0.1
    inputs = _inputs(lm, TEXTS)
    outs = lm.generate(prompt, inputs, max_new_tokens=3)
    assert len(outs) == 3 and all(len(o) <= 3 for o in outs)
    # Each example decoded alone gives the same tokens (padding-independent decoding).
    for x, o in zip(inputs, outs, strict=True):
        assert lm.generate(prompt, [x], max_new_tokens=3)[0] == o


def test_prompt_shape_errors(lm):
    with pytest.raises(ValueError, match=r"prompts must be \[P, E\] or \[B=3, P, E\]"):
        label_scores(lm, torch.randn(2, 2, lm.dim), _inputs(lm, TEXTS), ["positive"], batch_size=8)


def test_fingerprint_tracks_the_embedding(tiny_causal_dir):
    from softprompt.model import load_frozen_lm

    a, b = load_frozen_lm(str(tiny_causal_dir)), load_frozen_lm(str(tiny_causal_dir))
    assert a.fingerprint == b.fingerprint and a.fingerprint.startswith("sha256:")
    with torch.no_grad():
        b.embedding.weight[0, 0] += 1
    b._fingerprint = None
    assert a.fingerprint != b.fingerprint


def test_truncation_keeps_the_end(tiny_causal):
    ids, cut = tiny_causal.encode_input("the movie was really quite great and the plot", 3)
    full = tiny_causal.tokenize("the movie was really quite great and the plot")
    assert cut and ids == full[-3:]


def test_bos_lead_is_kept_first_on_every_path(tiny_causal):
    """Tokenizers that add BOS (Gemma) get [BOS; P; X]: shared-prefix and per-example paths agree."""
    import copy

    lm = copy.copy(tiny_causal)
    lm.lead_ids = [lm.tokenizer.bos_token_id]
    prompt = torch.randn(3, lm.dim) * 0.1
    inputs = _inputs(lm, TEXTS)
    shared = label_scores(lm, prompt, inputs, ["positive", "negative"])
    per_example = label_scores(lm, prompt.expand(3, -1, -1).clone(), inputs, ["positive", "negative"])
    assert torch.allclose(shared, per_example, atol=1e-5)
    assert not torch.allclose(shared, label_scores(tiny_causal, prompt, inputs, ["positive", "negative"]), atol=1e-3)


def test_packed_rows_train_exactly_as_padded_rows(tiny_causal, monkeypatch):
    """Training rows packed end to end behind a block mask give the padded batch's target
    log-probabilities and prompt gradient."""
    lm = tiny_causal
    lm = lm.with_options(share_prompt_prefix=True)
    inputs = _inputs(lm, TEXTS)
    batch = Batch(inputs, [lm.encode_target(w) for w in ["positive", "negative", "neutral contradiction"]])
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
    assert not lm.packs_rows([64] * 8, prompt_length=4)  # no padding; attention would span 512 positions
    monkeypatch.setattr(lm.model.config, "sliding_window", 32, raising=False)
    assert not lm.packs_rows([3, 3, 3, 40], prompt_length=4)  # longer than the window
    lm = lm.with_options(pack_rows=False)
    monkeypatch.setattr(lm.model.config, "sliding_window", None, raising=False)
    assert not lm.packs_rows([3, 3, 3, 40], prompt_length=4)


@pytest.mark.parametrize("share", [True, False])
def test_target_logprobs_equal_a_plain_forward_of_the_model(tiny_causal, monkeypatch, share):
    """Everything target_logprobs skips (the prefix run once, rows packed, the last target token
    not fed, the last layer's MLP and the head only where targets are predicted) leaves the
    log-probabilities and the prompt's gradient of the plain model over [lead; P; x; y] unchanged."""
    lm = tiny_causal
    lm = lm.with_options(share_prompt_prefix=share)
    inputs = _inputs(lm, TEXTS)
    targets = [lm.encode_target(w) for w in ["positive", "negative", "neutral contradiction"]]
    init = torch.linspace(-0.3, 0.3, 4 * lm.dim).view(4, lm.dim)
    ours = torch.nn.Parameter(init.clone())
    lp, _ = lm.target_logprobs(ours, Batch(inputs, targets))
    lp.sum().backward()
    plain = torch.nn.Parameter(init.clone())
    expected = []
    for x, y in zip(inputs, targets, strict=True):
        ids = torch.tensor(lm.lead_ids + [0] * 4 + x + y)
        embeds = torch.cat([lm.embed(ids[: len(lm.lead_ids)]), plain, lm.embed(ids[len(lm.lead_ids) + 4 :])])[None]
        logits = lm.model(inputs_embeds=embeds).logits[0].log_softmax(-1)  # [S, V]
        start = len(ids) - len(y)
        expected.append(logits[start - 1 : -1].gather(1, torch.tensor(y)[:, None]).squeeze(1))
    expected = torch.cat(expected)
    expected.sum().backward()
    assert torch.allclose(lp.detach(), expected.detach(), atol=1e-5)
    assert torch.allclose(ours.grad, plain.grad, rtol=1e-4, atol=1e-4)


def test_repeated_prompts_in_a_batch_share_their_prefix(tiny_causal, monkeypatch):
    """Rows using the same prompt (an ensemble's N prompts, a mixed batch's tasks) run each distinct
    [lead; P] once; scores and gradients equal the unshared pass's."""
    lm = tiny_causal
    lm = lm.with_options(share_prompt_prefix=True)
    table = torch.nn.Parameter(torch.randn(2, 3, lm.dim, generator=torch.Generator().manual_seed(0)) * 0.1)
    owner = torch.tensor([0, 1, 0])
    inputs = _inputs(lm, TEXTS)
    batch = Batch(inputs, [lm.encode_target(w) for w in ["positive", "negative", "neutral contradiction"]])
    shapes = []
    decoder = lm._decoder
    monkeypatch.setattr(lm, "_decoder", lambda *a, **k: shapes.append(tuple(k["inputs_embeds"].shape)) or decoder(*a, **k))
    lp, _ = lm.target_logprobs(table[owner], batch)
    assert shapes[0] == (2, len(lm.lead_ids) + 3, lm.dim)  # one prefix per distinct prompt
    (grad_shared,) = torch.autograd.grad(lp.sum(), table)
    lm = lm.with_options(share_prompt_prefix=False)
    lp_plain, _ = lm.target_logprobs(table[owner], batch)
    (grad_plain,) = torch.autograd.grad(lp_plain.sum(), table)
    assert torch.allclose(lp, lp_plain, atol=1e-5)
    assert torch.allclose(grad_shared, grad_plain, rtol=1e-4, atol=1e-4)
