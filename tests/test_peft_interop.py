"""PEFT interop: a registered prompt exported as a PEFT prompt-tuning adapter predicts what our own
loader predicts, PEFT adapters import, and layouts PEFT would change and foreign base models are
refused."""

from __future__ import annotations

import json

import pytest
import torch

from softprompt.cli import main
from softprompt.peft_interop import export_peft, import_peft
from softprompt.registry import FingerprintMismatchError, InvalidArtifactError, open_registry
from softprompt.scoring import label_scores
from softprompt.task_data import load_task
from softprompt.tasks import load_spec


def _examples(toy_task, lm, n=16):
    spec = load_spec(toy_task["spec_path"])
    examples = load_task(spec, toy_task["data_dir"])["test"][:n]
    return spec, [lm.encode_input(e.input, 64)[0] for e in examples]


# A registered prompt needs the template and label words a service renders and ranks with.
VERBALIZER = {"template": "Review: {sentence}\nSentiment:", "label_words": ["negative", "positive"]}


def _published(lm, tmp_path, seed=0):
    reg = open_registry(tmp_path / "reg")
    # Prompt rows on the scale of real embeddings: random directions, embedding-sized norms.
    g = torch.Generator().manual_seed(seed)
    rows = lm.embedding.weight[torch.randint(lm.vocab_size, (5,), generator=g)].detach()
    prompt = (
        rows
        + 0.5 * rows.norm(dim=1, keepdim=True) * torch.randn(5, lm.dim, generator=g) / lm.dim**0.5
    )
    m = reg.publish(
        "toy",
        prompt,
        {"base_model": lm.name, "base_model_fingerprint": lm.fingerprint, **VERBALIZER},
    )
    return reg, prompt, m


@torch.no_grad()
def _peft_scores(peft_model, lm, inputs, label_words) -> torch.Tensor:
    """[B, L] summed log-likelihood of each label (+EOS) from PeftModel's own forward."""
    scores = torch.empty(len(inputs), len(label_words))
    for j, word in enumerate(label_words):
        target = lm.encode_target(word)
        for i, x in enumerate(inputs):
            if lm.is_encoder_decoder:
                out = peft_model(
                    input_ids=torch.tensor([x]),
                    attention_mask=torch.ones(1, len(x), dtype=torch.long),
                    labels=torch.tensor([target]),
                )
                logprobs = torch.log_softmax(out.logits[0].float(), -1)  # [T_y, V]
                scores[i, j] = logprobs.gather(1, torch.tensor(target)[:, None]).sum()
            else:
                ids = torch.tensor([x + target])
                logits = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[
                    0
                ]  # [P + T, V]
                logprobs = torch.log_softmax(logits[-len(target) - 1 : -1].float(), -1)
                scores[i, j] = logprobs.gather(1, torch.tensor(target)[:, None]).sum()
    return scores


@pytest.mark.parametrize(
    ("arch", "model_dir"), [("tiny_causal", "tiny_causal_dir"), ("tiny_t5", "tiny_t5_dir")]
)
def test_exported_adapter_predicts_our_labels(arch, model_dir, toy_task, tmp_path, request):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    lm, path = request.getfixturevalue(arch), request.getfixturevalue(model_dir)
    reg, prompt, m = _published(lm, tmp_path)
    out, exported = export_peft(reg, "toy", 1, tmp_path / "adapter", lm)
    assert exported == m
    config = json.loads((out / "adapter_config.json").read_text())
    assert (
        config["peft_type"] == "PROMPT_TUNING"
        and config["num_virtual_tokens"] == 5
        and config["token_dim"] == lm.dim
    )

    cls = AutoModelForSeq2SeqLM if lm.is_encoder_decoder else AutoModelForCausalLM
    peft_model = PeftModel.from_pretrained(
        cls.from_pretrained(str(path), dtype=torch.float32), str(out)
    ).eval()
    assert torch.equal(peft_model.get_prompt_embedding_to_save("default"), prompt)

    spec, inputs = _examples(toy_task, lm)
    ours = label_scores(lm, reg.pull("toy", 1)[0], inputs, spec.label_words)
    theirs = _peft_scores(peft_model, lm, inputs, spec.label_words)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    assert theirs.argmax(1).tolist() == ours.argmax(1).tolist()
    # The prompt matters (so agreement is not an accident of both ignoring it).
    assert not torch.allclose(
        ours, label_scores(lm, torch.zeros(0, lm.dim), inputs, spec.label_words), atol=1e-3
    )


def test_peft_trained_adapter_imports(tiny_causal, tiny_causal_dir, tmp_path):
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_causal_dir), dtype=torch.float32)
    peft_model = get_peft_model(
        base,
        PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=6, prompt_tuning_init="SAMPLE_VOCAB"
        ),
    )
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    reg = open_registry(tmp_path / "reg")
    lineage = {"dataset_version": "abc.dir", **VERBALIZER}
    m = import_peft(reg, "toy", tmp_path / "adapter", tiny_causal, lineage)
    got, _ = reg.pull("toy", m.version, expected_fingerprint=tiny_causal.fingerprint)
    assert torch.equal(got, peft_model.get_prompt_embedding_to_save("default"))
    assert (m.prompt_length, m.init, m.objective, m.dataset_version) == (
        6,
        "peft:sample_vocab",
        "peft_prompt_tuning",
        "abc.dir",
    )

    # Round trip through the CLI: export-peft, then import-peft of that export.
    assert main(["export-peft", "--registry", str(tmp_path / "reg"), "--task", "toy", "--ref", "1",
                 "--out", str(tmp_path / "exported"), "--model", str(tiny_causal_dir)]) == 0
    assert (
        main(
            [
                "import-peft",
                "--registry",
                str(tmp_path / "reg"),
                "--task",
                "toy",
                "--adapter",
                str(tmp_path / "exported"),
                "--model",
                str(tiny_causal_dir),
                "--alias",
                "staging",
            ]
        )
        == 0
    )
    again, m2 = reg.pull("toy", "staging")
    assert m2.version == 2 and torch.equal(again, got)


def test_refusals(tiny_causal, tiny_t5, tmp_path, monkeypatch):
    reg, _, _ = _published(tiny_causal, tmp_path)
    # The prompt was trained on tiny_causal: neither export nor pull put it on another model.
    with pytest.raises(
        FingerprintMismatchError, match=f"trained on base model '{tiny_causal.name}'"
    ):
        export_peft(reg, "toy", 1, tmp_path / "a", tiny_t5)
    with pytest.raises(
        FingerprintMismatchError, match="refusing to load it onto a model with fingerprint"
    ):
        reg.pull("toy", 1, expected_fingerprint=tiny_t5.fingerprint)
    out, _ = export_peft(reg, "toy", 1, tmp_path / "ok", tiny_causal)
    with pytest.raises(InvalidArtifactError, match="task_type' is 'CAUSAL_LM'"):
        import_peft(reg, "t5", out, tiny_t5)
    # A tokenizer that adds BOS: softprompt feeds [BOS; P; X], PEFT [P; BOS; X].
    monkeypatch.setattr(tiny_causal, "lead_ids", [tiny_causal.tokenizer.bos_token_id])
    with pytest.raises(
        InvalidArtifactError, match=r"adds BOS.*\[BOS; prompt; input\].*\[prompt; BOS; input\]"
    ):
        export_peft(reg, "toy", 1, tmp_path / "b", tiny_causal)
    with pytest.raises(InvalidArtifactError, match="adds BOS"):
        import_peft(reg, "toy", out, tiny_causal)
    monkeypatch.undo()
    (out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(
        InvalidArtifactError, match="adapter_config.json: field 'peft_type' is 'LORA'"
    ):
        import_peft(reg, "toy", out, tiny_causal)


def test_export_writes_a_model_card(tiny_causal, tmp_path):
    """The export folder holds a README.md model card, as PeftModel.save_pretrained writes one:
    base model, task, version, dev/test metrics, data version, template, label words and
    created_at, with loading instructions whose PEFT snippet runs as written."""
    import dataclasses

    import yaml

    from softprompt.peft_interop import model_card

    reg = open_registry(tmp_path / "reg")
    lineage = {
        "base_model": tiny_causal.name,
        "base_model_fingerprint": tiny_causal.fingerprint,
        "metric": "accuracy",
        "dataset_version": "0123abcd.dir",
        "metrics": {"dev": {"score": 0.75, "n": 32}, "test": {"score": 0.5, "n": 32}},
        **VERBALIZER,
    }
    prompt = torch.randn(3, tiny_causal.dim)
    m = reg.publish("toy", prompt, lineage)
    out, _ = export_peft(reg, "toy", 1, tmp_path / "adapter", tiny_causal)
    card = (out / "README.md").read_text()

    front = yaml.safe_load(card.split("---\n")[1])
    assert front == {"base_model": tiny_causal.name, "library_name": "peft",
                     "tags": ["prompt-tuning", "softprompt"]}
    assert f"# toy version 1: a soft prompt for {tiny_causal.name}" in card
    assert f"registry `{reg.uri}`, task `toy`, version 1" in card
    for row in ("| version | 1 |", "| data version | 0123abcd.dir |",
                f"| created_at | {m.created_at} |", f"| base model | {tiny_causal.name} |",
                f"| base model fingerprint | {tiny_causal.fingerprint} |",
                "| dev | n 32, score 0.75 |", "| test | n 32, score 0.5 |"):
        assert f"\n{row}\n" in card, row
    assert "```text\nReview: {sentence}\nSentiment:\n```" in card
    assert "Label words, in label order: `negative`, `positive`." in card
    assert f"softprompt pull --registry {reg.uri} --task toy --ref 1 --out" in card
    assert f"softprompt import-peft --registry REGISTRY --task toy --adapter {out}" in card

    snippet = card.split("```python\n")[1].split("```")[0]
    namespace: dict = {}
    exec(snippet, namespace)  # loads the base model and the adapter, as a reader would
    assert torch.equal(namespace["model"].get_prompt_embedding_to_save("default"), prompt)

    # Short names of softprompt's offline checkpoints load through softprompt; encoder-decoders
    # through the seq2seq class.
    offline = model_card(dataclasses.replace(m, base_model="smollm2-135m"), reg.uri, "a", False)
    assert "base = load_frozen_lm('smollm2-135m').model" in offline
    assert "AutoModelForSeq2SeqLM.from_pretrained" in model_card(m, reg.uri, "a", True)
    unscored = model_card(dataclasses.replace(m, metrics={}), reg.uri, "a", False)
    assert "| - | no dev or test scores recorded |" in unscored
