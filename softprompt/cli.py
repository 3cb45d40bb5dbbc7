"""`softprompt` command line: train, evaluate and predict with soft prompts on a frozen LM."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from softprompt.prompt import INITS
from softprompt.training.config import OPTIMIZERS


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="offline short name (smollm2-135m, gemma3-270m), local dir, .gguf path or hub name")
    p.add_argument("--data-dir", default=None, help="data location (default: $SOFTPROMPT_DATA_DIR or ../shared/data)")
    p.add_argument("--max-input-tokens", type=int, default=256, help="longer inputs keep their last tokens")
    p.add_argument("--batch-size", type=int, default=32, help="examples per scoring forward")


def _cmd_train(args: argparse.Namespace) -> int:
    from softprompt.prompt import PromptConfig
    from softprompt.training.config import TrainConfig
    from softprompt.training.prompt_tuning import train

    config = TrainConfig(
        task=args.task, model=args.model,
        prompt=PromptConfig(length=args.prompt_length, init=args.init, uniform_range=args.uniform_range,
                            vocab_top_k=args.vocab_top_k, init_text=args.init_text, init_file=args.init_file),
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, beta2_decay=args.beta2_decay,
        batch_size=args.train_batch_size, micro_batch_size=args.micro_batch_size, max_steps=args.max_steps,
        max_minutes=args.max_minutes, eval_every=args.eval_every, patience=args.patience,
        eval_max_examples=args.eval_max_examples, eval_batch_size=args.batch_size,
        max_input_tokens=args.max_input_tokens, seed=args.seed, data_dir=args.data_dir,
        prepared_dir=args.prepared_dir, target_prefix=args.target_prefix, device=args.device, dtype=args.dtype,
    )
    from softprompt.distributed import process_group

    with process_group(config.device) as rank:  # under torchrun: data-parallel over all processes
        result = train(config, args.run_dir, progress=not args.no_progress)
    if rank == 0:
        print(json.dumps(result, indent=2))
        print(f"best prompt: {Path(args.run_dir) / 'prompt.safetensors'}", file=sys.stderr)
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from softprompt.tasks import load_spec, load_task, write_prepared

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
        raise SystemExit(f"error: {path}: prompt width {prompt.shape[1]} does not match model width {lm.dim}")
    return prompt


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from softprompt.model import load_frozen_lm
    from softprompt.scoring import encode_examples, evaluate
    from softprompt.tasks import load_prepared, load_spec, load_task

    spec = load_spec(args.task)
    data = load_prepared(args.prepared_dir) if args.prepared_dir else load_task(spec, args.data_dir)
    if args.split not in data:
        raise SystemExit(f"error: task {spec.name} has no split {args.split!r} (has {sorted(data)})")
    examples = data[args.split][: args.limit] if args.limit else data[args.split]
    lm = load_frozen_lm(args.model)
    prompt = _load_prompt_or_empty(args.prompt, lm)
    encoded = encode_examples(lm, examples, args.max_input_tokens)
    metrics = evaluate(lm, prompt, spec, examples, encoded, mode=args.mode, batch_size=args.batch_size)
    metrics.update(task=spec.name, split=args.split, prompt=args.prompt or "none (zero-shot)", truncated_inputs=encoded.truncated)
    print(json.dumps(metrics, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(metrics, indent=2))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from softprompt.model import load_frozen_lm
    from softprompt.scoring import label_scores
    from softprompt.tasks import load_spec, render_input

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
        print(json.dumps({"input": text, "label": spec.label_words[best],
                          "scores": dict(zip(spec.label_words, [round(float(s), 4) for s in row], strict=True))}))
    return 0


# Modules that add their own subcommands with `add_commands(subparsers)`; imports stay light
# (heavy libraries are imported inside the command functions).
_EXTENSIONS: tuple[str, ...] = ("softprompt.data_version", "softprompt.experiments_cli", "softprompt.serve.cli", "softprompt.registry.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softprompt", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a soft prompt on a task", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--task", required=True, help="task name (tasks/<name>.yaml) or spec path")
    t.add_argument("--run-dir", required=True, help="output folder; an existing run there is resumed")
    _add_model_args(t)
    t.add_argument("--prompt-length", type=int, default=20, help="P (paper: 1, 5, 20, 100, 150)")
    t.add_argument("--init", choices=INITS, default="class_label", help="prompt initialization")
    t.add_argument("--uniform-range", type=float, default=0.5, help="random_uniform draws from [-r, r]")
    t.add_argument("--vocab-top-k", type=int, default=5000, help="sampled_vocab draws from the k most common tokens")
    t.add_argument("--init-text", default=None, help="text for --init text")
    t.add_argument("--init-file", default=None, help="safetensors [P, E] for --init file")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="adafactor")
    t.add_argument("--lr", type=float, default=0.3)
    t.add_argument("--weight-decay", type=float, default=1e-5)
    t.add_argument("--beta2-decay", type=float, default=0.8, help="Adafactor second-moment decay exponent")
    t.add_argument("--train-batch-size", type=int, default=32, help="examples per optimizer step")
    t.add_argument("--micro-batch-size", type=int, default=8, help="examples per forward (gradient accumulation)")
    t.add_argument("--max-steps", type=int, default=1000)
    t.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget, evaluations included")
    t.add_argument("--eval-every", type=int, default=50, help="evaluate on dev every K steps")
    t.add_argument("--patience", type=int, default=None, help="stop after N evaluations without improvement")
    t.add_argument("--eval-max-examples", type=int, default=1000, help="dev subset size for early stopping")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--target-prefix", default="", help="text before every target; '<extra_id_0> ' = span corruption + sentinel (T5)")
    t.add_argument("--prepared-dir", default=None, help="read examples written by `softprompt prepare` (not raw data)")
    t.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    t.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="frozen weights' dtype (bfloat16 on GPU)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    pr = sub.add_parser("prepare", help="write a task's normalized text-to-text examples (split.jsonl + meta.json)")
    pr.add_argument("--task", required=True, help="task name or spec path")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--data-dir", default=None, help="data location (default: $SOFTPROMPT_DATA_DIR or ../shared/data)")
    pr.set_defaults(func=_cmd_prepare)

    e = sub.add_parser("evaluate", help="score a prompt (or zero-shot) on a task split", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("--task", required=True)
    e.add_argument("--prompt", default=None, help="prompt .safetensors; omit for the zero-shot baseline")
    e.add_argument("--split", default="test", choices=("train", "dev", "test"))
    e.add_argument("--mode", default="rank", choices=("rank", "generate"), help="rank classification or free generation")
    e.add_argument("--limit", type=int, default=None, help="first N examples only")
    e.add_argument("--output", default=None, help="also write the metrics JSON here")
    e.add_argument("--prepared-dir", default=None, help="read examples written by `softprompt prepare` (not raw data)")
    _add_model_args(e)
    e.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="label texts with a prompt", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, help="task whose label words are ranked")
    p.add_argument("--prompt", default=None, help="prompt .safetensors; omit for zero-shot")
    p.add_argument("--text", action="append", help="a JSON object of the template's fields, or plain text for a one-field template (repeatable); else stdin lines")
    _add_model_args(p)
    p.set_defaults(func=_cmd_predict)

    import importlib

    for module in _EXTENSIONS:
        importlib.import_module(module).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "train":
        # Training reports progress at INFO (a line per evaluation): without it a run with
        # --no-progress, as in a pod or a DVC stage, shows nothing until it ends.
        logging.getLogger("softprompt").setLevel(logging.INFO)
    from softprompt.tasks import TaskDataError

    try:
        return args.func(args)
    except (TaskDataError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
