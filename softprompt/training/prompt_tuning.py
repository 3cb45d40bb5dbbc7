"""Prompt tuning: only the [P, E] prompt learns; the LM stays frozen.

Paper defaults (Lester et al. 2021, section 3): Adafactor, lr 0.3, weight decay 1e-5, beta2
decay 0.8, no parameter scaling, batch 32, and the checkpoint with the best dev metric kept.
The training itself is the shared loop (softprompt.training.loop): it evaluates every
`eval_every` steps, writes `checkpoint.pt` (prompt, optimizer, step, best so far) atomically, and
resumes from it after a kill. This module says what trains (the prompt), what scores it (the
task's dev metric), and how a run directory looks.

Run directory layout:
  config.json      the full TrainConfig
  metrics.jsonl    one JSON line per logged step / evaluation / event
  checkpoint.pt    latest state, for resume
  prompt.safetensors  the best prompt on dev
  result.json      final dev/test metrics of the best prompt
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

import torch

from softprompt import distributed
from softprompt import prompt as prompt_lib
from softprompt.fileio import atomic_write
from softprompt.model import FrozenLM, load_frozen_lm
from softprompt.prepared import load_prepared
from softprompt.scoring import encode_examples, evaluate, lm_loss
from softprompt.task_data import load_task, seeded_subset
from softprompt.tasks import Example, TaskSpec, load_spec
from softprompt.training import loop
from softprompt.training.config import TrainConfig, check_world_split
from softprompt.training.optim import make_optimizer
from softprompt.training.progress import MetricsLog, ProgressOptions

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
BEST_PROMPT = "prompt.safetensors"


def train(
    config: TrainConfig,
    run_dir: str | Path,
    lm: FrozenLM | None = None,
    spec: TaskSpec | None = None,
    progress: bool = True,
) -> dict:
    """Trains one prompt; returns the result dict (also written to run_dir/result.json).

    Every evaluation reports one line and the end of training one more, above the tqdm bar when
    `progress`, else through the logger of softprompt.training.progress at INFO."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = spec or load_spec(config.task)
    # Load and validate all data before the model: bad input fails in seconds, not after a load.
    stats: dict = {}
    data = _load_data(config, spec, stats)
    lm = lm or load_frozen_lm(config.model, device=config.device, dtype=config.dtype)
    if lm.target_prefix != config.target_prefix:
        # A view with the prefix: the caller's wrapper is untouched.
        lm = lm.with_options(target_prefix=config.target_prefix)
    world = distributed.world()
    check_world_split(config.batch_size, config.micro_batch_size, world.size)
    writer = world.rank == 0  # one process writes the run directory
    torch.manual_seed(config.seed)
    _record_config(config, run_dir, writer)
    metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=writer)

    train_enc = encode_examples(lm, data["train"], config.max_input_tokens)
    # A fixed seeded subset, so every evaluation of a run scores the same dev examples.
    dev_examples = seeded_subset(data["dev"], config.eval_max_examples, config.seed)
    dev_enc = encode_examples(lm, dev_examples, config.max_input_tokens)
    prompt = torch.nn.Parameter(_initial_prompt(config, lm, spec))

    start = {
        "train_examples": len(data["train"]),
        "dev_examples": len(dev_examples),
        "truncated_train_inputs": train_enc.truncated,
        "truncated_dev_inputs": dev_enc.truncated,
        "skipped_rows": len(stats.get("skipped_rows", [])),
        "seed": config.seed,
    }
    trainable = loop.Trainable(
        params=[prompt],
        optimizer=make_optimizer(config, [prompt]),
        batches=partial(
            loop.encoded_step, train_enc, config.batch_size, config.micro_batch_size, config.seed,
            world, by_length=True
        ),
        loss=lambda batch, tokens: lm_loss(lm, prompt, batch, normalizer=tokens),
        evaluate=lambda: evaluate(
            lm, prompt.detach(), spec, dev_examples, dev_enc, batch_size=config.eval_batch_size
        ),
        keep_best=partial(_save_best, prompt, run_dir / BEST_PROMPT, spec.name, writer),
        state=lambda: {"prompt": prompt.detach().clone()},
        load_state=partial(_restore_prompt, prompt),
        on_start=partial(_log_start, metrics, start, stats.get("skipped_rows", [])),
    )
    schedule = loop.Schedule(
        max_steps=config.max_steps,
        eval_every=config.eval_every,
        max_minutes=config.max_minutes,
        patience=config.patience,
    )
    note = "scoring the best prompt on test" if "test" in data else ""
    shown = ProgressOptions(
        bar=progress, desc=f"train {spec.name}", metric=spec.metric, final_note=note
    )
    outcome = loop.train_loop(trainable, schedule, metrics, run_dir / CHECKPOINT, shown)
    distributed.barrier()  # the writer's prompt file is complete before anyone reads it
    result = _result(config, lm, spec, data, outcome, len(dev_examples), run_dir)
    if writer:
        atomic_write(run_dir / "result.json", json.dumps(result, indent=2).encode())
    done = {k: v for k, v in result.items() if k in ("best_step", "steps", "stop_reason")}
    metrics.write(event="done", **done)
    return result


def _load_data(config: TrainConfig, spec: TaskSpec, stats: dict) -> dict[str, list[Example]]:
    """The task's splits (prepared or raw); a train and a dev split are required."""
    if config.prepared_dir:
        data = load_prepared(config.prepared_dir)
    else:
        data = load_task(spec, config.data_dir, stats)
    for split in ("train", "dev"):
        if split not in data:
            raise ValueError(f"task {spec.name}: no {split!r} split to train on")
    return data


def _record_config(config: TrainConfig, run_dir: Path, writer: bool) -> None:
    """Writes config.json, refusing a run directory that holds another config's run."""
    config_path = run_dir / "config.json"
    if config_path.exists() and json.loads(config_path.read_text()) != config.to_dict():
        raise ValueError(f"{run_dir} holds a run with a different config; use a new run directory")
    distributed.barrier()  # all have read config.json before the writer rewrites it
    if writer:  # atomically: a kill while it is rewritten on resume must leave it readable
        atomic_write(config_path, json.dumps(config.to_dict(), indent=2).encode())


def _initial_prompt(config: TrainConfig, lm: FrozenLM, spec: TaskSpec) -> torch.Tensor:
    """[P, E] float32 on the model's device, initialized as config.prompt says."""
    common = lm.common_token_ids(config.prompt.vocab_top_k)
    prompt = prompt_lib.initialize(
        config.prompt, lm.dim, lm.embed, common, lm.tokenize, spec.label_words, seed=config.seed
    )
    return prompt.float().to(lm.device)


def _log_start(metrics: MetricsLog, start: dict, skipped_rows: list[str]) -> None:
    """The "start" record of a fresh run, and a warning per malformed row its data skipped."""
    metrics.write(event="start", **start)
    for message in skipped_rows:
        log.warning("skipped malformed row: %s", message)


def _save_best(prompt: torch.nn.Parameter, path: Path, task: str, writer: bool, step: int) -> None:
    if writer:
        prompt_lib.save_prompt(prompt.detach(), path, {"task": task, "step": str(step)})


def _restore_prompt(prompt: torch.nn.Parameter, saved: dict) -> None:
    with torch.no_grad():
        prompt.copy_(saved["prompt"])


def _result(
    config: TrainConfig,
    lm: FrozenLM,
    spec: TaskSpec,
    data: dict[str, list[Example]],
    outcome: loop.LoopResult,
    dev_n: int,
    run_dir: Path,
) -> dict:
    """The run's best dev score, and the best prompt's test metrics."""
    result = {
        "task": spec.name,
        "model": lm.name,
        "model_fingerprint": lm.fingerprint,
        "best_step": outcome.best_step,
        "steps": outcome.steps,
        "stop_reason": outcome.stop_reason,
        "train_seconds": round(outcome.elapsed, 1),
        "dev": {"score": outcome.best_score, "n": dev_n},
    }
    best = prompt_lib.load_prompt(run_dir / BEST_PROMPT).to(lm.device)
    norm = prompt_lib.prompt_norm(best, lm.vocab_max_norm)
    result["prompt_norm"] = norm.to_dict()
    if norm.exploded:
        log.warning(
            "task %s: the best prompt's largest row norm %.4g is %.4g times the vocabulary's; "
            "it has exploded, and the quality gate will not promote it",
            spec.name, norm.max_row_norm, norm.ratio,
        )
    if "test" in data:
        test_enc = encode_examples(lm, data["test"], config.max_input_tokens)
        result["test"] = evaluate(
            lm, best, spec, data["test"], test_enc, batch_size=config.eval_batch_size
        )
        result["test"]["truncated_inputs"] = test_enc.truncated
    return result
