"""N prompts trained in one batch vs one prompt: the cost of a training step.

A group step (softprompt.training.prompt_group) runs every member's B rows in one forward, each
row reading its member's prompt from the [N, P, E] stack, and steps one Adafactor whose state is
kept per member. One prompt's step runs B rows. Where the step is bound by kernel launches (a
GPU at this model size), the group's step should cost about one prompt's, so an ensemble of N
costs about one run; where arithmetic bounds it (a CPU), it costs about N times as much, and
the group saves only N - 1 processes and model loads.

    nice -n 19 python -m bench.group_step [--members 1,3,5] [--batch-size 32]
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
    paired_ratio,
    parse_ints,
    summary,
)
from softprompt.model import Batch
from softprompt.prompt import PromptConfig, random_uniform
from softprompt.training.config import TrainConfig
from softprompt.training.optim import make_optimizer
from softprompt.training.prompt_group import group_loss
from softprompt.training.recipe import PAPER_LR

# A group of 5 (the paper's ensemble) within twice one prompt's step: the ensemble then costs
# at most two runs, not five.
TARGET_MEMBERS, TARGET_RATIO = 5, 2.0


class GroupRows:
    """The rows of one group step: each member's B rows, and the member of each row."""

    def __init__(self, inputs: list[list[int]], targets: list[list[int]], members: int) -> None:
        self.batch = Batch(inputs * members, targets * members)
        self.owner = torch.arange(members).repeat_interleave(len(inputs))  # [N * B]
        tokens = sum(len(t) for t in targets)
        self.tokens = torch.full((members,), float(tokens))  # [N] each member's loss divisor


def group_stepper(lm, prompt_length: int, members: int, rows: GroupRows, seed: int):
    """A function running one group step: forward, backward, optimizer step."""
    config = TrainConfig(prompt=PromptConfig(length=prompt_length), recipe="paper", lr=PAPER_LR)
    init = [random_uniform(prompt_length, lm.dim, torch.Generator().manual_seed(seed + n))
            for n in range(members)]
    prompts = torch.nn.Parameter(torch.stack(init).to(lm.device))  # [N, P, E]
    optimizer = make_optimizer(config, [prompts])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        group_loss(lm, prompts, rows).sum().backward()
        optimizer.step()

    return step


def main(argv: Sequence[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--members", default="1,3,5", help="group sizes N (1: one prompt)")
    p.add_argument("--batch-size", type=int, default=32, help="B rows per member")
    p.add_argument("--input-tokens", type=int, default=64, help="tokens per input")
    args = p.parse_args(argv)
    check_args(args)
    sizes = parse_ints(args.members, "--members")
    if 1 not in sizes:
        sizes = [1, *sizes]
    report = Report("group_step", "N prompts in one batch vs one prompt, one training step",
                    args, argv)
    lm = load_lm(args)
    inputs, targets = fixed_batch(lm, args.batch_size, args.input_tokens,
                                  ["negative", "positive"], args.seed)
    cases = {f"N={n}": group_stepper(lm, args.prompt_length, n, GroupRows(inputs, targets, n),
                                     args.seed) for n in sizes}
    times = interleaved(cases, args.reps, args.warmup, lm.device)
    rows, results = [], {}
    for name in cases:
        n = int(name.split("=")[1])
        ratio = paired_ratio(times[name], times["N=1"])
        results[name] = {"members": n, "seconds": summary(times[name]), "ratio_to_one": ratio}
        per_prompt = ratio["median"] / n
        rows.append([n, fmt_spread(results[name]["seconds"]), f"{fmt_spread(ratio)}x",
                     f"{per_prompt:.2f}x"])
    report.table(
        f"One step, B={args.batch_size} rows per member of {args.input_tokens} input tokens + "
        f"{args.prompt_length} prompt tokens (median (min-max))",
        ["members N", "seconds", "vs one prompt", "per prompt vs one prompt"],
        rows,
    )
    report.results = results
    name = f"N={TARGET_MEMBERS}"
    if name in results:
        ratio = results[name]["ratio_to_one"]["median"]
        report.target(f"group step, {TARGET_MEMBERS} prompts", f"<= {TARGET_RATIO}x one prompt",
                      ratio, ratio <= TARGET_RATIO, unit="x", on="cuda")
    report.write(lm.device)
    return results


if __name__ == "__main__":
    main()
