"""The paper's experiments as runners: ensembles, baselines, domain shift and scale (the prompt
length and init sweeps are in softprompt.experiment_sweeps).

Every runner takes a base `TrainConfig` (the small config a command starts from), trains through
`softprompt.training.train` (model_tune and softprompt.prompt_design for the baselines), and
writes into `out_dir`:
  <name>.md    a results table (with the command that made it)
  <name>.json  the same numbers, machine-readable
  <name>.png   a plot, where the paper has a figure (scale)
  runs/...     one train run directory per trained prompt (resumable: rerun the command)
The files are written by softprompt.experiment_output.
Scores are the task's primary metric on its report split (test where the task has one, else dev),
for the prompt or weights that scored best on dev. `test_limit` evaluates a seeded subset of the
report split; the subset is written as prepared data under out_dir/.prepared (never committed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from softprompt import prompt as prompt_lib
from softprompt.ensemble import ensemble_evaluate
from softprompt.experiment_output import (
    class_shares,
    plot,
    shares_from_f1,
    shares_text,
    write_results,
)
from softprompt.model import FrozenLM, load_frozen_lm
from softprompt.prepared import load_prepared, write_prepared
from softprompt.prompt_design import eval_split, prompt_design_evaluate
from softprompt.scoring import encode_examples, rank_classify
from softprompt.task_data import load_task, seeded_subset
from softprompt.task_metrics import compute_metrics
from softprompt.tasks import Example, TaskSpec, load_spec
from softprompt.training.config import ModelTuningConfig, TrainConfig
from softprompt.training.model_tuning import model_tune
from softprompt.training.prompt_tuning import train


# ------------------------------------------------------------------ configs and data
def variant(base: TrainConfig, prompt: dict | None = None, **changes) -> TrainConfig:
    """`base` with some fields (and prompt fields) changed."""
    raw = base.to_dict()
    raw["prompt"] = prompt_lib.PromptConfig(**(raw["prompt"] | (prompt or {})))
    return TrainConfig.from_dict(raw | changes)


class TaskData:
    """A task's spec and data, the report split optionally cut to a seeded subset."""

    def __init__(
        self, task: str, base: TrainConfig, out_dir: Path, test_limit: int | None
    ) -> None:
        self.spec: TaskSpec = load_spec(task)
        self.task = task
        self.data = load_task(self.spec, base.data_dir)
        self.split = eval_split(self.data)
        self.test_limit = test_limit
        if test_limit:
            self.data[self.split] = seeded_subset(self.data[self.split], test_limit, base.seed)
            name = f"{self.spec.name}-{self.split}{test_limit}-seed{base.seed}"
            self.prepared_dir = out_dir / ".prepared" / name
            if not (self.prepared_dir / "meta.json").is_file():
                write_prepared(self.spec, self.data, self.prepared_dir)
            self.data = load_prepared(self.prepared_dir)  # exactly what train() will read

    def config(self, base: TrainConfig, **changes) -> TrainConfig:
        prepared = str(self.prepared_dir) if self.test_limit else base.prepared_dir
        return variant(base, task=self.task, prepared_dir=prepared, **changes)

    @property
    def report(self) -> list[Example]:
        return self.data[self.split]


def model_tuning_config(base: TrainConfig, tasks: list[str], **overrides) -> ModelTuningConfig:
    """Model tuning with the prompt run's budget (steps, batch, evaluation); lr etc. overridable."""
    shared = {f.name for f in fields(ModelTuningConfig)} & set(base.to_dict())
    own = {"optimizer", "lr", "weight_decay", "beta2_decay"}
    raw = {name: getattr(base, name) for name in shared - own}
    given = {k: v for k, v in overrides.items() if v is not None}
    return ModelTuningConfig(**(raw | {"tasks": tasks} | given))


def budget_note(base: TrainConfig) -> str:
    """A run's training budget as the notes state it (a wall-clock bound makes the steps vary)."""
    minutes = f" or {base.max_minutes:g} min (whichever comes first)" if base.max_minutes else ""
    return f"at most {base.max_steps} steps{minutes} of batch {base.batch_size} per run"


def prompt_score(lm: FrozenLM, base: TrainConfig, td: TaskData, run_dir: Path) -> dict:
    """Prompt tuning on one task, trained (or resumed), with its metrics on the report split.

    The result also holds the steps the run took."""
    result = train(td.config(base), run_dir, lm=lm, spec=td.spec, progress=False)
    if "test" in result:
        return result["test"] | {"split": "test", "steps": result["steps"]}
    best = prompt_lib.load_prompt(run_dir / "prompt.safetensors").to(lm.device)
    return _evaluate_on(lm, best, base, td) | {"steps": result["steps"]}


def _evaluate_on(lm: FrozenLM, prompt, base: TrainConfig, td: TaskData) -> dict:
    """The prompt's metrics on the task's report split, with each class's predicted and gold
    share."""
    encoded = encode_examples(lm, td.report, base.max_input_tokens)
    words = td.spec.label_words
    predicted = rank_classify(lm, prompt, encoded, words, base.eval_batch_size)
    gold = [e.target for e in td.report]
    return compute_metrics(td.spec, predicted, td.report) | {
        "n": len(td.report), "split": td.split,
        "shares": class_shares(words, predicted, gold)}


def _derived_shares(td: TaskData, metrics: dict) -> dict:
    """Model tuning's metrics with each class's share, recovered from accuracy and F1 (the run
    keeps no predictions); None where the task is not binary with an F1 metric."""
    words, positive = td.spec.label_words, td.spec.positive_label
    if len(words) != 2 or positive is None or "f1" not in metrics:
        return metrics | {"shares": None}
    gold = [e.target for e in td.report]
    return metrics | {"shares": shares_from_f1(words, positive, gold, metrics["accuracy"],
                                               metrics["f1"])}


# ------------------------------------------------------------------ runners
def run_ensemble(base: TrainConfig, out_dir: str | Path, seeds: Sequence[int] = (0, 1, 2),
                 prompt_files: Sequence[str] = (), lm: FrozenLM | None = None,
                 test_limit: int | None = None, command: str | None = None) -> dict:
    """N prompts for one task (trained with `seeds`, or given as files), scored as single prompts
    and as a majority-vote ensemble in one forward pass per batch (the paper's Table 3)."""
    out = Path(out_dir)
    td = TaskData(base.task, base, out, test_limit)
    lm = lm or load_frozen_lm(base.model, device=base.device, dtype=base.dtype)
    names, prompts = [], []
    for path in prompt_files:
        names.append(str(path))
        prompts.append(prompt_lib.load_prompt(path))
    steps = []
    for seed in seeds if not prompt_files else ():
        run = out / "runs" / f"{td.spec.name}-seed{seed}"
        result = train(td.config(base, seed=seed), run, lm=lm, spec=td.spec, progress=False)
        steps.append(result["steps"])
        names.append(str(run.relative_to(out)))
        prompts.append(prompt_lib.load_prompt(run / "prompt.safetensors"))
    if len(prompts) < 2:
        raise ValueError("an ensemble needs at least two prompts (seeds or prompt files)")
    encoded = encode_examples(lm, td.report, base.max_input_tokens)
    res = ensemble_evaluate(lm, prompts, td.spec, td.report, encoded,
                            batch_size=base.eval_batch_size)
    metric = td.spec.metric
    rows = [[f"prompt {i}: {n}", m["score"]]
            for i, (n, m) in enumerate(zip(names, res["per_prompt"], strict=True))]
    rows += [["average of single prompts", res["average"]], ["best single prompt", res["best"]],
             [f"ensemble (majority vote of {len(prompts)})", res["ensemble"]["score"]]]
    notes = [f"task {td.spec.name}, model {lm.name}, {td.split} split, {len(td.report)} examples",
             f"ties: {res['ties']}, broken by {res['tie_break']}"]
    if steps:
        notes.append(f"{budget_note(base)}; steps run: {steps}")
    payload = {k: v for k, v in res.items() if k != "predictions"} | {
        "task": td.spec.name, "model": lm.name, "prompts": names, "split": td.split,
        "n": len(td.report), "steps": steps}
    write_results(out, "ensemble", f"Prompt ensemble: {td.spec.name}", ["prompt", metric], rows,
                  payload, command, notes)
    return payload


def run_ensembles(base: TrainConfig, out_dir: str | Path, tasks: Sequence[str],
                  seeds: Sequence[int] = (0, 1, 2, 3, 4), lm: FrozenLM | None = None,
                  test_limit: int | None = None, command: str | None = None) -> dict:
    """run_ensemble on each task (in out_dir/<task>/), then one table of every task's average
    and best single prompt and majority-vote ensemble, the columns of the paper's Table 3."""
    out = Path(out_dir)
    lm = lm or load_frozen_lm(base.model, device=base.device, dtype=base.dtype)
    results = {Path(t).stem: run_ensemble(variant(base, task=t), out / Path(t).stem, seeds=seeds,
                                          lm=lm, test_limit=test_limit, command=command)
               for t in tasks}
    rows = [[r["task"], r["average"], r["best"], r["ensemble"]["score"], f"{r['split']} ({r['n']})"]
            for r in results.values()]
    notes = [f"model {lm.name}; {len(seeds)} prompts per task (seeds {list(seeds)}), each task's "
             "primary metric; a task's own table is in its folder", f"{budget_note(base)}"]
    write_results(out, "ensembles", f"Prompt ensembles of {len(seeds)}: {lm.name}",
                  ["task", "average of single prompts", "best single prompt",
                   f"ensemble (majority vote of {len(seeds)})", "split (examples)"],
                  rows, {"model": lm.name, "seeds": list(seeds), "tasks": results}, command,
                  notes)
    return results


def run_baselines(base: TrainConfig, out_dir: str | Path, tasks: Sequence[str], k_shot: int = 4,
                  mt_overrides: dict | None = None, lm: FrozenLM | None = None,
                  test_limit: int | None = None, command: str | None = None) -> dict:
    """Per task: prompt tuning, model tuning, multi-task model tuning (one model, task-name prefix),
    prompt design (k-shot priming) and zero-shot, on one frozen model and the same data."""
    out = Path(out_dir)
    tds = [TaskData(t, base, out, test_limit) for t in tasks]
    lm = lm or load_frozen_lm(base.model, device=base.device, dtype=base.dtype)
    results: dict[str, dict] = {td.spec.name: {} for td in tds}
    mt_overrides = mt_overrides or {}
    prompt_params = base.prompt.length * lm.dim
    data = {td.spec.name: td.data for td in tds}
    for td in tds:
        name = td.spec.name
        prompt = prompt_score(lm, base, td, out / "runs" / f"prompt-{name}")
        results[name]["prompt tuning"] = prompt | {"params": prompt_params}
        single = model_tune(model_tuning_config(base, [td.task], **mt_overrides),
                            out / "runs" / f"model-{name}", lm=lm, data=data)
        results[name]["model tuning"] = single["tasks"][name] | {
            "params": single["trainable_parameters"]}
        for k in sorted({0, k_shot}):
            label = "zero-shot (template only)" if k == 0 else f"prompt design ({k}-shot priming)"
            design = prompt_design_evaluate(
                lm, td.spec, td.data, k, seed=base.seed,
                max_input_tokens=max(1024, base.max_input_tokens),
                batch_size=base.eval_batch_size)
            results[name][label] = design | {"params": 0}
    if len(tds) > 1:
        multi = model_tune(model_tuning_config(base, [td.task for td in tds], **mt_overrides),
                           out / "runs" / "model-multitask", lm=lm, data=data)
        for td in tds:
            results[td.spec.name]["multi-task model tuning"] = multi["tasks"][td.spec.name] | {
                "params": multi["trainable_parameters"]}
    rows = [[task, method, m["score"], m["accuracy"], m["params"]]
            for task, methods in results.items() for method, m in methods.items()]
    mt_config = model_tuning_config(base, ["x"], **mt_overrides)
    notes = [f"model {lm.name}; report split per task: "
             + ", ".join(f"{td.spec.name} {td.split} ({len(td.report)})" for td in tds),
             f"prompt tuning: P={base.prompt.length}, init {base.prompt.init}, {budget_note(base)}",
             f"model tuning: same budget, {mt_config.optimizer} "
             f"lr {mt_config.lr}; all weights trained",
             "score = the task's primary metric; params = trained parameters"]
    payload = {"model": lm.name, "results": results}
    write_results(out, "baselines", "Prompt tuning against its baselines",
                  ["task", "method", "score", "accuracy", "trained params"], rows, payload,
                  command, notes)
    return payload


def run_domain_shift(base: TrainConfig, out_dir: str | Path,
                     pairs: Sequence[tuple[str, str]] = (("qqp", "mrpc"), ("mrpc", "qqp")),
                     methods: Sequence[str] = ("prompt_tuning", "model_tuning"),
                     mt_overrides: dict | None = None, lm: FrozenLM | None = None,
                     test_limit: int | None = None, command: str | None = None) -> dict:
    """Zero-shot transfer, trained on the source task and evaluated on the target (the paper's
    Table 2)."""
    unknown = set(methods) - {"prompt_tuning", "model_tuning"}
    if unknown:
        raise ValueError(
            f"unknown domain-shift methods {sorted(unknown)}; use prompt_tuning, model_tuning")
    out = Path(out_dir)
    tds = {t: TaskData(t, base, out, test_limit) for pair in pairs for t in pair}
    for source, target in pairs:
        if tds[source].spec.label_words != tds[target].spec.label_words:
            raise ValueError(f"{source} -> {target}: label words differ "
                             f"({tds[source].spec.label_words} vs "
                             f"{tds[target].spec.label_words}); zero-shot transfer needs the "
                             "same labels")
    lm = lm or load_frozen_lm(base.model, device=base.device, dtype=base.dtype)
    data = {td.spec.name: td.data for td in tds.values()}
    rows, records = [], []
    for source, target in pairs:
        src, tgt = tds[source], tds[target]
        for method in methods:
            if method == "prompt_tuning":
                run = out / "runs" / f"prompt-{src.spec.name}"
                steps = train(src.config(base), run, lm=lm, spec=src.spec, progress=False)["steps"]
                best = prompt_lib.load_prompt(run / "prompt.safetensors").to(lm.device)
                own, shifted = (_evaluate_on(lm, best, base, td) for td in (src, tgt))
            else:
                res = model_tune(model_tuning_config(base, [source], **(mt_overrides or {})),
                                 out / "runs" / f"model-{src.spec.name}", lm=lm,
                                 transfer_tasks=(target,), data=data)
                own = _derived_shares(src, res["tasks"][src.spec.name])
                shifted = _derived_shares(tgt, res["transfer"][tgt.spec.name])
                steps = res["steps"]
            record = {"source": src.spec.name, "target": tgt.spec.name, "method": method,
                      "steps": steps, "in_domain": own, "target_metrics": shifted}
            records.append(record)
            rows.append([f"{src.spec.name} -> {tgt.spec.name}", method.replace("_", " "),
                         own["score"], shifted["accuracy"], shifted.get("f1", float("nan")),
                         shares_text(shifted["shares"], "predicted"),
                         shares_text(shifted["shares"], "gold")])
    notes = [f"model {lm.name}; target report splits: "
             + ", ".join(f"{td.spec.name} {td.split} ({len(td.report)})" for td in tds.values()),
             f"{budget_note(base)} for both methods; prompt P={base.prompt.length}, "
             f"init {base.prompt.init}"]
    words = " / ".join(tds[pairs[0][1]].spec.label_words)
    notes.append(f"shares: each class's share ({words}) of the target's predictions and gold "
                 "labels; one predicted share near 1.0 is a model answering one class to all")
    write_results(out, "domain_shift", "Zero-shot domain shift",
                  ["train -> eval", "method", "in-domain score", "target accuracy", "target F1",
                   f"predicted share ({words})", "gold share"],
                  rows, {"model": lm.name, "results": records}, command, notes)
    return {"model": lm.name, "results": records}


def run_scale(base: TrainConfig, out_dir: str | Path, models: Sequence[str],
              mt_overrides: dict | None = None, test_limit: int | None = None,
              command: str | None = None) -> dict:
    """Prompt tuning and model tuning on models of several sizes: how the gap moves with size."""
    if len(models) < 2:
        raise ValueError("a scale experiment needs at least two models")
    out = Path(out_dir)
    td = TaskData(base.task, base, out, test_limit)
    records = []
    for model in models:
        lm = load_frozen_lm(model, device=base.device, dtype=base.dtype)
        cfg = variant(base, model=model)
        tag = Path(model).name
        prompt = prompt_score(lm, cfg, td, out / "runs" / f"prompt-{tag}")["score"]
        mt = model_tune(model_tuning_config(cfg, [base.task], **(mt_overrides or {})),
                        out / "runs" / f"model-{tag}", lm=lm, data={td.spec.name: td.data})
        params = sum(p.numel() for p in lm.model.parameters())
        records.append({"model": model, "parameters": params, "prompt_tuning": prompt,
                        "model_tuning": mt["tasks"][td.spec.name]["score"]})
        del lm
    records.sort(key=lambda r: r["parameters"])
    rows = [[r["model"], r["parameters"], r["prompt_tuning"], r["model_tuning"],
             r["model_tuning"] - r["prompt_tuning"]] for r in records]
    x = [r["parameters"] for r in records]
    plot(out / "scale.png", f"Scale: {td.spec.name}", "model parameters",
         f"{td.spec.metric} ({td.split})",
         {"prompt tuning": (x, [r["prompt_tuning"] for r in records], [0] * len(x)),
          "model tuning": (x, [r["model_tuning"] for r in records], [0] * len(x))}, logx=True)
    notes = [f"task {td.spec.name}, {td.split} split ({len(td.report)}); {budget_note(base)} and "
             "method",
             "gap = model tuning - prompt tuning"]
    write_results(out, "scale", f"Prompt tuning vs model tuning across model sizes: {td.spec.name}",
                  ["model", "parameters", "prompt tuning", "model tuning", "gap"], rows,
                  {"task": td.spec.name, "results": records}, command, notes)
    return {"task": td.spec.name, "results": records}
