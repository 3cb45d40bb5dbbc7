"""Tasks as declarative specs: every task is text-to-text.

A spec (one YAML file per task, see `tasks/`) names the data files and their format, the input
template, the label field and the word each label is rendered as, and the metric. Specs are
validated here, and every error names the spec file and field. Reading a task's data into
`Example(input, target)` pairs is softprompt.task_data, its metrics softprompt.task_metrics, the
normalized files the pipeline passes between steps softprompt.prepared. A new task in a known
format (jsonl, tsv, multirc) needs only a new spec.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import yaml

FORMATS = ("jsonl", "tsv", "multirc")
METRICS = ("accuracy", "f1", "macro_f1", "multirc")
SPLITS = ("train", "dev", "test")
REPO_ROOT = Path(__file__).resolve().parent.parent
TASKS_DIR = REPO_ROOT / "tasks"


class TaskDataError(ValueError):
    """Bad task data or spec; the message names the file, line and field."""


@dataclass(frozen=True)
class Example:
    input: str
    target: str  # the label word
    group: str | None = None  # MultiRC: the question an answer option belongs to
    source: str = ""  # "file:line", for error messages and audits


@dataclass
class TaskSpec:
    name: str
    format: str
    splits: dict[str, str]
    template: str
    label_field: str
    labels: dict[str, str]  # raw label value (as text) -> label word
    metric: str = "accuracy"
    positive_label: str | None = None  # f1: which label word counts as positive
    description: str = ""
    tsv_columns: list[str] | None = None  # tsv without a header line: the column names
    tsv_header: bool = True
    skip_malformed_rows: bool = False  # count and skip rows with the wrong number of fields
    carve_dev: dict | None = None  # {"from": "train", "fraction": 0.1, "seed": 0}
    hub: dict | None = None  # {"path": ..., "name": ..., "splits": {...}}, the online source
    spec_file: str = ""
    extra: dict = field(default_factory=dict)
    digest: str = ""  # spec_digest of the spec's content (see there)

    @property
    def label_words(self) -> list[str]:
        """Distinct label words in spec order.

        They are the classes, and the choices ranked at evaluation."""
        return list(dict.fromkeys(self.labels.values()))

    def fields(self) -> list[str]:
        return [f for _, f, _, _ in string.Formatter().parse(self.template) if f]


def _require(raw: dict, key: str, where: str, kind: type):
    if key not in raw:
        raise TaskDataError(f"{where}: missing field {key!r}")
    if not isinstance(raw[key], kind):
        raise TaskDataError(
            f"{where}: field {key!r} must be {kind.__name__}, got {type(raw[key]).__name__}"
        )
    return raw[key]


def spec_digest(raw: dict) -> str:
    """sha256 of what in a spec shapes training.

    That is its content with keys sorted (so reformatting the YAML changes nothing), leaving out
    `description` and the `hub` download source."""
    kept = {k: v for k, v in raw.items() if k not in ("description", "hub")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def parse_spec(raw: dict, where: str) -> TaskSpec:
    """Validates a spec dict (from YAML) into a TaskSpec; errors name the spec file and field."""
    if not isinstance(raw, dict):
        raise TaskDataError(f"{where}: a task spec must be a mapping")
    name = _require(raw, "name", where, str)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", name):
        raise TaskDataError(f"{where}: field 'name' must match [a-z0-9][a-z0-9_-]*, got {name!r}")
    fmt = _require(raw, "format", where, str)
    if fmt not in FORMATS:
        raise TaskDataError(f"{where}: field 'format' must be one of {FORMATS}, got {fmt!r}")
    splits = _require(raw, "splits", where, dict)
    for split in splits:
        if split not in SPLITS:
            raise TaskDataError(
                f"{where}: field 'splits' has unknown split {split!r}; use {SPLITS}"
            )
    labels = {label_key(k): str(v) for k, v in _require(raw, "labels", where, dict).items()}
    metric = raw.get("metric", "accuracy")
    if metric not in METRICS:
        raise TaskDataError(f"{where}: field 'metric' must be one of {METRICS}, got {metric!r}")
    tsv = raw.get("tsv", {}) or {}
    spec = TaskSpec(
        name=name,
        format=fmt,
        splits={k: str(v) for k, v in splits.items()},
        template=_require(raw, "template", where, str),
        label_field=_require(raw, "label_field", where, str),
        labels=labels,
        metric=metric,
        positive_label=raw.get("positive_label"),
        description=raw.get("description", ""),
        tsv_columns=tsv.get("columns"),
        tsv_header=bool(tsv.get("header", True)),
        skip_malformed_rows=bool(raw.get("skip_malformed_rows", False)),
        carve_dev=raw.get("carve_dev"),
        hub=raw.get("hub"),
        spec_file=where,
        digest=spec_digest(raw),
    )
    if metric == "f1" and spec.positive_label not in spec.label_words:
        raise TaskDataError(
            f"{where}: metric f1 needs 'positive_label' to be one of {spec.label_words}"
        )
    if spec.carve_dev:
        if "dev" in spec.splits:
            raise TaskDataError(f"{where}: 'carve_dev' and a 'dev' file are exclusive")
        fraction = spec.carve_dev.get("fraction")
        if not isinstance(fraction, int | float) or not 0 < fraction < 1:
            raise TaskDataError(f"{where}: field 'carve_dev.fraction' must be in (0, 1)")
    if fmt == "tsv" and not spec.tsv_header and not spec.tsv_columns:
        raise TaskDataError(f"{where}: a tsv without header needs 'tsv.columns'")
    return spec


def label_key(value) -> str:
    """Raw label values are compared as text: true/false for booleans, digits for ints."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def spec_path(name_or_path: str | Path, tasks_dir: str | Path | None = None) -> Path:
    """The spec file of a task name, or the path itself; it must exist.

    A name is looked up as `<name>.yaml` in the tasks folder, which is `tasks_dir`, else
    $SOFTPROMPT_TASKS_DIR, else the repository's tasks/."""
    path = Path(name_or_path)
    if not path.suffix:
        folder = tasks_dir or os.environ.get("SOFTPROMPT_TASKS_DIR", TASKS_DIR)
        path = Path(folder) / f"{name_or_path}.yaml"
    if not path.is_file():
        parent = path.parent
        available = sorted(p.stem for p in parent.glob("*.yaml")) if parent.is_dir() else []
        raise TaskDataError(
            f"task spec not found: {path} (available: {', '.join(available) or 'none'})"
        )
    return path


def load_spec(name_or_path: str | Path, tasks_dir: str | Path | None = None) -> TaskSpec:
    """A task by name (a file `<name>.yaml` in the tasks folder) or by spec file path."""
    path = spec_path(name_or_path, tasks_dir)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise TaskDataError(f"{path}: invalid YAML: {err}") from err
    return parse_spec(raw, str(path))


def default_data_dir() -> Path:
    """$SOFTPROMPT_DATA_DIR, else a `shared/data` folder beside the checkout (the local mirror)."""
    env = os.environ.get("SOFTPROMPT_DATA_DIR")
    if env:
        return Path(env)
    for base in (Path.cwd(), REPO_ROOT):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return REPO_ROOT.parent / "shared" / "data"
