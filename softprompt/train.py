"""The prompt-training loop: only the [P, E] prompt learns; the LM stays frozen.

Paper defaults (Lester et al. 2021, section 3): Adafactor, lr 0.3, weight decay 1e-5, beta2
decay 0.8, no parameter scaling, batch 32, and the checkpoint with the best dev metric kept.
The loop evaluates every `eval_every` steps, writes `checkpoint.pt` (prompt, optimizer, step,
best so far) atomically, and resumes from it after a kill. Data order is a pure function of
(seed, epoch), so a resumed run sees exactly the batches the killed one would have.

Run directory layout:
  config.json      the full TrainConfig
  metrics.jsonl    one JSON line per logged step / evaluation / event
  checkpoint.pt    latest state, for resume
  prompt.safetensors  the best prompt on dev
  result.json      final dev/test metrics of the best prompt
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from softprompt import prompt as prompt_lib
from softprompt.fileio import atomic_write
from softprompt.model import DEFAULT_MODEL, Batch, FrozenLM, load_frozen_lm
from softprompt.scoring import Encoded, encode_examples, evaluate, lm_loss
from softprompt.tasks import TaskSpec, load_prepared, load_spec, load_task, seeded_subset

log = logging.getLogger(__name__)
OPTIMIZERS = ("adafactor", "adamw", "sgd")


@dataclass
class TrainConfig:
    """Everything that determines a prompt-tuning run (recorded in config.json and the registry)."""

    task: str = field(default="sst2", metadata={"help": "Task name (tasks/<name>.yaml) or spec path."})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Offline short name, local dir, GGUF path or hub name."})
    prompt: prompt_lib.PromptConfig = field(default_factory=prompt_lib.PromptConfig)
    optimizer: str = field(default="adafactor", metadata={"help": f"One of {OPTIMIZERS}."})
    lr: float = field(default=0.3, metadata={"help": "Learning rate (paper: 0.3, constant)."})
    weight_decay: float = field(default=1e-5, metadata={"help": "Weight decay (paper: 1e-5)."})
    beta2_decay: float = field(default=0.8, metadata={"help": "Adafactor second-moment decay exponent (paper: 0.8)."})
    batch_size: int = field(default=32, metadata={"help": "Examples per optimizer step (paper: 32)."})
    micro_batch_size: int = field(default=8, metadata={"help": "Examples per forward; batch_size/micro steps are accumulated."})
    max_steps: int = field(default=1000, metadata={"help": "Optimizer steps at most."})
    max_minutes: float | None = field(default=None, metadata={"help": "Wall-clock training budget (evaluations included)."})
    eval_every: int = field(default=50, metadata={"help": "Evaluate on dev every K steps (and at the end)."})
    patience: int | None = field(default=None, metadata={"help": "Stop after this many evaluations without a new best."})
    eval_max_examples: int | None = field(default=1000, metadata={"help": "Dev examples used for early stopping (a fixed seeded subset)."})
    eval_batch_size: int = field(default=32, metadata={"help": "Examples per scoring forward."})
    max_input_tokens: int = field(default=256, metadata={"help": "Longer inputs keep their last tokens (counted in the log)."})
    seed: int = field(default=0, metadata={"help": "Seeds prompt init and data order."})
    data_dir: str | None = field(default=None, metadata={"help": "Data location (default: $SOFTPROMPT_DATA_DIR or ../shared/data)."})
    device: str | None = field(default=None, metadata={"help": "cuda or cpu (default: cuda when available)."})
    dtype: str = field(default="float32", metadata={"help": "Frozen weights' dtype: float32 or bfloat16 (GPU)."})
    prepared_dir: str | None = field(default=None, metadata={"help": "Read normalized examples written by `softprompt prepare` instead of raw data."})
    target_prefix: str = field(default="", metadata={"help": "Text put before every target; '<extra_id_0> ' is the paper's 'span corruption + sentinel' setting for T5."})

    def __post_init__(self) -> None:
        if isinstance(self.prompt, dict):
            self.prompt = prompt_lib.PromptConfig(**self.prompt)
        check_optimization(self)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**raw)


def check_optimization(config) -> None:
    """Validation shared by every training config (prompt tuning, model tuning): optimizer name,
    positive sizes, batch a multiple of the micro-batch, positive learning rate."""
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    for name in ("batch_size", "micro_batch_size", "max_steps", "eval_every", "max_input_tokens", "eval_batch_size"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.batch_size % config.micro_batch_size:
        raise ValueError(f"batch_size {config.batch_size} must be a multiple of micro_batch_size {config.micro_batch_size}")
    if config.lr <= 0:
        raise ValueError(f"lr must be > 0, got {config.lr}")


def make_optimizer(config: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        # decay_rate is the exponent of beta2_t = 1 - t^decay_rate; the paper's "beta2 decay 0.8" is -0.8.
        return Adafactor(
            params, lr=config.lr, weight_decay=config.weight_decay, decay_rate=-config.beta2_decay,
            scale_parameter=False, relative_step=False, warmup_init=False,
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Example indices of optimizer step `step`: epochs are seeded permutations, walked in order."""
    out = []
    start = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        order = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.extend(order[offset : offset + batch_size - len(out)])
    return out


def _subset(encoded: Encoded, indices: list[int]) -> Encoded:
    return Encoded([encoded.inputs[i] for i in indices], [encoded.targets[i] for i in indices], encoded.truncated)


def _world() -> tuple[int, int]:
    """(world size, rank) under torch.distributed (torchrun), else (1, 0)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _sum_across_processes(prompt: torch.nn.Parameter, loss: float) -> float:
    """All-reduces (sums) the prompt gradient and the logged loss. Every process normalized its
    loss by the whole step's target-token count, so the sum is exactly the single-process update."""
    torch.distributed.all_reduce(prompt.grad)
    total = torch.tensor([loss], device=prompt.device)
    torch.distributed.all_reduce(total)
    return float(total)


def _from_rank0(value: float, device: torch.device) -> float:
    """Rank 0's value on every process. Stop decisions must agree: a process that left the loop
    alone would leave the others waiting in all_reduce forever."""
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.broadcast(tensor, src=0)
    return float(tensor)


class MetricsLog:
    """Append-only JSONL log, flushed per line so a killed run keeps what it logged."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, **record) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def eta_seconds(
    step: int, max_steps: int, elapsed: float, max_minutes: float | None
) -> tuple[float | None, str]:
    """Seconds left in a run and which budget ends it first.

    step: optimizer steps done; elapsed: wall-clock seconds so far, evaluations included, so the
    measured rate elapsed / step already carries the evaluation overhead of the steps to come.
    Returns (seconds, which), which being "step budget" or "time budget": the smaller of
    (max_steps - step) x seconds per step and the max_minutes budget minus elapsed (never below
    0). At step 0 no rate is measured yet, so only the time budget can say anything; without one
    the answer is (None, "no estimate"). Early stopping (patience) is not foreseen.
    """
    by_time = None if max_minutes is None else max(0.0, max_minutes * 60 - elapsed)
    by_steps = None
    if step >= max_steps:
        by_steps = 0.0
    elif step > 0:
        by_steps = (max_steps - step) * elapsed / step
    if by_time is not None and (by_steps is None or by_time < by_steps):
        return by_time, "time budget"
    if by_steps is None:
        return None, "no estimate"
    return by_steps, "step budget"


def format_duration(seconds: float | None) -> str:
    """Seconds as "45s", "12m30s" or "2h05m" ("?" for None): short enough for a log line."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_eval_line(
    *,
    step: int,
    max_steps: int,
    loss: float | None,
    loss_steps: int,
    metric: str,
    score: float,
    best_score: float,
    best_step: int,
    elapsed: float,
    eta: tuple[float | None, str],
) -> str:
    """The one line an evaluation logs, e.g. "step 300/1000 | train loss 0.4123 (mean of 50
    steps) | dev accuracy 0.8125 | best 0.8250 @ step 250 | elapsed 4m12s | ETA 9m48s (step
    budget)". loss: mean training loss over the `loss_steps` steps since the previous
    evaluation (None when there were none); elapsed in seconds; eta as from eta_seconds."""
    if loss is None:
        loss_text = "n/a (no steps since the last evaluation)"
    else:
        loss_text = f"{loss:.4f} (mean of {loss_steps} step{'s' if loss_steps != 1 else ''})"
    return (
        f"step {step}/{max_steps} | train loss {loss_text} | dev {metric} {score:.4f} | "
        f"best {best_score:.4f} @ step {best_step} | elapsed {format_duration(elapsed)} | "
        f"ETA {format_duration(eta[0])} ({eta[1]})"
    )


def _save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getvalue())


def train(
    config: TrainConfig,
    run_dir: str | Path,
    lm: FrozenLM | None = None,
    spec: TaskSpec | None = None,
    progress: bool = True,
) -> dict:
    """Trains one prompt; returns the result dict (also written to run_dir/result.json).

    Every evaluation reports one line (format_eval_line) and the end of training one more: above
    the tqdm bar when `progress`, else through this module's logger at INFO. The library leaves
    logging configuration to its caller (the CLI, or the KFP executor, which logs INFO)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = spec or load_spec(config.task)
    # Load and validate all data before the model: bad input fails in seconds, not after a load.
    stats: dict = {}
    data = load_prepared(config.prepared_dir) if config.prepared_dir else load_task(spec, config.data_dir, stats)
    for split in ("train", "dev"):
        if split not in data:
            raise ValueError(f"task {spec.name}: no {split!r} split to train on")
    lm = lm or load_frozen_lm(config.model, device=config.device, dtype=config.dtype)
    if lm.target_prefix != config.target_prefix:
        lm = lm.with_options(target_prefix=config.target_prefix)  # the caller's wrapper is untouched
    world, rank = _world()
    if config.batch_size % (config.micro_batch_size * world):
        raise ValueError(f"batch_size {config.batch_size} must split into micro-batches of {config.micro_batch_size} on {world} processes")
    writer = rank == 0  # one process writes the run directory; all compute the same evaluations
    torch.manual_seed(config.seed)

    config_path = run_dir / "config.json"
    if config_path.exists() and json.loads(config_path.read_text()) != config.to_dict():
        raise ValueError(f"{run_dir} holds a run with a different config; use a new run directory")
    if world > 1:
        torch.distributed.barrier()  # all have read config.json before the writer rewrites it
    if writer:
        config_path.write_text(json.dumps(config.to_dict(), indent=2))
    metrics_log = MetricsLog(run_dir / "metrics.jsonl", enabled=writer)

    train_enc = encode_examples(lm, data["train"], config.max_input_tokens)
    # A fixed seeded subset, so every evaluation of a run scores the same dev examples.
    dev_examples = seeded_subset(data["dev"], config.eval_max_examples, config.seed)
    dev_enc = encode_examples(lm, dev_examples, config.max_input_tokens)

    prompt = torch.nn.Parameter(
        prompt_lib.initialize(
            config.prompt, lm.dim, lm.embed, lm.common_token_ids(config.prompt.vocab_top_k), lm.tokenize,
            spec.label_words, seed=config.seed,
        ).float().to(lm.device)
    )
    optimizer = make_optimizer(config, [prompt])
    state = {"step": 0, "best_score": -math.inf, "best_step": 0, "evals_since_best": 0, "elapsed": 0.0}
    ckpt_path = run_dir / "checkpoint.pt"
    best_path = run_dir / "prompt.safetensors"
    if ckpt_path.exists():
        saved = torch.load(ckpt_path, weights_only=True, map_location=lm.device)
        with torch.no_grad():
            prompt.copy_(saved["prompt"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        metrics_log.write(event="resume", step=state["step"])
        log.info("resumed from %s at step %d", ckpt_path, state["step"])
    else:
        metrics_log.write(
            event="start", train_examples=len(data["train"]), dev_examples=len(dev_examples),
            truncated_train_inputs=train_enc.truncated, truncated_dev_inputs=dev_enc.truncated,
            skipped_rows=len(stats.get("skipped_rows", [])), seed=config.seed,
        )
        for message in stats.get("skipped_rows", []):
            log.warning("skipped malformed row: %s", message)

    # Losses of the steps since the previous evaluation: its line reports their mean, which shows
    # the trend better than the last step's noisy loss.
    recent_losses: list[float] = []

    def report(line: str) -> None:
        """One progress line from the writing process, where a person watching the run sees it."""
        if not writer:
            return
        if bar is not None:
            bar.write(line, file=sys.stderr)  # a logger line under a live bar would break the bar
        else:
            log.info("%s", line)

    def run_eval(step: int, stop_reason: str | None = None) -> None:
        scores = evaluate(lm, prompt.detach(), spec, dev_examples, dev_enc, batch_size=config.eval_batch_size)
        improved = scores["score"] > state["best_score"]
        if improved:
            state.update(best_score=scores["score"], best_step=step, evals_since_best=0)
            if writer:
                prompt_lib.save_prompt(prompt.detach(), best_path, {"task": spec.name, "step": str(step)})
        else:
            state["evals_since_best"] += 1
        now = time.monotonic() - started  # this evaluation included, like the ones still to come
        if stop_reason is None:
            eta = eta_seconds(step, config.max_steps, now, config.max_minutes)
        else:
            eta = (0.0, f"stopped: {stop_reason}")
        loss = math.fsum(recent_losses) / len(recent_losses) if recent_losses else None
        report(format_eval_line(
            step=step, max_steps=config.max_steps, loss=loss, loss_steps=len(recent_losses),
            metric=spec.metric, score=scores["score"], best_score=state["best_score"],
            best_step=state["best_step"], elapsed=now, eta=eta,
        ))
        recent_losses.clear()
        finite_best = math.isfinite(state["best_score"])  # -inf (JSON -Infinity) until a real score
        metrics_log.write(
            event="eval", step=step, split="dev", elapsed=round(state["elapsed"], 2), **scores,
            best=improved, best_score=state["best_score"] if finite_best else None,
            best_step=state["best_step"],
            loss_since_last_eval=None if loss is None else round(loss, 5),
            eta_s=None if eta[0] is None else round(eta[0], 1), eta_by=eta[1],
        )

    accumulation = config.batch_size // (config.micro_batch_size * world)
    started = time.monotonic() - state["elapsed"]
    bar = None
    if progress and writer:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_steps, initial=state["step"], desc=f"train {spec.name}", unit="step")
    stop_reason = "max_steps"
    while state["step"] < config.max_steps:
        if world > 1:
            state["elapsed"] = _from_rank0(state["elapsed"], lm.device)
        if config.max_minutes is not None and state["elapsed"] >= config.max_minutes * 60:
            stop_reason = "time_budget"
            break
        if config.patience is not None and state["evals_since_best"] >= config.patience:
            stop_reason = "early_stopping"
            break
        indices = batch_indices(len(train_enc.inputs), config.batch_size, state["step"], config.seed)
        # The loss is the mean over the whole step's target tokens, however the step is split into
        # micro-batches and processes, so accumulation and data parallelism change no update.
        step_tokens = sum(len(train_enc.targets[i]) for i in indices)
        # Each process takes every world-th example; micro-batches group similar lengths (less padding).
        mine = sorted(indices[rank::world], key=lambda i: len(train_enc.inputs[i]))
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for k in range(accumulation):
            chunk = _subset(train_enc, mine[k * config.micro_batch_size : (k + 1) * config.micro_batch_size])
            loss = lm_loss(lm, prompt, Batch(chunk.inputs, chunk.targets), normalizer=step_tokens)
            loss.backward()
            total += loss.item()
        if world > 1:
            total = _sum_across_processes(prompt, total)
        optimizer.step()
        state["step"] += 1
        state["elapsed"] = time.monotonic() - started
        metrics_log.write(event="step", step=state["step"], loss=round(total, 5), elapsed=round(state["elapsed"], 2))
        recent_losses.append(total)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{total:.3f}", best=f"{state['best_score']:.3f}")
        if state["step"] % config.eval_every == 0:
            run_eval(state["step"])
            state["elapsed"] = time.monotonic() - started
            if writer:
                _save_checkpoint(ckpt_path, {"prompt": prompt.detach().clone(), "optimizer": optimizer.state_dict(), "state": state})
    if bar is not None:
        bar.close()
    if state["step"] % config.eval_every != 0 or state["best_step"] == 0:
        run_eval(state["step"], stop_reason)
        if writer:
            _save_checkpoint(ckpt_path, {"prompt": prompt.detach().clone(), "optimizer": optimizer.state_dict(), "state": state})
    report(
        f"training stopped at step {state['step']}/{config.max_steps} ({stop_reason}); best dev "
        f"{spec.metric} {state['best_score']:.4f} @ step {state['best_step']}; "
        f"elapsed {format_duration(time.monotonic() - started)}"
        + ("; scoring the best prompt on test" if "test" in data else "")
    )
    if world > 1:
        torch.distributed.barrier()  # the writer's prompt file is complete before anyone reads it

    best = prompt_lib.load_prompt(best_path).to(lm.device)
    result = {
        "task": spec.name,
        "model": lm.name,
        "model_fingerprint": lm.fingerprint,
        "best_step": state["best_step"],
        "steps": state["step"],
        "stop_reason": stop_reason,
        "train_seconds": round(state["elapsed"], 1),
        "dev": {"score": state["best_score"], "n": len(dev_examples)},
    }
    if "test" in data:
        test_enc = encode_examples(lm, data["test"], config.max_input_tokens)
        result["test"] = evaluate(lm, best, spec, data["test"], test_enc, batch_size=config.eval_batch_size)
        result["test"]["truncated_inputs"] = test_enc.truncated
    if writer:
        (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    metrics_log.write(event="done", **{k: v for k, v in result.items() if k in ("best_step", "steps", "stop_reason")})
    return result
