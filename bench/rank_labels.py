"""Rank classification cost vs one forward pass as the number of labels L grows.

`one forward` = FrozenLM.score_choices with a single one-token choice: one pass over [P; X] and
the LM head on the last position, which any classifier needs. Rank classification over L label
words (each word's tokens + EOS) adds the label tokens, fed from the input's KV cache. With
--naive, also the textbook way: one full forward per label.

    nice -n 19 python -m bench.rank_labels [--labels 2,3,10] [--reps 5]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bench.common import (
    Report,
    base_parser,
    check_args,
    fixed_batch,
    fmt_spread,
    interleaved,
    load_lm,
    mib,
    paired_ratio,
    parse_ints,
    peak_memory,
    summary,
)
from softprompt.model import Batch
from softprompt.prompt import random_uniform

# Label words of real tasks first (SST-2, then CB), then more, some of several tokens.
WORDS = [
    "negative",
    "positive",
    "neutral",
    "entailment",
    "contradiction",
    "yes",
    "no",
    "maybe",
    "first",
    "second",
    "sports",
    "business",
    "science",
    "world",
    "technology",
    "health",
]
TARGET_RATIO = 1.15


def main(argv: Sequence[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--input-tokens", type=int, default=128)
    p.add_argument(
        "--labels", default="2,3,10", help=f"label counts L (the first L of: {', '.join(WORDS)})"
    )
    p.add_argument("--naive", action="store_true", help="also time one full forward per label")
    args = p.parse_args(argv)
    check_args(args)
    counts = parse_ints(args.labels, "--labels")
    if max(counts) > len(WORDS):
        raise SystemExit(f"--labels: at most {len(WORDS)} labels, got {max(counts)}")

    report = Report("rank_labels", "Rank classification cost vs one forward pass", args, argv)
    lm = load_lm(args)
    prompt = random_uniform(
        args.prompt_length, lm.dim, torch.Generator().manual_seed(args.seed)
    ).to(lm.device)
    inputs, _ = fixed_batch(lm, args.batch_size, args.input_tokens, WORDS[:2], args.seed)
    choices = {L: [lm.encode_target(w) for w in WORDS[:L]] for L in counts}
    cases = {"forward": lambda: lm.score_choices(prompt, inputs, [[lm.eos_id]])}
    for L in counts:
        cases[f"L={L}"] = lambda c=choices[L]: lm.score_choices(prompt, inputs, c)
        if args.naive:
            def naive(c=choices[L]):
                with torch.no_grad():
                    for choice in c:
                        lm.target_logprobs(prompt, Batch(inputs, [choice] * len(inputs)))
            cases[f"naive L={L}"] = naive
    times = interleaved(cases, args.reps, args.warmup, lm.device)
    memory = {name: peak_memory(fn, lm.device) for name, fn in cases.items()}

    rows, results = [], {}
    for name in cases:
        ratio = paired_ratio(times[name], times["forward"])
        label_tokens = (
            "" if name == "forward" else str(sum(len(c) for c in choices[int(name.split("=")[1])]))
        )
        results[name] = {
            "seconds": summary(times[name]),
            "ratio_to_forward": ratio,
            "memory": memory[name],
        }
        rows.append(
            [
                name,
                label_tokens,
                fmt_spread(results[name]["seconds"]),
                f"{fmt_spread(ratio)}x",
                mib(memory[name]["delta"]),
            ]
        )
    report.table(
        f"B={args.batch_size} inputs of {args.input_tokens} tokens + {args.prompt_length} prompt "
        "tokens (median (min-max))",
        ["scoring", "label tokens (with EOS)", "seconds", "vs one forward", "peak extra MiB"],
        rows,
    )
    worst = max(results[f"L={L}"]["ratio_to_forward"]["median"] for L in counts)
    report.target(
        f"rank classification, L up to {max(counts)}",
        f"<= {TARGET_RATIO}x one forward",
        worst,
        worst <= TARGET_RATIO,
        "x",
    )
    report.results = {"cases": results, "labels": {L: WORDS[:L] for L in counts}}
    report.note(
        "Label tokens count each word's tokens plus EOS (what training scores). All but the last "
        "token of every label are packed into one continuation per input that reads the input's "
        "KV cache once (a 4-D mask keeps the labels apart); models with a sliding window shorter "
        "than that repeat the cache once per label instead."
    )
    report.write(lm.device)
    return report.results


if __name__ == "__main__":
    main()
