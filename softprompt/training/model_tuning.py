"""Model tuning, the paper's strongest baseline (Lester et al. 2021, section 4). Every weight of
the model trains on one task, or, in multi-task model tuning, one model trains on several tasks
with each input prefixed by its task name.

Model tuning trains a private copy of the model (`trainable_copy`), so the FrozenLM that prompt
tuning uses stays frozen. The copy is wrapped in FrozenLM again to reuse its forward passes: with
an empty [0, E] prompt, `target_logprobs` is plain fine-tuning and `evaluate` plain rank
classification. Dropout stays off (eval mode), as in prompt tuning. The training itself is the
shared loop (softprompt.training.loop).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch

from softprompt import distributed
from softprompt.fileio import atomic_write
from softprompt.model import FrozenLM, load_frozen_lm
from softprompt.prompt_design import empty_prompt, eval_split
from softprompt.scoring import Encoded, encode_examples, evaluate, lm_loss
from softprompt.task_data import load_task, seeded_subset
from softprompt.tasks import Example, TaskSpec, load_spec
from softprompt.training import loop
from softprompt.training.config import ModelTuningConfig, check_world_split
from softprompt.training.optim import make_optimizer
from softprompt.training.progress import MetricsLog, ProgressOptions


def trainable_copy(lm: FrozenLM) -> FrozenLM:
    """A deep copy of `lm` whose weights all require gradients; `lm` itself stays frozen."""
    tuned = FrozenLM(copy.deepcopy(lm.model), lm.tokenizer, f"{lm.name}+model-tuned", lm.options)
    for p in tuned.model.parameters():
        p.requires_grad_(True)
    return tuned


def prefix_task(examples: list[Example], spec: TaskSpec) -> list[Example]:
    """Multi-task inputs: the task name as a text prefix ("rte: Premise: ...")."""
    return [replace(e, input=f"{spec.name}: {e.input}") for e in examples]


class TaskData(NamedTuple):
    """The tasks a model-tuning run trains and scores, with their splits by task name."""

    specs: list[TaskSpec]  # trained (and selected on) together
    transfer: list[TaskSpec]  # only scored, zero-shot
    data: dict[str, dict[str, list[Example]]]


def model_tune(
    config: ModelTuningConfig,
    run_dir: str | Path,
    lm: FrozenLM | None = None,
    transfer_tasks: tuple[str, ...] = (),
    data: dict[str, dict[str, list[Example]]] | None = None,
) -> dict:
    """Tunes all weights of a copy of the model; returns per-task metrics of the best-on-dev
    weights.

    `transfer_tasks` are evaluated zero-shot with the tuned weights too (domain shift), under
    result["transfer"][name]. `data` ({task name: {split: examples}}) replaces loading a task's
    files (experiments pass seeded subsets).

    Writes run_dir/config.json, metrics.jsonl and result.json (no weights: the point is the
    score). Multi-task: the training set is the union of the tasks' train splits
    (examples-proportional mixing), and model selection uses the mean dev score over tasks.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tasks = _load_tasks(config, transfer_tasks, data)
    lm = lm or load_frozen_lm(config.model)
    world = distributed.world()
    check_world_split(config.batch_size, config.micro_batch_size, world.size)
    writer = world.rank == 0
    if writer:
        atomic_write(run_dir / "config.json", json.dumps(asdict(config), indent=2).encode())
    metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=writer)
    train_examples = [e for s in tasks.specs for e in _inputs(config, s, tasks.data, "train")]
    # Each task's fixed seeded subset, so every evaluation scores the same dev examples.
    dev = {
        s.name: _inputs(config, s, tasks.data, "dev", config.eval_max_examples) for s in tasks.specs
    }

    torch.manual_seed(config.seed)
    tuned = trainable_copy(lm)
    train_enc = encode_examples(tuned, train_examples, config.max_input_tokens)
    dev_enc = {
        name: encode_examples(tuned, ex, config.max_input_tokens) for name, ex in dev.items()
    }
    params = [p for p in tuned.model.parameters() if p.requires_grad]
    none = empty_prompt(tuned)
    best: dict = {}

    def keep_best(step: int) -> None:
        best["weights"] = {k: v.detach().clone() for k, v in tuned.model.state_dict().items()}

    trainable = loop.Trainable(
        params=params,
        # Duck-typed: the config has optimizer, lr, weight_decay, beta2_decay.
        optimizer=make_optimizer(config, params),
        batches=partial(
            loop.encoded_step, train_enc, config.batch_size, config.micro_batch_size, config.seed,
            world
        ),
        loss=lambda batch, tokens: lm_loss(tuned, none, batch, normalizer=tokens),
        evaluate=partial(_dev_scores, config, tuned, tasks.specs, dev, dev_enc),
        keep_best=keep_best,
    )
    schedule = loop.Schedule(
        max_steps=config.max_steps, eval_every=config.eval_every, max_minutes=config.max_minutes
    )
    metric = tasks.specs[0].metric if len(tasks.specs) == 1 else "mean score"
    started = time.monotonic()
    outcome = loop.train_loop(trainable, schedule, metrics, progress=ProgressOptions(metric=metric))
    tuned.model.load_state_dict(best["weights"])
    result = _result(config, lm, tuned, tasks, outcome, time.monotonic() - started)
    if writer:
        atomic_write(run_dir / "result.json", json.dumps(result, indent=2).encode())
    metrics.write(
        event="done",
        steps=outcome.steps,
        best_step=outcome.best_step,
        stop_reason=outcome.stop_reason,
    )
    return result


def _load_tasks(
    config: ModelTuningConfig,
    transfer_tasks: tuple[str, ...],
    given: dict[str, dict[str, list[Example]]] | None,
) -> TaskData:
    """The specs of the trained and the transfer tasks, and their splits (given, or loaded)."""
    specs = [load_spec(t) for t in config.tasks]
    transfer = [load_spec(t) for t in transfer_tasks]
    given = given or {}
    data = {s.name: given.get(s.name) or load_task(s, config.data_dir) for s in specs + transfer}
    return TaskData(specs, transfer, data)


def _inputs(
    config: ModelTuningConfig,
    spec: TaskSpec,
    data: dict[str, dict[str, list[Example]]],
    split: str,
    cap: int | None = None,
) -> list[Example]:
    """A split of a task as the model sees it, as a seeded subset of at most `cap` examples,
    with the task-name prefix when the config asks for one."""
    examples = seeded_subset(data[spec.name][split], cap, config.seed)
    return prefix_task(examples, spec) if config.task_prefix else examples


def _dev_scores(
    config: ModelTuningConfig,
    tuned: FrozenLM,
    specs: list[TaskSpec],
    dev: dict[str, list[Example]],
    dev_enc: dict[str, Encoded],
) -> dict:
    """The mean dev score over tasks ("score") and each task's ("per_task")."""
    none = empty_prompt(tuned)
    per_task = {
        s.name: evaluate(
            tuned, none, s, dev[s.name], dev_enc[s.name], batch_size=config.eval_batch_size
        )["score"]
        for s in specs
    }
    return {"score": sum(per_task.values()) / len(per_task), "per_task": per_task}


def _result(
    config: ModelTuningConfig,
    lm: FrozenLM,
    tuned: FrozenLM,
    tasks: TaskData,
    outcome: loop.LoopResult,
    seconds: float,
) -> dict:
    """The run's best mean dev score and, with the best weights, every task's metrics on its
    report split."""
    specs = tasks.specs
    result = {
        "method": "multi_task_model_tuning" if len(specs) > 1 else "model_tuning",
        "model": lm.name,
        "best_step": outcome.best_step,
        "steps": outcome.steps,
        "stop_reason": outcome.stop_reason,
        "train_seconds": round(seconds, 1),
        "dev_score": outcome.best_score,
        "trainable_parameters": sum(p.numel() for p in tuned.model.parameters()),
    }
    none = empty_prompt(tuned)
    for group, task_specs in (("tasks", specs), ("transfer", tasks.transfer)):
        for s in task_specs:
            split = eval_split(tasks.data[s.name])
            examples = _inputs(config, s, tasks.data, split)
            encoded = encode_examples(tuned, examples, config.max_input_tokens)
            metrics = evaluate(tuned, none, s, examples, encoded, batch_size=config.eval_batch_size)
            result.setdefault(group, {})[s.name] = metrics | {"split": split}
    return result
