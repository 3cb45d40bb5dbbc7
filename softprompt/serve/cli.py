"""`softprompt serve`: the multi-task inference service (softprompt.serve) under uvicorn, with the
service's connection limits (header size, head and body deadlines) installed by
softprompt.serve.protocol."""

from __future__ import annotations

import argparse
import os
from typing import NamedTuple

from softprompt import settings
from softprompt.serve.config import ServeConfig, TaskServing

# ServeConfig's settings that are flags as they are; the others are built from several flags.
SERVE_KEYS = (
    "registry",
    "model",
    "max_batch_size",
    "max_wait_ms",
    "max_body_bytes",
    "max_header_bytes",
    "header_timeout_seconds",
    "body_timeout_seconds",
    "max_batch_items",
    "max_input_chars",
    "max_input_tokens",
    "poll_seconds",
    "metrics_port",
)
SERVE_SETTINGS = settings.pick(ServeConfig, SERVE_KEYS)


class EnsembleArg(NamedTuple):
    """One `--ensemble` value: the N newest versions of a task, or pinned versions."""

    task: str
    newest: int  # 0 when versions are pinned
    pinned: tuple[int, ...]


def _ensemble_arg(text: str) -> EnsembleArg:
    """`task=N` (the N newest versions) or `task=v1+v2+v3` (pinned versions)."""
    task, sep, value = text.partition("=")
    parts = value.split("+")
    if not sep or not task or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"--ensemble {text!r}: use TASK=N (N newest versions) or TASK=V1+V2+... (pinned)"
        )
    numbers = tuple(int(p) for p in parts)
    if len(numbers) == 1:
        return EnsembleArg(task, numbers[0], ())
    return EnsembleArg(task, 0, numbers)


def _token(args: argparse.Namespace) -> str | None:
    """The bearer token from the environment variable `--token-env` names (None: no auth)."""
    if not args.token_env:
        return None
    token = os.environ.get(args.token_env)
    if not token:
        raise ValueError(f"--token-env {args.token_env}: that environment variable is unset or "
                         "empty")
    return token


def config_from_args(args: argparse.Namespace):
    """The parsed command line -> ServeConfig; the token comes from the named environment
    variable."""
    token = _token(args)
    if args.metrics_port and args.metrics_port == args.port:
        raise ValueError(f"--metrics-port {args.metrics_port} is also --port: "
                         "the token-free metrics need a port of their own")
    ensembles = {e.task: e for e in args.ensemble}
    names = [t for t in (s.strip() for s in args.tasks.split(",")) if t]
    unknown = sorted(set(ensembles) - set(names))
    if unknown:
        raise ValueError(
            f"--ensemble names task(s) {unknown} that --tasks does not list ({names})"
        )
    off = EnsembleArg("", 0, ())
    tasks = [TaskServing(name, ref=args.alias, ensemble=ensembles.get(name, off).newest,
                         versions=ensembles.get(name, off).pinned)
             for name in names]
    return ServeConfig(
        tasks=tasks,
        token=token,
        mixed_batches=not args.per_task_batches,
        metrics_host=args.host,
        **settings.values(args, SERVE_SETTINGS),
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from softprompt.serve.http import create_app
    from softprompt.serve.protocol import uvicorn_options

    config = config_from_args(args)
    log_level = "info" if args.verbose else "warning"
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level=log_level,
                **uvicorn_options(config))
    return 0


def add_commands(sub) -> None:
    s = sub.add_parser(
        "serve", help="serve every registered task's prompt from one frozen model over HTTP",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Registry credentials come from the standard AWS chain (s3://) or the "
                    "directory's permissions: give the service a read-only identity, e.g. "
                    "AWS_PROFILE=<reader>.",
    )
    settings.add_flags(s, SERVE_SETTINGS)
    s.add_argument("--tasks", required=True, help="comma-separated task names to serve")
    s.add_argument("--alias", default=settings.defaults(TaskServing)["ref"],
                   help="alias (or version) each single-prompt task is served from")
    s.add_argument("--ensemble", action="append", default=[], type=_ensemble_arg,
                   metavar="TASK=N|TASK=V1+V2",
                   help="serve TASK as a majority-vote ensemble of its N newest (or the pinned) "
                        "versions (repeatable)")
    s.add_argument("--token-env", default=None,
                   help="environment variable holding the bearer token (unset: no auth)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--per-task-batches", action="store_true",
                   help="one forward per task instead of mixed batches (baseline)")
    s.set_defaults(func=_cmd_serve)
