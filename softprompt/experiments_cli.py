"""`softprompt ensemble|ablate|baselines|domain-shift|scale|interpret|lm-adapt`: the paper's experiments.

Each experiment command starts from a base TrainConfig (`--config` JSON/YAML of its fields, then
the flags below) and writes tables (.md + .json) and plots (.png) to `--out`; the table records
the full command, every option spelled out.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from softprompt.prompt import INITS
from softprompt.training.config import OPTIMIZERS


def _command(args: argparse.Namespace) -> str:
    """The command that reproduces `args`, every option explicit."""
    parts = ["softprompt", args.command]
    for key, value in vars(args).items():
        if key in ("func", "command", "verbose") or value is None or value is False:
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
    p.add_argument("--out", required=True, help="output folder for tables, plots and runs (rerun to resume)")
    p.add_argument("--config", default=None, help="JSON/YAML file of TrainConfig fields (the flags below override it)")
    if task:
        p.add_argument("--task", default=None, help="task name or spec path")
    p.add_argument("--model", default=None, help="model (offline short name, local dir, .gguf, hub name)")
    p.add_argument("--data-dir", default=None, help="data location")
    p.add_argument("--prompt-length", type=int, default=None, help="P")
    p.add_argument("--init", choices=INITS, default=None, help="prompt initialization")
    p.add_argument("--lr", type=float, default=None, help="prompt learning rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    p.add_argument("--train-batch-size", type=int, default=None, help="examples per optimizer step")
    p.add_argument("--micro-batch-size", type=int, default=None, help="examples per forward")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps per run")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget per run")
    p.add_argument("--eval-every", type=int, default=None, help="dev evaluation every K steps")
    p.add_argument("--eval-max-examples", type=int, default=None, help="dev subset for model selection")
    p.add_argument("--max-input-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=None, help="base seed (data order, subsets)")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate a seeded subset of this many report-split examples")
    p.add_argument("--target-prefix", default=None, help="text before every target ('<extra_id_0> ': span corruption + sentinel)")


def _add_mt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mt-lr", type=float, default=None, help="model-tuning learning rate (default 1e-3)")
    p.add_argument("--mt-optimizer", choices=OPTIMIZERS, default=None, help="model-tuning optimizer (default adafactor)")


def _base(args: argparse.Namespace):
    from softprompt.experiments import load_train_config

    prompt = {k: v for k, v in (("length", args.prompt_length), ("init", args.init)) if v is not None}
    return load_train_config(
        args.config, prompt=prompt, task=getattr(args, "task", None), model=args.model, data_dir=args.data_dir, lr=args.lr,
        optimizer=args.optimizer, batch_size=args.train_batch_size, micro_batch_size=args.micro_batch_size,
        max_steps=args.max_steps, max_minutes=args.max_minutes, eval_every=args.eval_every,
        eval_max_examples=args.eval_max_examples, max_input_tokens=args.max_input_tokens, seed=args.seed,
        target_prefix=args.target_prefix,
    )


def _mt(args: argparse.Namespace) -> dict:
    return {"lr": args.mt_lr, "optimizer": args.mt_optimizer}


def _done(path: Path) -> int:
    print(path.read_text())
    return 0


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from softprompt.experiments import run_ensemble

    run_ensemble(_base(args), args.out, seeds=args.seeds, prompt_files=args.prompts or (), test_limit=args.test_limit, command=_command(args))
    return _done(Path(args.out) / "ensemble.md")


def _cmd_ablate(args: argparse.Namespace) -> int:
    from softprompt.experiments import run_ablation

    values = [int(v) for v in args.values] if (args.values and args.axis == "length") else args.values
    run_ablation(_base(args), args.out, args.axis, values, seeds=args.seeds, test_limit=args.test_limit, command=_command(args))
    return _done(Path(args.out) / f"ablation_{args.axis}.md")


def _cmd_baselines(args: argparse.Namespace) -> int:
    from softprompt.experiments import run_baselines

    run_baselines(_base(args), args.out, args.tasks, k_shot=args.k_shot, mt_overrides=_mt(args), test_limit=args.test_limit,
                  command=_command(args))
    return _done(Path(args.out) / "baselines.md")


def _cmd_domain_shift(args: argparse.Namespace) -> int:
    from softprompt.experiments import run_domain_shift

    pairs = []
    for pair in args.pairs:
        source, sep, target = pair.partition(":")
        if not sep or not source or not target:
            raise ValueError(f"--pairs: {pair!r} is not SOURCE:TARGET")
        pairs.append((source, target))
    run_domain_shift(_base(args), args.out, pairs, methods=args.methods, mt_overrides=_mt(args), test_limit=args.test_limit,
                     command=_command(args))
    return _done(Path(args.out) / "domain_shift.md")


def _cmd_scale(args: argparse.Namespace) -> int:
    from softprompt.experiments import run_scale

    run_scale(_base(args), args.out, args.models, mt_overrides=_mt(args), test_limit=args.test_limit, command=_command(args))
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
    from softprompt.training.config import LMAdaptConfig
    from softprompt.training.lm_adaptation import lm_adapt

    config = LMAdaptConfig(model=args.model, corpus=args.corpus, steps=args.steps, lr=args.lr, optimizer=args.optimizer,
                           batch_size=args.batch_size, max_tokens=args.max_tokens, seed=args.seed, data_dir=args.data_dir)
    summary = lm_adapt(config, args.out)
    print(json.dumps(summary, indent=2))
    print(f"adapted checkpoint: {args.out} (train prompts on it with --model {args.out})", file=sys.stderr)
    return 0


def add_commands(sub) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("ensemble", help="N prompts for one task, majority vote in one forward pass", formatter_class=fmt)
    _add_base_args(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train one prompt per seed")
    p.add_argument("--prompts", nargs="+", default=None, help="use these prompt files instead of training")
    p.set_defaults(func=_cmd_ensemble)

    p = sub.add_parser("ablate", help="prompt length or init over seeds: table + plot", formatter_class=fmt)
    _add_base_args(p)
    p.add_argument("--axis", choices=("length", "init"), required=True)
    p.add_argument("--values", nargs="+", default=None, help="grid (default: length 1 5 20 100 150; init random_uniform sampled_vocab class_label)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.set_defaults(func=_cmd_ablate)

    p = sub.add_parser("baselines", help="prompt tuning vs model tuning, multi-task model tuning, few-shot priming", formatter_class=fmt)
    _add_base_args(p, task=False)
    p.add_argument("--tasks", nargs="+", required=True, help="tasks (two or more adds multi-task model tuning)")
    p.add_argument("--k-shot", type=int, default=4, help="demonstrations for prompt design")
    _add_mt_args(p)
    p.set_defaults(func=_cmd_baselines)

    p = sub.add_parser("domain-shift", help="train on one task, evaluate zero-shot on another (QQP <-> MRPC)", formatter_class=fmt)
    _add_base_args(p, task=False)
    p.add_argument("--pairs", nargs="+", default=["qqp:mrpc", "mrpc:qqp"], help="SOURCE:TARGET pairs")
    p.add_argument("--methods", nargs="+", choices=("prompt_tuning", "model_tuning"), default=["prompt_tuning", "model_tuning"])
    _add_mt_args(p)
    p.set_defaults(func=_cmd_domain_shift)

    p = sub.add_parser("scale", help="prompt tuning vs model tuning on several model sizes", formatter_class=fmt)
    _add_base_args(p)
    p.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    _add_mt_args(p)
    p.set_defaults(func=_cmd_scale)

    p = sub.add_parser("interpret", help="nearest vocabulary tokens of each prompt vector, label persistence, random control",
                       formatter_class=fmt)
    p.add_argument("--prompt", required=True, help="prompt .safetensors")
    p.add_argument("--task", default="sst2", help="task whose label words are looked for")
    p.add_argument("--labels", nargs="+", default=None, help="label words (instead of the task's)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--k", type=int, default=5, help="neighbours per prompt vector")
    p.add_argument("--controls", type=int, default=5, help="random-vector control draws")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the report here (.html: HTML, else text)")
    p.add_argument("--json", default=None, help="also write the report as JSON")
    p.set_defaults(func=_cmd_interpret)

    p = sub.add_parser(
        "lm-adapt", formatter_class=fmt,
        help="LM-adapt an encoder-decoder (T5) checkpoint with the prefix-LM objective; decoder-only models need no adaptation",
        description="Continue self-supervised training of a T5-style checkpoint with the prefix-LM objective (text prefix in, "
                    "continuation out) and save a new checkpoint that every task then reuses. Decoder-only models (SmolLM2, "
                    "Gemma 3) were pre-trained as LMs and need no adaptation. The 'span corruption + sentinel' setting needs no "
                    "new checkpoint: train with a target prefix of '<extra_id_0> ' (TrainConfig.target_prefix).",
    )
    p.add_argument("--model", required=True, help="encoder-decoder checkpoint (local dir or hub name)")
    p.add_argument("--corpus", required=True, help="unlabeled text: a .txt file (one document per line) or a task name")
    p.add_argument("--out", required=True, help="folder for the adapted checkpoint")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adafactor")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=128, help="document window split into prefix and continuation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="data location when --corpus is a task")
    p.set_defaults(func=_cmd_lm_adapt)
