"""N prompts of one task trained in one batch, each as its own run would train it.

An ensemble needs N prompts that differ only in seed (and maybe init). Here they train in one
process, with one [N, P, E] parameter and one Adafactor whose statistics and update clipping
are per member (softprompt.training.adafactor). Each forward takes the union of the members'
rows, each row carrying its member's prompt. On a launch-bound GPU a step of N x B rows costs
about one of B rows, so N prompts cost about one run. On a CPU the step costs N times as much,
and the group saves only the process and the model load.

Each member keeps what its single run (softprompt.training.prompt_tuning.train) would have.
That is its data order (seeded by its own seed, length buckets included), its check, selection
and test subsets, its gradient (the loss sums each member's mean token loss), its norm cap and
moving average, its candidates and its choice among them. Warmup and lr are shared, since equal
configs give equal ones. Its run directory ends as a single run's does (config.json,
metrics.jsonl, prompt.safetensors, result.json). The result adds "group" with "members",
"index", "train_seconds_shared" and "check_seconds_shared", and the member's own train_seconds
and check_seconds are its 1/N share of those.

Each check scores all members in one pass (per-example prompts). The final choice scores every
member's candidates in one pass, and the template alone once on the union of the members'
selection sets. The loop's early stopping and progress lines follow the members' mean check
score. The ensemble uses every member, and one member's lucky check should not keep the others
training.

The group's own state is in `<first run_dir>/group/`. Its checkpoint.pt holds every member's
state and the optimizer, and a later call with the same configs and run directories resumes
from it after a kill. Its metrics.jsonl has the summed loss and the mean check score.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch

from softprompt import distributed
from softprompt.model import Batch, FrozenLM
from softprompt.scoring import Encoded, encode_examples
from softprompt.task_data import seeded_subset
from softprompt.tasks import TaskSpec, load_spec
from softprompt.training import loop
from softprompt.training import prompt_tuning as single
from softprompt.training import recipe as recipe_lib
from softprompt.training.config import TrainConfig, check_world_split
from softprompt.training.optim import make_optimizer
from softprompt.training.progress import MetricsLog, ProgressOptions, eta_seconds
from softprompt.training.progress import log as progress_log
from softprompt.training.selection import Candidates, Choice, choose

log = logging.getLogger(__name__)
GROUP_DIR = "group"
FREE_FIELDS = ("seed", "prompt")  # the fields in which the members of a group may differ


def check_group(configs: list[TrainConfig]) -> None:
    """Members must be equal but for their seed and prompt init (the prompt length included)."""
    if not configs:
        raise ValueError("a group needs at least one config")
    first = configs[0].to_dict()
    for config in configs[1:]:
        other = config.to_dict()
        pairs = [(k, first[k], other[k]) for k in first if k not in FREE_FIELDS]
        pairs.append(("prompt.length", first["prompt"]["length"], other["prompt"]["length"]))
        for name, mine, theirs in pairs:
            if mine != theirs:
                raise ValueError(
                    f"the members of a group may differ only in seed and prompt init: {name} is "
                    f"{mine!r} for seed {configs[0].seed} and {theirs!r} for seed {config.seed}"
                )


class _Member:
    """One member's own part of the group (config, run directory, data order, dev sets,
    candidates), and its metrics.jsonl, written as its single run writes it."""

    def __init__(self, config: TrainConfig, run_dir: Path, lm: FrozenLM, spec: TaskSpec,
                 dev: list, train_enc: Encoded, writer: bool) -> None:
        self.config, self.run_dir, self.writer = config, run_dir, writer
        subset = seeded_subset(dev, config.eval_max_examples, config.seed)
        self.selection = single.ScoredSet(lm, spec, subset, config)
        self.checks = self.selection.head(config.check_examples)
        self.order = single.bucketed_order(config, train_enc)
        self.candidates = Candidates(config.final_candidates)
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=writer)
        self.best = {"score": float("-inf"), "step": 0}
        self.recent: list[float] = []  # losses of the steps since the last check

    def start(self, shared: dict) -> None:
        self.metrics.write(
            event="start", **shared, dev_examples=len(self.selection.examples),
            check_examples=len(self.checks.examples), seed=self.config.seed,
            truncated_dev_inputs=self.selection.encoded.truncated,
            length_buckets=self.order is not None,
        )

    def state(self) -> dict:
        return {"best": dict(self.best), "recent": list(self.recent),
                "candidates": self.candidates.state()}

    def load_state(self, saved: dict, step: int) -> None:
        self.best, self.recent = saved["best"], saved["recent"]
        self.candidates.load_state(saved["candidates"])
        self.metrics.write(event="resume", step=step)

    def step_record(self, step: int, loss: float, elapsed: float) -> None:
        self.recent.append(loss)
        self.metrics.write(event="step", step=step, loss=round(loss, 5), elapsed=round(elapsed, 2))

    def check(self, step: int, metrics: dict, prompt: torch.Tensor, clock: dict) -> None:
        """Offers the checked prompt [P, E] as a candidate, saves it when its check score is the
        member's best so far, and writes the "eval" record."""
        self.candidates.offer(step, metrics["score"], prompt)
        improved = metrics["score"] > self.best["score"]
        if improved:
            self.best = {"score": metrics["score"], "step": step}
            path, task = self.run_dir / single.BEST_PROMPT, self.selection.spec.name
            single.save_best(prompt, path, task, self.writer, step)
        loss = sum(self.recent) / len(self.recent) if self.recent else None
        self.recent = []
        eta = eta_seconds(step, self.config.max_steps, clock["elapsed"], self.config.max_minutes)
        self.metrics.write(
            event="eval", step=step, split="dev", elapsed=round(clock["elapsed"], 2),
            eval_seconds=round(clock["eval_seconds"], 2), **metrics, best=improved,
            best_score=self.best["score"], best_step=self.best["step"],
            loss_since_last_eval=None if loss is None else round(loss, 5),
            eta_s=None if eta[0] is None else round(eta[0], 1), eta_by=eta[1],
        )


class _Rows(NamedTuple):
    """One forward of the group, with every member's rows, the member of each row, and each
    member's target tokens in the whole step (its loss divisor)."""

    batch: Batch
    owner: torch.Tensor  # [R] member index per row
    tokens: torch.Tensor  # [N]


def group_loss(lm: FrozenLM, prompts: torch.Tensor, rows: _Rows) -> torch.Tensor:
    """[N] each member's target-token NLL in this micro-batch over its step's target tokens.
    Row r reads prompts[owner[r]] of the [N, P, E] stack."""
    owner = rows.owner.to(prompts.device)
    logprobs, row = lm.target_logprobs(prompts[owner], rows.batch)  # [T], [T]
    member = owner[row]
    nll = -logprobs.float() / rows.tokens.to(prompts.device)[member]
    return torch.zeros(prompts.shape[0], device=prompts.device).index_add(0, member, nll)


class _Group:
    """The members' stacked prompts [N, P, E], their optimizer, and the loop's hooks."""

    def __init__(self, members: list[_Member], lm: FrozenLM, spec: TaskSpec, train_enc: Encoded,
                 recipe: recipe_lib.Recipe) -> None:
        self.members, self.lm, self.spec, self.recipe = members, lm, spec, recipe
        self.train_enc, self.world, self.step = train_enc, distributed.world(), 0
        stack = [single.initial_prompt(m.config, lm, spec) for m in members]
        self.prompts = torch.nn.Parameter(torch.stack(stack))
        self.optimizer = make_optimizer(members[0].config, [self.prompts], recipe)
        # What checks score and members keep: each member's moving average, or its prompt.
        detached = self.prompts.detach()
        self.checked = detached if recipe.average_decay is None else detached.clone()
        # Where prompts share prefixes, two equal members would share one prefix and its
        # gradient: a step where two are equal runs unshared.
        self.unshared = lm.with_options(share_prompt_prefix=False)
        self.clock = {"began": time.monotonic(), "elapsed": 0.0, "eval_seconds": 0.0}
        self.step_losses = torch.zeros(len(members))

    def batches(self, step: int) -> loop.StepBatches:
        """Micro-batch k of the step is the union of every member's micro-batch k."""
        config = self.members[0].config
        shares = [
            loop.encoded_step(self.train_enc, config.batch_size, config.micro_batch_size,
                              m.config.seed, self.world, step, by_length=True, order=m.order)
            for m in self.members
        ]
        tokens = torch.tensor([float(s.target_tokens) for s in shares])
        micro = []
        for parts in zip(*(s.micro_batches for s in shares), strict=True):
            owner = torch.tensor([n for n, part in enumerate(parts) for _ in part.inputs])
            inputs = [x for part in parts for x in part.inputs]
            batch = Batch(inputs, [y for part in parts for y in part.targets])
            micro.append(_Rows(batch, owner, tokens))
        return loop.StepBatches(micro, int(tokens.sum()))

    def before_step(self, step: int) -> None:
        self.step = step
        recipe_lib.set_lr(self.optimizer, self.recipe, step)

    def loss(self, rows: _Rows, _tokens: int) -> torch.Tensor:
        model = self.lm
        if model.shares_prefix():
            flat = self.prompts.detach().flatten(1)
            model = model if torch.unique(flat, dim=0).shape[0] == len(flat) else self.unshared
        per_member = group_loss(model, self.prompts, rows)  # [N]
        self.step_losses += per_member.detach().cpu()
        return per_member.sum()

    def evaluate(self) -> dict:
        """Every member's checks in one pass. The loop follows the members' mean score."""
        began = time.monotonic()
        jobs = [single.ScoringJob(n, m.checks) for n, m in enumerate(self.members)]
        batch = self.members[0].config.eval_batch_size * len(self.members)
        predictions = single.predict_jobs(self.lm, self.checked, jobs, batch)
        self.last_checks = [single.rank_metrics(self.spec, p, m.checks.examples)
                            for p, m in zip(predictions, self.members, strict=True)]
        self.clock["eval_seconds"] += time.monotonic() - began
        scores = [m["score"] for m in self.last_checks]
        return {"score": sum(scores) / len(scores), "member_scores": scores}

    def after_eval(self, step: int, _scores: dict) -> None:
        self._tick()
        for n, (member, metrics) in enumerate(zip(self.members, self.last_checks, strict=True)):
            member.check(step, metrics, self.checked[n], self.clock)

    def after_step(self, step: int) -> None:
        """Each member's norm cap and moving average, then its "step" record."""
        if self.recipe.norm_cap is not None:
            # Every [E] row of every member is capped alone: a [N x P, E] view.
            flat = self.prompts.view(-1, self.prompts.shape[-1])
            recipe_lib.cap_row_norms(flat, self.recipe.norm_cap * self.lm.vocab_max_norm)
        if self.recipe.average_decay is not None:
            recipe_lib.update_average(self.checked, self.prompts, self.recipe.average_decay)
        if self.world.size > 1:  # each process summed the losses of its own rows
            total = self.step_losses.to(self.prompts.device)
            torch.distributed.all_reduce(total)
            self.step_losses = total.cpu()
        self._tick()
        for member, loss in zip(self.members, self.step_losses.tolist(), strict=True):
            member.step_record(step + 1, loss, self.clock["elapsed"])
        self.step_losses.zero_()

    def diverged(self) -> None:
        """The "diverged" record of every member, with its loss of the failed step."""
        for member, loss in zip(self.members, self.step_losses.tolist(), strict=True):
            finite = loss == loss and abs(loss) != float("inf")
            member.metrics.write(event="diverged", step=self.step + 1,
                                 loss=loss if finite else None)

    def _tick(self) -> None:
        self.clock["elapsed"] = time.monotonic() - self.clock["began"]

    def state(self) -> dict:
        clock = {k: v for k, v in self.clock.items() if k != "began"}
        return {"prompt": self.prompts.detach().clone(), "average": self.checked.clone(),
                "members": [m.state() for m in self.members], "clock": clock,
                "inits": _inits(self.members)}

    def load_state(self, saved: dict) -> None:
        if saved["inits"] != _inits(self.members):
            raise ValueError(f"the group checkpoint holds the members {saved['inits']}, not "
                             f"{_inits(self.members)}; use new run directories")
        with torch.no_grad():
            self.prompts.copy_(saved["prompt"])
            self.checked.copy_(saved["average"])
        self.clock = saved["clock"] | {"began": time.monotonic() - saved["clock"]["elapsed"]}
        for member, member_state in zip(self.members, saved["members"], strict=True):
            member.load_state(member_state, saved["state"]["step"])


def _inits(members: list[_Member]) -> list[list]:
    """Who the members are, as a checkpoint records them ([seed, prompt config] each)."""
    return [[m.config.seed, m.config.prompt.to_dict()] for m in members]


def train_group(configs: list[TrainConfig], run_dirs: list[str | Path], lm: FrozenLM | None = None,
                spec: TaskSpec | None = None, progress: bool = True) -> list[dict]:
    """Trains the members' prompts in one batch and returns each member's result dict (also
    in its run_dir/result.json). See the module docstring."""
    check_group(configs)
    run_dirs = [Path(d) for d in run_dirs]
    if len(run_dirs) != len(configs) or len(set(run_dirs)) != len(run_dirs):
        raise ValueError(f"{len(configs)} members need as many distinct run directories")
    first = configs[0]
    spec = spec or load_spec(first.task)
    stats: dict = {}
    data = single.load_data(first, spec, stats)  # before the model: bad input fails in seconds
    lm = single.frozen_lm(first, lm)
    world = distributed.world()
    check_world_split(first.batch_size, first.micro_batch_size, world.size)
    writer = world.rank == 0
    torch.manual_seed(first.seed)
    for config, run_dir in zip(configs, run_dirs, strict=True):
        run_dir.mkdir(parents=True, exist_ok=True)
        single.record_config(config, run_dir, writer)
    group_dir = run_dirs[0] / GROUP_DIR
    group_dir.mkdir(exist_ok=True)
    recipe = recipe_lib.resolve(first.recipe, first.lr, lm.vocab_scale.entry_rms)
    train_enc = encode_examples(lm, data["train"], first.max_input_tokens)
    members = [_Member(c, d, lm, spec, data["dev"], train_enc, writer)
               for c, d in zip(configs, run_dirs, strict=True)]
    group = _Group(members, lm, spec, train_enc, recipe)
    skipped = stats.get("skipped_rows", [])
    start = {"train_examples": len(data["train"]), "truncated_train_inputs": train_enc.truncated,
             "skipped_rows": len(skipped), "recipe": recipe.to_dict()}
    trainable = loop.Trainable(
        params=[group.prompts], optimizer=group.optimizer, batches=group.batches,
        loss=group.loss, evaluate=group.evaluate, after_eval=group.after_eval,
        state=group.state, load_state=group.load_state,
        on_start=partial(_log_start, members, start, skipped),
        before_step=group.before_step, after_step=group.after_step,
    )
    schedule = loop.Schedule(max_steps=first.max_steps, eval_every=first.eval_every,
                             eval_every_seconds=first.check_every_seconds(),
                             max_minutes=first.max_minutes, patience=first.patience)
    shown = ProgressOptions(bar=progress, desc=f"train {spec.name} x{len(members)}",
                            metric=f"{spec.metric} (mean of {len(members)})")
    metrics = MetricsLog(group_dir / "metrics.jsonl", enabled=writer)
    try:
        outcome = loop.train_loop(trainable, schedule, metrics, group_dir / single.CHECKPOINT,
                                  shown)
    except loop.TrainingDiverged:
        group.diverged()
        raise
    choices = choose_prompts(members, lm, first.eval_batch_size)
    return [_finish(group, n, choice, outcome, data) for n, choice in enumerate(choices)]


def _log_start(members: list[_Member], start: dict, skipped_rows: list[str]) -> None:
    """Each member's "start" record of a fresh run, and a warning per malformed row skipped."""
    for member in members:
        member.start(start)
    for message in skipped_rows:
        log.warning("skipped malformed row: %s", message)


def choose_prompts(members: list[_Member], lm: FrozenLM, eval_batch_size: int) -> list[Choice]:
    """Each member's prompt, its best candidate on its selection set. All candidates are scored
    in one pass, and the template alone once, on the union of the selection sets."""
    began = time.monotonic()
    pools = [m.candidates.final_pool() for m in members]
    kept = [(n, c) for n, pool in enumerate(pools) for c in pool]
    if not kept:
        raise ValueError("no candidate to choose from: the group never checked its prompts")
    union = list({id(e): e for m in members for e in m.selection.examples}.values())
    progress_log.info("choosing among %d candidate prompts of %d members (and the template "
                      "alone) on %d dev examples", len(kept), len(members), len(union))
    spec, batch = members[0].selection.spec, eval_batch_size * len(members)
    jobs = [single.ScoringJob(k, members[n].selection) for k, (n, _) in enumerate(kept)]
    predicted = single.predict_jobs(lm, torch.stack([c.prompt for _, c in kept]), jobs, batch)
    empty = torch.zeros(1, 0, lm.dim, device=lm.device)  # the template alone
    alone_set = single.ScoredSet(lm, spec, union, members[0].config)
    (alone,) = single.predict_jobs(lm, empty, [single.ScoringJob(0, alone_set)], batch)
    by_example = {id(e): p for e, p in zip(union, alone, strict=True)}
    seconds = time.monotonic() - began
    choices = []
    for n, member in enumerate(members):
        examples = member.selection.examples
        table = {id(c.prompt): single.rank_metrics(spec, p, examples)
                 for (m, c), p in zip(kept, predicted, strict=True) if m == n}
        zero = single.rank_metrics(spec, [by_example[id(e)] for e in examples], examples)
        # choose() asks for each candidate's metrics, then for the empty prompt's.
        choice = choose(pools[n], lambda p, t=table, z=zero: t.get(id(p), z), empty[0])
        choices.append(choice._replace(seconds=seconds))
        scores = (member.config.seed, single.chosen_text(choice), choice.metrics["score"],
                  choice.zero_shot["score"])
        progress_log.info("seed %d: chose %s: dev %.4f (template alone %.4f)", *scores)
        if scores[2] < scores[3]:
            log.warning("task %s, seed %d: the chosen prompt scores %.4f on dev, below the "
                        "template alone (%.4f); the quality gate will not promote it",
                        spec.name, scores[0], scores[2], scores[3])
    return choices


def _finish(group: _Group, n: int, choice: Choice, outcome: loop.LoopResult, data: dict) -> dict:
    """Member n's chosen prompt and result.json, as its single run writes them. Its seconds are
    its 1/N share of the group's."""
    member, size = group.members[n], len(group.members)
    share = outcome._replace(elapsed=outcome.elapsed / size,
                             eval_seconds=outcome.eval_seconds / size)
    shared = {"members": size, "index": n,
              "train_seconds_shared": round(outcome.elapsed - outcome.eval_seconds, 1),
              "check_seconds_shared": round(outcome.eval_seconds, 1)}
    return single.finish_run(
        member.config, group.lm, group.spec, data, share,
        choice._replace(seconds=choice.seconds / size), group.recipe, member.run_dir,
        member.selection, member.metrics, member.writer, group=shared,
    )
