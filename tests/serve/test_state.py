"""Served tasks' prompts read from the registry (softprompt.serve.state): the read-only view,
version resolution, and verification before anything is served (the prompt, and a manifest
the service can use)."""

from __future__ import annotations

import pytest
from served_tasks import TASKS, UNUSABLE, TamperedRegistry, publish, serve_config

from softprompt.registry import FingerprintMismatchError, IntegrityError, open_registry
from softprompt.serve.config import TaskServing
from softprompt.serve.http import create_app
from softprompt.serve.state import ReadOnlyRegistry, load_task_state, resolve_versions


def test_service_holds_a_read_only_registry_view(tiny_causal, registry):
    service = create_app(serve_config(), lm=tiny_causal, registry=registry).state.service
    assert not hasattr(service.registry, "publish") and not hasattr(service.registry, "promote")
    assert service.registry.manifest("senti", "production").version == 1


def test_versions_resolve_from_alias_newest_or_pinned(registry):
    view = ReadOnlyRegistry(registry)
    assert resolve_versions(view, TaskServing("senti")) == [1]
    assert resolve_versions(view, TaskServing("yesno", ensemble=2)) == [2, 3]
    assert resolve_versions(view, TaskServing("yesno", versions=(3, 1))) == [3, 1]


def test_task_state_carries_the_manifest_template_and_prompts(tiny_causal, registry):
    state = load_task_state(
        ReadOnlyRegistry(registry), TaskServing("yesno", ensemble=3), tiny_causal
    )
    template, words, length = TASKS["yesno"]
    assert state.versions == [1, 2, 3] and state.input_fields == ["question"]
    assert [tuple(p.shape) for p in state.prompts] == [(length, tiny_causal.dim)] * 3  # 3 x [P, E]
    described = state.describe()
    assert described["ensemble"] == 3 and described["ref"] is None
    assert described["label_words"] == words and described["template"] == template


def test_unverifiable_prompts_raise(tiny_causal, tmp_path):
    reg = open_registry(tmp_path)
    reg.promote(
        "senti",
        "production",
        publish(reg, tiny_causal, "senti", 0, fingerprint="sha256:" + "0" * 64).version,
    )
    with pytest.raises(FingerprintMismatchError, match="fingerprint"):
        load_task_state(ReadOnlyRegistry(reg), TaskServing("senti"), tiny_causal)
    with pytest.raises(ValueError, match="ensemble of 3"):
        load_task_state(ReadOnlyRegistry(reg), TaskServing("senti", ensemble=3), tiny_causal)


def test_unusable_manifests_are_refused_at_load(tiny_causal, registry):
    """8 manifests a tampered store could return (no template, no / int / duplicate / empty label
    words, an unclosed brace, a format spec, a huge padding spec): IntegrityError naming the
    field, whatever registry object returned them. A manifest of another task is refused too."""
    view = ReadOnlyRegistry(TamperedRegistry(registry, {k: v for k, (v, _) in UNUSABLE.items()}))
    for task, (_, field) in UNUSABLE.items():
        with pytest.raises(IntegrityError, match=f"task {task} version 1: .*'{field}'"):
            load_task_state(view, TaskServing(task), tiny_causal)
    assert load_task_state(view, TaskServing("senti"), tiny_causal).versions == [1]

    class Misfiled(TamperedRegistry):
        def _manifest(self, task):
            return self.real.manifest("senti", "production")

    with pytest.raises(ValueError, match="manifest of task 'senti'"):
        load_task_state(
            ReadOnlyRegistry(Misfiled(registry, {"nli": {}})), TaskServing("nli"), tiny_causal
        )
