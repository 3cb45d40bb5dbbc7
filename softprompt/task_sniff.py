"""A first task spec drafted from a data file, its format, columns and labels guessed.

`softprompt tasks new` reads one data file, guesses how it is laid out, and writes a spec that
`softprompt tasks validate` accepts, with placeholder label words and comments on what to edit.

    sniffed = sniff_data(Path("data/sentiment/train.tsv"))
    text = draft_spec("sentiment", sniffed, {"train": "sentiment/train.tsv"})

The guesses:

  format       jsonl when the first non-blank line is a JSON object, else tsv when it has a tab
  tsv header   the first row is a header when its fields are all short non-numeric identifiers
               and at least one column differs in kind below it (numbers, long text, or a
               few repeated values that the first row's field is not one of)
  label        a column of 2 to 20 distinct short values, preferably named label, labels,
               class or target
  text         the other columns whose values are mostly non-numeric text
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from softprompt.task_data import read_jsonl
from softprompt.tasks import TaskDataError, decode_utf8, label_key

MAX_SNIFF_ROWS = 100_000  # enough rows to see every label value of a local data file
MAX_LABEL_VALUES = 20
MAX_LABEL_CHARS = 50  # a longer value is text, not a class
LABEL_NAMES = ("label", "labels", "class", "target")
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
# A header field: a short name, spaces and '#' allowed (GLUE's "#1 String"), no dots or braces.
IDENTIFIER = re.compile(r"[A-Za-z_#][A-Za-z0-9_# -]{0,39}")
# A column name a template can use as {name}: dots would be read as nested fields.
FIELD_NAME = re.compile(r"[^\s.{}\[\]:!][^.{}\[\]:!]*")
WORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


@dataclass
class Column:
    """What the rows hold in one column, its distinct values (up to a cap) and their kinds."""

    name: str
    index: int
    rows: int = 0
    texts: int = 0  # non-numeric strings
    chars: int = 0  # total characters of the values
    longest: int = 0
    other: int = 0  # values that are neither text nor numbers (objects, lists, null)
    values: dict[str, None] = field(default_factory=dict)  # distinct, in first-seen order

    def add(self, value: object) -> None:
        self.rows += 1
        if isinstance(value, dict | list) or value is None:
            self.other += 1
            return
        text = label_key(value)
        self.chars += len(text)
        self.longest = max(self.longest, len(text))
        if isinstance(value, str) and not NUMBER.fullmatch(text):
            self.texts += 1
        if len(self.values) <= MAX_LABEL_VALUES:
            self.values.setdefault(text, None)


@dataclass
class Sniffed:
    """A data file's layout as guessed, everything a draft spec needs."""

    path: Path
    format: str  # "jsonl" or "tsv"
    header: bool  # tsv: the first row names the columns
    columns: list[str]  # names as the spec uses them (generated for a tsv without header)
    label: str
    label_values: list[str]  # raw values as text (softprompt.tasks.label_key), sorted
    text_columns: list[str]
    rows: int
    malformed_rows: list[int] = field(default_factory=list)  # tsv lines of the wrong width


def _is_number(text: str) -> bool:
    return bool(NUMBER.fullmatch(text.strip()))


def _is_identifier(text: str) -> bool:
    return bool(IDENTIFIER.fullmatch(text)) and text == text.strip() and not _is_number(text)


def _differs(cell: str, below: list[str]) -> bool:
    """Whether a header cell differs in kind from the values below it in its column."""
    if not below:
        return False
    if sum(map(_is_number, below)) >= 0.9 * len(below):
        return True
    if sum(not _is_identifier(v) for v in below) >= 0.5 * len(below):
        return True
    distinct = set(below)  # a label column repeats a few values; a header cell is not one
    return len(distinct) <= min(MAX_LABEL_VALUES, len(below) - 1) and cell not in distinct


def has_header(rows: list[list[str]]) -> bool:
    """Whether the first of these tsv rows is a header line (see the module docstring)."""
    if len(rows) < 2:
        return False
    first = rows[0]
    if len(set(first)) != len(first) or not all(map(_is_identifier, first)):
        return False
    return any(_differs(cell, [row[i] for row in rows[1:]]) for i, cell in enumerate(first))


def _tsv_rows(path: Path) -> tuple[list[tuple[int, list[str]]], list[int]]:
    """(line number, fields) of the rows of the most common width, and the other lines."""
    text = decode_utf8(path.read_bytes(), str(path)).removeprefix("\ufeff")
    rows = []
    for lineno, line in enumerate(text.split("\n"), 1):
        fields = line.rstrip("\r").split("\t")
        if fields != [""]:
            rows.append((lineno, fields))
        if len(rows) >= MAX_SNIFF_ROWS:
            break
    widths = Counter(len(fields) for _, fields in rows)
    width = widths.most_common(1)[0][0] if widths else 0
    if width < 2:
        raise TaskDataError(f"{path}: no tab-separated columns found (one field per line)")
    kept = [(n, fields) for n, fields in rows if len(fields) == width]
    return kept, [n for n, fields in rows if len(fields) != width]


def _columns(names: list[str], rows: list[list | dict]) -> list[Column]:
    columns = [Column(name, i) for i, name in enumerate(names)]
    for row in rows:
        values = row if isinstance(row, list) else [row.get(n) for n in names]
        for column, value in zip(columns, values, strict=True):
            column.add(value)
    return columns


def _pick_label(columns: list[Column], path: Path) -> Column:
    """The label column, of few distinct short values, a conventional name preferred."""
    candidates = [
        c for c in columns
        if c.other == 0 and 2 <= len(c.values) <= MAX_LABEL_VALUES and len(c.values) < c.rows
        and c.longest <= MAX_LABEL_CHARS and FIELD_NAME.fullmatch(c.name)
    ]
    if not candidates:
        raise TaskDataError(
            f"{path}: no column has 2 to {MAX_LABEL_VALUES} distinct short values to serve as "
            "the label; write the spec by hand (docs/tasks.md)"
        )
    return min(candidates, key=lambda c: (c.name.lower() not in LABEL_NAMES,
                                          c.chars / c.rows, len(c.values), -c.index))


def _text_columns(columns: list[Column], label: Column, path: Path) -> list[Column]:
    """The columns the template shows, of mostly non-numeric text with more than one value."""
    texts = [
        c for c in columns
        if c is not label and c.other == 0 and c.texts >= 0.5 * c.rows and len(c.values) > 1
        and FIELD_NAME.fullmatch(c.name)
    ]
    if not texts:
        raise TaskDataError(f"{path}: no text column found besides the label {label.name!r}")
    return texts


def _value_order(value: str) -> tuple:
    return (0, float(value), value) if _is_number(value) else (1, 0.0, value)


def sniff_data(path: Path) -> Sniffed:
    """The layout of the jsonl or tsv file at `path` (see the module docstring)."""
    if not path.is_file():
        raise TaskDataError(f"{path}: no such data file")
    with path.open("rb") as f:
        head = f.read(4096).decode("utf-8", "replace").removeprefix("\ufeff").lstrip()
    malformed: list[int] = []
    if head.startswith("{"):
        rows: list = []
        for _, row in read_jsonl(path):
            rows.append(row)
            if len(rows) >= MAX_SNIFF_ROWS:
                break
        names = list(dict.fromkeys(key for row in rows for key in row))
        header, fmt = True, "jsonl"
    elif "\t" in head:
        numbered, malformed = _tsv_rows(path)
        rows = [fields for _, fields in numbered]
        header, fmt = has_header(rows), "tsv"
        names = [c.strip() for c in rows[0]] if header else [f"col{i + 1}" for i in
                                                              range(len(rows[0]))]
        rows = rows[1:] if header else rows
    else:
        raise TaskDataError(f"{path}: neither JSON lines nor tab-separated values")
    if not rows:
        raise TaskDataError(f"{path}: no data rows")
    columns = _columns(names, rows)
    label = _pick_label(columns, path)
    texts = _text_columns(columns, label, path)
    if fmt == "tsv" and not header:
        _name_columns(columns, label, texts)
    return Sniffed(path, fmt, header, [c.name for c in columns], label.name,
                   sorted(label.values, key=_value_order), [c.name for c in texts], len(rows),
                   malformed)


def _name_columns(columns: list[Column], label: Column, texts: list[Column]) -> None:
    """Names a headerless tsv's columns label, text (or text1, text2...) and col<N>."""
    label.name = "label"
    for i, column in enumerate(texts, 1):
        column.name = "text" if len(texts) == 1 else f"text{i}"


def label_words(values: list[str]) -> dict[str, str]:
    """A placeholder label word for each raw value, the value if it is a word, else label_<v>.

    The words follow softprompt.verbalizer's rules (distinct, short, no surrounding spaces)."""
    words: dict[str, str] = {}
    for i, value in enumerate(values):
        word = value if WORD.fullmatch(value) else f"label_{value}"
        if not WORD.fullmatch(word.replace(".", "_").replace("+", "_").replace("-", "_")):
            word = f"label_{i}"
        while word in words.values():
            word += "_"
        words[value] = word
    return words


def _title(name: str) -> str:
    return name.strip("#_ ").replace("_", " ").capitalize() or name


def _json(value: object) -> str:
    """`value` as one line of YAML (JSON is YAML, and its quoting is never ambiguous)."""
    return json.dumps(value, ensure_ascii=False)


def draft_spec(name: str, sniffed: Sniffed, splits: dict[str, str]) -> str:
    """The YAML text of a first spec for `sniffed`, with comments on what to edit.

    `splits` maps split names to files relative to the data folder; without a dev file, 10% of
    train is carved out as dev."""
    s = sniffed
    template = "\n".join(f"{_title(c)}: {{{c}}}" for c in s.text_columns) + "\nAnswer:"
    layout = s.format if s.format == "jsonl" else (
        f"tsv {'with a header line' if s.header else 'without a header line'}")
    lines = [
        f"# Drafted by `softprompt tasks new` from {s.path.name} ({layout}, {s.rows:,} rows).",
        "# Edit the fields marked EDIT, then check the spec and its data with",
        f"#   softprompt tasks validate {name}",
        "# Every field is described in docs/tasks.md.",
        f"name: {name}",
        "# EDIT: what the task is and where its data comes from.",
        f"description: {_json(f'{name}: drafted from {s.path.name}')}",
        f"format: {s.format}",
    ]
    if s.format == "tsv" and not s.header:
        lines += ["# The file has no header line: its columns are named here, in order.",
                  f"tsv: {_json({'header': False, 'columns': s.columns})}"]
    if s.malformed_rows:
        lines += [f"# {len(s.malformed_rows)} line(s) have the wrong number of fields (first: "
                  f"line {s.malformed_rows[0]}); they are skipped and counted.",
                  "skip_malformed_rows: true"]
    lines += ["splits:"] + [f"  {split}: {_json(rel)}" for split, rel in splits.items()]
    if "dev" not in splits:
        lines += ["# One data file: 10% of train is held out as dev for early stopping.",
                  "carve_dev: {from: train, fraction: 0.1, seed: 0}"]
    lines += [
        "# EDIT: the input the model reads; {field} is a column of the data. End it with the",
        "# question the label word answers.",
        f"template: {_json(template)}",
        f"label_field: {_json(s.label)}",
        "# EDIT: each raw label value -> the word the model should answer for it. These are",
        "# placeholders; words the model knows (yes/no, positive/negative) train faster.",
        "labels:",
    ]
    lines += [f"  {_json(value)}: {_json(word)}" for value, word in
              label_words(s.label_values).items()]
    metric_hint = "macro_f1 suits 3+ unbalanced classes" if len(s.label_values) > 2 else \
        "f1 needs positive_label: one of the label words"
    lines += [f"metric: accuracy  # or f1, macro_f1 ({metric_hint})"]
    return "\n".join(lines) + "\n"


def spec_splits(source: Path, data_dir: Path, task: str) -> dict[str, str]:
    """Split -> file relative to `data_dir`, with `source` as train and a sibling dev or test
    file of the same suffix as dev or test. `source` must lie in `data_dir/task/`."""
    root = data_dir.resolve()
    if not source.resolve().is_relative_to(root / task):
        raise TaskDataError(
            f"{source}: a task's data must lie under its data folder {data_dir / task}/, since a "
            f"spec names its files relative to the data folder {data_dir}; copy the file there "
            "(or pass --data-dir)"
        )
    splits = {"train": source.resolve().relative_to(root).as_posix()}
    for split in ("dev", "test"):
        sibling = source.with_name(f"{split}{source.suffix}")
        if sibling.is_file() and sibling.resolve() != source.resolve():
            splits[split] = sibling.resolve().relative_to(root).as_posix()
    return splits
