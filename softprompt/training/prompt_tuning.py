"""Prompt tuning: only the [P, E] prompt learns; the LM stays frozen.

Paper defaults (Lester et al. 2021, section 3): Adafactor, lr 0.3, weight decay 1e-5, beta2
decay 0.8, no parameter scaling, batch 32, and the checkpoint with the best dev metric kept.
The training itself is the shared loop (softprompt.training.loop): it evaluates every
`eval_every` steps (and, under a time budget, after every `checks_per_budget`-th of it),
writes `checkpoint.pt` (prompt, optimizer, step, best so far) atomically, and resumes from it
after a kill. This module says what trains (the prompt), what scores it (the
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
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch

from softprompt import distributed
from softprompt import prompt as prompt_lib
from softprompt.fileio import atomic_write
from softprompt.model import FrozenLM, load_frozen_lm
from softprompt.prepared import load_prepared
from softprompt.scoring import Encoded, encode_examples, evaluate, lm_loss
from softprompt.task_data import load_task, seeded_subset
from softprompt.task_metrics import compute_metrics
from softprompt.tasks import Example, TaskSpec, load_spec
from softprompt.training import loop
from softprompt.training import recipe as recipe_lib
from softprompt.training.batching import BucketedOrder
from softprompt.training.config import TrainConfig, check_world_split
from softprompt.training.optim import make_optimizer
from softprompt.training.progress import MetricsLog, ProgressOptions, format_duration
from softprompt.training.progress import log as progress_log
from softprompt.training.selection import Candidates, Choice, choose

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
BEST_PROMPT = "prompt.safetensors"


def train(
    config: TrainConfig,
    run_dir: str | Path,
    lm: FrozenLM | None = None,
    spec: TaskSpec | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], bool] | None = None,
) -> dict:
    """Trains one prompt; returns the result dict (also written to run_dir/result.json).

    Every check reports one line and the end of training one more, above the tqdm bar when
    `progress`, else through the logger of softprompt.training.progress at INFO. `on_step`
    (step, training seconds without evaluations) is called after every step; True stops the
    run. While it trains, run_dir/prompt.safetensors holds the best prompt on the checks."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = spec or load_spec(config.task)
    # Load and validate all data before the model: bad input fails in seconds, not after a load.
    stats: dict = {}
    data = load_data(config, spec, stats)
    lm = frozen_lm(config, lm)
    world = distributed.world()
    check_world_split(config.batch_size, config.micro_batch_size, world.size)
    writer = world.rank == 0  # one process writes the run directory
    torch.manual_seed(config.seed)
    record_config(config, run_dir, writer)
    metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=writer)
    recipe = recipe_lib.resolve(config.recipe, config.lr, lm.vocab_scale.entry_rms)

    train_enc = encode_examples(lm, data["train"], config.max_input_tokens)
    # Fixed seeded subsets, so every check of a run scores the same dev examples; the check set
    # is the first part of the selection set.
    selection = ScoredSet(lm, spec, seeded_subset(data["dev"], config.eval_max_examples,
                                                config.seed), config)
    checks = selection.head(config.check_examples)
    prompt = torch.nn.Parameter(initial_prompt(config, lm, spec))
    optimizer = make_optimizer(config, [prompt], recipe)
    candidates = Candidates(config.final_candidates)
    # What checks score and a run keeps: the recipe's moving average of the prompt, or the
    # prompt itself (the same tensor) when the recipe averages nothing.
    checked = prompt.detach() if recipe.average_decay is None else prompt.detach().clone()
    order = bucketed_order(config, train_enc)
    start = {
        "train_examples": len(data["train"]),
        "dev_examples": len(selection.examples),
        "check_examples": len(checks.examples),
        "truncated_train_inputs": train_enc.truncated,
        "truncated_dev_inputs": selection.encoded.truncated,
        "skipped_rows": len(stats.get("skipped_rows", [])),
        "seed": config.seed,
        "recipe": recipe.to_dict(),
        "length_buckets": order is not None,
    }
    trainable = loop.Trainable(
        params=[prompt],
        optimizer=optimizer,
        batches=partial(
            loop.encoded_step, train_enc, config.batch_size, config.micro_batch_size, config.seed,
            world, by_length=True, order=order,
        ),
        loss=lambda batch, tokens: lm_loss(lm, prompt, batch, normalizer=tokens),
        evaluate=lambda: checks.score(checked),
        after_eval=lambda step, scores: candidates.offer(step, scores["score"], checked),
        keep_best=partial(save_best, checked, run_dir / BEST_PROMPT, spec.name, writer),
        state=lambda: {"prompt": prompt.detach().clone(), "average": checked.clone(),
                       "candidates": candidates.state()},
        load_state=partial(_restore, prompt, checked, candidates),
        on_start=partial(_log_start, metrics, start, stats.get("skipped_rows", [])),
        before_step=partial(recipe_lib.set_lr, optimizer, recipe),
        after_step=partial(_after_step, prompt, checked, recipe, lm),
        on_step=on_step or (lambda _step, _seconds: False),
    )
    schedule = loop.Schedule(max_steps=config.max_steps, eval_every=config.eval_every,
                             eval_every_seconds=config.check_every_seconds(),
                             max_minutes=config.max_minutes, patience=config.patience)
    shown = ProgressOptions(bar=progress, desc=f"train {spec.name}", metric=spec.metric)
    outcome = loop.train_loop(trainable, schedule, metrics, run_dir / CHECKPOINT, shown)
    choice = choose_prompt(candidates, selection, checks, lm, spec.name)
    return finish_run(config, lm, spec, data, outcome, choice, recipe, run_dir, selection,
                       metrics, writer)


def finish_run(config: TrainConfig, lm: FrozenLM, spec: TaskSpec, data: dict[str, list[Example]],
                outcome: loop.LoopResult, choice: Choice, recipe: recipe_lib.Recipe, run_dir: Path,
                selection: ScoredSet, metrics: MetricsLog, writer: bool,
                group: dict | None = None) -> dict:
    """Saves the chosen prompt, writes result.json (with `group` added when given, for a member
    of softprompt.training.prompt_group) and the "done" record, and returns the result."""
    if writer:
        save_best(choice.prompt, run_dir / BEST_PROMPT, spec.name, True, choice.step)
    distributed.barrier()  # the writer's prompt file is complete before anyone reads it
    result = _result(config, lm, spec, data, outcome, choice, recipe, run_dir, selection)
    if group is not None:
        result["group"] = group
    if writer:
        atomic_write(run_dir / "result.json", json.dumps(result, indent=2).encode())
    done = {k: v for k, v in result.items() if k in ("best_step", "steps", "stop_reason")}
    metrics.write(event="done", **done)
    return result


def frozen_lm(config: TrainConfig, lm: FrozenLM | None) -> FrozenLM:
    """The caller's model, or the config's loaded, under the config's target prefix."""
    lm = lm or load_frozen_lm(
        config.model, device=config.device, dtype=config.dtype, compile=config.compile
    )
    if lm.target_prefix != config.target_prefix:
        # A view with the prefix: the caller's wrapper is untouched.
        lm = lm.with_options(target_prefix=config.target_prefix)
    if config.compile != "off" and lm.options.compile != config.compile:
        # A caller's model runs compiled as the config asks (a view, as above).
        lm = lm.with_options(compile=config.compile)
    return lm


def bucketed_order(config: TrainConfig, train_enc: Encoded) -> BucketedOrder | None:
    """Length buckets for the training steps, when config.length_buckets asks for them."""
    lengths = [len(x) for x in train_enc.inputs]
    if not recipe_lib.use_length_buckets(config.length_buckets, lengths):
        return None
    return BucketedOrder(lengths, config.batch_size, config.seed)


class ScoredSet:
    """Dev examples encoded once, scored by rank classification, with the seconds it took."""

    def __init__(self, lm: FrozenLM, spec: TaskSpec, examples: list[Example],
                 config: TrainConfig) -> None:
        self.lm, self.spec, self.examples, self.config = lm, spec, examples, config
        self.encoded = encode_examples(lm, examples, config.max_input_tokens)
        self.seconds, self.scored = 0.0, 0  # time spent scoring, and examples scored

    def about(self, examples: int) -> str:
        """How long scoring `examples` more will take at the rate measured so far."""
        if not self.scored:
            return ""
        return f" (about {format_duration(examples * self.seconds / self.scored)})"

    def head(self, n: int | None) -> ScoredSet:
        """The first n examples (all when None): a seeded subset of a seeded subset."""
        if n is None or n >= len(self.examples):
            return self
        return ScoredSet(self.lm, self.spec, self.examples[:n], self.config)

    def score(self, prompt: torch.Tensor) -> dict:
        began = time.monotonic()
        metrics = evaluate(self.lm, prompt, self.spec, self.examples, self.encoded,
                           batch_size=self.config.eval_batch_size)
        self.seconds += time.monotonic() - began
        self.scored += len(self.examples)
        return metrics


class ScoringJob(NamedTuple):
    """Examples to score after one prompt of a stack (several prompts' dev sets scored in one
    pass, as softprompt.training.prompt_group scores its members): `prompt` indexes the stack."""

    prompt: int
    scored: ScoredSet


def predict_jobs(
    lm: FrozenLM, prompts: torch.Tensor, jobs: list[ScoringJob], batch_size: int
) -> list[list[str]]:
    """Each job's predicted label words, from one rank-classification pass over all jobs' rows:
    row i of job j is scored after prompts[jobs[j].prompt] of `prompts` [J, P, E]. Rows of all
    jobs are batched by length, `batch_size` to a forward."""
    spec = jobs[0].scored.spec
    rows = [(j, i) for j, job in enumerate(jobs) for i in range(len(job.scored.examples))]
    inputs = [jobs[j].scored.encoded.inputs[i] for j, i in rows]
    owner = torch.tensor([jobs[j].prompt for j, _ in rows], device=prompts.device)
    choices = [lm.encode_target(w) for w in spec.label_words]
    winners = torch.empty(len(rows), dtype=torch.long)
    order = sorted(range(len(rows)), key=lambda r: len(inputs[r]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        # A single prompt goes as [P, E]: the whole batch shares its prefix.
        batch_prompts = prompts[0] if prompts.shape[0] == 1 else prompts[owner[idx]]
        scores = lm.score_choices(batch_prompts, [inputs[r] for r in idx], choices)
        winners[idx] = scores.float().argmax(1).cpu()
    out: list[list[str]] = [[] for _ in jobs]
    for (j, _), w in zip(rows, winners.tolist(), strict=True):
        out[j].append(spec.label_words[w])
    return out


def rank_metrics(spec: TaskSpec, predictions: list[str], examples: list) -> dict:
    """What `softprompt.scoring.evaluate` returns for these rank predictions."""
    return compute_metrics(spec, predictions, list(examples)) | {"n": len(examples)}


def choose_prompt(candidates: Candidates, selection: ScoredSet, checks: ScoredSet, lm: FrozenLM,
                  task: str) -> Choice:
    """The run's prompt: the best candidate on the selection set, with a line saying what will
    be scored and how long it should take (at the checks' rate), and one with the outcome."""
    pool = candidates.final_pool()
    progress_log.info(
        "choosing among %d candidate prompts (and the template alone) on %d dev examples%s",
        len(pool), len(selection.examples),
        checks.about((len(pool) + 1) * len(selection.examples)),
    )
    choice = choose(pool, selection.score, torch.zeros(0, lm.dim, device=lm.device))
    progress_log.info(
        "chose %s: dev %.4f (template alone %.4f), in %s",
        chosen_text(choice), choice.metrics["score"], choice.zero_shot["score"],
        format_duration(choice.seconds),
    )
    if choice.metrics["score"] < choice.zero_shot["score"]:
        log.warning(
            "task %s: the chosen prompt scores %.4f on dev, below the template alone (%.4f); "
            "the quality gate will not promote it",
            task, choice.metrics["score"], choice.zero_shot["score"],
        )
    return choice


def chosen_text(choice: Choice) -> str:
    """What was chosen, for a log line: "the prompt of step 350" or "the mean of the prompts of
    steps 300, 350, 425"."""
    if choice.mean_of:
        return "the mean of the prompts of steps " + ", ".join(map(str, choice.mean_of))
    return f"the prompt of step {choice.step}"


def load_data(config: TrainConfig, spec: TaskSpec, stats: dict) -> dict[str, list[Example]]:
    """The task's splits (prepared or raw); a train and a dev split are required."""
    if config.prepared_dir:
        data = load_prepared(config.prepared_dir)
    else:
        data = load_task(spec, config.data_dir, stats)
    for split in ("train", "dev"):
        if split not in data:
            raise ValueError(f"task {spec.name}: no {split!r} split to train on")
    return data


def record_config(config: TrainConfig, run_dir: Path, writer: bool) -> None:
    """Writes config.json, refusing a run directory that holds another config's run."""
    config_path = run_dir / "config.json"
    if config_path.exists() and json.loads(config_path.read_text()) != config.to_dict():
        raise ValueError(f"{run_dir} holds a run with a different config; use a new run directory")
    distributed.barrier()  # all have read config.json before the writer rewrites it
    if writer:  # atomically: a kill while it is rewritten on resume must leave it readable
        atomic_write(config_path, json.dumps(config.to_dict(), indent=2).encode())


def initial_prompt(config: TrainConfig, lm: FrozenLM, spec: TaskSpec) -> torch.Tensor:
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


def save_best(prompt: torch.nn.Parameter, path: Path, task: str, writer: bool, step: int) -> None:
    if writer:
        prompt_lib.save_prompt(prompt.detach(), path, {"task": task, "step": str(step)})


def _restore(prompt: torch.nn.Parameter, checked: torch.Tensor, candidates: Candidates,
             saved: dict) -> None:
    with torch.no_grad():
        prompt.copy_(saved["prompt"])
        checked.copy_(saved["average"])
    candidates.load_state(saved["candidates"])


def _after_step(prompt: torch.nn.Parameter, checked: torch.Tensor, recipe: recipe_lib.Recipe,
                lm: FrozenLM, _step: int) -> None:
    """Keeps the prompt's rows within the recipe's cap, and updates its moving average."""
    if recipe.norm_cap is not None:
        recipe_lib.cap_row_norms(prompt, recipe.norm_cap * lm.vocab_max_norm)
    if recipe.average_decay is not None:
        recipe_lib.update_average(checked, prompt, recipe.average_decay)


def _result(
    config: TrainConfig,
    lm: FrozenLM,
    spec: TaskSpec,
    data: dict[str, list[Example]],
    outcome: loop.LoopResult,
    choice: Choice,
    recipe: recipe_lib.Recipe,
    run_dir: Path,
    selection: ScoredSet,
) -> dict:
    """The run's chosen prompt: its dev score, the template alone's, and its test metrics."""
    result = {
        "task": spec.name,
        "model": lm.name,
        "model_fingerprint": lm.fingerprint,
        "recipe": recipe.to_dict(),
        "best_step": choice.step,
        "best_mean_of_steps": list(choice.mean_of) or None,
        "steps": outcome.steps,
        "stop_reason": outcome.stop_reason,
        # Wall-clock seconds in the loop, and the part of them spent on checks.
        "train_seconds": round(outcome.elapsed - outcome.eval_seconds, 1),
        "check_seconds": round(outcome.eval_seconds, 1),
        "selection_seconds": round(choice.seconds, 1),
        "dev": _summary(choice.metrics),
        "zero_shot": {"dev": _summary(choice.zero_shot)},
        "candidates": choice.candidates,
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
        result["test"] = _score_test(config, lm, spec, data["test"], best, selection)
    return result


def _summary(metrics: dict) -> dict:
    """The metrics without per-example lists."""
    return {k: v for k, v in metrics.items() if not isinstance(v, list)}


def _score_test(config: TrainConfig, lm: FrozenLM, spec: TaskSpec, test: list[Example],
                prompt: torch.Tensor, measured: ScoredSet) -> dict:
    """The chosen prompt's metrics on the reported split, or on a seeded subset of at most
    config.test_max_examples of it, with a line before (its expected time at the rate
    `measured` scored at) and after."""
    examples = seeded_subset(test, config.test_max_examples, config.seed)
    progress_log.info("scoring the chosen prompt on %d of %d test examples%s", len(examples),
                      len(test), measured.about(len(examples)))
    began = time.monotonic()
    encoded = encode_examples(lm, examples, config.max_input_tokens)
    metrics = evaluate(lm, prompt, spec, examples, encoded, batch_size=config.eval_batch_size)
    seconds = time.monotonic() - began
    progress_log.info("test %s %.4f on %d examples, in %s", spec.metric, metrics["score"],
                      len(examples), format_duration(seconds))
    return {**metrics, "n": len(examples), "of": len(test), "seed": config.seed,
            "truncated_inputs": encoded.truncated, "seconds": round(seconds, 1)}
