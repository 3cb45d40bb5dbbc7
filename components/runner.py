"""Launching the pipelines: on this machine with kfp.local (the embedded default), or on Kubeflow.

    run_prompt_tuning("sst2", {"max_steps": 20}, mode="local")  # -> registered version, report
    run_prompt_tuning("sst2", {"max_steps": 2000}, mode="kfp", kfp_host="http://ml-pipeline:8888")
    run_lm_adaptation({"base_model": "/mnt/checkpoints/base-models/t5-v1_1-base"}, mode="kfp", ...)

Local mode runs the very pipeline that `components.compile` writes for the cluster, each step a
subprocess of this Python environment (SubprocessRunner(use_venv=False): nothing is installed);
the Kubernetes settings are ignored. Only the cluster-specific parameter defaults are swapped for
local ones (a registry and checkpoints under runs/, see `local_defaults`).

Command line: `python -m components.runner prompt-tuning --task sst2 --set max_steps=20 ...`.
With `--log FILE` the full output goes to FILE and the terminal shows live progress instead
(StepProgress): each step as it starts and ends, and inside training steps the steps, loss, dev
score and ETA.
"""

import argparse
import builtins
import contextlib
import functools
import json
import os
import sys
import time
from pathlib import Path

from components.kubeflow import KfpEndpoint, submit
from components.live_progress import StepProgress, condensed_output
from components.pipelines import lm_adaptation_pipeline, prompt_tuning_pipeline

DEFAULT_ROOT = Path("runs")
MODES = ("local", "kfp")
EXAMPLES = {
    "prompt-tuning": """example:
  python -m components.runner prompt-tuning --task sst2 --root runs/demo \\
      --set base_model=smollm2-135m --set max_steps=30 --set eval_every=10 \\
      --log runs/demo/last-run.log

  runs the pipeline on this machine; the terminal shows each step as it starts and ends and the
  training progress, e.g.
    [0:41] train-prompt: step 10/30 | loss 0.7012 | dev accuracy 0.6400 | ETA 1m20s (step budget)
  and the full output is in runs/demo/last-run.log""",
    "lm-adaptation": """example:
  python -m components.runner lm-adaptation --set base_model=runs/t5-base --set steps=100 \\
      --log runs/lm-adapt.log""",
}


def pipeline_parameters(pipeline) -> dict:
    """{name: default} of a pipeline's parameters, from its compiled component spec."""
    inputs = pipeline.component_spec.inputs or {}
    return {name: spec.default for name, spec in inputs.items()}


def _check_params(pipeline, params: dict) -> None:
    known = pipeline_parameters(pipeline)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for pipeline {pipeline.name}; "
            f"known: {', '.join(sorted(known))}"
        )


def local_defaults(root: Path) -> dict:
    """Prompt-tuning parameters that differ on one machine: a local registry, and checkpoints kept
    in the output artifacts (a retry in the same run finds them there)."""
    return {"registry_uri": str((root / "registry").resolve()), "checkpoint_root": ""}


@contextlib.contextmanager
def _threads_per_step(parallel: int):
    """kfp.local runs up to two loop iterations at once: split the cores between them instead of
    oversubscribing (each torch process would otherwise take every core). Caller settings win."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {n: os.environ.get(n) for n in names}
    threads = str(max(1, (os.cpu_count() or 1) // max(1, parallel)))
    for n in names:
        os.environ.setdefault(n, threads)
    try:
        yield
    finally:
        for n, value in saved.items():
            if value is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = value


def run_local(
    pipeline, arguments: dict, pipeline_root: str | Path, cache: bool = True, parallel: int = 1
) -> dict:
    """Runs `pipeline` on this machine with kfp.local; returns its outputs (artifacts and values).

    `cache`: reuse a step's outputs when the same step ran before with the same inputs (the cache
    lives in `pipeline_root/.kfp_cache`). Raises RuntimeError when a step fails (after its retries).
    """
    import warnings

    from kfp import local

    _check_params(pipeline, arguments)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        enable_caching=cache,
        raise_on_error=True,
    )
    # kfp.local indents print() around each step by swapping builtins.print; parallel steps
    # swap it back in the wrong order and can leave the indenting one for the rest of the process.
    saved_print = builtins.print
    try:
        with warnings.catch_warnings(), _threads_per_step(parallel):
            # Expected locally: the image and the GPU/node-pool settings have no meaning here.
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            warnings.filterwarnings("ignore", message=".*have no effect in the current local "
                                    "runner.*")
            task = pipeline(**arguments)
    finally:
        builtins.print = saved_print
    return dict(task.outputs)


def _run_kfp(
    pipeline,
    params: dict,
    endpoint: KfpEndpoint,
    run_name: str | None,
    experiment: str | None,
    wait: bool,
    timeout_s: int,
) -> dict:
    run_id = submit(endpoint, pipeline, params, run_name, experiment)
    out = {"mode": "kfp", "host": endpoint.host, "run_id": run_id, "status": "SUBMITTED"}
    if wait:
        run = endpoint.client().wait_for_run_completion(run_id, timeout=timeout_s)
        out["status"] = str(run.state)
    return out


def _endpoint(kfp_host: str | KfpEndpoint | None) -> KfpEndpoint:
    if isinstance(kfp_host, KfpEndpoint):
        return kfp_host
    if not kfp_host:
        raise ValueError("mode kfp needs the Kubeflow Pipelines API (kfp_host)")
    return KfpEndpoint(kfp_host)


def _spec_file_to_params(task: str, params: dict) -> str:
    """A task given as a spec file (`path/to/<name>.yaml`) travels as its text (`task_spec`), so
    a pod that cannot see this machine's files still gets it; returns the task's name."""
    if not task.endswith((".yaml", ".yml")):
        return task
    from softprompt.data_source import parse_spec_text, read_spec_text

    name = Path(task).stem
    text, where = read_spec_text(name, task)
    if params.get("task_spec") not in (None, "", text):
        raise ValueError(f"task {task!r} is a spec file, and params['task_spec'] is another spec")
    params["task_spec"] = text
    return parse_spec_text(name, text, where).name


def run_prompt_tuning(
    task: str,
    params: dict | None = None,
    mode: str = "local",
    kfp_host: str | KfpEndpoint | None = None,
    *,
    root: str | Path = DEFAULT_ROOT,
    cache: bool = True,
    run_name: str | None = None,
    experiment: str | None = None,
    wait: bool = False,
    timeout_s: int = 6 * 3600,
) -> dict:
    """Runs the prompt-tuning pipeline for `task` (a name, or a spec file whose text becomes
    the `task_spec` parameter); `params` override the pipeline's parameters.

    mode "local": kfp.local on this machine (registry under `root`/registry unless params say
    otherwise); returns {"mode", "status", "run_id", "run_dir", "task" (the registry's task name),
    "registry_uri", "manifest_uri", "version", "promoted", "decision", "manifest", "registration",
    "report", "metrics", "seconds"}.
    mode "kfp": submits to the Kubeflow Pipelines API at `kfp_host` (a URL, or a KfpEndpoint with
    credentials and namespace); returns {"mode", "host",
    "run_id", "status"} ("SUBMITTED", or the final state with wait=True).
    """
    params = dict(params or {})
    task = _spec_file_to_params(task, params)
    if "task" in params and params["task"] != task:
        raise ValueError(f"params['task']={params['task']!r} contradicts task={task!r}")
    params["task"] = task
    if mode == "kfp":
        _check_params(prompt_tuning_pipeline, params)
        endpoint = _endpoint(kfp_host)
        return _run_kfp(prompt_tuning_pipeline, params, endpoint, run_name, experiment, wait,
                        timeout_s)
    if mode != "local":
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    root = Path(root)
    arguments = local_defaults(root) | params
    n_prompts = len(
        arguments.get(
            "prompt_configs", pipeline_parameters(prompt_tuning_pipeline)["prompt_configs"]
        )
    )
    started = time.monotonic()
    outputs = run_local(
        prompt_tuning_pipeline,
        arguments,
        root / "pipelines",
        cache=cache,
        parallel=min(2, n_prompts),
    )
    registration = json.loads(Path(outputs["registration"].path).read_text())
    run_dir = Path(outputs["registration"].path).parent.parent
    return {
        "mode": "local",
        "status": "SUCCEEDED",
        "run_id": run_dir.name,
        "run_dir": str(run_dir),
        "task": registration[
            "task"
        ],  # the spec's name, as the registry knows it (`task` may be a path)
        "registry_uri": registration["registry_uri"],
        "manifest_uri": registration["manifest_uri"],
        "version": registration["version"],
        "promoted": registration["promoted"],
        "decision": registration["decision"],
        "manifest": registration["manifest"],
        "registration": outputs["registration"].path,
        "report": outputs["report"].path,
        "metrics": dict(outputs["metrics"].metadata),
        "seconds": round(time.monotonic() - started, 1),
    }


def run_lm_adaptation(
    params: dict | None = None,
    mode: str = "local",
    kfp_host: str | KfpEndpoint | None = None,
    *,
    root: str | Path = DEFAULT_ROOT,
    cache: bool = True,
    run_name: str | None = None,
    experiment: str | None = None,
    wait: bool = False,
    timeout_s: int = 24 * 3600,
) -> dict:
    """Runs the LM-adaptation pipeline. mode "local" returns {"mode", "status", "model_path",
    "checkpoint", "metadata", "seconds"}: pass model_path as the prompt-tuning `base_model`.
    mode "kfp" returns {"mode", "host", "run_id", "status"}."""
    params = dict(params or {})
    if not params.get("base_model"):
        raise ValueError(
            "the LM-adaptation pipeline needs base_model: an encoder-decoder checkpoint "
            "directory the run can read (e.g. on the checkpoint volume)"
        )
    if mode == "kfp":
        _check_params(lm_adaptation_pipeline, params)
        endpoint = _endpoint(kfp_host)
        return _run_kfp(lm_adaptation_pipeline, params, endpoint, run_name, experiment, wait,
                        timeout_s)
    if mode != "local":
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    started = time.monotonic()
    arguments = {"export_dir": ""} | params
    outputs = run_local(lm_adaptation_pipeline, arguments, Path(root) / "pipelines", cache=cache)
    return {
        "mode": "local",
        "status": "SUCCEEDED",
        "model_path": outputs["model_path"],
        "checkpoint": outputs["checkpoint"].path,
        "metadata": dict(outputs["checkpoint"].metadata),
        "seconds": round(time.monotonic() - started, 1),
    }


def describe(result: dict) -> str:
    """Where a local prompt-tuning run put things, for people."""
    manifest = result["manifest"]
    metrics = manifest["metrics"]
    registry = result["registry_uri"].rstrip("/")
    lines = [
        f"registered: task {result['task']} version {result['version']} in {registry} "
        f"({'promoted to production' if result['promoted'] else 'production unchanged'})",
        f"  decision:  {result['decision']}",
        f"  manifest:  {result['manifest_uri']}",
        f"  prompt:    {registry}/blobs/sha256/{manifest['blob_sha256']}  "
        f"[P, E] = {manifest['shape']}",
        f"  metrics:   dev {metrics['dev']['score']:.4f}, test {metrics['test']['score']:.4f} "
        f"(ensemble test {metrics['ensemble']['test']['score']:.4f}); all in the manifest's "
        "'metrics'",
        f"  report:    {result['report']}",
        f"  run:       {result['run_dir']} ({result['seconds']} s)",
    ]
    return "\n".join(lines)


def _parse_sets(pairs: list[str]) -> dict:
    """key=value pairs; values are JSON when they parse as JSON (numbers, lists), else strings."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set expects key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m components.runner", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="pipeline", required=True)
    for name in ("prompt-tuning", "lm-adaptation"):
        p = sub.add_parser(
            name,
            help=f"run the {name} pipeline",
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == "prompt-tuning":
            p.add_argument("--task", required=True, help="task name or spec path")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="pipeline parameter (repeatable; JSON values)",
        )
        p.add_argument("--mode", choices=MODES, default="local")
        p.add_argument("--kfp-host", default=None, help="Kubeflow Pipelines API (mode kfp)")
        p.add_argument(
            "--kfp-token-path",
            default="",
            help="mode kfp: a file holding the bearer token (e.g. a projected "
            "ServiceAccount token; read for every call)",
        )
        p.add_argument(
            "--kfp-namespace",
            default="",
            help="mode kfp: the Kubeflow profile namespace (multi-user Kubeflow)",
        )
        p.add_argument(
            "--root",
            default=str(DEFAULT_ROOT),
            help="local outputs: pipelines/ (runs, cache) and registry/",
        )
        p.add_argument("--no-cache", action="store_true", help="run every step again")
        p.add_argument("--wait", action="store_true", help="mode kfp: wait for the run to finish")
        p.add_argument("--output", default=None, help="also write the result JSON to this file")
        p.add_argument(
            "--log",
            default=None,
            metavar="FILE",
            help="write the full output (every step's log, the result JSON) to FILE and show "
            "live progress on the terminal instead: steps starting and ending, training steps, "
            "loss, dev score and ETA",
        )
    args = parser.parse_args(argv)
    params = _parse_sets(args.set)
    endpoint = (
        KfpEndpoint(args.kfp_host, token_path=args.kfp_token_path, namespace=args.kfp_namespace)
        if args.kfp_host
        else None
    )
    common = dict(
        mode=args.mode, kfp_host=endpoint, root=args.root, cache=not args.no_cache, wait=args.wait
    )
    if args.pipeline == "prompt-tuning":
        run = functools.partial(run_prompt_tuning, args.task, params, **common)
    else:
        run = functools.partial(run_lm_adaptation, params, **common)
    if args.log:
        return _run_logged(run, args)
    result = run()
    text = json.dumps(result, indent=2, default=str)
    _write_output(args.output, text)
    print(text)
    if args.pipeline == "prompt-tuning" and result["mode"] == "local":
        print(describe(result))
    return 0


def _write_output(path: str | None, text: str) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")


def _run_logged(run, args: argparse.Namespace) -> int:
    """--log: the run's full output and result JSON go to the log file; the terminal gets the
    live progress and the summary (describe)."""
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    terminal = sys.stdout
    tty = terminal.isatty() and os.environ.get("TERM") != "dumb"
    with open(args.log, "w", encoding="utf-8") as log:
        try:
            with condensed_output(log, StepProgress(terminal, tty=tty)):
                result = run()
        except BaseException:
            sys.stderr.write(f"the run failed; full log: {args.log}\n")
            raise
        text = json.dumps(result, indent=2, default=str)
        _write_output(args.output, text)
        log.write(text + "\n")
        if args.pipeline == "prompt-tuning" and result["mode"] == "local":
            log.write(describe(result) + "\n")
            # Not print(): parallel kfp.local steps can leave an indenting print in builtins.
            terminal.write(describe(result) + "\n")
            terminal.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
