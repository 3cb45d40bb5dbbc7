"""Prompt-setting sweeps over seeds: the prompt length or initialization ablation, and the
length x initialization grid (the paper's Figure 3) as one run, each with a table and a plot.

They write as softprompt.experiments' runners do (<name>.md, <name>.json, <name>.png and one
resumable run directory per trained prompt under out_dir/runs/), and share its task data, its
configs and its scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from softprompt import prompt as prompt_lib
from softprompt.experiment_output import mean_spread, plot, write_results
from softprompt.experiments import TaskData, budget_note, prompt_score, variant
from softprompt.model import FrozenLM, load_frozen_lm
from softprompt.training.config import TrainConfig

# The paper's grid: prompt lengths and initializations.
ABLATION_AXES = {
    "length": (1, 5, 20, 100, 150),
    "init": ("random_uniform", "sampled_vocab", "class_label"),
}


class SeedRuns(NamedTuple):
    """One prompt setting trained once per seed: each run's score and steps, in seed order."""

    scores: list[float]
    steps: list[int]


def seed_runs(lm: FrozenLM, base: TrainConfig, td: TaskData, prefix: Path, prompt: dict,
              seeds: Sequence[int]) -> SeedRuns:
    """Trains (or resumes) `base` with the `prompt` fields changed, in <prefix>-seed<seed>."""
    results = [prompt_score(lm, variant(base, prompt=prompt, seed=seed), td,
                            prefix.with_name(f"{prefix.name}-seed{seed}")) for seed in seeds]
    return SeedRuns([r["score"] for r in results], [r["steps"] for r in results])


def seed_notes(base: TrainConfig, td: TaskData, seeds: Sequence[int], steps: dict) -> list[str]:
    """The notes of a sweep's table: the split, the seeds, the budget and the steps run."""
    return [f"{td.split} split, {len(td.report)} examples; {len(seeds)} seeds {list(seeds)}; "
            "spread = sample standard deviation",
            f"{budget_note(base)}, {base.recipe} recipe, lr {base.lr or 'by the recipe'}, "
            f"{base.optimizer}, {base.dtype} on {base.device or 'the default device'}; "
            f"steps run per setting and seed: {steps}"]


def run_ablation(base: TrainConfig, out_dir: str | Path, axis: str, values: Sequence | None = None,
                 seeds: Sequence[int] = (0, 1, 2), lm: FrozenLM | None = None,
                 test_limit: int | None = None, command: str | None = None) -> dict:
    """Prompt length or initialization, over seeds, as mean and standard deviation (the paper's
    Figure 3)."""
    if axis not in ABLATION_AXES:
        raise ValueError(
            f"unknown ablation axis {axis!r}; choose one of {', '.join(ABLATION_AXES)}")
    values = list(values or ABLATION_AXES[axis])
    if not seeds:
        raise ValueError("an ablation needs at least one seed")
    out = Path(out_dir)
    td = TaskData(base.task, base, out, test_limit)
    n_labels = len(td.spec.label_words)
    if axis == "length" and base.prompt.init == "class_label" and min(values) < n_labels:
        raise ValueError(f"class_label init needs length >= {n_labels} labels, but the grid has "
                         f"{min(values)}; use --init sampled_vocab or random_uniform for the "
                         "length ablation")
    if axis == "init":
        for v in values:
            # Validates the names before any training.
            prompt_lib.PromptConfig(length=base.prompt.length, init=v)
    lm = lm or load_frozen_lm(base.model, device=base.device, dtype=base.dtype)
    per_value, steps = {}, {}
    for v in values:
        per_value[str(v)], steps[str(v)] = seed_runs(lm, base, td, out / "runs" / f"{axis}-{v}",
                                                     {axis: v}, seeds)
    rows, mean, spread = [], [], []
    for v in values:
        m, s = mean_spread(per_value[str(v)])
        mean.append(m)
        spread.append(s)
        rows.append([v, m, s, len(seeds), ", ".join(f"{x:.4f}" for x in per_value[str(v)])])
    fixed = f"init {base.prompt.init}" if axis == "length" else f"length {base.prompt.length}"
    title = f"Ablation of prompt {axis}: {td.spec.name}, {lm.name} ({fixed})"
    plot(out / f"ablation_{axis}.png", title, f"prompt {axis}", f"{td.spec.metric} ({td.split})",
         {td.spec.name: (values, mean, spread)}, logx=axis == "length",
         categorical=axis == "init")
    notes = seed_notes(base, td, seeds, steps)
    payload = {"axis": axis, "task": td.spec.name, "model": lm.name, "fixed": fixed,
               "seeds": list(seeds), "scores": per_value, "steps": steps, "split": td.split,
               "n": len(td.report)}
    write_results(out, f"ablation_{axis}", title, [axis, "mean", "std", "seeds", "per seed"],
                  rows, payload, command, notes)
    return payload


def run_grid(base: TrainConfig, out_dir: str | Path,
             lengths: Sequence[int] = ABLATION_AXES["length"],
             inits: Sequence[str] = ABLATION_AXES["init"], seeds: Sequence[int] = (0, 1, 2),
             lm: FrozenLM | None = None, test_limit: int | None = None,
             command: str | None = None) -> dict:
    """Prompt length x initialization over seeds in one table and one plot (the grid of the
    paper's Figure 3): a line per init, its mean score against length with the seeds' spread.
    Cells class_label init cannot fill (fewer positions than labels) are left out and listed."""
    unknown = set(inits) - set(ABLATION_AXES["init"])
    if unknown or not seeds or not lengths or not inits:
        raise ValueError(f"a grid needs lengths, seeds and inits among "
                         f"{', '.join(ABLATION_AXES['init'])} (unknown: {sorted(unknown)})")
    for length in lengths:
        prompt_lib.PromptConfig(length=length)  # validates the lengths before any training
    out = Path(out_dir)
    td = TaskData(base.task, base, out, test_limit)
    lm = lm or load_frozen_lm(base.model, device=base.device, dtype=base.dtype)
    scores: dict[str, dict] = {init: {} for init in inits}
    steps: dict[str, dict] = {init: {} for init in inits}
    rows, series, skipped = [], {}, []
    for init in inits:
        for length in lengths:
            if init == "class_label" and length < len(td.spec.label_words):
                skipped.append(f"{init} at length {length}")
                continue
            runs = seed_runs(lm, base, td, out / "runs" / f"P{length}-{init}",
                             {"length": length, "init": init}, seeds)
            scores[init][str(length)], steps[init][str(length)] = runs
            rows.append([init, length, *mean_spread(runs.scores),
                         ", ".join(f"{x:.4f}" for x in runs.scores)])
        cells = [r for r in rows if r[0] == init]
        series[init] = ([r[1] for r in cells], [r[2] for r in cells], [r[3] for r in cells])
    title = f"Prompt length x initialization: {td.spec.name}, {lm.name}"
    plot(out / "grid.png", title, "prompt length", f"{td.spec.metric} ({td.split})", series,
         logx=True)
    notes = seed_notes(base, td, seeds, steps)
    if skipped:
        notes.append(f"left out (class_label needs a position per label): {', '.join(skipped)}")
    payload = {"task": td.spec.name, "model": lm.name, "lengths": list(lengths),
               "inits": list(inits), "seeds": list(seeds), "scores": scores, "steps": steps,
               "skipped": skipped, "split": td.split, "n": len(td.report)}
    write_results(out, "grid", title, ["init", "length", "mean", "std", "per seed"], rows,
                  payload, command, notes)
    return payload
