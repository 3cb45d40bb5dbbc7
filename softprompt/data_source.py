"""Where a run's task spec and data come from, named by version and checked on arrival.

A pipeline run must not depend on files baked into its image. It names:

- its task spec: inline YAML text, a URI (`s3://...`, `file://...`, a path), or, as the embedded
  default, a task name looked up in the local catalogue (`tasks/`);
- its data, as a `DataRef`: a DVC repository and git revision (the task's DVC-tracked folder at
  that revision), or a DVC remote and the folder's hash (content-addressed objects, no git
  needed), or, as the embedded default, a local data folder.

The data of task `t` is one folder, `<data root>/t/`, and the spec's split paths lie inside it
(`t/train.jsonl`). In a catalogue repository that folder is `data/t`, tracked with
`dvc add data/t`, so its DVC hash (`<md5>.dir`, in `data/t.dvc`) names its bytes exactly. The
fetched folder's hash is recomputed (`dataset_version`) and compared with the promised one, so
a run trains on exactly the bytes that were planned, or fails before anything is trained.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import yaml

from softprompt.data_version import dataset_version
from softprompt.tasks import (
    TaskDataError,
    TaskSpec,
    decode_utf8,
    default_data_dir,
    parse_spec,
    read_spec_file,
    spec_path,
    spec_yaml,
)

DVC_DIR_HASH = re.compile(r"[0-9a-f]{32}\.dir")
DEFAULT_REV = "HEAD"
CATALOGUE_DATA_DIR = "data"  # where a catalogue repository keeps data/<task>/


class DataFetchError(TaskDataError):
    """The promised data cannot be had: a missing revision, path or remote object, or bytes
    whose hash differs from the promised one. The message names the task, rev and path."""


@dataclass(frozen=True)
class DataRef:
    """Which bytes a run reads for one task. Exactly one source is used:

    - `remote` set: fetch the folder whose DVC hash is `version` from that DVC remote; `rev` and
      `path` then only say where the hash was read (they appear in lineage and errors);
    - `repo` set: the DVC-tracked folder `path` of that git repository at `rev`;
    - neither: the local folder `<data_dir>/<task>/` (default `default_data_dir()`).

    `version` ('' = not promised) is the folder's expected DVC hash, `<md5>.dir`; whatever the
    source, the bytes read are hashed and must match it.
    """

    task: str
    version: str = ""
    repo: str = ""
    rev: str = ""
    remote: str = ""
    path: str = ""
    data_dir: str = ""

    def __post_init__(self) -> None:
        if self.version and not DVC_DIR_HASH.fullmatch(self.version):
            raise DataFetchError(f"{self.where()}: data version {self.version!r} is not a DVC "
                                 "directory hash (<32 hex>.dir)")
        if self.repo and self.remote:
            raise DataFetchError(f"{self.where()}: give a DVC repo or a DVC remote, not both")
        if self.remote and not self.version:
            raise DataFetchError(f"{self.where()}: fetching from the DVC remote {self.remote} "
                                 "needs the data version (the folder's DVC hash)")
        if self.data_dir and (self.repo or self.remote):
            raise DataFetchError(f"{self.where()}: a local data folder and a DVC source exclude "
                                 "each other")

    @property
    def kind(self) -> str:
        """"dvc-remote", "dvc-repo" or "local"."""
        return "dvc-remote" if self.remote else "dvc-repo" if self.repo else "local"

    @property
    def repo_path(self) -> str:
        """The DVC-tracked folder in the repository: `path`, default `data/<task>`."""
        return self.path or f"{CATALOGUE_DATA_DIR}/{self.task}"

    @property
    def folder(self) -> str:
        """The folder's name under the data root, which the spec's split paths start with."""
        return PurePosixPath(self.repo_path).name if self.path else self.task

    def where(self) -> str:
        """Task, revision and path, for error messages."""
        parts = [f"task {self.task}"]
        if self.repo or self.rev:
            parts.append(f"rev {self.rev or DEFAULT_REV}")
        if self.repo or self.remote or self.path:
            parts.append(f"path {self.repo_path}")
        if self.repo:
            parts.append(f"repo {self.repo}")
        if self.remote:
            parts.append(f"remote {self.remote}")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v}


# ---------------------------------------------------------------------------- task specs
def read_spec_text(task: str, source: str = "",
                   tasks_dir: str | Path | None = None) -> tuple[str, str]:
    """The task spec's YAML text and where it came from. `source`: YAML text (it has a line
    break), else a URI or path read with fsspec, else ('') `tasks/<task>.yaml` of the local
    catalogue."""
    if "\n" in source:
        return source, f"task {task}: inline task spec"
    if source:
        return _read_uri(source, task), source
    path = spec_path(task, tasks_dir)
    return read_spec_file(path), str(path)


def parse_spec_text(task: str, text: str, where: str) -> TaskSpec:
    """A validated spec from YAML text; it must be the spec of `task`."""
    spec = parse_spec(spec_yaml(text, where), where)
    if spec.name != task:
        raise TaskDataError(f"{where}: field 'name' is {spec.name!r}, but the task is {task!r}")
    return spec


def read_spec(task: str, source: str = "", tasks_dir: str | Path | None = None) -> TaskSpec:
    """`parse_spec_text(read_spec_text(...))`: the spec of `task` from `source`."""
    return parse_spec_text(task, *read_spec_text(task, source, tasks_dir))


def _read_uri(uri: str, task: str) -> str:
    import fsspec

    try:
        with fsspec.open(uri, "rb") as f:
            data = f.read()
    except (OSError, ValueError, ImportError) as err:
        raise TaskDataError(f"task {task}: cannot read the task spec at {uri}: {err}") from err
    return decode_utf8(data, uri)


# ---------------------------------------------------------------------------- DVC records
def open_dvc_repo(repo: str, rev: str = "", where: str = "") -> tuple[object, str]:
    """A read-only view of a DVC repository at a git revision (nothing is downloaded), and the
    commit sha the revision resolves to. `where` prefixes error messages."""
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException

    rev = rev or DEFAULT_REV
    try:
        fs = DVCFileSystem(url=repo, rev=rev)
        sha = fs.repo.scm.resolve_rev(rev)
    except DvcException as err:
        prefix = f"{where}: " if where else ""
        raise DataFetchError(f"{prefix}cannot open DVC repo {repo} at rev {rev}: {err}") from err
    return fs, sha


def recorded_hash(fs, path: str, where: str) -> str:
    """The DVC hash that the repository's records (`.dvc` file or `dvc.lock`) give `path`."""
    try:
        info = fs.info(path)
    except FileNotFoundError as err:
        raise DataFetchError(f"{where}: no such path in the repository "
                             f"(add the data with `dvc add {path}`)") from err
    md5 = info.get("md5") or info.get("dvc_info", {}).get("md5")
    if info.get("type") != "directory" or not md5 or not DVC_DIR_HASH.fullmatch(md5):
        raise DataFetchError(f"{where}: not one DVC-tracked folder (track it with "
                             f"`dvc add {path}` and commit {path}.dvc)")
    return md5


def default_remote(fs, where: str) -> str:
    """The URL of the repository's default DVC remote, as its `.dvc/config` says."""
    config = fs.repo.config
    name = config.get("core", {}).get("remote")
    url = config.get("remote", {}).get(name, {}).get("url") if name else None
    if not url:
        raise DataFetchError(f"{where}: the repository has no default DVC remote "
                             "(`dvc remote add -d storage s3://<bucket>/dvc`)")
    return url


# ---------------------------------------------------------------------------- fetching
def materialize(ref: DataRef, scratch: str | Path) -> tuple[Path, str]:
    """Makes the task's data readable: returns the data root that holds `<ref.folder>/` and the
    folder's DVC hash, after checking it against `ref.version`. DVC sources are downloaded under
    `scratch`; a local folder is read where it is."""
    if ref.kind == "local":
        root = Path(ref.data_dir) if ref.data_dir else default_data_dir()
        folder = root / ref.folder
        if not folder.is_dir():
            raise DataFetchError(f"{ref.where()}: data folder {folder} not found")
    else:
        root = Path(scratch) / "data"
        folder = root / ref.folder
        if ref.kind == "dvc-repo":
            _fetch_from_repo(ref, folder)
        else:
            _fetch_from_remote(ref, Path(scratch), folder)
    version = dataset_version(folder)
    if ref.version and version != ref.version:
        raise DataFetchError(f"{ref.where()}: the data read has DVC hash {version}, "
                             f"but {ref.version} was promised; refusing to train on it")
    return root, version


def _fetch_from_repo(ref: DataRef, dest: Path) -> None:
    fs, sha = open_dvc_repo(ref.repo, ref.rev, ref.where())
    where = ref.where() + f" (commit {sha[:12]})"
    recorded = recorded_hash(fs, ref.repo_path, where)
    if ref.version and recorded != ref.version:
        raise DataFetchError(f"{where}: the repository records DVC hash {recorded}, "
                             f"but {ref.version} was promised")
    _download(fs, ref.repo_path, dest, where)


def _fetch_from_remote(ref: DataRef, scratch: Path, dest: Path) -> None:
    """A throwaway DVC repository whose only record is the folder's hash, pointed at the remote:
    DVC's own fetch then reads the content-addressed objects, with no git history needed."""
    from dvc.api import DVCFileSystem
    from dvc.repo import Repo

    repo = scratch / "dvc-fetch"
    repo.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):  # Repo.init prints a banner
        Repo.init(str(repo), no_scm=True, force=True)
    (repo / ".dvc" / "config").write_text(
        f"[core]\n    remote = origin\n['remote \"origin\"']\n    url = {ref.remote}\n")
    (repo / f"{ref.folder}.dvc").write_text(
        yaml.safe_dump({"outs": [{"md5": ref.version, "hash": "md5", "path": ref.folder}]}))
    _download(DVCFileSystem(str(repo)), ref.folder, dest, ref.where())


def _download(fs, path: str, dest: Path, where: str) -> None:
    from dvc.exceptions import DvcException
    from dvc_data.index.index import DataIndexError

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        fs.get(path, str(dest), recursive=True)
    except (FileNotFoundError, DvcException, DataIndexError) as err:
        raise DataFetchError(f"{where}: cannot download the data from the DVC remote: "
                             f"{err}") from err
    except OSError as err:  # credentials, network
        raise DataFetchError(f"{where}: DVC remote unreachable: {err}") from err


def check_inside_folder(spec: TaskSpec, folder: str) -> None:
    """The spec's split files must lie inside the task's data folder: the folder's hash is the
    data version, so a file outside it would be read without being versioned."""
    for split, rel in spec.splits.items():
        parts = PurePosixPath(rel).parts
        if len(parts) < 2 or parts[0] != folder or ".." in parts:
            raise TaskDataError(f"{spec.spec_file}: field 'splits.{split}' is {rel!r}, outside "
                                f"the task's data folder {folder}/ (write it as {folder}/<file>)")


@contextlib.contextmanager
def scratch_dir(prefix: str = "softprompt-data-"):
    """A temporary folder for downloads, removed afterwards (TMPDIR decides where)."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir=os.environ.get("TMPDIR")) as tmp:
        yield Path(tmp)


# ---------------------------------------------------------------------------- prepare
def prepare(spec: TaskSpec, ref: DataRef, train_dev_dir: str | Path, test_dir: str | Path,
            caps: dict[str, int] | None = None, seed: int = 0) -> dict:
    """Fetches and checks the task's data, then writes the normalized train/dev examples and the
    test examples to two folders (training never sees test). `caps` ({"train": n, ...}, 0 = all)
    keep a seeded random subset of a split. Returns what was prepared: the data's DVC hash
    (`dataset_version`), the source, the example counts and the skipped rows."""
    from softprompt.prepared import write_prepared
    from softprompt.task_data import load_task, seeded_subset

    check_inside_folder(spec, ref.folder)
    stats: dict = {}
    with scratch_dir() as scratch:
        root, version = materialize(ref, scratch)
        data = load_task(spec, root, stats)
    for split in ("train", "dev", "test"):
        if split not in data:
            raise TaskDataError(f"task {spec.name} ({spec.spec_file}): no {split!r} split; "
                                "the pipeline needs train, dev and test")
    for split, cap in (caps or {}).items():
        if cap < 0:
            raise ValueError(f"max_{split}_examples must be >= 0 (0 = all), got {cap}")
        data[split] = seeded_subset(data[split], cap, seed)
    meta = write_prepared(spec, {"train": data["train"], "dev": data["dev"]}, train_dev_dir, stats)
    write_prepared(spec, {"test": data["test"]}, test_dir)
    return {
        "task": spec.name,
        "dataset_version": version,
        "source": ref.to_dict() | {"kind": ref.kind, "version": version},
        "counts": {split: len(data[split]) for split in ("train", "dev", "test")},
        "skipped_rows": len(meta["skipped_rows"]),
    }

