"""`softprompt` command line: train, evaluate and predict with soft prompts on a frozen LM."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from softprompt import settings
from softprompt.training.config import TrainConfig

TRAIN_SETTINGS = settings.pick(TrainConfig)
# The model and scoring flags that evaluate and predict share with train.
MODEL_KEYS = ("model", "data_dir", "max_input_tokens", "eval_batch_size")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    settings.add_flags(p, settings.pick(TrainConfig, MODEL_KEYS))


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's TrainConfig: the --config file's fields, then the flags typed, then the
    defaults. The task must come from one of them."""
    source = settings.read_config(args.config) if args.config else None
    typed = settings.given(args, TRAIN_SETTINGS)
    if "task" not in typed and (source is None or "task" not in source.values):
        raise ValueError("train needs a task: --task, or `task:` in the --config file")
    return settings.load_config(TrainConfig, source, typed)


def _cmd_train(args: argparse.Namespace) -> int:
    from softprompt.distributed import process_group
    from softprompt.training.prompt_tuning import train

    config = train_config(args)
    if args.seeds:
        return _train_group(args, config)
    # Under torchrun: data-parallel over all processes.
    with process_group(config.device) as rank:
        result = train(config, args.run_dir, progress=not args.no_progress)
    if rank == 0:
        print(json.dumps(result, indent=2))
        print(f"best prompt: {Path(args.run_dir) / 'prompt.safetensors'}", file=sys.stderr)
    return 0


def _train_group(args: argparse.Namespace, config: TrainConfig) -> int:
    """`train --seeds`: one prompt per seed, trained in one batch into RUN_DIR/seed<S>."""
    from dataclasses import replace

    from softprompt.distributed import process_group
    from softprompt.training.prompt_group import train_group

    if "seed" in settings.given(args, TRAIN_SETTINGS):
        raise ValueError("give either --seed (one prompt) or --seeds (a group), not both")
    if len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds must not repeat a seed, got {args.seeds}")
    configs = [replace(config, seed=seed) for seed in args.seeds]
    run_dirs = [Path(args.run_dir) / f"seed{seed}" for seed in args.seeds]
    with process_group(config.device) as rank:
        results = train_group(configs, run_dirs, progress=not args.no_progress)
    if rank == 0:
        print(json.dumps(results, indent=2))
        for run_dir in run_dirs:
            print(f"best prompt: {run_dir / 'prompt.safetensors'}", file=sys.stderr)
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from softprompt.prepared import write_prepared
    from softprompt.task_data import load_task
    from softprompt.tasks import load_spec

    spec = load_spec(args.task)
    stats: dict = {}
    meta = write_prepared(spec, load_task(spec, args.data_dir, stats), args.out, stats)
    print(json.dumps(meta, indent=2))
    return 0


def _load_prompt_or_empty(path: str | None, lm):
    import torch

    from softprompt.prompt import load_prompt

    if path is None:
        return torch.zeros(0, lm.dim)  # zero-shot: the template alone
    prompt = load_prompt(path)
    if prompt.shape[1] != lm.dim:
        raise SystemExit(
            f"error: {path}: prompt width {prompt.shape[1]} does not match model width {lm.dim}"
        )
    return prompt


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from softprompt.model import load_frozen_lm
    from softprompt.prepared import load_prepared
    from softprompt.scoring import encode_examples, evaluate
    from softprompt.task_data import load_task
    from softprompt.tasks import load_spec

    spec = load_spec(args.task)
    data = load_prepared(args.prepared_dir) if args.prepared_dir else load_task(spec, args.data_dir)
    if args.split not in data:
        raise SystemExit(
            f"error: task {spec.name} has no split {args.split!r} (has {sorted(data)})"
        )
    examples = data[args.split][: args.limit] if args.limit else data[args.split]
    lm = load_frozen_lm(args.model)
    prompt = _load_prompt_or_empty(args.prompt, lm)
    encoded = encode_examples(lm, examples, args.max_input_tokens)
    metrics = evaluate(
        lm, prompt, spec, examples, encoded, mode=args.mode, batch_size=args.batch_size
    )
    metrics.update(task=spec.name, split=args.split, prompt=args.prompt or "none (zero-shot)",
                   truncated_inputs=encoded.truncated)
    print(json.dumps(metrics, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(metrics, indent=2))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from softprompt.model import load_frozen_lm
    from softprompt.scoring import label_scores
    from softprompt.task_data import render_input
    from softprompt.tasks import load_spec

    spec = load_spec(args.task)
    lines = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not lines:
        raise SystemExit("error: no input: pass --text or lines on stdin")
    texts = [render_input(spec, line, f"input {i + 1}") for i, line in enumerate(lines)]
    lm = load_frozen_lm(args.model)
    prompt = _load_prompt_or_empty(args.prompt, lm)
    inputs = [lm.encode_input(t, args.max_input_tokens)[0] for t in texts]
    scores = label_scores(lm, prompt, inputs, spec.label_words, args.batch_size)
    for text, row in zip(texts, scores, strict=True):
        best = int(row.argmax())
        rounded = [round(float(s), 4) for s in row]
        print(json.dumps({"input": text, "label": spec.label_words[best],
                          "scores": dict(zip(spec.label_words, rounded, strict=True))}))
    return 0


# Modules that add their own subcommands with `add_commands(subparsers)`; imports stay light
# (heavy libraries are imported inside the command functions).
_EXTENSIONS: tuple[str, ...] = (
    "softprompt.data_version",
    "softprompt.experiments_cli",
    "softprompt.serve.cli",
    "softprompt.registry.cli",
    "softprompt.tasks_cli",
    "softprompt.webui",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softprompt", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    t = sub.add_parser("train", help="train a soft prompt on a task", formatter_class=defaults)
    t.add_argument("--run-dir", required=True,
                   help="output folder; an existing run there is resumed")
    t.add_argument("--config", default=None,
                   help="YAML/JSON file of TrainConfig fields (a nested `prompt:` mapping too), "
                   "or FILE:SECTION for one section of it (params.yaml:train); the flags typed "
                   "override it")
    settings.add_flags(t, TRAIN_SETTINGS, needed=("task",))
    t.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="train one prompt per seed, all in one batch, into RUN_DIR/seed<SEED> "
                   "(the group's checkpoint in the first one's group/). It pays off on a "
                   "launch-bound GPU, where N prompts cost about one run; on a CPU each step "
                   "costs N times as much, so it saves only the process and model-load overhead")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    pr = sub.add_parser("prepare", help="write a task's normalized text-to-text examples "
                        "(split.jsonl + meta.json)")
    pr.add_argument("--task", required=True, help="task name or spec path")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--data-dir", default=None,
                    help="data location (default: $SOFTPROMPT_DATA_DIR or ../shared/data)")
    pr.set_defaults(func=_cmd_prepare)

    e = sub.add_parser("evaluate", help="score a prompt (or zero-shot) on a task split",
                       formatter_class=defaults)
    e.add_argument("--task", required=True)
    e.add_argument("--prompt", default=None,
                   help="prompt .safetensors; omit for the zero-shot baseline")
    e.add_argument("--split", default="test", choices=("train", "dev", "test"))
    e.add_argument("--mode", default="rank", choices=("rank", "generate"),
                   help="rank classification or free generation")
    e.add_argument("--limit", type=int, default=None, help="first N examples only")
    e.add_argument("--output", default=None, help="also write the metrics JSON here")
    e.add_argument("--prepared-dir", default=None,
                   help="read examples written by `softprompt prepare` (not raw data)")
    _add_model_args(e)
    e.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="label texts with a prompt", formatter_class=defaults)
    p.add_argument("--task", required=True, help="task whose label words are ranked")
    p.add_argument("--prompt", default=None, help="prompt .safetensors; omit for zero-shot")
    p.add_argument("--text", action="append",
                   help="a JSON object of the template's fields, or plain text for a one-field "
                   "template (repeatable); else stdin lines")
    _add_model_args(p)
    p.set_defaults(func=_cmd_predict)

    import importlib

    for module in _EXTENSIONS:
        importlib.import_module(module).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command == "train":
        # Training reports progress at INFO (a line per evaluation): without it a run with
        # --no-progress, as in a pod or a DVC stage, shows nothing until it ends.
        logging.getLogger("softprompt").setLevel(logging.INFO)
    from softprompt.tasks import TaskDataError

    try:
        return args.func(args)
    except (TaskDataError, ValueError, OSError) as err:
        # Bad input (a spec, a data file, a flag, a path) ends in one line, not a traceback.
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RecursionError:
        # Readers report deep nesting as TaskDataError; this is the last guard for any other.
        print("error: input nested too deeply to read (RecursionError)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
