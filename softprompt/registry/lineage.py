"""Lineage of a trained prompt: read from its run directory (config.json + result.json), and
checked before it becomes part of a manifest."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from softprompt.registry.errors import InvalidArtifactError
from softprompt.registry.records import FINGERPRINT

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
    metric_names = ("dev", "test", "best_step", "steps", "stop_reason", "train_seconds")
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


def check_lineage(task: str, lineage: dict, shape: list[int]) -> dict:
    """The lineage fields to publish with a prompt of `shape` [P, E], None values dropped (so the
    Manifest's defaults apply); InvalidArtifactError names the first bad field."""
    if not isinstance(lineage, dict):
        raise InvalidArtifactError(
            f"task {task}: lineage must be a dict, got {type(lineage).__name__}"
        )
    unknown = sorted(set(lineage) - set(LINEAGE_FIELDS))
    if unknown:
        raise InvalidArtifactError(
            f"task {task}: unknown lineage field(s) {unknown}; known: {list(LINEAGE_FIELDS)}"
        )
    out = {k: v for k, v in lineage.items() if v is not None}
    if out.setdefault("task", task) != task:
        raise InvalidArtifactError(f"task {task}: lineage is for task {lineage['task']!r}")
    for name in ("base_model", "base_model_fingerprint"):
        if not isinstance(out.get(name), str) or not out[name]:
            raise InvalidArtifactError(
                f"task {task}: lineage field {name!r} is required (a non-empty string)"
            )
    if not FINGERPRINT.fullmatch(out["base_model_fingerprint"]):
        raise InvalidArtifactError(
            f"task {task}: lineage field 'base_model_fingerprint' must be 'sha256:<64 hex>' "
            f"(FrozenLM.fingerprint), got {out['base_model_fingerprint']!r}"
        )
    if out.setdefault("prompt_length", shape[0]) != shape[0]:
        raise InvalidArtifactError(
            f"task {task}: lineage prompt_length {out['prompt_length']} "
            f"but the prompt has P={shape[0]}"
        )
    for name, kind in (("hyperparameters", dict), ("metrics", dict), ("label_words", list),
                       ("data_source", dict)):
        if name in out and not isinstance(out[name], kind):
            raise InvalidArtifactError(
                f"task {task}: lineage field {name!r} must be a {kind.__name__}"
            )
    for name in ("init", "objective", "dataset_version", "code_version", "template", "metric",
                 "spec_sha256"):
        if out.get(name) is not None and not isinstance(out[name], str):
            raise InvalidArtifactError(
                f"task {task}: lineage field {name!r} must be a string or None"
            )
    return out
