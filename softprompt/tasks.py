"""Tasks as declarative specs: every task is text-to-text.

A spec (one YAML file per task, see `tasks/`) names the data files and their format, the input
template, the label field and the word each label is rendered as, and the metric. Loading turns
raw rows into `Example(input, target)` pairs and fails early, naming the file, line and field,
on anything malformed. A new task in a known format (jsonl, tsv, multirc) needs only a new spec.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from softprompt.fileio import atomic_write

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
    hub: dict | None = None  # {"path": ..., "name": ..., "splits": {...}}: the online source
    spec_file: str = ""
    extra: dict = field(default_factory=dict)
    digest: str = ""  # spec_digest of the spec's content (see there)

    @property
    def label_words(self) -> list[str]:
        """Distinct label words in spec order: the classes, and the choices ranked at evaluation."""
        return list(dict.fromkeys(self.labels.values()))

    def fields(self) -> list[str]:
        return [f for _, f, _, _ in string.Formatter().parse(self.template) if f]


def _require(raw: dict, key: str, where: str, kind: type):
    if key not in raw:
        raise TaskDataError(f"{where}: missing field {key!r}")
    if not isinstance(raw[key], kind):
        raise TaskDataError(f"{where}: field {key!r} must be {kind.__name__}, got {type(raw[key]).__name__}")
    return raw[key]


def spec_digest(raw: dict) -> str:
    """sha256 of what in a spec shapes training: its content with keys sorted (so reformatting
    the YAML changes nothing), leaving out `description` and the `hub` download source."""
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
            raise TaskDataError(f"{where}: field 'splits' has unknown split {split!r}; use {SPLITS}")
    labels = {_label_key(k): str(v) for k, v in _require(raw, "labels", where, dict).items()}
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
        raise TaskDataError(f"{where}: metric f1 needs 'positive_label' to be one of {spec.label_words}")
    if spec.carve_dev:
        if "dev" in spec.splits:
            raise TaskDataError(f"{where}: 'carve_dev' and a 'dev' file are exclusive")
        fraction = spec.carve_dev.get("fraction")
        if not isinstance(fraction, int | float) or not 0 < fraction < 1:
            raise TaskDataError(f"{where}: field 'carve_dev.fraction' must be in (0, 1)")
    if fmt == "tsv" and not spec.tsv_header and not spec.tsv_columns:
        raise TaskDataError(f"{where}: a tsv without header needs 'tsv.columns'")
    return spec


def _label_key(value) -> str:
    """Raw label values are compared as text: true/false for booleans, digits for ints."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def spec_path(name_or_path: str | Path, tasks_dir: str | Path | None = None) -> Path:
    """The spec file of a task name (`<name>.yaml` in the tasks folder: `tasks_dir`, else
    $SOFTPROMPT_TASKS_DIR, else the repository's tasks/), or the path itself; it must exist."""
    path = Path(name_or_path)
    if not path.suffix:
        folder = tasks_dir or os.environ.get("SOFTPROMPT_TASKS_DIR", TASKS_DIR)
        path = Path(folder) / f"{name_or_path}.yaml"
    if not path.is_file():
        parent = path.parent
        available = sorted(p.stem for p in parent.glob("*.yaml")) if parent.is_dir() else []
        raise TaskDataError(f"task spec not found: {path} "
                            f"(available: {', '.join(available) or 'none'})")
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


# ------------------------------------------------------------------ readers: file -> (line, row)
def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; errors name the file and line."""
    with path.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TaskDataError(f"{path}:{lineno}: malformed JSON: {err.msg} (column {err.colno})") from err
            if not isinstance(row, dict):
                raise TaskDataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def _read_tsv(path: Path, spec: TaskSpec, skipped: list[str]) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        columns = spec.tsv_columns
        for lineno, fields in enumerate(reader, 1):
            if lineno == 1 and spec.tsv_header:
                columns = columns or [c.strip() for c in fields]
                continue
            if not fields or fields == [""]:
                continue
            if len(fields) != len(columns):
                message = f"{path}:{lineno}: expected {len(columns)} tab-separated fields {columns}, got {len(fields)}"
                if spec.skip_malformed_rows:
                    skipped.append(message)
                    continue
                raise TaskDataError(message)
            yield lineno, dict(zip(columns, fields, strict=True))


def _read_multirc(path: Path) -> Iterator[tuple[int, dict]]:
    """One row per answer option: passage, question, answer, label, and the question as group."""
    for lineno, row in read_jsonl(path):
        try:
            passage = row["passage"]["text"]
            for q_index, question in enumerate(row["passage"]["questions"]):
                for answer in question["answers"]:
                    yield lineno, {
                        "passage": passage,
                        "question": question["question"],
                        "answer": answer["text"],
                        "label": answer.get("label"),
                        "group": f"{row.get('idx', lineno)}-{question.get('idx', q_index)}",
                    }
        except (KeyError, TypeError) as err:
            raise TaskDataError(f"{path}:{lineno}: MultiRC row lacks field {err}") from err


def _lookup(row: dict, dotted: str, where: str):
    """A field by dotted path into nested rows ({target.span1_text})."""
    value = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise TaskDataError(f"{where}: missing field {dotted!r}")
        value = value[part]
    return value


def _render(template: str, row: dict, where: str) -> str:
    out = []
    for literal, field_name, fmt, conv in string.Formatter().parse(template):
        out.append(literal)
        if field_name:
            value = _lookup(row, field_name, where)
            out.append(format(str(value) if conv is None else repr(value), fmt or ""))
    return "".join(out).strip()


def render_input(spec: TaskSpec, line: str, where: str) -> str:
    """One inference input: a JSON object of template fields, or plain text for one-field templates."""
    stripped = line.strip()
    if stripped.startswith("{"):
        try:
            row = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise TaskDataError(f"{where}: malformed JSON: {err.msg} (column {err.colno})") from err
        return _render(spec.template, row, where)
    names = list(dict.fromkeys(spec.fields()))
    if len(names) != 1:
        raise TaskDataError(f"{where}: task {spec.name} needs a JSON object with fields {names}")
    return _render(spec.template, {names[0]: stripped}, where)


def read_examples(spec: TaskSpec, path: Path, stats: dict | None = None) -> list[Example]:
    """Reads one data file into examples; every error names the file, line and field."""
    if not path.is_file():
        raise TaskDataError(f"task {spec.name}: data file not found: {path}")
    skipped: list[str] = []
    if spec.format == "jsonl":
        rows = read_jsonl(path)
    elif spec.format == "tsv":
        rows = _read_tsv(path, spec, skipped)
    else:
        rows = _read_multirc(path)
    examples = []
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        raw_label = _label_key(_lookup(row, spec.label_field, where))
        if raw_label not in spec.labels:
            raise TaskDataError(
                f"{where}: field {spec.label_field!r} has unknown label {raw_label!r}; "
                f"legal labels: {', '.join(spec.labels)}"
            )
        text = _render(spec.template, row, where)
        if not text:
            raise TaskDataError(f"{where}: the template renders an empty input")
        examples.append(Example(text, spec.labels[raw_label], row.get("group"), where))
    if stats is not None:
        stats.setdefault("skipped_rows", []).extend(skipped)
    return examples


def seeded_subset(items: list, cap: int | None, seed: int) -> list:
    """`cap` items drawn with `seed`, in their original order; all of them when cap is 0/None or
    at least their number."""
    if not cap or len(items) <= cap:
        return items
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), cap))]


def _carve(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Reproducible split: a seeded shuffle of indices; MultiRC keeps a question's options together."""
    keys = list(dict.fromkeys(e.group or e.source for e in examples))
    random.Random(seed).shuffle(keys)
    dev_keys = set(keys[: max(1, round(len(keys) * fraction))])
    train = [e for e in examples if (e.group or e.source) not in dev_keys]
    dev = [e for e in examples if (e.group or e.source) in dev_keys]
    return train, dev


def load_task(spec: TaskSpec, data_dir: str | Path | None = None, stats: dict | None = None) -> dict[str, list[Example]]:
    """All splits of a task from the local mirror. Missing files and empty splits are errors."""
    root = Path(data_dir) if data_dir else default_data_dir()
    data: dict[str, list[Example]] = {}
    for split, rel in spec.splits.items():
        data[split] = read_examples(spec, root / rel, stats)
    if spec.carve_dev:
        source = spec.carve_dev.get("from", "train")
        if source not in data:
            raise TaskDataError(f"{spec.spec_file}: carve_dev.from names split {source!r}, which has no file")
        data[source], data["dev"] = _carve(data[source], spec.carve_dev["fraction"], int(spec.carve_dev.get("seed", 0)))
    for split, examples in data.items():
        if not examples:
            raise TaskDataError(f"task {spec.name}: split {split!r} is empty ({spec.splits.get(split, 'carved')})")
    return data


def write_prepared(spec: TaskSpec, data: dict[str, list[Example]], out_dir: str | Path, stats: dict | None = None) -> dict:
    """Writes normalized examples, one `<split>.jsonl` per split plus `meta.json`: what the
    pipeline components and DVC stages consume. Files are written to a temp name, then renamed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, examples in data.items():
        lines = [
            json.dumps(
                {"input": e.input, "target": e.target, "group": e.group, "source": e.source},
                ensure_ascii=False,
            )
            + "\n"
            for e in examples
        ]
        atomic_write(out / f"{split}.jsonl", "".join(lines).encode("utf-8"))
    meta = {
        "task": spec.name,
        "label_words": spec.label_words,
        "metric": spec.metric,
        "counts": {split: len(examples) for split, examples in data.items()},
        "skipped_rows": (stats or {}).get("skipped_rows", []),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def load_prepared(prepared_dir: str | Path) -> dict[str, list[Example]]:
    """Reads what `write_prepared` wrote; errors name the file and line."""
    root = Path(prepared_dir)
    if not (root / "meta.json").is_file():
        raise TaskDataError(f"{root}: not a prepared task folder (no meta.json)")
    data = {}
    for split in SPLITS:
        path = root / f"{split}.jsonl"
        if not path.is_file():
            continue
        data[split] = []
        for lineno, row in read_jsonl(path):
            try:
                data[split].append(Example(row["input"], row["target"], row.get("group"), row.get("source", "")))
            except KeyError as err:
                raise TaskDataError(f"{path}:{lineno}: missing field {err}") from err
        if not data[split]:
            raise TaskDataError(f"{path}: split {split!r} is empty")
    return data


def load_task_from_hub(spec: TaskSpec) -> dict[str, list[Example]]:
    """The same task read from the Hugging Face hub with `datasets` (needs internet)."""
    if not spec.hub:
        raise TaskDataError(f"{spec.spec_file}: no 'hub' source configured")
    from datasets import load_dataset

    data = {}
    for split, hub_split in spec.hub.get("splits", {}).items():
        rows = load_dataset(spec.hub["path"], spec.hub.get("name"), split=hub_split)
        data[split] = []
        for i, row in enumerate(rows):
            where = f"{spec.hub['path']}/{spec.hub.get('name')}[{hub_split}]:{i}"
            raw_label = _label_key(_lookup(row, spec.label_field, where))
            if raw_label not in spec.labels:
                raise TaskDataError(f"{where}: unknown label {raw_label!r}; legal labels: {', '.join(spec.labels)}")
            data[split].append(Example(_render(spec.template, row, where), spec.labels[raw_label], None, where))
    return data


# ------------------------------------------------------------------ metrics
def _f1(pred: list[str], gold: list[str], positive: str) -> float:
    tp = sum(p == positive and g == positive for p, g in zip(pred, gold, strict=True))
    fp = sum(p == positive and g != positive for p, g in zip(pred, gold, strict=True))
    fn = sum(p != positive and g == positive for p, g in zip(pred, gold, strict=True))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def compute_metrics(spec: TaskSpec, predictions: list[str], examples: list[Example]) -> dict[str, float]:
    """Accuracy always; F1 (binary), macro-F1 (CB) or MultiRC's EM and F1a per the spec.
    `score` is the spec's primary metric, the one early stopping and quality gates use."""
    gold = [e.target for e in examples]
    if len(predictions) != len(gold) or not gold:
        raise ValueError(f"{len(predictions)} predictions for {len(gold)} examples")
    out = {"accuracy": sum(p == g for p, g in zip(predictions, gold, strict=True)) / len(gold)}
    if spec.metric == "f1":
        out["f1"] = _f1(predictions, gold, spec.positive_label)
    elif spec.metric == "macro_f1":
        out["macro_f1"] = sum(_f1(predictions, gold, w) for w in spec.label_words) / len(spec.label_words)
    elif spec.metric == "multirc":
        positive = spec.positive_label or spec.label_words[-1]
        out["f1a"] = _f1(predictions, gold, positive)
        groups: dict[str, bool] = {}
        for p, e in zip(predictions, examples, strict=True):
            groups[e.group or e.source] = groups.get(e.group or e.source, True) and p == e.target
        out["em"] = sum(groups.values()) / len(groups)
    out["score"] = out[{"multirc": "f1a"}.get(spec.metric, spec.metric)]
    return out
