"""`softprompt ensemble|ablate|grid|baselines|domain-shift|scale|interpret|lm-adapt`: the paper's
experiments.

Each experiment command starts from a base TrainConfig (`--config` JSON/YAML of its fields, then
the flags below) and writes tables (.md + .json) and plots (.png) to `--out`; the table records
the full command, every option spelled out. The TrainConfig and LMAdaptConfig flags are generated
from the dataclasses (softprompt.settings).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from softprompt import settings
from softprompt.training.config import OPTIMIZERS, LMAdaptConfig, ModelTuningConfig, TrainConfig

# The TrainConfig fields every experiment takes as flags (task only where one task is trained).
BASE_KEYS = (
    "task", "model", "data_dir", "prompt.length", "prompt.init", "lr", "optimizer", "batch_size",
    "micro_batch_size", "max_steps", "max_minutes", "eval_every", "eval_max_examples",
    "max_input_tokens", "seed", "target_prefix", "device", "dtype",
)
BASE_SETTINGS = settings.pick(TrainConfig, BASE_KEYS)
LM_ADAPT_SETTINGS = settings.pick(LMAdaptConfig)


def _command(args: argparse.Namespace) -> str:
    """The command that reproduces `args`, every option explicit."""
    parts = ["softprompt", args.command]
    for key, value in vars(args).items():
        if key in ("func", "command", "verbose", settings.GIVEN) or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def _add_base_args(p: argparse.ArgumentParser, task: bool = True) -> None:
    p.add_argument("--out", required=True,
                   help="output folder for tables, plots and runs (rerun to resume)")
    p.add_argument("--config", default=None,
                   help="JSON/YAML file of TrainConfig fields, or FILE:SECTION (the flags below "
                   "override it)")
    settings.add_flags(p, [s for s in BASE_SETTINGS if task or s.key != "task"], unset=True)
    p.add_argument("--test-limit", type=int, default=None,
                   help="evaluate a seeded subset of this many report-split examples")


def _add_mt_args(p: argparse.ArgumentParser) -> None:
    mt = {f.name: f.default for f in fields(ModelTuningConfig)}
    p.add_argument("--mt-lr", type=float, default=None,
                   help=f"model-tuning learning rate (default {mt['lr']})")
    p.add_argument("--mt-optimizer", choices=OPTIMIZERS, default=None,
                   help=f"model-tuning optimizer (default {mt['optimizer']})")


def _base(args: argparse.Namespace) -> TrainConfig:
    """The experiment's base TrainConfig: the --config file, then the flags typed."""
    source = settings.read_config(args.config) if args.config else None
    return settings.load_config(TrainConfig, source, settings.given(args, BASE_SETTINGS))


def _mt(args: argparse.Namespace) -> dict:
    return {"lr": args.mt_lr, "optimizer": args.mt_optimizer}


def _done(path: Path) -> int:
    print(path.read_text())
    return 0


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from softprompt.experiments import run_ensemble, run_ensembles

    if args.tasks:
        if args.prompts:
            raise ValueError("--tasks trains its prompts; it takes no --prompts")
        run_ensembles(_base(args), args.out, args.tasks, seeds=args.seeds,
                      test_limit=args.test_limit, command=_command(args))
        return _done(Path(args.out) / "ensembles.md")
    run_ensemble(_base(args), args.out, seeds=args.seeds, prompt_files=args.prompts or (),
                 test_limit=args.test_limit, command=_command(args))
    return _done(Path(args.out) / "ensemble.md")


def _cmd_grid(args: argparse.Namespace) -> int:
    from softprompt.experiment_sweeps import ABLATION_AXES, run_grid

    run_grid(_base(args), args.out, args.lengths or ABLATION_AXES["length"],
             args.inits or ABLATION_AXES["init"], seeds=args.seeds, test_limit=args.test_limit,
             command=_command(args))
    return _done(Path(args.out) / "grid.md")


def _cmd_ablate(args: argparse.Namespace) -> int:
    from softprompt.experiment_sweeps import run_ablation

    values = args.values
    if values and args.axis == "length":
        values = [int(v) for v in values]
    run_ablation(_base(args), args.out, args.axis, values, seeds=args.seeds,
                 test_limit=args.test_limit, command=_command(args))
    return _done(Path(args.out) / f"ablation_{args.axis}.md")


def _cmd_baselines(args: argparse.Namespace) -> int:
    from softprompt.experiments import run_baselines

    run_baselines(_base(args), args.out, args.tasks, k_shot=args.k_shot, mt_overrides=_mt(args),
                  test_limit=args.test_limit, command=_command(args))
    return _done(Path(args.out) / "baselines.md")


def _cmd_domain_shift(args: argparse.Namespace) -> int:
    from softprompt.experiments import run_domain_shift

    pairs = []
    for pair in args.pairs:
        source, sep, target = pair.partition(":")
        if not sep or not source or not target:
            raise ValueError(f"--pairs: {pair!r} is not SOURCE:TARGET")
        pairs.append((source, target))
    run_domain_shift(_base(args), args.out, pairs, methods=args.methods, mt_overrides=_mt(args),
                     test_limit=args.test_limit, command=_command(args))
    return _done(Path(args.out) / "domain_shift.md")


def _cmd_scale(args: argparse.Namespace) -> int:
    from softprompt.experiments import run_scale

    run_scale(_base(args), args.out, args.models, mt_overrides=_mt(args),
              test_limit=args.test_limit, command=_command(args))
    return _done(Path(args.out) / "scale.md")


def _cmd_interpret(args: argparse.Namespace) -> int:
    from softprompt.interpret import interpret_report, render_html, render_text
    from softprompt.model import load_frozen_lm
    from softprompt.prompt import load_prompt
    from softprompt.tasks import load_spec

    labels = args.labels or load_spec(args.task).label_words
    prompt = load_prompt(args.prompt)
    lm = load_frozen_lm(args.model)
    report = interpret_report(lm, prompt, labels, k=args.k, seed=args.seed, controls=args.controls)
    report["prompt_file"] = args.prompt
    text = render_text(report)
    print(text, end="")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_html(report) if out.suffix in (".html", ".htm") else text)
    if args.json:
        Path(args.json).write_text(json.dumps(report | {"command": _command(args)}, indent=2))
    return 0


def _cmd_lm_adapt(args: argparse.Namespace) -> int:
    from softprompt.training.lm_adaptation import lm_adapt

    config = settings.load_config(LMAdaptConfig, None, settings.values(args, LM_ADAPT_SETTINGS))
    summary = lm_adapt(config, args.out)
    print(json.dumps(summary, indent=2))
    print(f"adapted checkpoint: {args.out} (train prompts on it with --model {args.out})",
          file=sys.stderr)
    return 0


def _add_sweep_commands(sub, fmt) -> None:
    """`grid` and `ablate`: prompt settings over seeds."""
    p = sub.add_parser("grid", help="prompt length x init over seeds in one run: table + plot",
                       formatter_class=fmt)
    _add_base_args(p)
    p.add_argument("--lengths", type=int, nargs="+", default=None,
                   help="prompt lengths (default: 1 5 20 100 150)")
    p.add_argument("--inits", nargs="+", default=None,
                   help="prompt initializations (default: random_uniform sampled_vocab "
                   "class_label)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.set_defaults(func=_cmd_grid)

    p = sub.add_parser("ablate", help="prompt length or init over seeds: table + plot",
                       formatter_class=fmt)
    _add_base_args(p)
    p.add_argument("--axis", choices=("length", "init"), required=True)
    p.add_argument("--values", nargs="+", default=None,
                   help="grid (default: length 1 5 20 100 150; init random_uniform sampled_vocab "
                   "class_label)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.set_defaults(func=_cmd_ablate)


def add_commands(sub) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("ensemble", help="N prompts for one task, majority vote in one forward pass",
                       formatter_class=fmt)
    _add_base_args(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="train one prompt per seed")
    p.add_argument("--prompts", nargs="+", default=None,
                   help="use these prompt files instead of training")
    p.add_argument("--tasks", nargs="+", default=None,
                   help="an ensemble on each of these tasks (instead of --task), then one table "
                   "of them all (the paper's Table 3)")
    p.set_defaults(func=_cmd_ensemble)

    _add_sweep_commands(sub, fmt)

    p = sub.add_parser("baselines", help="prompt tuning vs model tuning, multi-task model tuning, "
                       "few-shot priming", formatter_class=fmt)
    _add_base_args(p, task=False)
    p.add_argument("--tasks", nargs="+", required=True,
                   help="tasks (two or more adds multi-task model tuning)")
    p.add_argument("--k-shot", type=int, default=4, help="demonstrations for prompt design")
    _add_mt_args(p)
    p.set_defaults(func=_cmd_baselines)

    p = sub.add_parser("domain-shift", help="train on one task, evaluate zero-shot on another "
                       "(QQP <-> MRPC)", formatter_class=fmt)
    _add_base_args(p, task=False)
    p.add_argument("--pairs", nargs="+", default=["qqp:mrpc", "mrpc:qqp"],
                   help="SOURCE:TARGET pairs")
    p.add_argument("--methods", nargs="+", choices=("prompt_tuning", "model_tuning"),
                   default=["prompt_tuning", "model_tuning"])
    _add_mt_args(p)
    p.set_defaults(func=_cmd_domain_shift)

    p = sub.add_parser("scale", help="prompt tuning vs model tuning on several model sizes",
                       formatter_class=fmt)
    _add_base_args(p)
    p.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    _add_mt_args(p)
    p.set_defaults(func=_cmd_scale)

    p = sub.add_parser("interpret", help="nearest vocabulary tokens of each prompt vector, label "
                       "persistence, random control", formatter_class=fmt)
    p.add_argument("--prompt", required=True, help="prompt .safetensors")
    p.add_argument("--task", default="sst2", help="task whose label words are looked for")
    p.add_argument("--labels", nargs="+", default=None, help="label words (instead of the task's)")
    settings.add_flags(p, settings.pick(TrainConfig, ["model"]))
    p.add_argument("--k", type=int, default=5, help="neighbours per prompt vector")
    p.add_argument("--controls", type=int, default=5, help="random-vector control draws")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the report here (.html: HTML, else text)")
    p.add_argument("--json", default=None, help="also write the report as JSON")
    p.set_defaults(func=_cmd_interpret)

    p = sub.add_parser(
        "lm-adapt", formatter_class=fmt,
        help="LM-adapt an encoder-decoder (T5) checkpoint with the prefix-LM objective; "
        "decoder-only models need no adaptation",
        description="Continue self-supervised training of a T5-style checkpoint with the "
        "prefix-LM objective (text prefix in, continuation out) and save a new checkpoint that "
        "every task then reuses. Decoder-only models (SmolLM2, Gemma 3) were pre-trained as LMs "
        "and need no adaptation. The 'span corruption + sentinel' setting needs no new "
        "checkpoint: train with a target prefix of '<extra_id_0> ' (TrainConfig.target_prefix).",
    )
    p.add_argument("--out", required=True, help="folder for the adapted checkpoint")
    settings.add_flags(p, LM_ADAPT_SETTINGS)
    p.set_defaults(func=_cmd_lm_adapt)
