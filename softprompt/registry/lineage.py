"""Lineage of a trained prompt: read from its run directory (config.json + result.json), and
checked, as part of the manifest it becomes, by the registry's one manifest validator
(records.check_manifest) before anything is stored."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

from softprompt.registry.errors import IntegrityError, InvalidArtifactError
from softprompt.registry.records import (
    Manifest,
    PromptBlob,
    check_manifest,
    from_json,
    timestamp,
    to_json,
)

# The training objective of softprompt.training.prompt_tuning: mean negative log-likelihood of
# the target tokens (the verbalized label, then EOS) given [prompt; input], with the LM frozen.
OBJECTIVE = "target_nll"
# TrainConfig fields that say where things ran or were read from, not how the prompt was trained.
_NOT_HYPERPARAMETERS = ("task", "model", "data_dir", "device", "prepared_dir")
# The Manifest fields a publisher supplies; the registry fills in the rest (version, blob, shape,
# dtype, created_at, publish_id).
LINEAGE_FIELDS = (
    "task", "base_model", "base_model_fingerprint", "init", "prompt_length", "objective",
    "hyperparameters", "dataset_version", "code_version", "metrics", "label_words", "template",
    "metric", "spec_sha256", "data_source",
)


def _read_json(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidArtifactError(
            f"{path}: not found; is {path.parent} a `softprompt train` run directory?"
        ) from None
    except json.JSONDecodeError as err:
        raise InvalidArtifactError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from err
    if not isinstance(raw, dict):
        raise InvalidArtifactError(f"{path}: expected a JSON object")
    return raw


def current_code_version() -> str:
    """The git commit of the softprompt source ("+dirty" with uncommitted changes), else the
    package version."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"softprompt=={version('softprompt')}"
        except PackageNotFoundError:
            return "unknown"


def lineage_from_run(run_dir: str | Path, dataset_version: str | None = None,
                     code_version: str | None = None, spec=None,
                     data_source: dict | None = None) -> dict:
    """Every Manifest field except version/blob/shape/dtype/created_at, ready for `publish()`.

    `spec` (a TaskSpec) supplies label_words/template/metric and its digest; by default the run's
    task spec is loaded by the name or path in config.json. `code_version` defaults to the
    source's git commit. `data_source` says where the data came from (softprompt.data_source).
    """
    from softprompt.tasks import TaskDataError, load_spec

    run = Path(run_dir)
    config = _read_json(run / "config.json")
    result = _read_json(run / "result.json")
    required = (("task", result), ("model", result), ("model_fingerprint", result),
                ("prompt", config))
    for name, where in required:
        if name not in where:
            file = "result.json" if where is result else "config.json"
            raise InvalidArtifactError(f"{run / file}: missing field {name!r}")
    if spec is None:
        try:
            spec = load_spec(config.get("task", result["task"]))
        except (TaskDataError, FileNotFoundError, ValueError) as err:
            raise InvalidArtifactError(
                f"{run / 'config.json'}: cannot load task spec {config.get('task')!r} "
                f"for label words ({err})"
            ) from err
    metric_names = ("dev", "test", "zero_shot", "recipe", "best_step", "steps", "stop_reason",
                    "train_seconds", "check_seconds", "prompt_norm")
    metrics = {k: result[k] for k in metric_names if k in result}
    return {
        "task": result["task"],
        "base_model": result["model"],
        "base_model_fingerprint": result["model_fingerprint"],
        "init": config["prompt"].get("init"),
        "prompt_length": config["prompt"].get("length"),
        "objective": config.get("objective", OBJECTIVE),
        "hyperparameters": {k: v for k, v in config.items() if k not in _NOT_HYPERPARAMETERS},
        "dataset_version": dataset_version,
        "code_version": code_version if code_version is not None else current_code_version(),
        "metrics": metrics,
        "label_words": spec.label_words,
        "template": spec.template,
        "metric": spec.metric,
        "spec_sha256": spec.digest or None,
        "data_source": data_source or {},
    }


def check_lineage(task: str, lineage: dict, blob: PromptBlob) -> Manifest:
    """The manifest that publishing `blob` (the prompt [P, E]) with `lineage` would store, as
    version 1 (publish renumbers it), once records.check_manifest accepts it.

    None values in `lineage` are dropped, so that the Manifest's defaults apply, and
    `prompt_length` defaults to P. InvalidArtifactError names the task and the first bad field.
    """
    where = f"task {task}"
    if not isinstance(lineage, dict):
        raise InvalidArtifactError(f"{where}: lineage must be a dict, got {type(lineage).__name__}")
    unknown = sorted(set(lineage) - set(LINEAGE_FIELDS), key=str)
    if unknown:
        raise InvalidArtifactError(
            f"{where}: unknown lineage field(s) {unknown}; known: {list(LINEAGE_FIELDS)}"
        )
    fields = {k: v for k, v in lineage.items() if v is not None}
    if fields.setdefault("task", task) != task:
        raise InvalidArtifactError(f"{where}: lineage is for task {lineage['task']!r}")
    fields.setdefault("prompt_length", blob.shape[0])
    draft = {**fields, "version": 1, "blob_sha256": blob.sha256, "shape": blob.shape,
             "dtype": blob.dtype, "created_at": timestamp(), "publish_id": uuid.uuid4().hex}
    # Checked as a reader will see it: after the trip through JSON.
    raw = from_json(to_json(draft, f"{where}: lineage"), where)
    try:
        return check_manifest(Manifest.from_dict(raw, where), where)
    except IntegrityError as err:
        raise InvalidArtifactError(str(err)) from None
