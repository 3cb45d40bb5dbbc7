"""Where each kind of model name loads from, and the offline SmolLM2-135M end to end."""

import pytest
import torch

from softprompt.model import OFFLINE_MODELS
from softprompt.model.loading import Source, offline_gguf, resolve


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
