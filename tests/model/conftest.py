"""Fixtures shared by the model tests: both tiny architectures behind one `lm` fixture, a few
review inputs, and the offline SmolLM2-135M for the tests marked real_model."""

from __future__ import annotations

import pytest

REVIEWS = [
    "Review: the movie was great\nSentiment:",
    "Review: awful\nSentiment:",
    "Review: a story and a plot and the cast was really quite boring\nSentiment:",
]


@pytest.fixture(params=["tiny_causal", "tiny_t5"])
def lm(request):
    return request.getfixturevalue(request.param)


@pytest.fixture()
def reviews():
    """reviews(lm) -> the three REVIEWS encoded as inputs of `lm` (up to 64 tokens each)."""
    return lambda lm: [lm.encode_input(text, 64)[0] for text in REVIEWS]


@pytest.fixture(scope="session")
def smollm():
    """The offline SmolLM2-135M; the first load dequantizes the GGUF once (~35 s), later loads
    read the safetensors cache."""
    from softprompt.model import load_frozen_lm

    return load_frozen_lm("smollm2-135m")
