"""Where each kind of model name loads from, the attention implementation it runs with, and the
offline SmolLM2-135M end to end."""

from types import SimpleNamespace

import pytest
import torch

from softprompt.model import OFFLINE_MODELS, Batch, load_frozen_lm
from softprompt.model.loading import Source, attention_for, offline_gguf, resolve
from softprompt.scoring import label_scores


def test_a_missing_offline_package_is_named(monkeypatch):
    monkeypatch.setitem(OFFLINE_MODELS, "absent", ("no_such_model_package", "absent.gguf"))
    with pytest.raises(FileNotFoundError, match="needs the PyPI package 'no-such-model-package'"):
        offline_gguf("absent")


def test_names_resolve_to_their_source(tmp_path):
    cached = tmp_path / "smollm2-135m"
    cached.mkdir()
    (cached / "config.json").write_text("{}")
    assert resolve("smollm2-135m", tmp_path) == Source(str(cached), cached, None)
    gguf = tmp_path / "files" / "tiny.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"")
    dequantized = tmp_path / "tiny"
    assert resolve(str(gguf), tmp_path) == Source(
        str(dequantized), dequantized, (gguf.parent, "tiny.gguf")
    )
    assert resolve("org/some-model", tmp_path) == Source("org/some-model", None, None)


@pytest.mark.real_model
def test_loads_the_offline_checkpoint(smollm):
    assert smollm.dim == 576 and smollm.vocab_size == 49152 and smollm.lead_ids == []
    assert smollm.tokenize(" positive") == [2731] and smollm.tokenize(" negative") == [3524]
    prompt = torch.zeros(0, smollm.dim)
    inputs = [smollm.tokenize("The capital of France is")]
    ids = smollm.generate(prompt, inputs, max_new_tokens=2)[0]
    assert smollm.decode(ids).strip().startswith("Paris")


@pytest.mark.parametrize("folder", ["tiny_causal_dir", "tiny_t5_dir"])
def test_sdpa_and_eager_attention_agree(request, folder, reviews):
    """The loader asks for SDPA where the architecture has it; target log-probs and rank scores
    (whose packed choices go through a 4-D mask) equal eager attention's."""
    path = str(request.getfixturevalue(folder))
    sdpa, eager = load_frozen_lm(path), load_frozen_lm(path, attention="eager")
    assert sdpa.model.config._attn_implementation == "sdpa"
    assert eager.model.config._attn_implementation == "eager"
    inputs = reviews(sdpa)
    words = ["positive", "negative", "neutral contradiction"]
    batch = Batch(inputs, [sdpa.encode_target(w) for w in words])
    prompt = torch.randn(3, sdpa.dim, generator=torch.Generator().manual_seed(0)) * 0.1
    for share in (False, True):
        a, b = (lm.with_options(share_prompt_prefix=share) for lm in (sdpa, eager))
        lp, _ = a.target_logprobs(prompt, batch)
        expected, _ = b.target_logprobs(prompt, batch)
        torch.testing.assert_close(lp, expected, rtol=1e-4, atol=1e-4)
        scores, expected = (label_scores(lm, prompt, inputs, words) for lm in (a, b))
        torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)


def test_attention_falls_back_to_eager_where_sdpa_cannot_run():
    """Without SDPA support, or with soft-capped attention logits (which SDPA lacks), eager."""
    capped = SimpleNamespace(_supports_sdpa=True, config=SimpleNamespace(attn_logit_softcapping=50))
    plain = SimpleNamespace(_supports_sdpa=True, config=SimpleNamespace())
    assert attention_for(plain) == "sdpa" and attention_for(capped) == "eager"
    assert attention_for(SimpleNamespace(_supports_sdpa=False, config=plain.config)) == "eager"
