"""Mixed-task batches vs per-task batches, as the service scores them.

R requests arrive round-robin over K tasks (real test inputs of each task, its own prompt and
label words). Three ways to score them, all of which must give every row the same scores:
- service: softprompt.scoring.mixed_label_scores as the service calls it (on CPU, where prompt
  prefixes are shared, it batches the rows of each prompt together);
- one batch: mixed_label_scores(by_prompt=False), all R rows in one forward with per-example
  prompts [R, P, E] over the union of the label words (the GPU default);
- per task: scoring.label_scores once per task with its [P, E] prompt.

    nice -n 19 python -m bench.mixed_tasks [--tasks sst2,rte,mrpc,cb] [--per-task 8] [--reps 4]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bench.common import (
    Report,
    base_parser,
    check_args,
    fmt_spread,
    interleaved,
    load_lm,
    mib,
    paired_ratio,
    peak_memory,
    summary,
    task_examples,
)
from softprompt.prompt import random_uniform
from softprompt.scoring import encode_examples, label_scores, mixed_label_scores


def main(argv: Sequence[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n")[0], reps=4)
    p.add_argument(
        "--tasks", default="sst2,rte,mrpc,cb", help="comma list of task names or spec paths"
    )
    p.add_argument("--per-task", type=int, default=8, help="requests per task")
    p.add_argument("--max-input-tokens", type=int, default=128)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    check_args(args)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not names or args.per_task < 1:
        raise SystemExit("--tasks needs at least one task and --per-task must be >= 1")

    report = Report("mixed_tasks", "Mixed-task batches vs per-task batches", args, argv)
    lm = load_lm(args)
    gen = torch.Generator().manual_seed(args.seed)
    tasks = []
    for name in names:
        spec, examples = task_examples(name, args.data_dir)
        enc = encode_examples(lm, examples[: args.per_task], args.max_input_tokens)
        tasks.append({"name": spec.name, "words": spec.label_words, "inputs": enc.inputs,
                      "prompt": random_uniform(args.prompt_length, lm.dim, gen).to(lm.device)})
    # Arrival order: round-robin over tasks; row i belongs to task owner[i].
    owner = [
        t for k in range(args.per_task) for t in range(len(tasks)) if k < len(tasks[t]["inputs"])
    ]
    slot = [sum(1 for j in owner[:i] if j == t) for i, t in enumerate(owner)]
    rows_inputs = [tasks[t]["inputs"][k] for t, k in zip(owner, slot, strict=True)]
    rows_prompts = [tasks[t]["prompt"] for t in owner]
    rows_words = [tasks[t]["words"] for t in owner]

    def per_task():
        scores = [
            label_scores(lm, t["prompt"], t["inputs"], t["words"], batch_size=len(t["inputs"]))
            for t in tasks
        ]
        return [scores[t][k] for t, k in zip(owner, slot, strict=True)]

    cases = {
        "service": lambda: mixed_label_scores(lm, rows_prompts, rows_inputs, rows_words),
        "one_batch": lambda: mixed_label_scores(
            lm, rows_prompts, rows_inputs, rows_words, by_prompt=False
        ),
        "per_task": per_task,
    }
    reference = per_task()
    diff = max(
        float((a - b).abs().max())
        for name in ("service", "one_batch")
        for a, b in zip(cases[name](), reference, strict=True)
    )
    times = interleaved(cases, args.reps, args.warmup, lm.device)
    memory = {name: peak_memory(fn, lm.device) for name, fn in cases.items()}
    lengths = [len(x) for x in rows_inputs]
    results = {name: {"seconds": summary(times[name]), "memory": memory[name]} for name in cases}
    for name in ("service", "one_batch"):
        results[name]["speedup_vs_per_task"] = paired_ratio(times["per_task"], times[name])
    results.update(
        {
            "max_abs_score_difference": diff,
            "rows": len(owner),
            "service_groups_by_prompt": lm.shares_prefix(),
            "tasks": {
                t["name"]: {
                    "labels": t["words"],
                    "mean_input_tokens": sum(map(len, t["inputs"])) / len(t["inputs"]),
                }
                for t in tasks
            },
        }
    )
    labels = {
        "service": "service (mixed_label_scores: "
        + ("a batch per prompt" if lm.shares_prefix() else "one batch per prompt length")
        + ")",
        "one_batch": f"one mixed batch of {len(owner)}",
        "per_task": f"per task: {len(tasks)} batches",
    }
    rows = [
        [
            labels[name],
            fmt_spread(results[name]["seconds"]),
            f"{len(owner) / results[name]['seconds']['median']:.2f}",
            f"{fmt_spread(results[name]['speedup_vs_per_task'])}x" if name != "per_task" else "1",
            mib(memory[name]["delta"]),
        ]
        for name in cases
    ]
    task_list = ", ".join(
        f"{t['name']} ({sum(map(len, t['inputs'])) / len(t['inputs']):.0f} tokens)" for t in tasks
    )
    report.table(
        f"{len(owner)} requests over {len(tasks)} tasks: {task_list}; max |score diff| {diff:.1e}",
        ["batching", "seconds", "requests/s", "vs per task", "peak extra MiB"],
        rows,
    )
    report.results = results
    report.note(
        f"Input lengths {min(lengths)}-{max(lengths)} tokens (mean input tokens per task in the "
        "title): one mixed batch pads every row to the longest input of any task and scores every "
        "row against every task's labels; per-prompt batches pad only within a task, and each "
        "runs its [lead; P] prefix once. On a 2-core CPU a bigger batch gains little; the "
        "service's win there is one model and one queue for all tasks, and on a GPU one launch "
        "for all rows."
    )
    report.write(lm.device)
    return report.results


if __name__ == "__main__":
    main()
