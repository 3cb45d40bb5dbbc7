"""Data lineage for the DVC pipeline: raw-data ingestion, the data version, training curves.

The data version of a prepared task folder is its DVC directory hash (`<md5>.dir`), computed here
exactly as DVC computes it for a directory output, so the value a registry manifest records is the
one in `dvc.lock`. `git log -S <version> -- dvc.lock` (`commits_with_version`) finds the commits
whose lock file pins it; `git checkout <commit> && dvc checkout` brings those bytes back.

`ingest` brings one task's raw files into `data/raw/<task>/`: copied from a local mirror (the
files the task spec names, at the same relative paths) or downloaded with `datasets` from the hub.
Next to the data it writes the spec that reads them (`<task>.yaml`) and `source.json` (where the
files came from, their sha256), all machine independent so that two ingests of the same data are
byte-identical.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from softprompt.tasks import TaskDataError, default_data_dir, load_spec

SOURCES = ("mirror", "hub", "auto")
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


# ------------------------------------------------------------------ data version
def _file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks (md5: DVC's own hash; sha256: provenance)."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_version(prepared_dir: str | Path) -> str:
    """The DVC hash of a directory, `<md5>.dir`, as `dvc.lock` records it for a directory output:
    the md5 of the JSON list of {"md5", "relpath"} of its files, sorted by relpath (DVC 3's `md5`
    hash: plain bytes, no dos2unix). Files DVC never tracks (`.dvcignore` is not consulted: prepared
    folders hold none) are all counted, so a stray file changes the version."""
    root = Path(prepared_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory (run the prepare stage first)")
    entries = [
        {"md5": _file_digest(path, "md5"), "relpath": path.relative_to(root).as_posix()}
        for path in root.rglob("*")
        if path.is_file()
    ]
    if not entries:
        raise ValueError(f"{root}: empty directory has no data version")
    entries.sort(key=lambda e: e["relpath"])
    listing = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(listing).hexdigest() + ".dir"


def commits_with_version(
    version: str, repo_dir: str | Path = ".", lock_file: str = "dvc.lock"
) -> list[str]:
    """Commits (newest first) that added or removed `version` in the lock file: the first of a
    pair is where that data version was introduced (git's pickaxe, `git log -S`)."""
    out = subprocess.run(
        ["git", "log", "--format=%H", "-S", version, "--", lock_file],
        cwd=repo_dir, check=True, capture_output=True, text=True,
    )
    return out.stdout.split()


# ------------------------------------------------------------------ ingest
def _offline() -> bool:
    return any(os.environ.get(var, "").lower() in ("1", "true", "yes") for var in _OFFLINE_VARS)


def _from_mirror(spec, mirror: Path, staging: Path) -> None:
    for split, rel in spec.splits.items():
        src = mirror / rel
        if not src.is_file():
            raise TaskDataError(
                f"{spec.spec_file}: split {split!r} file {rel} not found in mirror {mirror}"
            )
        dst = staging / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)  # not copy2: mirror files are read-only
    shutil.copyfile(spec.spec_file, staging / f"{spec.name}.yaml")


def _from_hub(spec, staging: Path) -> dict:
    """Hub rows, one JSON object per line, at hub/<split>.jsonl, and a spec that reads them with
    the task's own template, labels and metric (dev carved from train when the hub has none)."""
    if not spec.hub:
        raise TaskDataError(f"{spec.spec_file}: no 'hub' source configured")
    from datasets import load_dataset

    raw = yaml.safe_load(Path(spec.spec_file).read_text())
    hub = spec.hub
    splits = {}
    for split, hub_split in hub.get("splits", {}).items():
        rows = load_dataset(
            hub["path"], hub.get("name"), split=hub_split, revision=hub.get("revision")
        )
        rel = f"hub/{split}.jsonl"
        (staging / "hub").mkdir(exist_ok=True)
        with (staging / rel).open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(dict(row), ensure_ascii=False, default=str) + "\n")
        splits[split] = rel
    if "train" not in splits:
        raise TaskDataError(f"{spec.spec_file}: field 'hub.splits' has no 'train' split")
    raw.update(format="jsonl", splits=splits)
    for key in ("tsv", "skip_malformed_rows"):
        raw.pop(key, None)
    if "dev" in splits:
        raw.pop("carve_dev", None)
    else:
        raw.setdefault("carve_dev", {"from": "train", "fraction": 0.1, "seed": 0})
    (staging / f"{spec.name}.yaml").write_text(
        yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    )
    return {k: v for k, v in hub.items() if k != "splits"}


def ingest(
    task: str,
    out_dir: str | Path,
    source: str = "mirror",
    mirror: str | Path | None = None,
    tasks_dir: str | Path | None = None,
) -> dict:
    """Brings a task's raw data into `out_dir` (replacing it) and returns what `source.json` holds.

    source: "mirror" copies the spec's files from `mirror` (default: $SOFTPROMPT_DATA_DIR or
    ../shared/data); "hub" downloads with `datasets`; "auto" is the hub unless HF_HUB_OFFLINE or
    HF_DATASETS_OFFLINE is set, else the mirror.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown ingest source {source!r}; choose one of {', '.join(SOURCES)}")
    spec = load_spec(task, tasks_dir)
    if source == "auto":
        source = "mirror" if _offline() or not spec.hub else "hub"
    out = Path(out_dir)
    staging = out.with_name(f".{out.name}.ingest")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        origin = (
            _from_hub(spec, staging)
            if source == "hub"
            else _from_mirror(spec, Path(mirror or default_data_dir()), staging)
        )
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        info = {
            "task": spec.name,
            "source": source,
            **({"hub": origin} if origin else {}),
            "spec": f"{spec.name}.yaml",
            "files": {p.relative_to(staging).as_posix(): _file_digest(p, "sha256") for p in files},
        }
        (staging / "source.json").write_text(json.dumps(info, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        staging.replace(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


# ------------------------------------------------------------------ training curves for `dvc plots`
def write_curves(run_dir: str | Path, out_dir: str | Path) -> dict[str, int]:
    """From a run's metrics.jsonl: `loss.csv` (step, loss) and `dev.csv` (step, score, accuracy),
    the formats `dvc plots show/diff` read (it has no JSONL reader). Returns the row counts."""
    from softprompt.report import read_metrics_log

    log_path = Path(run_dir) / "metrics.jsonl"
    if not log_path.is_file():
        raise FileNotFoundError(f"{log_path}: no training log (is {run_dir} a train run dir?)")
    loss, dev = [], []
    for record in read_metrics_log(log_path):
        if record.get("event") == "step":
            loss.append((record["step"], record["loss"]))
        elif record.get("event") == "eval":
            dev.append((record["step"], record["score"], record.get("accuracy", "")))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, header, rows in (
        ("loss.csv", ("step", "loss"), loss),
        ("dev.csv", ("step", "score", "accuracy"), dev),
    ):
        with (out / name).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
    return {"loss": len(loss), "dev": len(dev)}


# ------------------------------------------------------------------ CLI
def _cmd_ingest(args: argparse.Namespace) -> int:
    info = ingest(args.task, args.out, args.source, args.mirror, args.tasks_dir)
    print(json.dumps(info, indent=2))
    return 0


def _cmd_data_version(args: argparse.Namespace) -> int:
    print(dataset_version(args.prepared_dir))
    return 0


def _cmd_curves(args: argparse.Namespace) -> int:
    print(json.dumps(write_curves(args.run_dir, args.out)))
    return 0


def add_commands(sub) -> None:
    i = sub.add_parser("ingest", help="bring a task's raw data into a folder (local mirror or hub)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    i.add_argument("--task", required=True, help="task name (tasks/<name>.yaml) or spec path")
    i.add_argument("--out", required=True, help="output folder, replaced (e.g. data/raw/<task>)")
    i.add_argument(
        "--source",
        choices=SOURCES,
        default="mirror",
        help="auto: the hub unless HF_HUB_OFFLINE/HF_DATASETS_OFFLINE",
    )
    i.add_argument(
        "--mirror",
        default=None,
        help="local mirror (default: $SOFTPROMPT_DATA_DIR or ../shared/data)",
    )
    i.add_argument(
        "--tasks-dir",
        default=None,
        help="folder of task specs (default: $SOFTPROMPT_TASKS_DIR or tasks/)",
    )
    i.set_defaults(func=_cmd_ingest)

    v = sub.add_parser(
        "data-version", help="print the DVC hash (<md5>.dir) of a prepared data folder"
    )
    v.add_argument("prepared_dir")
    v.set_defaults(func=_cmd_data_version)

    c = sub.add_parser(
        "curves", help="write loss.csv and dev.csv from a run's metrics.jsonl for dvc plots"
    )
    c.add_argument("--run-dir", required=True)
    c.add_argument("--out", required=True, help="output folder")
    c.set_defaults(func=_cmd_curves)
