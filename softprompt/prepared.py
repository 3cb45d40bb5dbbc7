"""Prepared task folders: a task's normalized examples as the pipeline passes them between steps.

`write_prepared` writes one `<split>.jsonl` per split plus `meta.json`; `load_prepared` reads them
back. The pipeline components and DVC stages consume these folders instead of the raw data.
"""

from __future__ import annotations

import json
from pathlib import Path

from softprompt.fileio import atomic_write
from softprompt.task_data import read_jsonl
from softprompt.tasks import SPLITS, Example, TaskDataError, TaskSpec


def write_prepared(
    spec: TaskSpec, data: dict[str, list[Example]], out_dir: str | Path, stats: dict | None = None
) -> dict:
    """Writes normalized examples, one `<split>.jsonl` per split plus `meta.json`.

    These are what the pipeline components and DVC stages consume. Files are written to a temp
    name, then renamed."""
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
        if not path.exists():
            continue
        data[split] = [_example(row, f"{path}:{lineno}") for lineno, row in read_jsonl(path)]
        if not data[split]:
            raise TaskDataError(f"{path}: split {split!r} is empty")
    return data


def _example(row: dict, where: str) -> Example:
    """One line of a prepared split; input and target are text, group and source text too."""
    for key in ("input", "target"):
        if key not in row:
            raise TaskDataError(f"{where}: missing field {key!r}")
    for key, optional in (("input", False), ("target", False), ("group", True), ("source", True)):
        value = row.get(key)
        if not isinstance(value, str) and not (optional and value is None):
            raise TaskDataError(f"{where}: field {key!r} must be text, got {type(value).__name__}")
    return Example(row["input"], row["target"], row.get("group"), row.get("source") or "")
