"""Fixtures shared by the model tests: the offline SmolLM2-135M for the tests marked real_model.

Both tiny architectures behind one `lm` fixture and a few review inputs are in tests/conftest.py,
as the scoring tests use them too."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm():
    """The offline SmolLM2-135M; the first load dequantizes the GGUF once (~35 s), later loads
    read the safetensors cache."""
    from softprompt.model import load_frozen_lm

    return load_frozen_lm("smollm2-135m")
