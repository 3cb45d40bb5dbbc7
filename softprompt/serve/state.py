"""A served task's verified prompts, and how they are read from the registry.

Prompts come from the registry by task and alias (or the N newest / N pinned versions for an
ensemble). `pull` verifies each blob's sha256 and the base-model fingerprint. Every manifest is
checked again here (`softprompt.registry.records.check_manifest`: a template that renders plain
fields, distinct non-empty label words, a well-formed fingerprint), whatever registry object
returned it, because a template or label words the service cannot use would fail each request.
A prompt that fails any check raises here and is never turned into a TaskState.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from softprompt.model import FrozenLM
from softprompt.registry.records import check_manifest
from softprompt.serve.config import TaskServing
from softprompt.tasks import TaskSpec


class ReadOnlyRegistry:
    """The service's view of the registry: the read methods only, so no code path of the service
    can publish or move an alias (its credentials should be read-only as well)."""

    def __init__(self, registry) -> None:
        self._registry = registry

    def manifest(self, task: str, ref: int | str):
        return self._registry.manifest(task, ref)

    def list_versions(self, task: str) -> list:
        return self._registry.list_versions(task)

    def pull(
        self, task: str, ref: int | str = "production", expected_fingerprint: str | None = None
    ):
        return self._registry.pull(task, ref, expected_fingerprint=expected_fingerprint)


@dataclass(frozen=True)
class TaskState:
    """A served task's verified prompts, immutable: a reload swaps in a new one."""

    serving: TaskServing
    manifests: tuple  # the registry Manifests, one per prompt
    prompts: tuple[torch.Tensor, ...]  # N x [P, E]
    spec: TaskSpec  # template and label words from the manifest (no task spec files needed)

    @property
    def versions(self) -> list[int]:
        return [int(m.version) for m in self.manifests]

    @property
    def input_fields(self) -> list[str]:
        return list(dict.fromkeys(f.split(".")[0] for f in self.spec.fields()))

    def describe(self) -> dict:
        ensemble = self.serving.is_ensemble
        return {
            "task": self.spec.name,
            "ref": None if ensemble else self.serving.ref,
            "ensemble": len(self.prompts) if ensemble else 0,
            "versions": self.versions,
            "prompt_sha256": [m.blob_sha256 for m in self.manifests],
            "label_words": self.spec.label_words,
            "template": self.spec.template,
            "input_fields": self.input_fields,
        }


def _spec_from_manifest(m) -> TaskSpec:
    return TaskSpec(name=m.task, format="jsonl", splits={}, template=m.template,
                    label_field="label", labels={w: w for w in m.label_words})


def _refs(registry, serving: TaskServing) -> list[int | str]:
    """The versions (or the alias) a task's prompts are pulled by."""
    if serving.versions:
        return list(serving.versions)
    if serving.ensemble:
        versions = sorted(int(m.version) for m in registry.list_versions(serving.task))
        if len(versions) < serving.ensemble:
            raise ValueError(f"task {serving.task}: ensemble of {serving.ensemble} needs as many "
                             f"versions; registry has {versions}")
        return versions[-serving.ensemble:]
    return [serving.ref]


def load_task_state(registry, serving: TaskServing, lm: FrozenLM) -> TaskState:
    """Resolves a task's alias / versions and pulls its prompts, verified against `lm`.

    Raises (RegistryError, IntegrityError for an unusable manifest, ValueError) instead of
    returning anything unverified.
    """
    refs = _refs(registry, serving)
    manifests, prompts = [], []
    for ref in refs:
        prompt, m = registry.pull(serving.task, ref, expected_fingerprint=lm.fingerprint)
        check_manifest(m, f"task {serving.task} version {m.version}")
        if m.task != serving.task:
            raise ValueError(f"task {serving.task}: the registry answered with a manifest of "
                             f"task {m.task!r}")
        # pull checks both; a second look costs nothing and guards a backend that forgets to.
        if m.base_model_fingerprint != lm.fingerprint:
            raise ValueError(
                f"task {serving.task} v{m.version}: prompt was trained on another base model"
            )
        if prompt.dim() != 2 or prompt.shape[1] != lm.dim:
            raise ValueError(f"task {serving.task} v{m.version}: prompt shape "
                             f"{list(prompt.shape)} does not fit model width {lm.dim}")
        manifests.append(m)
        prompts.append(prompt.float().to(lm.device))
    spec = _spec_from_manifest(manifests[0])
    for m in manifests[1:]:
        if list(m.label_words) != spec.label_words or m.template != spec.template:
            raise ValueError(f"task {serving.task}: ensemble versions {refs} disagree on "
                             "template or label words")
    return TaskState(serving, tuple(manifests), tuple(prompts), spec)


def resolve_versions(registry, serving: TaskServing) -> list[int]:
    """The versions a task should serve now (a cheap manifest read, no blob)."""
    if serving.versions:
        return list(serving.versions)
    if serving.ensemble:
        versions = sorted(int(m.version) for m in registry.list_versions(serving.task))
        return versions[-serving.ensemble:]
    return [int(registry.manifest(serving.task, serving.ref).version)]
