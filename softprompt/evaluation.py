"""The ensemble and evaluation stages of a prompt-tuning run, as plain functions.

`ensemble_on_dev` gathers N trained runs into one ensemble folder and scores the majority vote
and every member on dev in one pass; `ensemble_on_test` scores them on test and builds what a
person reads: the summary the quality gate uses, the confusion matrix, and a self-contained HTML
report (scores, confusion matrix, each member's learning curve and nearest tokens).

Both stages also score the template alone (zero-shot: the frozen LM with no soft prompt, a [0, E]
prompt) on the same examples. A trained prompt that scores below it is worse than no prompt at
all, and the quality gate (softprompt.registry.promotion) refuses to promote it.

Ensemble folder layout:
  members/<i>/     a copy of run i (config.json, metrics.jsonl, prompt.safetensors, result.json)
  ensemble.json    the summary: members with their dev (and, after evaluation, test) scores,
                   the ensemble's, the template alone's ("zero_shot"), and the member
                   selected by dev score
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import NamedTuple

from softprompt.tasks import Example, TaskSpec

SUMMARY_FILE = "ensemble.json"


class Scored(NamedTuple):
    """One split's scores: the ensemble's (softprompt.ensemble.ensemble_evaluate) and the
    template alone's metrics (softprompt.scoring.evaluate with no prompt), None when skipped."""

    scores: dict
    zero_shot: dict | None


def _score(lm, prompts: list, spec: TaskSpec, examples: list[Example], max_input_tokens: int,
           batch_size: int, zero_shot: bool) -> Scored:
    """Scores `prompts` on `examples` and, when `zero_shot`, the template alone on the same
    encoded examples with the same batch size."""
    import torch

    from softprompt.ensemble import ensemble_evaluate
    from softprompt.scoring import encode_examples, evaluate

    encoded = encode_examples(lm, examples, max_input_tokens)
    scores = ensemble_evaluate(lm, prompts, spec, examples, encoded, batch_size=batch_size)
    if not zero_shot:
        return Scored(scores, None)
    # A [0, E] prompt puts nothing between the template and the model, as `softprompt evaluate`
    # does without --prompt.
    alone = evaluate(lm, torch.zeros(0, lm.dim), spec, examples, encoded, batch_size=batch_size)
    return Scored(scores, {k: v for k, v in alone.items() if k != "predictions"})


def _aggregate(scores: dict) -> dict:
    return {k: scores[k] for k in ("ensemble", "average", "best", "ties")}


def ensemble_on_dev(spec: TaskSpec, lm, runs: list[tuple[str, str]], dev: list[Example],
                    out_dir: str, max_input_tokens: int, batch_size: int) -> dict:
    """Copies each run (`(path, name)`) into `out_dir/members/<i>/` (checkpoints left out),
    scores the ensemble and every member on `dev` in one pass, and writes `ensemble.json`.
    The member with the best dev score is selected (the first one on ties)."""
    from softprompt.prompt import load_prompt

    members, prompts = [], []
    for i, (path, name) in enumerate(runs):
        target = os.path.join(out_dir, "members", str(i))
        shutil.copytree(path, target, ignore=shutil.ignore_patterns("checkpoint.pt*"),
                        dirs_exist_ok=True)
        prompts.append(load_prompt(os.path.join(target, "prompt.safetensors")))
        with open(os.path.join(target, "config.json")) as f:
            config = json.load(f)
        members.append({"index": i, "name": name, "seed": config["seed"],
                        "init": config["prompt"]["init"], "dir": f"members/{i}"})
    scores, zero_shot = _score(lm, prompts, spec, dev, max_input_tokens, batch_size, True)
    for member, member_scores in zip(members, scores["per_prompt"], strict=True):
        member["dev"] = member_scores
    best = max(range(len(members)), key=lambda i: scores["per_prompt"][i]["score"])
    summary = {"task": spec.name, "metric": spec.metric, "members": members,
               "best_member": best, "dev": _aggregate(scores), "zero_shot": {"dev": zero_shot}}
    with open(os.path.join(out_dir, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


@dataclass(frozen=True)
class Evaluation:
    """What the evaluation stage hands on: the summary (with test scores and the selection),
    flat metric values for dashboards, the ensemble's confusion matrix on test
    (rows: gold, columns: predicted, in `labels` order) and an HTML report."""

    summary: dict
    values: dict[str, float]
    labels: list[str]
    confusion: list[list[int]]
    html: str


def confusion_matrix(labels: list[str], gold: list[str], predicted: list[str]) -> list[list[int]]:
    """Counts [len(labels), len(labels)]: row = gold label, column = predicted label."""
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, predicted, strict=True):
        matrix[labels.index(g)][labels.index(p)] += 1
    return matrix


def member_curve(member_dir: str) -> list[dict]:
    """The records of a member's metrics.jsonl for its learning curve; [] when the run left no
    log (the report then says "no data" for that prompt)."""
    from softprompt.report import read_metrics_log

    try:
        return read_metrics_log(os.path.join(member_dir, "metrics.jsonl"))
    except FileNotFoundError:
        return []


def ensemble_on_test(spec: TaskSpec, lm, ensemble_dir: str, test: list[Example],
                     max_input_tokens: int, batch_size: int, nearest_k: int,
                     base_model: str) -> Evaluation:
    """Scores every member and the ensemble of `ensemble_dir` on `test`, and reports them.

    The template alone is scored on `test` as well when the summary holds its dev score. A
    summary written before zero-shot scoring existed evaluates without it."""
    from softprompt.interpret import nearest_tokens
    from softprompt.prompt import load_prompt
    from softprompt.report import evaluation_html

    with open(os.path.join(ensemble_dir, SUMMARY_FILE)) as f:
        summary = json.load(f)
    members = summary["members"]
    prompts = [load_prompt(os.path.join(ensemble_dir, m["dir"], "prompt.safetensors"))
               for m in members]
    has_zero_shot = "zero_shot" in summary
    scores, zero_shot = _score(lm, prompts, spec, test, max_input_tokens, batch_size,
                               has_zero_shot)
    for member, member_scores in zip(members, scores["per_prompt"], strict=True):
        member["test"] = member_scores
    best = summary["best_member"]
    summary["test"] = _aggregate(scores)
    summary["selected"] = {"member": best, "dev": members[best]["dev"],
                           "test": members[best]["test"]}
    values = {
        "test_ensemble": scores["ensemble"]["score"],
        "test_average": scores["average"],
        "test_best": scores["best"],
        "test_selected": members[best]["test"]["score"],
        "dev_selected": members[best]["dev"]["score"],
        "dev_ensemble": summary["dev"]["ensemble"]["score"],
    }
    for i, member_scores in enumerate(scores["per_prompt"]):
        values[f"test_prompt_{i}"] = member_scores["score"]
    if has_zero_shot:
        summary["zero_shot"]["test"] = zero_shot
        values["dev_zero_shot"] = summary["zero_shot"]["dev"]["score"]
        values["test_zero_shot"] = zero_shot["score"]
    labels = spec.label_words
    matrix = confusion_matrix(labels, [e.target for e in test], scores["predictions"])
    neighbours = [nearest_tokens(lm, prompt, k=nearest_k) for prompt in prompts]
    curves = [member_curve(os.path.join(ensemble_dir, m["dir"])) for m in members]
    html = evaluation_html(summary, base_model, labels, matrix, neighbours, len(test),
                           scores["tie_break"], curves=curves)
    return Evaluation(summary, values, labels, matrix, html)
