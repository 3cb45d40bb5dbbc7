"""Scores what a finished `softprompt train` run chose from, after the fact: each kept candidate,
their mean, and the final moving average, on the run's selection set and its reported split.

It reads the run's config.json and checkpoint.pt (the kept candidates travel in the checkpoint),
so it answers "would another choice have scored better on the reported split?" for runs that
are already done. Prints a line per prompt and writes JSON to --out.

    .venv/bin/python results/score_candidates.py --out OUT.json RUN_DIR ...
    .venv/bin/python results/score_candidates.py --means 3 --means-only --out OUT.json RUN_DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from softprompt.task_data import seeded_subset
from softprompt.tasks import load_spec
from softprompt.training import prompt_tuning
from softprompt.training.config import TrainConfig
from softprompt.training.selection import Candidates


def prompts_of(run: Path, means: tuple[int, ...] = (), means_only: bool = False
               ) -> dict[str, torch.Tensor]:
    """The candidates kept in the run's checkpoint, their mean (as the final choice forms it),
    the mean of the best k of them for each k in `means`, and the final moving average. With
    `means_only`, the means alone."""
    saved = torch.load(run / "checkpoint.pt", weights_only=True, map_location="cpu")
    candidates = Candidates(len(saved["candidates"]["steps"]))
    candidates.load_state(saved["candidates"])
    mean, *kept = candidates.final_pool()
    prompts = {} if means_only else {
        f"step {c.step} (check {c.check_score})": c.prompt for c in kept}
    prompts[f"mean of the {len(kept)} candidates"] = mean.prompt  # [P, E]
    for k in means:
        if k < len(kept):  # kept is sorted best check first
            prompts[f"mean of the best {k}"] = torch.stack([c.prompt for c in kept[:k]]).mean(0)
    if not means_only:
        prompts["final moving average"] = saved["average"]
    return prompts


def score_run(run: Path, lm, means: tuple[int, ...] = (), means_only: bool = False
              ) -> tuple[dict, object]:
    """{prompt name: {"selection": score, "reported": score}} for one run, and the model."""
    config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    spec = load_spec(config.task)
    lm = prompt_tuning.frozen_lm(config, lm)
    data = prompt_tuning.load_data(config, spec, {})
    dev = seeded_subset(data["dev"], config.eval_max_examples, config.seed)
    selection = prompt_tuning.ScoredSet(lm, spec, dev, config)
    reported = prompt_tuning.ScoredSet(lm, spec, data["test"], config)
    rows = {}
    for name, prompt in prompts_of(run, means, means_only).items():
        prompt = prompt.to(lm.device)
        rows[name] = {"selection": selection.score(prompt)["score"],
                      "reported": reported.score(prompt)["score"]}
        print(f"{run}: {name}: selection {rows[name]['selection']:.3f}, "
              f"reported {rows[name]['reported']:.4f}", flush=True)
    return rows, lm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories with a checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--means", default="", help="comma list of k: also score the mean of "
                        "the best k candidates (by check score)")
    parser.add_argument("--means-only", action="store_true",
                        help="score the means alone, not each candidate or the moving average")
    args = parser.parse_args()
    means = tuple(int(k) for k in args.means.split(",") if k)
    out, lm = {}, None
    for run in args.runs:
        out[str(run)], lm = score_run(run, lm, means, args.means_only)
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
