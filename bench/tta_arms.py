"""The arms of bench.time_to_accuracy: each trains one prompt until the last mark of training
time, snapshots a prompt at every mark, and scores the snapshots on the reported split.

- `ours` is softprompt.training.prompt_tuning.train with its default recipe. Its snapshot at a
  mark is run_dir/prompt.safetensors, the best prompt on the checks so far.
- `peft-paper` and `peft-recipe` are PEFT prompt tuning on the same frozen model, started from
  the same initial prompt, fed seeded shuffles of the training examples. PEFT keeps no best
  prompt, so their snapshot is the current prompt.

Scoring. Our models read `[lead; P; X]`, where `lead` is BOS for tokenizers that add one. PEFT
puts its virtual tokens before everything it is fed, `[P; X]`. Where the model has no lead token
(SmolLM2, the tiny test model) the two layouts are the same and every arm is scored by
softprompt.scoring.evaluate. Where it has one, PEFT's snapshots are scored through PEFT's own
forward (`peft_label_scores`, the summed log-probability of each label word's tokens plus EOS,
argmax), so each arm is scored in the layout it was trained in.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from bench.train_vs_peft import peft_tensors
from softprompt.model import Batch, FrozenLM
from softprompt.prompt import PromptConfig, load_prompt
from softprompt.scoring import Encoded, encode_examples, evaluate
from softprompt.task_data import load_task, seeded_subset
from softprompt.task_metrics import compute_metrics
from softprompt.tasks import Example, TaskSpec
from softprompt.training import prompt_tuning
from softprompt.training import recipe as recipe_lib
from softprompt.training.config import TrainConfig
from softprompt.training.loop import batch_indices
from softprompt.training.optim import make_optimizer

ARMS = ("ours", "peft-paper", "peft-recipe")
MICRO_BATCH = 8  # examples per PEFT forward; larger batches accumulate gradients
PEFT_BATCH = {"peft-paper": recipe_lib.PAPER_BATCH, "peft-recipe": recipe_lib.STABLE_BATCH}


@dataclass
class Snapshot:
    """One prompt taken at a mark of training time."""

    mark: float  # the mark, seconds of training time (0: the initial prompt)
    seconds: float  # training seconds when it was taken (at or just past the mark)
    steps: int  # optimizer steps done by then
    prompt: torch.Tensor | None = field(default=None, repr=False)  # [P, E], dropped once scored
    score: float | None = None
    accuracy: float | None = None  # also when the task's metric is F1


@dataclass
class ArmRecord:
    """What one arm's process hands back to the parent (as JSON)."""

    arm: str
    seed: int
    scorer: str
    optimizer: str
    marks: list[dict]
    checks: list[dict]  # ours: the check scores of metrics.jsonl, in order; PEFT: none
    zero_shot: float | None
    majority: dict  # the training split's most common label, predicted for every example
    report_split: str  # test, or dev examples outside every selection set
    report_examples: int
    cores: list[int]
    threads: int
    started: float
    trained: float  # the last mark passed
    ended: float  # training over (ours: after choosing its prompt and scoring its test split)
    finished: float
    load_avg_1m: dict


class OursRun(NamedTuple):
    """Our arm's snapshots and the check scores of its metrics.jsonl, in order."""

    snapshots: list[Snapshot]
    checks: list[dict]
    trained: float  # wall-clock time the last mark was passed


class Marks:
    """Watches training time and takes a snapshot each time it passes a mark."""

    def __init__(self, marks: Sequence[float], take: Callable[[], torch.Tensor]) -> None:
        self.pending, self.take = sorted(marks), take
        self.snapshots: list[Snapshot] = []
        self.done_at: float | None = None  # wall-clock time the last mark was passed

    def passed(self, steps: int, seconds: float) -> bool:
        """Snapshots every mark `seconds` reached; True once the last mark is passed."""
        while self.pending and seconds >= self.pending[0]:
            mark = self.pending.pop(0)
            self.snapshots.append(Snapshot(mark, seconds, steps, self.take()))
        if not self.pending and self.done_at is None:
            self.done_at = time.time()
        return not self.pending


# The last mark ends ours' run (on_step), not its budget. The budget is twice the last mark and
# checks_per_budget twice the default, so that its checks come as often as in a run given the
# last mark as --max-minutes; it never binds, as checks take well under half of a run.
BUDGET_OVER_LAST_MARK = 2


def train_config(args, seed: int, lm: FrozenLM) -> TrainConfig:
    """Our default recipe; only what the comparison fixes is set. The device and dtype are the
    loaded model's, so that the run's config.json records where it trained."""
    return TrainConfig(
        task=args.task,
        model=args.model,
        prompt=PromptConfig(length=args.prompt_length, init=args.init),
        seed=seed,
        data_dir=args.data_dir,
        max_steps=10**9,
        device=str(lm.device),
        dtype=str(lm.model.dtype).removeprefix("torch."),
        **ours_budget(args),
    )


def ours_budget(args) -> dict:
    """Ours' max_minutes and checks_per_budget (BUDGET_OVER_LAST_MARK says why)."""
    return {"max_minutes": BUDGET_OVER_LAST_MARK * max(args.marks) / 60,
            "checks_per_budget": BUDGET_OVER_LAST_MARK * TrainConfig.checks_per_budget}


def check_every(args) -> str:
    """How often ours checks its prompt, for the report."""
    config = TrainConfig(task=args.task, **ours_budget(args))
    return (f"every {config.eval_every} steps or {config.check_every_seconds():g} s of training "
            f"(1/{TrainConfig.checks_per_budget} of the last mark, as in a run given it as "
            "--max-minutes)")


def run_ours(args, lm: FrozenLM, spec: TaskSpec, seed: int, run_dir: Path) -> OursRun:
    """Trains with softprompt until the last mark."""
    config = train_config(args, seed, lm)
    best = run_dir / prompt_tuning.BEST_PROMPT
    marks = Marks(args.marks, lambda: load_prompt(best))
    initial = Snapshot(0.0, 0.0, 0, prompt_tuning.initial_prompt(config, lm, spec).cpu())
    prompt_tuning.train(config, run_dir, lm=lm, spec=spec, progress=False, on_step=marks.passed)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    checks = [{"step": r["step"], "score": r["score"]} for r in records if r.get("event") == "eval"]
    return OursRun([initial, *marks.snapshots], checks, marks.done_at or time.time())


class PeftArm:
    """PEFT prompt tuning of `lm`'s model, from our initial prompt, with the arm's optimizer."""

    def __init__(self, args, lm: FrozenLM, spec: TaskSpec, arm: str, seed: int) -> None:
        from peft import PromptTuningConfig, TaskType, get_peft_model

        self.lm, self.arm, self.seed, self.batch = lm, arm, seed, PEFT_BATCH[arm]
        config = train_config(args, seed, lm)
        self.initial = prompt_tuning.initial_prompt(config, lm, spec).cpu()
        self.model = get_peft_model(
            lm.model,
            PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=args.prompt_length),
        )
        self.table = self.model.prompt_encoder["default"].embedding.weight  # [P, E]
        with torch.no_grad():
            self.table.copy_(self.initial.to(self.table))
        name = "paper" if arm == "peft-paper" else "stable"
        self.recipe = recipe_lib.resolve(name, None, lm.vocab_scale.entry_rms)
        self.optimizer = make_optimizer(config, [self.table], self.recipe)
        # The paper's recipe has no warmup, so its factor is 1 at every step.
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: recipe_lib.warmup_factor(self.recipe, step)
        )

    def describe(self) -> str:
        warmup = (
            f", linear warmup {self.recipe.warmup_steps} steps" if self.recipe.warmup_steps else ""
        )
        clamp = self.recipe.update_clamp
        bound = f", update entries within {clamp:g} x lr" if clamp is not None else ""
        if self.recipe.beta1 is not None:
            bound += f", first moment {self.recipe.beta1:g}"
        return (
            f"Adafactor lr {self.recipe.lr:.4g} (weight decay 1e-5, decay 0.8){warmup}{bound}, "
            f"batch {self.batch} as "
            f"{self.batch // MICRO_BATCH}x{MICRO_BATCH}, no prompt norm cap"
        )

    def step(self, encoded: Encoded, step: int) -> float:
        """One optimizer step: the mean of the micro-batches' mean target NLLs."""
        chosen = batch_indices(len(encoded.inputs), self.batch, step, self.seed)
        chunks = [chosen[k : k + MICRO_BATCH] for k in range(0, len(chosen), MICRO_BATCH)]
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for chunk in chunks:
            batch = Batch([encoded.inputs[i] for i in chunk], [encoded.targets[i] for i in chunk])
            loss = self.model(**peft_tensors(self.lm, batch)).loss / len(chunks)
            loss.backward()
            total += loss.item()
        self.optimizer.step()
        self.schedule.step()
        return total

    def train(self, encoded: Encoded, marks: Sequence[float]) -> list[Snapshot]:
        """Steps until the last mark; the clock runs only while steps run."""
        watch = Marks(marks, lambda: self.table.detach().float().cpu().clone())
        seconds, steps = 0.0, 0
        # The frozen model stays in eval mode (no dropout), as in our training.
        while True:
            began = time.monotonic()
            self.step(encoded, steps)
            seconds += time.monotonic() - began
            steps += 1
            if watch.passed(steps, seconds):
                break
        return [Snapshot(0.0, 0.0, 0, self.initial), *watch.snapshots]


@torch.no_grad()
def peft_label_scores(
    lm: FrozenLM,
    model,
    inputs: Sequence[Sequence[int]],
    label_words: Sequence[str],
    batch_size: int = 32,
) -> torch.Tensor:
    """[B, L] summed log-probability of each label word's tokens (with EOS) after each input,
    through a PEFT prompt-tuning model's forward, which reads `[P; X; label]`."""
    choices = [lm.encode_target(w) for w in label_words]
    pairs = [(i, c) for i in range(len(inputs)) for c in range(len(choices))]
    scores = torch.empty(len(inputs), len(choices))
    for k in range(0, len(pairs), batch_size):
        part = pairs[k : k + batch_size]
        tensors = peft_tensors(
            lm, Batch([inputs[i] for i, _ in part], [choices[c] for _, c in part])
        )
        width = tensors["input_ids"].shape[1]
        logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"])
        # PEFT's logits cover the virtual tokens too: the last `width` positions' predecessors
        # predict the fed ids, [B, T, V].
        logits = logits.logits[:, -width - 1 : -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        labels = tensors["labels"]
        picked = logprobs.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # [B, T]
        sums = (picked * (labels != -100)).sum(dim=1).cpu()
        for (i, c), s in zip(part, sums.tolist(), strict=True):
            scores[i, c] = s
    return scores


def score_snapshots(
    lm: FrozenLM,
    spec: TaskSpec,
    examples: list[Example],
    snapshots: list[Snapshot],
    peft: PeftArm | None,
) -> str:
    """Fills each snapshot's score on `examples`; returns the scorer's name."""
    encoded = encode_examples(lm, examples, TrainConfig.max_input_tokens)
    own_layout = peft is not None and bool(lm.lead_ids)
    for snap in snapshots:
        if own_layout:
            with torch.no_grad():
                peft.table.copy_(snap.prompt.to(peft.table))
            scores = peft_label_scores(lm, peft.model, encoded.inputs, spec.label_words)
            predictions = [spec.label_words[i] for i in scores.argmax(1).tolist()]
            metrics = compute_metrics(spec, predictions, examples)
        else:
            metrics = evaluate(lm, snap.prompt.to(lm.device), spec, examples, encoded)
        snap.score, snap.accuracy = metrics["score"], metrics["accuracy"]
        snap.prompt = None
    return "peft forward" if own_layout else "softprompt.scoring.evaluate"


def reported_examples(args, data: dict, selection_size: int | None) -> list[Example]:
    """The examples every arm is scored on: the test split where the task has one. Without one,
    the dev examples that no seed's selection set holds (ours chooses its prompts on seeded dev
    subsets), so that no arm is scored on examples it chose by; `args.all_seeds` are the seeds
    of every arm in this benchmark run."""
    if "test" in data:
        return seeded_subset(data["test"], args.report_max_examples, 0)
    dev = data["dev"]
    chosen_by = {id(e) for seed in args.all_seeds for e in seeded_subset(dev, selection_size, seed)}
    held_out = [e for e in dev if id(e) not in chosen_by]
    if not held_out:
        raise SystemExit(
            f"{args.task}: no test split, and every dev example is in a selection set; "
            "lower the selection set's size"
        )
    return seeded_subset(held_out, args.report_max_examples, 0)


def majority_class(spec: TaskSpec, train: list[Example], examples: list[Example]) -> dict:
    """The metrics of predicting the training split's most common label for every example."""
    label, _ = Counter(e.target for e in train).most_common(1)[0]
    return {"label": label, **compute_metrics(spec, [label] * len(examples), examples)}


def run_arm(args, lm: FrozenLM, spec: TaskSpec, work: Path) -> ArmRecord:
    """Trains and scores the arm `args.arm` with seed `args.seed`."""
    started, load_before = time.time(), os.getloadavg()[0]
    data = load_task(spec, args.data_dir)
    examples = reported_examples(args, data, train_config(args, args.seed, lm).eval_max_examples)
    run_dir = work / f"{args.arm}-s{args.seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    peft, checks = None, []
    if args.arm == "ours":
        snapshots, checks, trained = run_ours(args, lm, spec, args.seed, run_dir)
        recipe = recipe_lib.resolve("stable", None, lm.vocab_scale.entry_rms)
        optimizer = f"softprompt default recipe ({recipe.lr_rule})"
    else:
        peft = PeftArm(args, lm, spec, args.arm, args.seed)
        encoded = encode_examples(lm, data["train"], TrainConfig.max_input_tokens)
        snapshots = peft.train(encoded, args.marks)
        trained = time.time()
        optimizer = peft.describe()
    ended = time.time()
    scorer = score_snapshots(lm, spec, examples, snapshots, peft)
    zero_shot = None
    if args.zero_shot:
        encoded = encode_examples(lm, examples, TrainConfig.max_input_tokens)
        empty = torch.zeros(0, lm.dim, device=lm.device)
        zero_shot = evaluate(lm, empty, spec, examples, encoded)["score"]
    return ArmRecord(
        arm=args.arm,
        seed=args.seed,
        scorer=scorer,
        optimizer=optimizer,
        marks=[{k: v for k, v in asdict(s).items() if k != "prompt"} for s in snapshots],
        checks=checks,
        zero_shot=zero_shot,
        majority=majority_class(spec, data["train"], examples),
        report_split="test" if "test" in data else "dev, outside every seed's selection set",
        report_examples=len(examples),
        cores=sorted(os.sched_getaffinity(0)),
        threads=torch.get_num_threads(),
        started=started,
        trained=trained,
        ended=ended,
        finished=time.time(),
        load_avg_1m={"before": load_before, "after": os.getloadavg()[0]},
    )
