"""The toy task's raw files as a data mirror holds them (<mirror>/toy/<split>.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = {0: ["awful", "boring", "dreadful"], 1: ["great", "lovely", "superb"]}


def write_toy(data_dir: Path, n_train: int = 16) -> None:
    """Writes toy/{train,dev,test}.jsonl under `data_dir`: one sentiment word decides the label."""
    (data_dir / "toy").mkdir(parents=True, exist_ok=True)
    for split, n in {"train": n_train, "dev": 8, "test": 8}.items():
        rows = [
            {"sentence": f"the film was {WORDS[i % 2][i % 3]}", "label": i % 2} for i in range(n)
        ]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        (data_dir / "toy" / f"{split}.jsonl").write_text(text)


def snapshot(root: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `root`."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}
