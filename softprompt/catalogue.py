"""The task catalogue and retraining change detection: which tasks need a new prompt.

The catalogue is a folder of task specs (`<name>.yaml`, see softprompt.tasks): a team adds a task
by adding its spec and its data. A task needs (re)training when the registry has no prompt for it,
or when its latest registered prompt's lineage no longer matches what training would see now:

  data changed        the prepared data's version (DVC hash, `<md5>.dir`) differs from the
                      manifest's `dataset_version`; the spec's template, label words and data
                      files all shape the prepared examples, so most spec edits land here too
  spec changed        template, label words or metric differ from the manifest's
  base model changed  the base model to train on differs from the manifest's `base_model`

A spec edit that changes none of these (description, hub source) needs no new prompt. The
prepared-data version is computed by a caller-supplied function, so that it is the very value the
training pipeline will record (its prepare step, run on the same inputs).

    entries = read_catalogue("tasks")
    plans = plan_retraining(entries, open_registry(uri), data_version=..., base_model="smollm2-135m")
    for plan in plans: ... train plan.task when plan.retrain ...; verify_registered(registry, plan)

Orchestrators (the Airflow DAGs) are thin shells over these functions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from softprompt.registry import Manifest, Registry
from softprompt.tasks import TaskDataError, TaskSpec, parse_spec


class CatalogueError(ValueError):
    """A catalogue that cannot be planned as a whole (missing folder, unknown or duplicate task)."""


@dataclass(frozen=True)
class CatalogueEntry:
    """One spec file of the catalogue; `error` says why it cannot be used (its other tasks can)."""

    name: str  # the spec's name (= the registry task name), or the file stem if the spec is unreadable
    spec_path: str
    spec: TaskSpec | None = None
    spec_sha256: str | None = None  # of the spec's normalized content, not its formatting
    error: str | None = None


@dataclass(frozen=True)
class TaskPlan:
    """What the retraining run does with one task. JSON-serializable via `to_dict`/`from_dict`."""

    task: str
    spec_path: str
    retrain: bool
    reason: str  # "new task", "data changed (...)", "unchanged", "requested", ... or the error
    dataset_version: str | None = None  # the prepared data's version the new prompt must record
    spec_sha256: str | None = None
    latest_version: int | None = None  # the registry's latest version before this run
    error: str | None = None  # set: the task cannot be trained as it is (bad spec or data)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> TaskPlan:
        return cls(**raw)


def spec_digest(raw: dict) -> str:
    """sha256 of a spec's content (keys sorted), so reformatting the YAML changes nothing."""
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()


def read_catalogue(tasks_dir: str | Path, only: Iterable[str] | None = None) -> list[CatalogueEntry]:
    """Every `*.yaml` spec in `tasks_dir`, sorted by name; `only`: just these task names.

    A spec that does not parse, or whose `name` differs from its file name, becomes an entry with
    `error` set (that task fails, the others go on). Raises CatalogueError for a missing folder or
    an `only` name that is not in the catalogue."""
    root = Path(tasks_dir)
    if not root.is_dir():
        raise CatalogueError(f"task catalogue {root}: not a directory")
    entries = []
    for path in sorted(root.glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text())
            spec = parse_spec(raw, str(path))
            if spec.name != path.stem:
                raise TaskDataError(f"{path}: field 'name' is {spec.name!r} but the file is {path.name}; they must match")
            entries.append(CatalogueEntry(spec.name, str(path), spec, spec_digest(raw)))
        except yaml.YAMLError as err:
            entries.append(CatalogueEntry(path.stem, str(path), error=f"invalid task spec: {path}: invalid YAML: {err}"))
        except TaskDataError as err:
            entries.append(CatalogueEntry(path.stem, str(path), error=f"invalid task spec: {err}"))
    if only is not None:
        wanted = list(dict.fromkeys(only))
        names = {e.name for e in entries}
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise CatalogueError(f"task(s) {unknown} not in the catalogue {root} (available: {', '.join(sorted(names)) or 'none'})")
        entries = [e for e in entries if e.name in wanted]
    return entries


def _latest(registry: Registry, task: str) -> Manifest | None:
    versions = registry.list_versions(task)  # oldest first
    return versions[-1] if versions else None


def _changes(entry: CatalogueEntry, latest: Manifest, version: str, base_model: str) -> list[str]:
    spec = entry.spec
    changes = []
    if latest.dataset_version != version:
        changes.append(f"data changed ({latest.dataset_version} -> {version})")
    spec_fields = [name for name, new, old in (("template", spec.template, latest.template),
                                               ("label words", spec.label_words, latest.label_words),
                                               ("metric", spec.metric, latest.metric)) if new != old]
    if spec_fields:
        changes.append(f"spec changed ({', '.join(spec_fields)})")
    if latest.base_model != base_model:
        changes.append(f"base model changed ({latest.base_model} -> {base_model})")
    return changes


def plan_retraining(
    entries: list[CatalogueEntry],
    registry: Registry,
    data_version: Callable[[CatalogueEntry], str],
    base_model: str,
    force: Iterable[str] = (),
) -> list[TaskPlan]:
    """One plan per entry: retrain it (new, changed, or named in `force`) or not (unchanged).

    `data_version(entry)` returns the version of the task's prepared data; a TaskDataError or
    OSError from it (bad rows, a missing file) makes that task's plan an error, naming the step.
    Registry errors propagate: without the registry nothing can be planned."""
    force = set(force)
    plans = []
    for entry in entries:
        common = dict(task=entry.name, spec_path=entry.spec_path, spec_sha256=entry.spec_sha256)
        if entry.error:
            plans.append(TaskPlan(**common, retrain=True, reason=entry.error, error=entry.error))
            continue
        latest = _latest(registry, entry.name)
        common["latest_version"] = latest.version if latest else None
        try:
            version = data_version(entry)
        except (TaskDataError, OSError) as err:
            error = f"prepare data: {err}"
            plans.append(TaskPlan(**common, retrain=True, reason=error, error=error))
            continue
        reasons = ["new task"] if latest is None else _changes(entry, latest, version, base_model)
        if entry.name in force:
            reasons.insert(0, "requested")
        plans.append(TaskPlan(**common, retrain=bool(reasons), reason="; ".join(reasons) or "unchanged", dataset_version=version))
    return plans


def verify_registered(registry: Registry, plan: TaskPlan) -> Manifest:
    """The manifest a successful run of `plan` registered: a version newer than the plan's
    `latest_version` that records the planned data version. Raises RuntimeError otherwise."""
    latest = _latest(registry, plan.task)
    where = f"task {plan.task}: registry {registry.uri}"
    if latest is None or (plan.latest_version is not None and latest.version <= plan.latest_version):
        raise RuntimeError(f"{where}: the pipeline finished but registered no new version "
                           f"(latest is still {plan.latest_version or 'none'})")
    if latest.dataset_version != plan.dataset_version:
        raise RuntimeError(f"{where}: v{latest.version} records dataset_version {latest.dataset_version}, "
                           f"expected {plan.dataset_version} (the data changed during the run?)")
    return latest
