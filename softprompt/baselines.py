"""The paper's baselines on the same frozen model and data (Lester et al. 2021, section 4):

- model tuning: every weight of the model trains on one task;
- multi-task model tuning: one model on several tasks, each input prefixed by its task name;
- prompt design: GPT-3 style few-shot priming, k labelled training examples before the input.

Model tuning trains a private copy of the model (`trainable_copy`), so the FrozenLM that prompt
tuning uses stays frozen. The copy is wrapped in FrozenLM again to reuse its forward passes: with
an empty [0, E] prompt, `target_logprobs` is plain fine-tuning and `evaluate` plain rank
classification. Dropout stays off (eval mode) in both methods.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from softprompt.model import DEFAULT_MODEL, Batch, FrozenLM, load_frozen_lm
from softprompt.scoring import encode_examples, evaluate, lm_loss
from softprompt.tasks import Example, TaskSpec, load_spec, load_task
from softprompt.train import (
    OPTIMIZERS,
    MetricsLog,
    batch_indices,
    check_optimization,
    make_optimizer,
)

log = logging.getLogger(__name__)


def empty_prompt(lm: FrozenLM) -> torch.Tensor:
    """[0, E]: no prompt at all, so the model sees the template alone."""
    return torch.zeros(0, lm.dim, device=lm.device)


def trainable_copy(lm: FrozenLM) -> FrozenLM:
    """A deep copy of `lm` whose weights all require gradients; `lm` itself stays frozen."""
    tuned = FrozenLM(copy.deepcopy(lm.model), lm.tokenizer, f"{lm.name}+model-tuned", lm.options)
    for p in tuned.model.parameters():
        p.requires_grad_(True)
    return tuned


def prefix_task(examples: list[Example], spec: TaskSpec) -> list[Example]:
    """Multi-task inputs: the task name as a text prefix ("rte: Premise: ...")."""
    return [replace(e, input=f"{spec.name}: {e.input}") for e in examples]


def eval_split(data: dict) -> str:
    """The split results are reported on: test where the task has one, else dev."""
    return "test" if "test" in data else "dev"


@dataclass
class ModelTuningConfig:
    """Model tuning (all weights) on one task, or multi-task model tuning on several."""

    tasks: list[str] = field(default_factory=lambda: ["sst2"], metadata={"help": "Task names or spec paths; more than one: multi-task."})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Model to copy and tune."})
    optimizer: str = field(default="adafactor", metadata={"help": f"One of {OPTIMIZERS}."})
    lr: float = field(default=1e-3, metadata={"help": "Learning rate (T5's model tuning: Adafactor, constant 1e-3)."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay."})
    beta2_decay: float = field(default=0.8, metadata={"help": "Adafactor second-moment decay exponent."})
    batch_size: int = field(default=16, metadata={"help": "Examples per optimizer step."})
    micro_batch_size: int = field(default=8, metadata={"help": "Examples per forward."})
    max_steps: int = field(default=100, metadata={"help": "Optimizer steps."})
    max_minutes: float | None = field(default=None, metadata={"help": "Wall-clock budget (evaluations included)."})
    eval_every: int = field(default=50, metadata={"help": "Evaluate on dev every K steps (and at the end); the best weights are kept."})
    eval_max_examples: int | None = field(default=1000, metadata={"help": "Dev examples per task for model selection (a seeded subset)."})
    eval_batch_size: int = field(default=32, metadata={"help": "Examples per scoring forward."})
    max_input_tokens: int = field(default=256, metadata={"help": "Longer inputs keep their last tokens."})
    task_prefix: bool | None = field(default=None, metadata={"help": "Prefix inputs with the task name (default: only for multi-task)."})
    seed: int = field(default=0, metadata={"help": "Seeds data order."})
    data_dir: str | None = field(default=None, metadata={"help": "Data location."})

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("model tuning needs at least one task")
        check_optimization(self)
        if self.task_prefix is None:
            self.task_prefix = len(self.tasks) > 1


def model_tune(
    config: ModelTuningConfig, run_dir: str | Path, lm: FrozenLM | None = None, transfer_tasks: tuple[str, ...] = (),
    data: dict[str, dict[str, list[Example]]] | None = None,
) -> dict:
    """Tunes all weights of a copy of the model; returns per-task metrics of the best-on-dev weights.

    `transfer_tasks` are evaluated zero-shot with the tuned weights too (domain shift), under
    result["transfer"][name]. `data` ({task name: {split: examples}}) replaces loading a task's
    files (experiments pass seeded subsets).

    Writes run_dir/config.json, metrics.jsonl and result.json (no weights: the point is the score).
    Multi-task: the training set is the union of the tasks' train splits (examples-proportional
    mixing), and model selection uses the mean dev score over tasks.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    specs = [load_spec(t) for t in config.tasks]
    transfer = [load_spec(t) for t in transfer_tasks]
    data = {s.name: (data or {}).get(s.name) or load_task(s, config.data_dir) for s in specs + transfer}
    lm = lm or load_frozen_lm(config.model)
    (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=2))
    metrics_log = MetricsLog(run_dir / "metrics.jsonl")
    rng = random.Random(config.seed)

    def prepared(spec: TaskSpec, examples: list[Example]) -> list[Example]:
        return prefix_task(examples, spec) if config.task_prefix else examples

    train_examples = [e for s in specs for e in prepared(s, data[s.name]["train"])]
    dev = {}
    for s in specs:
        examples = data[s.name]["dev"]
        if config.eval_max_examples and len(examples) > config.eval_max_examples:
            examples = [examples[i] for i in sorted(rng.sample(range(len(examples)), config.eval_max_examples))]
        dev[s.name] = prepared(s, examples)

    torch.manual_seed(config.seed)
    tuned = trainable_copy(lm)
    train_enc = encode_examples(tuned, train_examples, config.max_input_tokens)
    dev_enc = {name: encode_examples(tuned, ex, config.max_input_tokens) for name, ex in dev.items()}
    params = [p for p in tuned.model.parameters() if p.requires_grad]
    optimizer = make_optimizer(config, params)  # duck-typed: optimizer, lr, weight_decay, beta2_decay
    none = empty_prompt(tuned)
    best = {"score": -math.inf, "step": 0, "weights": None}

    def run_eval(step: int) -> None:
        scores = {s.name: evaluate(tuned, none, s, dev[s.name], dev_enc[s.name], batch_size=config.eval_batch_size)["score"] for s in specs}
        mean = sum(scores.values()) / len(scores)
        improved = mean > best["score"]
        if improved:
            best.update(score=mean, step=step, weights={k: v.detach().clone() for k, v in tuned.model.state_dict().items()})
        metrics_log.write(event="eval", step=step, split="dev", score=mean, per_task=scores, best=improved)

    started = time.monotonic()
    accumulation = config.batch_size // config.micro_batch_size
    step, stop_reason = 0, "max_steps"
    while step < config.max_steps:
        if config.max_minutes is not None and time.monotonic() - started >= config.max_minutes * 60:
            stop_reason = "time_budget"
            break
        indices = batch_indices(len(train_examples), config.batch_size, step, config.seed)
        step_tokens = sum(len(train_enc.targets[i]) for i in indices)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for k in range(accumulation):
            chunk = indices[k * config.micro_batch_size : (k + 1) * config.micro_batch_size]
            batch = Batch([train_enc.inputs[i] for i in chunk], [train_enc.targets[i] for i in chunk])
            loss = lm_loss(tuned, none, batch, normalizer=step_tokens)
            loss.backward()
            total += loss.item()
        optimizer.step()
        step += 1
        metrics_log.write(event="step", step=step, loss=round(total, 5), elapsed=round(time.monotonic() - started, 2))
        if step % config.eval_every == 0:
            run_eval(step)
    if step % config.eval_every != 0 or best["weights"] is None:
        run_eval(step)
    tuned.model.load_state_dict(best["weights"])

    result = {"method": "multi_task_model_tuning" if len(specs) > 1 else "model_tuning", "model": lm.name,
              "best_step": best["step"], "steps": step, "stop_reason": stop_reason,
              "train_seconds": round(time.monotonic() - started, 1), "dev_score": best["score"],
              "trainable_parameters": sum(p.numel() for p in params)}
    for group, task_specs in (("tasks", specs), ("transfer", transfer)):
        for s in task_specs:
            split = eval_split(data[s.name])
            examples = prepared(s, data[s.name][split])
            encoded = encode_examples(tuned, examples, config.max_input_tokens)
            result.setdefault(group, {})[s.name] = evaluate(tuned, none, s, examples, encoded, batch_size=config.eval_batch_size) | {"split": split}
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    metrics_log.write(event="done", steps=step, best_step=best["step"], stop_reason=stop_reason)
    return result


def few_shot_inputs(lm: FrozenLM, train: list[Example], examples: list[Example], k: int, seed: int = 0) -> list[Example]:
    """GPT-3 style priming: each input preceded by k training examples with their labels.

    Demonstrations are drawn per example (seeded) and written as "input label" blocks separated by
    blank lines, in the target format the model is scored on. Over-long inputs lose their oldest
    demonstrations first (encode_input keeps the last tokens).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k > len(train):
        raise ValueError(f"k={k} demonstrations but only {len(train)} training examples")
    rng = random.Random(seed)
    sep = "" if lm.is_encoder_decoder else " "
    out = []
    for e in examples:
        demos = rng.sample(train, k)
        context = "".join(f"{d.input}{sep}{lm.target_prefix}{d.target}\n\n" for d in demos)
        out.append(replace(e, input=context + e.input))
    return out


def prompt_design_evaluate(
    lm: FrozenLM, spec: TaskSpec, data: dict, k: int, seed: int = 0, max_input_tokens: int = 1024, batch_size: int = 16,
    limit: int | None = None,
) -> dict:
    """Few-shot priming (k = 0: zero-shot) on the task's report split, frozen model, no prompt."""
    split = eval_split(data)
    examples = data[split][:limit] if limit else data[split]
    primed = few_shot_inputs(lm, data["train"], examples, k, seed)
    encoded = encode_examples(lm, primed, max_input_tokens)
    metrics = evaluate(lm, empty_prompt(lm), spec, primed, encoded, batch_size=batch_size)
    return metrics | {"split": split, "k": k, "truncated_inputs": encoded.truncated}
