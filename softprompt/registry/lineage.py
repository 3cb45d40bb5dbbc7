"""Lineage of a trained prompt, read from its run directory (config.json + result.json)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from softprompt.registry.base import InvalidArtifactError

# The training objective of softprompt.train: mean negative log-likelihood of the target tokens
# (the verbalized label, then EOS) given [prompt; input], with the LM frozen.
OBJECTIVE = "target_nll"
# TrainConfig fields that say where things ran or were read from, not how the prompt was trained.
_NOT_HYPERPARAMETERS = ("task", "model", "data_dir", "device", "prepared_dir")


def _read_json(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidArtifactError(f"{path}: not found; is {path.parent} a `softprompt train` run directory?") from None
    except json.JSONDecodeError as err:
        raise InvalidArtifactError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from err
    if not isinstance(raw, dict):
        raise InvalidArtifactError(f"{path}: expected a JSON object")
    return raw


def current_code_version() -> str:
    """The git commit of the softprompt source ("+dirty" with uncommitted changes), else the package version."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"softprompt=={version('softprompt')}"
        except PackageNotFoundError:
            return "unknown"


def lineage_from_run(run_dir: str | Path, dataset_version: str | None = None, code_version: str | None = None, spec=None,
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
    for name, where in (("task", result), ("model", result), ("model_fingerprint", result), ("prompt", config)):
        if name not in where:
            raise InvalidArtifactError(f"{run / ('result.json' if where is result else 'config.json')}: missing field {name!r}")
    if spec is None:
        try:
            spec = load_spec(config.get("task", result["task"]))
        except (TaskDataError, FileNotFoundError, ValueError) as err:
            raise InvalidArtifactError(f"{run / 'config.json'}: cannot load task spec {config.get('task')!r} for label words ({err})") from err
    metrics = {k: result[k] for k in ("dev", "test", "best_step", "steps", "stop_reason", "train_seconds") if k in result}
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
