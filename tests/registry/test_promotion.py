"""Registration behind the quality gate (softprompt.registry.promotion), without KFP."""

from __future__ import annotations

import pytest
import torch

from softprompt.registry import AliasConflictError, open_registry
from softprompt.registry.promotion import quality_gate, register_with_gate

FINGERPRINT = "sha256:" + "0" * 64


def lineage(score: float) -> dict:
    return {"base_model": "m", "base_model_fingerprint": FINGERPRINT, "dataset_version": "d.dir",
            "metrics": {"dev": {"score": score}}, "data_source": {"kind": "local"},
            "template": "Review: {sentence}\nSentiment:", "label_words": ["negative", "positive"]}


def test_quality_gate_decisions():
    assert quality_gate(0.5, None, "production", 0.0).promoted is True  # no prompt yet

    class Current:
        version, metrics = 3, {"dev": {"score": 0.8}}

    assert quality_gate(0.85, Current(), "production", 0.0).promoted is True
    kept = quality_gate(0.85, Current(), "production", 0.1)
    assert kept.promoted is False and kept.previous_version == 3 and kept.previous_score == 0.8
    assert kept.reason == "production v3 dev 0.8000 + min_improvement 0.1"
    Current.metrics = {}
    unscored = quality_gate(0.1, Current(), "production", 0.0)
    assert unscored.reason == "production v3 has no dev score"


def test_register_publishes_always_and_moves_the_alias_only_past_the_gate(tmp_path):
    reg = open_registry(tmp_path / "registry")
    first = register_with_gate(reg, "toy", torch.randn(4, 8), lineage(0.7), 0.7, "production", 0.0)
    assert (first["version"], first["promoted"], first["previous"]) == (1, True, None)
    assert first["decision"] == ("promoted production to v1: new v1 dev 0.7000 vs "
                                 "production had no prompt")
    worse = register_with_gate(reg, "toy", torch.randn(4, 8), lineage(0.6), 0.6, "production", 0.0)
    assert (worse["version"], worse["promoted"]) == (2, False)
    assert worse["decision"].startswith("kept production at v1: new v2 dev 0.6000")
    assert worse["previous"] == {"version": 1, "dev_score": 0.7}
    assert reg.manifest("toy", "production").version == 1
    assert worse["manifest"]["data_source"] == {"kind": "local"}
    assert worse["manifest_uri"].endswith("/prompts/toy/2/manifest.json")


def test_a_concurrent_promotion_fails_the_gate_instead_of_being_overwritten(tmp_path, monkeypatch):
    reg = open_registry(tmp_path / "registry")
    register_with_gate(reg, "toy", torch.randn(4, 8), lineage(0.5), 0.5, "production", 0.0)
    real_publish = reg.publish

    def publish_then_rival_promotes(task, prompt, lin):
        manifest = real_publish(task, prompt, lin)
        rival = real_publish(task, torch.randn(4, 8), lineage(0.55))
        reg.promote(task, "production", rival.version, expected_version=1)
        return manifest

    monkeypatch.setattr(reg, "publish", publish_then_rival_promotes)
    with pytest.raises(AliasConflictError):
        register_with_gate(reg, "toy", torch.randn(4, 8), lineage(0.9), 0.9, "production", 0.0)
    assert reg.manifest("toy", "production").version == 3  # the rival's move stands


def test_an_exploded_prompt_is_published_but_never_promoted(tmp_path):
    """The gate refuses a prompt whose training result flags its norm as exploded, however good
    its dev score, whether or not the alias points anywhere yet."""
    reg = open_registry(tmp_path / "registry")
    exploded = {"max_row_norm": 2e8, "vocab_max_row_norm": 7.5, "ratio": 2.7e7, "exploded": True}
    first = lineage(0.99)
    first["metrics"]["prompt_norm"] = exploded
    out = register_with_gate(reg, "toy", torch.randn(4, 8), first, 0.99, "production", 0.0)
    assert (out["version"], out["promoted"], out["previous"]) == (1, False, None)
    assert out["decision"] == ("left production unset: new v1 dev 0.9900 vs the new prompt's norm "
                               "exploded (2.7e+07 times the vocabulary's largest row); refused")
    assert reg.aliases("toy") == {}
    assert reg.manifest("toy", 1).metrics["prompt_norm"] == exploded
    sane = lineage(0.6)
    sane["metrics"]["prompt_norm"] = dict(exploded, max_row_norm=9.0, ratio=1.2, exploded=False)
    register_with_gate(reg, "toy", torch.randn(4, 8), sane, 0.6, "production", 0.0)
    again = register_with_gate(reg, "toy", torch.randn(4, 8), first, 0.99, "production", 0.0)
    assert again["promoted"] is False and again["previous"] == {"version": 2, "dev_score": 0.6}
    assert reg.manifest("toy", "production").version == 2
