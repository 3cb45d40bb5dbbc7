"""Where each kind of model name loads from, the attention implementation it runs with, and the
offline SmolLM2-135M end to end."""

from types import SimpleNamespace

import pytest
import torch

from softprompt.model import OFFLINE_MODELS, Batch, load_frozen_lm
from softprompt.model.loading import (
    SDPA_FP32,
    Source,
    attention_for,
    offline_gguf,
    resolve,
    sdpa_in_fp32,
)
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
    _assert_passes_agree(sdpa, eager, reviews(sdpa), rtol=1e-4, atol=1e-4)


def _assert_passes_agree(lm, eager, inputs, **tolerance):
    """Target log-probs and rank scores (whose packed multi-token choices go through a 4-D mask)
    of `lm` equal `eager`'s, with and without the shared prompt prefix."""
    words = ["positive", "negative", "neutral contradiction"]
    batch = Batch(inputs, [lm.encode_target(w) for w in words])
    prompt = torch.randn(3, lm.dim, generator=torch.Generator().manual_seed(0)) * 0.1
    for share in (False, True):
        a, b = (model.with_options(share_prompt_prefix=share) for model in (lm, eager))
        lp, _ = a.target_logprobs(prompt, batch)
        expected, _ = b.target_logprobs(prompt, batch)
        torch.testing.assert_close(lp, expected, **tolerance)
        scores, expected = (label_scores(model, prompt, inputs, words) for model in (a, b))
        torch.testing.assert_close(scores, expected, **tolerance)


def test_bf16_on_cpu_computes_attention_in_fp32():
    """sdpa_in_fp32 on bf16 q, k, v with an additive mask equals attention computed in float64
    on the same (upcast) values, to the bf16 rounding of its output."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8, generator=gen).bfloat16() for _ in range(3))  # [B, H, T, D]
    mask = torch.zeros(2, 1, 5, 5)
    mask[:, :, :, 3:] = torch.finfo(torch.float32).min  # nobody attends to positions 3 and 4
    out, _ = sdpa_in_fp32(SimpleNamespace(is_causal=False), q, k, v, mask.bfloat16(),
                          scaling=8**-0.5, is_causal=False)
    scores = q.double() @ k.double().transpose(-1, -2) * 8**-0.5 + mask.double()
    expected = (scores.softmax(-1) @ v.double()).transpose(1, 2)  # [B, T, H, D]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), expected, rtol=1e-2, atol=1e-2)


def test_bf16_weights_on_cpu_agree_with_eager_attention(tiny_causal_dir, reviews):
    """A bf16 model on CPU loads with float32 SDPA, and its passes equal bf16 eager attention's
    to bf16 precision."""
    fast = load_frozen_lm(str(tiny_causal_dir), device="cpu", dtype="bfloat16")
    eager = load_frozen_lm(str(tiny_causal_dir), device="cpu", dtype="bfloat16", attention="eager")
    assert fast.model.config._attn_implementation == SDPA_FP32
    _assert_passes_agree(fast, eager, reviews(fast), rtol=0.02, atol=0.05)
    # A 2-D padding mask (decoding, sliding-window models) reaches the attention too, although
    # transformers builds no mask for an attention name without a mask function: a left-padded
    # row gives the logits it gives alone.
    short, long = [5, 9, 13], [7, 8, 11, 12, 14, 6]
    ids = torch.tensor([[fast.pad_id] * 3 + short, long])
    mask = torch.tensor([[0] * 3 + [1] * 3, [1] * 6])
    positions = torch.tensor([[0, 0, 0, 0, 1, 2], list(range(6))])
    with torch.no_grad():
        padded = fast.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        alone = fast.model(input_ids=torch.tensor([short])).logits
    torch.testing.assert_close(padded[0, 3:].float(), alone[0].float(), rtol=0.02, atol=0.05)


def test_attention_falls_back_to_eager_where_sdpa_cannot_run():
    """Without SDPA support, or with soft-capped attention logits (which SDPA lacks), eager."""
    capped = SimpleNamespace(_supports_sdpa=True, config=SimpleNamespace(attn_logit_softcapping=50))
    plain = SimpleNamespace(_supports_sdpa=True, config=SimpleNamespace())
    assert attention_for(plain) == "sdpa" and attention_for(capped) == "eager"
    assert attention_for(SimpleNamespace(_supports_sdpa=False, config=plain.config)) == "eager"
    assert attention_for(capped, "cpu", "bfloat16") == "eager"
    assert attention_for(plain, "cpu", "bfloat16") == SDPA_FP32
    assert attention_for(plain, "cuda", "bfloat16") == "sdpa"
