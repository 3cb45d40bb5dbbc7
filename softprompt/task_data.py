"""A task's data as examples: raw rows read per format, rendered through the spec's template.

Loading turns raw rows into `Example(input, target)` pairs and fails early, naming the file, line
and field, on anything malformed. The readers know three formats (jsonl, tsv, multirc); the spec
(softprompt.tasks) says which one a task uses and how its rows become inputs and label words.
"""

from __future__ import annotations

import functools
import json
import math
import random
import string
from collections.abc import Iterator
from pathlib import Path

from softprompt.tasks import (
    Example,
    TaskDataError,
    TaskSpec,
    clip,
    decode_utf8,
    default_data_dir,
    label_key,
)
from softprompt.verbalizer import VerbalizerError, template_fields

# A line of a data file, in characters. Inputs are cut to a few hundred tokens, so longer lines
# are mistakes, and reading stops there instead of holding a runaway line in memory.
MAX_LINE_CHARS = 1_000_000


# ------------------------------------------------------------------ readers: file -> (line, row)
def _lines(path: Path, newline: str | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a UTF-8 file, a leading BOM dropped.

    Invalid UTF-8, a line over MAX_LINE_CHARS and an unreadable file (a folder, no permission)
    are TaskDataErrors naming the file and line."""
    lineno = 0
    try:
        with path.open(encoding="utf-8-sig", newline=newline) as f:
            while line := f.readline(MAX_LINE_CHARS + 1):
                lineno += 1
                if len(line) > MAX_LINE_CHARS:
                    raise _too_long(path, lineno)
                yield lineno, line
    except UnicodeDecodeError as err:
        # Text is decoded in blocks ahead of the lines handed out: find the bad line itself.
        raise _utf8_error(path) from err
    except OSError as err:
        raise TaskDataError(f"{path}: cannot read: {err.strerror or err}") from err


def _too_long(path: Path, lineno: int) -> TaskDataError:
    return TaskDataError(f"{path}:{lineno}: line longer than {MAX_LINE_CHARS:,} characters")


def _utf8_error(path: Path) -> TaskDataError:
    """The error for the first line of `path` that is not valid UTF-8, with its line number."""
    limit = 4 * MAX_LINE_CHARS + 4  # bytes that hold more than MAX_LINE_CHARS characters
    with path.open("rb") as f:
        for lineno, raw in enumerate(iter(lambda: f.readline(limit), b""), 1):
            if len(raw) == limit and not raw.endswith(b"\n"):
                return _too_long(path, lineno)
            try:
                decode_utf8(raw, str(path), lineno)
            except TaskDataError as err:
                return err
    return TaskDataError(f"{path}: not valid UTF-8")


def parse_json(text: str, where: str) -> object:
    """json.loads, its errors (nesting too deep included) a one-line TaskDataError at `where`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise TaskDataError(f"{where}: malformed JSON: {err.msg} (column {err.colno})") from err
    except RecursionError:
        raise TaskDataError(f"{where}: malformed JSON: nested too deeply") from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise TaskDataError(f"{where}: malformed JSON: {clip(str(err))}") from err


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; errors name the file and line."""
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        row = parse_json(line, f"{path}:{lineno}")
        if not isinstance(row, dict):
            raise TaskDataError(
                f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}"
            )
        yield lineno, row


def _read_tsv(path: Path, spec: TaskSpec, skipped: list[str]) -> Iterator[tuple[int, dict]]:
    """Rows of tab-separated fields, no quoting, so a line is split at its tabs."""
    columns = spec.tsv_columns
    for lineno, line in _lines(path, newline=""):
        fields = line.rstrip("\r\n").split("\t")
        if lineno == 1 and spec.tsv_header:
            columns = columns or [c.strip() for c in fields]
            continue
        if fields == [""]:
            continue
        if len(fields) != len(columns):
            message = (
                f"{path}:{lineno}: expected {len(columns)} tab-separated fields "
                f"{clip(str(columns))}, got {len(fields)}"
            )
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
                    option = {
                        "passage": passage,
                        "question": question["question"],
                        "answer": answer["text"],
                        "label": answer.get("label"),
                        "group": f"{row.get('idx', lineno)}-{question.get('idx', q_index)}",
                    }
                    yield lineno, option
        except KeyError as err:
            raise TaskDataError(f"{path}:{lineno}: MultiRC row lacks field {err}") from err
        except TypeError as err:
            raise TaskDataError(
                f"{path}:{lineno}: MultiRC row is not passage.questions[].answers[] objects "
                f"({clip(str(err))})"
            ) from err


def _lookup(row: dict, dotted: str, where: str):
    """A field by dotted path into nested rows ({target.span1_text})."""
    value = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise TaskDataError(f"{where}: missing field {dotted!r}")
        value = value[part]
    return value


def _field_text(value: object, name: str, where: str) -> str:
    """A template field's text, a string as itself and a finite number as str(), nothing else."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, int) or math.isfinite(value):
            return str(value)
        kind = f"the number {value}"
    elif isinstance(value, bool):
        kind = "a boolean"
    elif value is None:
        kind = "null"
    else:
        kind = {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)
    raise TaskDataError(
        f"{where}: field {name!r} is {kind}; a template field must be text or a finite number"
    )


@functools.lru_cache(maxsize=256)
def _template_parts(template: str) -> tuple[tuple[str, str | None], ...]:
    """(literal text, field name or None) pairs of a template that follows
    softprompt.verbalizer's rules; parsed and checked once per template, not once per row."""
    template_fields(template)
    return tuple((literal, name) for literal, name, _, _ in string.Formatter().parse(template))


def _parts(template: str, where: str) -> tuple[tuple[str, str | None], ...]:
    """_template_parts, its VerbalizerError a TaskDataError at `where`."""
    try:
        return _template_parts(template)
    except VerbalizerError as err:
        raise TaskDataError(f"{where}: {clip(str(err))}") from err


def _render(template: str, row: dict, where: str) -> str:
    """`template` filled from `row`; the template follows softprompt.verbalizer's rules."""
    out = []
    for literal, name in _parts(template, where):
        out.append(literal)
        if name is not None:
            out.append(_field_text(_lookup(row, name, where), name, where))
    return "".join(out).strip()


def render_input(spec: TaskSpec, line: str, where: str) -> str:
    """One inference input, a JSON object of template fields or plain text.

    Plain text serves templates with a single field."""
    stripped = line.strip()
    if stripped.startswith("{"):
        row = parse_json(stripped, where)
        if not isinstance(row, dict):
            raise TaskDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        return _render(spec.template, row, where)
    names = list(dict.fromkeys(name for _, name in _parts(spec.template, where) if name))
    if len(names) != 1:
        raise TaskDataError(f"{where}: task {spec.name} needs a JSON object with fields {names}")
    return _render(spec.template, {names[0]: stripped}, where)


def _example(spec: TaskSpec, row: dict, where: str) -> Example:
    """One raw row as an example: its label checked, its input rendered through the template."""
    raw_label = label_key(_lookup(row, spec.label_field, where))
    if raw_label not in spec.labels:
        raise TaskDataError(
            f"{where}: field {spec.label_field!r} has unknown label {clip(repr(raw_label))}; "
            f"legal labels: {', '.join(spec.labels)}"
        )
    text = _render(spec.template, row, where)
    if not text:
        raise TaskDataError(f"{where}: the template renders an empty input")
    group = row.get("group")
    if group is not None and not isinstance(group, str):
        raise TaskDataError(f"{where}: field 'group' must be text, got {type(group).__name__}")
    return Example(text, spec.labels[raw_label], group, where)


def read_examples(spec: TaskSpec, path: Path, stats: dict | None = None) -> list[Example]:
    """Reads one data file into examples; every error names the file, line and field."""
    if not path.exists():
        raise TaskDataError(f"task {spec.name}: data file not found: {path}")
    skipped: list[str] = []
    if spec.format == "jsonl":
        rows = read_jsonl(path)
    elif spec.format == "tsv":
        rows = _read_tsv(path, spec, skipped)
    else:
        rows = _read_multirc(path)
    examples = [_example(spec, row, f"{path}:{lineno}") for lineno, row in rows]
    if stats is not None:
        stats.setdefault("skipped_rows", []).extend(skipped)
    return examples


# ------------------------------------------------------------------ splits
def seeded_subset(items: list, cap: int | None, seed: int) -> list:
    """`cap` items drawn with `seed`, in their original order.

    All of them are kept when cap is 0/None or at least their number."""
    if not cap or len(items) <= cap:
        return items
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), cap))]


def _carve(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Reproducible split by a seeded shuffle of indices.

    MultiRC keeps a question's options together."""
    keys = list(dict.fromkeys(e.group or e.source for e in examples))
    random.Random(seed).shuffle(keys)
    dev_keys = set(keys[: max(1, round(len(keys) * fraction))])
    train = [e for e in examples if (e.group or e.source) not in dev_keys]
    dev = [e for e in examples if (e.group or e.source) in dev_keys]
    return train, dev


def load_task(
    spec: TaskSpec, data_dir: str | Path | None = None, stats: dict | None = None
) -> dict[str, list[Example]]:
    """All splits of a task from the local mirror. Missing files and empty splits are errors."""
    root = Path(data_dir) if data_dir else default_data_dir()
    data: dict[str, list[Example]] = {}
    for split, rel in spec.splits.items():
        data[split] = read_examples(spec, root / rel, stats)
    if spec.carve_dev:
        source = spec.carve_dev.get("from", "train")
        if source not in data:
            raise TaskDataError(
                f"{spec.spec_file}: carve_dev.from names split {source!r}, which has no file"
            )
        seed = int(spec.carve_dev.get("seed", 0))
        data[source], data["dev"] = _carve(data[source], spec.carve_dev["fraction"], seed)
    for split, examples in data.items():
        if not examples:
            raise TaskDataError(
                f"task {spec.name}: split {split!r} is empty ({spec.splits.get(split, 'carved')})"
            )
    return data


def load_task_from_hub(spec: TaskSpec) -> dict[str, list[Example]]:
    """The same task read from the Hugging Face hub with `datasets` (needs internet)."""
    if not spec.hub:
        raise TaskDataError(f"{spec.spec_file}: no 'hub' source configured")
    from datasets import load_dataset

    data = {}
    for split, hub_split in spec.hub.get("splits", {}).items():
        rows = load_dataset(spec.hub["path"], spec.hub.get("name"), split=hub_split)
        where = f"{spec.hub['path']}/{spec.hub.get('name')}[{hub_split}]"
        data[split] = [_example(spec, dict(row), f"{where}:{i}") for i, row in enumerate(rows)]
    return data
