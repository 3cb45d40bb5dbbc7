"""Registration behind the quality gate (softprompt.registry.promotion), without KFP."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from softprompt.prompt import save_prompt
from softprompt.registry import AliasConflictError, NotFoundError, open_registry
from softprompt.registry.promotion import (
    alias_path,
    quality_gate,
    register_selected,
    register_with_gate,
    rollback,
)

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


def test_the_gate_refuses_a_prompt_below_the_template_alone():
    """A new dev score below the zero-shot one is refused whether or not the alias points
    anywhere, and whatever the alias's own score. An equal score passes on to the usual checks."""
    below = quality_gate(0.5010, None, "production", 0.0, zero_shot_score=0.61)
    assert below.promoted is False and below.below_zero_shot is True
    assert below.reason == "the template alone (zero-shot dev 0.6100); refused"
    assert (below.previous_version, below.previous_score) == (None, None)

    current = SimpleNamespace(version=3, metrics={"dev": {"score": 0.2}})
    beats_alias = quality_gate(0.5, current, "production", 0.0, zero_shot_score=0.61)
    assert beats_alias.promoted is False and "zero-shot dev 0.6100" in beats_alias.reason
    assert (beats_alias.previous_version, beats_alias.previous_score) == (3, 0.2)

    assert quality_gate(0.61, None, "production", 0.0, zero_shot_score=0.61).promoted is True
    equal = quality_gate(0.61, current, "production", 0.0, zero_shot_score=0.61)
    assert equal.promoted is True
    assert equal.reason == "production v3 dev 0.2000 + min_improvement 0.0"
    assert quality_gate(0.7, current, "production", 0.0, zero_shot_score=0.61).promoted is True
    # The exploded norm is checked first.
    norm = {"ratio": 1e6, "exploded": True}
    exploded = quality_gate(0.5, None, "production", 0.0, norm, zero_shot_score=0.61)
    assert exploded.promoted is False and "norm exploded" in exploded.reason


def test_the_registration_names_the_zero_shot_score_it_was_refused_on(tmp_path):
    reg = open_registry(tmp_path / "registry")
    first = register_with_gate(reg, "toy", torch.randn(4, 8), lineage(0.501), 0.501, "production",
                               0.0, zero_shot_score=0.61)
    assert (first["version"], first["promoted"], first["zero_shot_dev"]) == (1, False, 0.61)
    assert first["decision"] == ("left production unset: new v1 dev 0.5010 is below the template "
                                 "alone (zero-shot dev 0.6100); refused")
    assert reg.aliases("toy") == {}
    good = register_with_gate(reg, "toy", torch.randn(4, 8), lineage(0.4), 0.4, "production", 0.0,
                              zero_shot_score=0.4)
    assert good["promoted"] is True and good["decision"].endswith("vs production had no prompt")
    worse = register_with_gate(reg, "toy", torch.randn(4, 8), lineage(0.5), 0.5, "production",
                               0.0, zero_shot_score=0.55)
    assert worse["promoted"] is False and worse["previous"] == {"version": 2, "dev_score": 0.4}
    assert worse["decision"] == ("kept production at v2: new v3 dev 0.5000 is below the template "
                                 "alone (zero-shot dev 0.5500); refused")
    assert reg.manifest("toy", "production").version == 2
    no_floor = register_with_gate(reg, "toy", torch.randn(4, 8), lineage(0.5), 0.5, "production",
                                  0.0)
    assert no_floor["promoted"] is True and no_floor["zero_shot_dev"] is None


def _ensemble_dir(root, dev: float, zero_shot: dict | None) -> tuple[str, dict]:
    """An ensemble folder with one member (a run's config, result and prompt [4, 8]) and the
    summary softprompt.evaluation writes for it, with or without the template alone's scores."""
    member = root / "members" / "0"
    member.mkdir(parents=True)
    (member / "config.json").write_text(json.dumps(
        {"task": "toy", "model": "m", "seed": 0, "prompt": {"length": 4, "init": "class_label"}}))
    (member / "result.json").write_text(json.dumps(
        {"task": "toy", "model": "m", "model_fingerprint": FINGERPRINT, "dev": {"score": dev}}))
    save_prompt(torch.randn(4, 8), member / "prompt.safetensors")
    scores = {"dev": {"score": dev, "n": 16}, "test": {"score": dev, "n": 8}}
    summary = {"members": [{"index": 0, "dir": "members/0", **scores}], "best_member": 0,
               "dev": {"ensemble": scores["dev"]}, "test": {"ensemble": scores["test"]},
               "selected": {"member": 0, **scores}}
    if zero_shot is not None:
        summary["zero_shot"] = zero_shot
    return str(root), summary


SPEC = SimpleNamespace(name="toy", label_words=["negative", "positive"], metric="accuracy",
                       template="Review: {sentence}\nSentiment:", digest="")


def test_register_selected_gates_on_the_summary_zero_shot_and_records_it(tmp_path):
    """The template alone's dev/test metrics join the manifest's metrics, and its dev score is
    the floor of the gate. A summary without them registers as before."""
    reg = open_registry(tmp_path / "registry")
    zero_shot = {"dev": {"accuracy": 0.75, "score": 0.75, "n": 16},
                 "test": {"accuracy": 0.5, "score": 0.5, "n": 8}}
    folder, summary = _ensemble_dir(tmp_path / "worse", 0.625, zero_shot)
    out = register_selected(reg, summary, folder, SPEC, "d.dir", None, "c0de", "production", 0.0)
    assert (out["version"], out["promoted"], out["zero_shot_dev"]) == (1, False, 0.75)
    assert "below the template alone (zero-shot dev 0.7500)" in out["decision"]
    assert reg.manifest("toy", 1).metrics["zero_shot"] == zero_shot
    assert out["manifest"]["metrics"]["zero_shot"] == zero_shot

    folder, summary = _ensemble_dir(tmp_path / "old", 0.625, None)
    old = register_selected(reg, summary, folder, SPEC, "d.dir", None, "c0de", "production", 0.0)
    assert (old["version"], old["promoted"], old["zero_shot_dev"]) == (2, True, None)
    assert "zero_shot" not in reg.manifest("toy", 2).metrics


def test_alias_path_cuts_out_the_loops_of_the_history():
    """The path is the history of versions with every detour that came back removed."""

    def path(*versions: int) -> list[int]:
        return alias_path([{"version": v} for v in versions])

    assert path(1, 2, 3) == [1, 2, 3]
    assert path(1, 2, 3, 2) == [1, 2]  # a rollback returns to 2: 3 drops off
    assert path(1, 2, 3, 2, 4) == [1, 2, 4]
    assert path(1, 2, 3, 1) == [1]  # a manual move back to 1 is a return as well
    assert path(1, 2, 3, 2, 3) == [1, 2, 3]  # moving forward again
    assert path(5) == [5]


def _promoted(reg, *versions: int) -> None:
    """Publishes up to max(versions) and moves production through `versions` in order."""
    while len(reg.list_versions("toy")) < max(versions):
        reg.publish("toy", torch.randn(4, 8), lineage(0.5))
    for v in versions:
        reg.promote("toy", "production", v)


def test_repeated_rollbacks_walk_back_instead_of_swapping(tmp_path):
    """Rollback moves to the version before the current one on the alias's path, so the second
    goes to 1, not back to 3; with nothing before, it is refused and nothing moves."""
    reg = open_registry(tmp_path / "registry")
    _promoted(reg, 1, 2, 3)
    first = rollback(reg, "toy", "production")
    assert (first.from_version, first.to_version, first.path) == (3, 2, [1, 2])
    assert (first.state.version, first.state.previous, first.state.seq) == (2, 3, 4)
    second = rollback(reg, "toy", "production")
    assert (second.from_version, second.to_version, second.path) == (2, 1, [1])
    with pytest.raises(NotFoundError, match="no version to roll back to: it points to version 1"):
        rollback(reg, "toy", "production")
    state = reg.alias("toy", "production")
    assert [e["version"] for e in state.history] == [1, 2, 3, 2, 1]


def test_rollback_after_a_new_promotion_returns_to_the_version_it_replaced(tmp_path):
    """Versions rolled back from leave the path: after 1, 2, 3, back to 2, then on to 4, a
    rollback goes to 2 (the history's previous), not to 3."""
    reg = open_registry(tmp_path / "registry")
    _promoted(reg, 1, 2, 3)
    rollback(reg, "toy", "production")
    _promoted(reg, 4)
    done = rollback(reg, "toy", "production")
    assert (done.from_version, done.to_version) == (4, 2)


def test_rollback_is_a_compare_and_swap(tmp_path, monkeypatch):
    """A move by someone else between reading the alias and moving it fails the rollback with
    an error saying so, and the other move stands; an alias that does not exist, or one that
    points elsewhere than expected_version, is refused before anything moves."""
    reg = open_registry(tmp_path / "registry")
    _promoted(reg, 1, 2, 3)
    with pytest.raises(AliasConflictError, match="points to version 3, not the expected 2"):
        rollback(reg, "toy", "production", expected_version=2)
    with pytest.raises(NotFoundError, match="no alias 'staging'"):
        rollback(reg, "toy", "staging")
    real_promote = reg.promote

    def rival_moves_first(task, alias, version, expected_version):
        real_promote(task, alias, 1)
        return real_promote(task, alias, version, expected_version=expected_version)

    monkeypatch.setattr(reg, "promote", rival_moves_first)
    with pytest.raises(AliasConflictError,
                       match=r"not the expected 3.*rollback from version 3 to 2 was not done"):
        rollback(reg, "toy", "production")
    assert reg.alias("toy", "production").version == 1
