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
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from softprompt.verbalizer import VerbalizerError, check_label_words, template_fields

FORMATS = ("jsonl", "tsv", "multirc")
METRICS = ("accuracy", "f1", "macro_f1", "multirc")
SPLITS = ("train", "dev", "test")
REPO_ROOT = Path(__file__).resolve().parent.parent
TASKS_DIR = REPO_ROOT / "tasks"
MAX_SHOWN_CHARS = 200  # a value quoted in an error message is cut, input can be megabytes


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
        """The template's field names in order, repeats kept (softprompt.verbalizer's rules)."""
        return template_fields(self.template)


def clip(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """`text` cut to `limit` characters for an error message, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


def _require(raw: dict, key: str, where: str, kind: type):
    if key not in raw:
        raise TaskDataError(f"{where}: missing field {key!r}")
    if not isinstance(raw[key], kind):
        raise TaskDataError(
            f"{where}: field {key!r} must be {kind.__name__}, got {type(raw[key]).__name__}"
        )
    return raw[key]


def _optional(raw: dict, key: str, where: str, kind: type, default=None, name: str = ""):
    """raw[key] when it is a `kind`, `default` when absent or null; TaskDataError otherwise.

    `name` is the field as the message names it (`key` by default)."""
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        hint = (
            " (YAML reads unquoted yes/no/true/false as booleans: quote it)"
            if (isinstance(value, bool) and kind is str)
            else ""
        )
        raise TaskDataError(
            f"{where}: field {name or key!r} must be {kind.__name__}, got "
            f"{type(value).__name__}{hint}"
        )
    return value


def _text_map(value: object, where: str, what: str, keys: tuple | None = None) -> dict[str, str]:
    """`value` as a mapping of non-empty strings (keys from `keys` when given)."""
    if not isinstance(value, dict):
        raise TaskDataError(
            f"{where}: field {what!r} must be a mapping, got {type(value).__name__}"
        )
    for key, text in value.items():
        if keys is not None and key not in keys:
            raise TaskDataError(
                f"{where}: field {what!r} has unknown split {clip(repr(key))}; use {keys}"
            )
        if not isinstance(text, str) or not text.strip():
            raise TaskDataError(
                f"{where}: field '{what}.{key}' must be a non-empty string, got {clip(repr(text))}"
            )
    return dict(value)


def _check_template(raw: dict, where: str) -> str:
    template = _require(raw, "template", where, str)
    try:
        template_fields(template, f"{where}: field 'template'")
    except VerbalizerError as err:
        raise TaskDataError(clip(str(err), 2 * MAX_SHOWN_CHARS)) from err
    return template


def _check_labels(raw: dict, where: str) -> dict[str, str]:
    """raw label (as text) -> label word; the words follow softprompt.verbalizer's rules."""
    labels = _require(raw, "labels", where, dict)
    what = f"{where}: field 'labels'"
    try:
        check_label_words(list(labels.values()), what)
    except VerbalizerError as err:
        raise TaskDataError(clip(str(err), 2 * MAX_SHOWN_CHARS)) from err
    keyed: dict[str, str] = {}
    for value, word in labels.items():
        if not isinstance(value, str | int | float):
            raise TaskDataError(
                f"{what}: raw label {value!r} must be text or a number (quote it in YAML)"
            )
        key = label_key(value)
        if key in keyed:
            raise TaskDataError(
                f"{what}: two raw labels are both read as {key!r}; keep one of them"
            )
        keyed[key] = word
    return keyed


def _check_tsv(raw: dict, where: str) -> tuple[list[str] | None, bool]:
    """The tsv block's column names and whether the file has a header line."""
    tsv = _optional(raw, "tsv", where, dict, {})
    unknown = sorted(set(tsv) - {"columns", "header"})
    if unknown:
        raise TaskDataError(f"{where}: field 'tsv' has unknown keys {unknown}; use columns, header")
    columns = _optional(tsv, "columns", where, list, name="tsv.columns")
    if columns is not None:
        if not columns or not all(isinstance(c, str) and c.strip() for c in columns):
            raise TaskDataError(f"{where}: field 'tsv.columns' must be a list of column names")
        if len(set(columns)) != len(columns):
            raise TaskDataError(f"{where}: field 'tsv.columns' names a column twice")
    header = _optional(tsv, "header", where, bool, True, name="tsv.header")
    return columns, header


def _check_carve_dev(raw: dict, splits: dict[str, str], where: str) -> dict | None:
    carve = _optional(raw, "carve_dev", where, dict)
    if carve is None:
        return None
    unknown = sorted(set(carve) - {"from", "fraction", "seed"})
    if unknown:
        raise TaskDataError(
            f"{where}: field 'carve_dev' has unknown keys {unknown}; use from, fraction, seed"
        )
    if "dev" in splits:
        raise TaskDataError(f"{where}: 'carve_dev' and a 'dev' file are exclusive")
    source = carve.get("from", "train")
    if source not in splits:
        raise TaskDataError(
            f"{where}: field 'carve_dev.from' must name a split with a file {sorted(splits)}, "
            f"got {clip(repr(source))}"
        )
    fraction = carve.get("fraction")
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float)
        or not (0 < fraction < 1)
    ):
        raise TaskDataError(f"{where}: field 'carve_dev.fraction' must be in (0, 1)")
    seed = carve.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TaskDataError(f"{where}: field 'carve_dev.seed' must be an integer")
    return dict(carve)


def _check_hub(raw: dict, where: str) -> dict | None:
    hub = _optional(raw, "hub", where, dict)
    if hub is None:
        return None
    if not isinstance(hub.get("path"), str) or not hub["path"]:
        raise TaskDataError(f"{where}: field 'hub.path' must be a dataset name")
    for key in ("name", "revision"):
        _optional(hub, key, where, str, name=f"hub.{key}")
    _text_map(hub.get("splits", {}), where, "hub.splits", SPLITS)
    return dict(hub)


def spec_digest(raw: dict) -> str:
    """sha256 of what in a spec shapes training.

    That is its content with keys sorted (so reformatting the YAML changes nothing), leaving out
    `description` and the `hub` download source."""
    kept = {k: v for k, v in raw.items() if k not in ("description", "hub")}
    try:
        text = json.dumps(kept, sort_keys=True, default=str)
    except TypeError:
        # Keys json cannot sort or write (0 beside "1", null): compared by their repr instead.
        text = json.dumps(_repr_keys(kept), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _repr_keys(value: object) -> object:
    if isinstance(value, dict):
        return {repr(k): _repr_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_repr_keys(v) for v in value]
    return value


def parse_spec(raw: dict, where: str) -> TaskSpec:
    """Validates a spec dict (from YAML) into a TaskSpec; errors name the spec file and field."""
    if not isinstance(raw, dict):
        raise TaskDataError(f"{where}: a task spec must be a mapping, got {type(raw).__name__}")
    name = _require(raw, "name", where, str)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", name):
        raise TaskDataError(
            f"{where}: field 'name' must match [a-z0-9][a-z0-9_-]*, got {clip(repr(name))}"
        )
    fmt = _require(raw, "format", where, str)
    if fmt not in FORMATS:
        raise TaskDataError(f"{where}: field 'format' must be one of {FORMATS}, got {clip(fmt)!r}")
    splits = _text_map(_require(raw, "splits", where, dict), where, "splits", SPLITS)
    metric = raw.get("metric", "accuracy")
    if metric not in METRICS:
        raise TaskDataError(
            f"{where}: field 'metric' must be one of {METRICS}, got {clip(repr(metric))}"
        )
    template = _check_template(raw, where)
    label_field = _require(raw, "label_field", where, str)
    if not label_field.strip():
        raise TaskDataError(f"{where}: field 'label_field' is empty")
    labels = _check_labels(raw, where)
    tsv_columns, tsv_header = _check_tsv(raw, where)
    spec = TaskSpec(
        name=name,
        format=fmt,
        splits=splits,
        template=template,
        label_field=label_field,
        labels=labels,
        metric=metric,
        positive_label=_optional(raw, "positive_label", where, str),
        description=_optional(raw, "description", where, str, ""),
        tsv_columns=tsv_columns,
        tsv_header=tsv_header,
        skip_malformed_rows=_optional(raw, "skip_malformed_rows", where, bool, False),
        carve_dev=_check_carve_dev(raw, splits, where),
        hub=_check_hub(raw, where),
        spec_file=where,
        digest=spec_digest(raw),
    )
    if metric == "f1" and spec.positive_label is None:
        raise TaskDataError(
            f"{where}: metric f1 needs 'positive_label' to be one of {spec.label_words}"
        )
    if spec.positive_label is not None and spec.positive_label not in spec.label_words:
        raise TaskDataError(
            f"{where}: field 'positive_label' must be one of {spec.label_words}, got "
            f"{clip(repr(spec.positive_label))}"
        )
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


def decode_utf8(data: bytes, where: str, first_line: int = 1) -> str:
    """`data` as UTF-8 text; TaskDataError naming the line and column of the first bad byte.

    `first_line` is the line number `data` starts at."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + data.count(b"\n", 0, err.start)
        line_start = data.rfind(b"\n", 0, err.start) + 1
        column = len(data[line_start : err.start].decode("utf-8", "replace")) + 1
        raise TaskDataError(
            f"{where}:{line}: not valid UTF-8 (byte 0x{data[err.start]:02x} at column {column})"
        ) from err


def read_spec_file(path: str | Path) -> str:
    """A spec file's text; unreadable files and invalid UTF-8 are TaskDataErrors naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise TaskDataError(f"{path}: cannot read the task spec: {err.strerror or err}") from err
    return decode_utf8(data, str(path))


def spec_yaml(text: str, where: str) -> object:
    """The YAML document in a spec's text; an error names the file and line in one line.

    Aliases (`*name`) are refused: a spec never needs them, and a few nested ones expand into a
    document of billions of nodes when the spec's digest is taken. Loading shares an alias's
    node instead of copying it, so it runs first: it also stops a deeply nested document within
    a second, where the event scan takes a second per thousand levels."""
    try:
        document = yaml.safe_load(text)
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                line = event.start_mark.line + 1
                raise TaskDataError(f"{where}:{line}: YAML aliases (*{event.anchor}) are not "
                                    "allowed in a task spec; write the value out")
        return document
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        at = f":{mark.line + 1}" if mark else ""
        problem = " ".join(p for p in (err.context, err.problem) if p)
        raise TaskDataError(f"{where}{at}: invalid YAML: {clip(problem)}") from err
    except yaml.YAMLError as err:
        raise TaskDataError(f"{where}: invalid YAML: {clip(' '.join(str(err).split()))}") from err
    except RecursionError:
        raise TaskDataError(f"{where}: invalid YAML: nested too deeply") from None


def load_spec(name_or_path: str | Path, tasks_dir: str | Path | None = None) -> TaskSpec:
    """A task by name (a file `<name>.yaml` in the tasks folder) or by spec file path."""
    path = spec_path(name_or_path, tasks_dir)
    return parse_spec(spec_yaml(read_spec_file(path), str(path)), str(path))


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
