"""An N-prompt ensemble in one batch vs N separate passes: time and peak memory.

One batch: softprompt.ensemble.ensemble_scores (each example replicated N times, per-example
prompts [N*B, P, E], one forward). N passes: scoring.label_scores once per prompt [P, E]. Both
rank the same label words over the same B inputs and must return the same scores.

    nice -n 19 python -m bench.ensemble_batch [--ensembles 1,3,5] [--reps 4]
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
from softprompt.ensemble import ensemble_scores
from softprompt.prompt import random_uniform
from softprompt.scoring import label_scores


def main(argv: Sequence[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n")[0], reps=4)
    p.add_argument(
        "--batch-size", type=int, default=8, help="examples B (one batch holds N*B rows)"
    )
    p.add_argument("--input-tokens", type=int, default=128)
    p.add_argument("--ensembles", default="1,3,5", help="ensemble sizes N")
    p.add_argument("--label-words", default="negative,positive")
    args = p.parse_args(argv)
    check_args(args)
    sizes = parse_ints(args.ensembles, "--ensembles")
    words = args.label_words.split(",")

    report = Report(
        "ensemble_batch", "N-prompt ensemble: one batch vs N separate passes", args, argv
    )
    lm = load_lm(args)
    gen = torch.Generator().manual_seed(args.seed)
    prompts = torch.stack(
        [random_uniform(args.prompt_length, lm.dim, gen) for _ in range(max(sizes))]
    ).to(lm.device)
    inputs, _ = fixed_batch(lm, args.batch_size, args.input_tokens, words, args.seed)
    B = args.batch_size

    def one_batch(n):
        return ensemble_scores(lm, prompts[:n], inputs, words, batch_size=B)  # [N, B, L]

    def separate(n):
        return torch.stack(
            [label_scores(lm, prompts[k], inputs, words, batch_size=B) for k in range(n)]
        )

    agree = {n: float((one_batch(n) - separate(n)).abs().max()) for n in sizes}
    cases = {}
    for n in sizes:
        cases[f"one batch N={n}"] = lambda n=n: one_batch(n)
        cases[f"separate N={n}"] = lambda n=n: separate(n)
    times = interleaved(cases, args.reps, args.warmup, lm.device)
    memory = {name: peak_memory(fn, lm.device) for name, fn in cases.items()}

    rows, results = [], {}
    for n in sizes:
        one, sep = f"one batch N={n}", f"separate N={n}"
        speedup = paired_ratio(times[sep], times[one])
        results[n] = {
            "one_batch": {"seconds": summary(times[one]), "memory": memory[one]},
            "separate": {"seconds": summary(times[sep]), "memory": memory[sep]},
            "speedup_one_batch": speedup, "max_abs_score_difference": agree[n],
        }
        rows.append(
            [
                n,
                fmt_spread(results[n]["one_batch"]["seconds"]),
                fmt_spread(results[n]["separate"]["seconds"]),
                f"{fmt_spread(speedup)}x",
                mib(memory[one]["delta"]),
                mib(memory[sep]["delta"]),
                f"{agree[n]:.1e}",
            ]
        )
    report.table(
        f"B={B} inputs of {args.input_tokens} tokens + {args.prompt_length} prompt tokens, "
        f"L={len(words)} (median (min-max))",
        [
            "N",
            "one batch s",
            "N passes s",
            "one batch speedup",
            "one batch peak extra MiB",
            "N passes peak extra MiB",
            "max |score diff|",
        ],
        rows,
    )
    report.results = {"ensembles": results}
    report.note(
        "Both paths do the same FLOPs; one batch only gains from larger matrix multiplies and "
        "fewer Python/launch overheads (a GPU gains more than a 2-core CPU) and pays N times the "
        "activation memory."
    )
    report.write(lm.device)
    return report.results


if __name__ == "__main__":
    main()
