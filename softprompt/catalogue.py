"""The task catalogue and retraining change detection: which tasks need a new prompt.

The catalogue is a set of task specs (`tasks/<name>.yaml`, see softprompt.tasks) and their data
(`<data root>/<name>/`). It is read either from local folders (the embedded default) or from a
git + DVC repository at one revision, where each task's data folder `data/<name>` is tracked with
`dvc add` and its DVC hash is read from the repository's records without downloading anything.
A team adds a task by committing its spec and `data/<name>.dvc` after `dvc push`.

A task needs (re)training when the registry has no prompt for it, or when its latest registered
prompt's lineage no longer matches what training would see now:

  data changed        the data folder's DVC hash (`<md5>.dir`) differs from the manifest's
                      `dataset_version`
  spec changed        template, label words, metric or any other field that shapes training
                      (TaskSpec.digest) differ from the manifest's
  base model changed  the base model to train on differs from the manifest's `base_model`

A spec edit that changes none of these (description, hub source) needs no new prompt.

    entries = read_catalogue("tasks", data_dir="data")            # or read_catalogue_at(url, rev)
    plans = plan_retraining(entries, open_registry(uri), base_model="smollm2-135m")
    for plan in plans: ... run the pipeline with plan.run_params() ...; verify_registered(...)

Orchestrators (the Airflow DAGs) are thin shells over these functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from softprompt.data_source import (
    CATALOGUE_DATA_DIR,
    DataFetchError,
    DataRef,
    default_remote,
    materialize,
    open_dvc_repo,
    parse_spec_text,
    recorded_hash,
)
from softprompt.registry import Manifest, Registry
from softprompt.tasks import TaskDataError, TaskSpec, decode_utf8, default_data_dir, read_spec_file


class CatalogueError(ValueError):
    """A catalogue that cannot be planned as a whole (missing folder or revision, unknown task)."""


@dataclass(frozen=True)
class CatalogueEntry:
    """One spec file of the catalogue; `error` says why it cannot be used (its other tasks can)."""

    name: str  # the spec's name (= the registry task name), or the file stem if unreadable
    spec_path: str  # where the spec was read: a file, or "<path>@<commit>" in a repository
    spec: TaskSpec | None = None
    spec_text: str | None = None  # the spec's YAML, handed to the pipeline as task_spec
    data: DataRef | None = None  # its data; `version` set when the catalogue records it
    error: str | None = None


@dataclass(frozen=True)
class TaskPlan:
    """What the retraining run does with one task. JSON-serializable via `to_dict`/`from_dict`."""

    task: str
    spec_path: str
    retrain: bool
    reason: str  # "new task", "data changed (...)", "unchanged", "requested", ... or the error
    dataset_version: str | None = None  # the data's DVC hash the new prompt must record
    spec_sha256: str | None = None
    latest_version: int | None = None  # the registry's latest version before this run
    error: str | None = None  # set: the task cannot be trained as it is (bad spec or data)
    spec_text: str | None = None
    data: dict | None = None  # DataRef fields, `version` included

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> TaskPlan:
        return cls(**raw)

    def run_params(self) -> dict:
        """The prompt-tuning pipeline parameters that name this task's spec and data."""
        ref = DataRef(**(self.data or {"task": self.task}))
        params = {"task": self.task, "task_spec": self.spec_text or "",
                  "data_version": self.dataset_version or ""}
        if ref.kind == "local":
            return params | {"data_dir": ref.data_dir}
        keys = ("remote", "rev", "path") if ref.kind == "dvc-remote" else ("repo", "rev", "path")
        return params | {f"data_{k}": getattr(ref, k) for k in keys}


def _entry(name: str, where: str, text: str, data: DataRef) -> CatalogueEntry:
    """An entry from a spec's text; a spec that does not parse, or whose `name` differs from its
    file name (the task's name), becomes an entry with `error` set."""
    try:
        spec = parse_spec_text(name, text, where)
    except TaskDataError as err:
        return CatalogueEntry(name, where, error=f"invalid task spec: {err}")
    return CatalogueEntry(name, where, spec, text, data)


def _select(entries: list[CatalogueEntry], only: Iterable[str] | None,
            where: str) -> list[CatalogueEntry]:
    if only is None:
        return entries
    wanted = list(dict.fromkeys(only))
    names = {e.name for e in entries}
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise CatalogueError(f"task(s) {unknown} not in the catalogue {where} "
                             f"(available: {', '.join(sorted(names)) or 'none'})")
    return [e for e in entries if e.name in wanted]


def read_catalogue(tasks_dir: str | Path, only: Iterable[str] | None = None,
                   data_dir: str | Path | None = None) -> list[CatalogueEntry]:
    """Every `*.yaml` spec in the folder `tasks_dir`, sorted by name, with its data in
    `data_dir/<name>/` (default: softprompt.tasks.default_data_dir()); `only`: just these task
    names. Raises CatalogueError for a missing folder or an `only` name that is not there."""
    root = Path(tasks_dir)
    if not root.is_dir():
        raise CatalogueError(f"task catalogue {root}: not a directory")
    data_root = str(data_dir or default_data_dir())
    entries = []
    for path in sorted(root.glob("*.yaml")):
        data = DataRef(task=path.stem, data_dir=data_root)
        try:
            text = read_spec_file(path)
        except TaskDataError as err:  # one unreadable spec is that entry's error, not the lot's
            entries.append(CatalogueEntry(path.stem, str(path), error=f"invalid task spec: {err}"))
            continue
        entries.append(_entry(path.stem, str(path), text, data))
    return _select(entries, only, str(root))


def read_catalogue_at(repo: str, rev: str = "", only: Iterable[str] | None = None,
                      tasks_dir: str = "tasks",
                      remote: str = "") -> tuple[list[CatalogueEntry], str]:
    """The catalogue of a git + DVC repository at `rev` ('' = HEAD), and the commit it resolved
    to. Each task's data version is the DVC hash recorded for `data/<name>` at that commit (no
    data is downloaded); the pipeline fetches it by hash from `remote` ('' = the repository's
    default DVC remote). A task without such a record becomes an entry with `error` set."""
    try:
        fs, sha = open_dvc_repo(repo, rev)
    except DataFetchError as err:
        raise CatalogueError(str(err)) from err
    at = f"{repo}@{sha[:12]}"
    if not fs.isdir(tasks_dir):
        raise CatalogueError(f"task catalogue {tasks_dir}/ not found in {at}")
    remote = remote or default_remote(fs, at)
    entries = []
    for path in sorted(p for p in fs.ls(tasks_dir, detail=False) if p.endswith(".yaml")):
        name = Path(path).stem
        where = f"{path}@{sha[:12]}"
        data_path = f"{CATALOGUE_DATA_DIR}/{name}"
        try:
            version = recorded_hash(fs, data_path, f"task {name}: {data_path}@{sha[:12]} in {repo}")
        except DataFetchError as err:
            entries.append(CatalogueEntry(name, where, error=f"data: {err}"))
            continue
        ref = DataRef(task=name, version=version, remote=remote, rev=sha, path=data_path)
        try:
            text = decode_utf8(fs.read_bytes(path), where)
        except TaskDataError as err:
            entries.append(CatalogueEntry(name, where, error=f"invalid task spec: {err}"))
            continue
        entries.append(_entry(name, where, text, ref))
    return _select(entries, only, at), sha


def entry_data_version(entry: CatalogueEntry) -> str:
    """The data version the catalogue records for `entry`, else the DVC hash of its local data
    folder (hashing it reads the files, and nothing else)."""
    if entry.data.version:
        return entry.data.version
    return materialize(entry.data, scratch="")[1]  # a local folder: hashed where it is


def _latest(registry: Registry, task: str) -> Manifest | None:
    versions = registry.list_versions(task)  # oldest first
    return versions[-1] if versions else None


def _changes(entry: CatalogueEntry, latest: Manifest, version: str, base_model: str) -> list[str]:
    spec = entry.spec
    changes = []
    if latest.dataset_version != version:
        changes.append(f"data changed ({latest.dataset_version} -> {version})")
    named = (("template", spec.template, latest.template),
             ("label words", spec.label_words, latest.label_words),
             ("metric", spec.metric, latest.metric))
    spec_fields = [name for name, new, old in named if new != old]
    if not spec_fields and latest.spec_sha256 and latest.spec_sha256 != spec.digest:
        spec_fields = ["other fields"]  # e.g. splits, label_field, carve_dev, tsv columns
    if spec_fields:
        changes.append(f"spec changed ({', '.join(spec_fields)})")
    if latest.base_model != base_model:
        changes.append(f"base model changed ({latest.base_model} -> {base_model})")
    return changes


def plan_retraining(
    entries: list[CatalogueEntry],
    registry: Registry,
    base_model: str,
    force: Iterable[str] = (),
    data_version: Callable[[CatalogueEntry], str] = entry_data_version,
) -> list[TaskPlan]:
    """One plan per entry: retrain it (new, changed, or named in `force`) or not (unchanged).

    `data_version(entry)` gives the DVC hash of the task's data (default: the catalogue's record,
    else the local folder's hash); a TaskDataError or OSError from it (a missing folder) makes
    that task's plan an error. Registry errors propagate: without the registry nothing can be
    planned."""
    force = set(force)
    plans = []
    for entry in entries:
        common = dict(task=entry.name, spec_path=entry.spec_path,
                      spec_sha256=entry.spec.digest if entry.spec else None)
        if entry.error:
            plans.append(TaskPlan(**common, retrain=True, reason=entry.error, error=entry.error))
            continue
        latest = _latest(registry, entry.name)
        common["latest_version"] = latest.version if latest else None
        try:
            version = data_version(entry)
        except (TaskDataError, OSError) as err:
            error = f"data: {err}"
            plans.append(TaskPlan(**common, retrain=True, reason=error, error=error))
            continue
        reasons = ["new task"] if latest is None else _changes(entry, latest, version, base_model)
        if entry.name in force:
            reasons.insert(0, "requested")
        data = replace(entry.data, version=version).to_dict()
        reason = "; ".join(reasons) or "unchanged"
        plans.append(TaskPlan(**common, retrain=bool(reasons), reason=reason,
                              dataset_version=version, spec_text=entry.spec_text, data=data))
    return plans


def verify_registered(registry: Registry, plan: TaskPlan) -> Manifest:
    """The manifest a successful run of `plan` registered: a version newer than the plan's
    `latest_version` that records the planned data version. Raises RuntimeError otherwise."""
    latest = _latest(registry, plan.task)
    where = f"task {plan.task}: registry {registry.uri}"
    stale = plan.latest_version is not None and latest is not None \
        and latest.version <= plan.latest_version
    if latest is None or stale:
        raise RuntimeError(f"{where}: the pipeline finished but registered no new version "
                           f"(latest is still {plan.latest_version or 'none'})")
    if latest.dataset_version != plan.dataset_version:
        raise RuntimeError(f"{where}: v{latest.version} records dataset_version "
                           f"{latest.dataset_version}, "
                           f"expected {plan.dataset_version} (the data changed during the run?)")
    return latest
