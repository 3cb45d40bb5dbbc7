"""Achieved FLOP/s of a prompt-tuning training step and of inference, against the machine's
measured matrix-multiply peak (the physical limit for this work), all in one interleaved run.

- peak: best torch.mm of square fp32 (GPU: the model's dtype) matrices, sizes --mm-sizes.
- training step: softprompt's step (forward, backward to the prompt, Adafactor) on B fixed-length
  inputs; FLOPs as in bench/flops.py (4 N B T + 12 T^2 d L B + 4 V E H: no weight gradients).
- inference: rank classification of B inputs over the label words (FrozenLM.score_choices: one
  forward over [P; X] plus the label tokens from its KV cache).
On a GPU this is model FLOPs utilization (MFU) against the measured, not the datasheet, peak.

    nice -n 19 python -m bench.utilization [--reps 5]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bench.common import (
    Report,
    base_parser,
    check_args,
    fixed_batch,
    fmt,
    fmt_spread,
    interleaved,
    load_lm,
    matmul_peak,
    parse_ints,
    summary,
)
from bench.flops import ModelShape, shared_prefix, softprompt_step
from softprompt.model import Batch, FrozenLM
from softprompt.prompt import PromptConfig, random_uniform
from softprompt.scoring import lm_loss
from softprompt.training.config import TrainConfig
from softprompt.training.optim import make_optimizer
from softprompt.training.recipe import PAPER_LR

TARGET_UTILIZATION = 0.75


def scoring_flops(
    shape: ModelShape,
    lm: FrozenLM,
    batch: int,
    prompt_length: int,
    width: int,
    choices: Sequence[Sequence[int]],
) -> dict:
    """score_choices: one forward over the `width` positions of [lead; P; X] plus every choice's
    tokens but the last, packed after each input (F per row); the head on the last input position
    and on each packed token."""
    feed = sum(len(c) - 1 for c in choices)
    return shape.run(
        batch,
        width + feed,
        head_rows=batch * (1 + feed),
        shared_prefix=shared_prefix(lm, prompt_length),
    )


def where_time_goes(step, flops: dict) -> dict:
    """Profiles one call of `step` and splits its self CPU time into matrix multiplies (which do the
    linear and LM-head FLOPs), the attention kernel (the attention FLOPs) and everything else
    (norms, activations, RoPE, copies, autograd and Python), with each part's achieved rate."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    spent = {"matmul (linear layers, LM head)": 0.0, "attention kernel": 0.0, "other": 0.0}
    for event in prof.key_averages():
        kind = (
            "matmul (linear layers, LM head)"
            if event.key in ("aten::mm", "aten::addmm", "aten::bmm")
            else "attention kernel"
            if "scaled_dot_product" in event.key
            else "other"
        )
        spent[kind] += event.self_cpu_time_total / 1e6
    total = sum(spent.values())
    work = {
        "matmul (linear layers, LM head)": flops["linear"] + flops["head"],
        "attention kernel": flops["attention"],
        "other": 0,
    }
    return {
        kind: {
            "seconds": t,
            "share": t / total,
            "flops": work[kind],
            "flops_per_s": work[kind] / t if t else 0.0,
        }
        for kind, t in spent.items()
    }


def main(argv: Sequence[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=8, help="training batch")
    p.add_argument("--infer-batch-size", type=int, default=16, help="inference batch")
    p.add_argument("--input-tokens", type=int, default=128)
    p.add_argument("--label-words", default="negative,positive")
    p.add_argument("--mm-sizes", default="1024,1536,2048", help="square matmul sizes for the peak")
    args = p.parse_args(argv)
    check_args(args)
    if args.quick:
        args.mm_sizes = "128,256"
    sizes = parse_ints(args.mm_sizes, "--mm-sizes")
    words = args.label_words.split(",")

    report = Report(
        "utilization", "FLOP/s of training and inference vs the measured matmul peak", args, argv
    )
    lm = load_lm(args)
    shape = ModelShape.of(lm)
    P, lead = args.prompt_length, len(lm.lead_ids)
    prompt = torch.nn.Parameter(
        random_uniform(P, lm.dim, torch.Generator().manual_seed(args.seed)).to(lm.device)
    )
    config = TrainConfig(prompt=PromptConfig(length=P), recipe="paper", lr=PAPER_LR)
    opt = make_optimizer(config, [prompt])
    train_batch = Batch(*fixed_batch(lm, args.batch_size, args.input_tokens, words, args.seed))
    infer_inputs, _ = fixed_batch(
        lm, args.infer_batch_size, args.input_tokens, words, args.seed + 1
    )
    choices = [lm.encode_target(w) for w in words]
    mm_dtype = lm.embedding.weight.dtype
    peaks: list[dict] = []

    def train_step():
        opt.zero_grad(set_to_none=True)
        lm_loss(lm, prompt, train_batch).backward()
        opt.step()

    times = interleaved(
        {
            "matmul": lambda: peaks.append(matmul_peak(sizes, device=lm.device, dtype=mm_dtype)),
            "train_step": train_step,
            "inference": lambda: lm.score_choices(prompt.detach(), infer_inputs, choices),
        },
        args.reps, args.warmup, lm.device,
    )
    peaks = peaks[-args.reps :]
    peak = summary([pk["peak"] for pk in peaks])
    width = lead + P + args.input_tokens
    train_width = width + max(map(len, train_batch.targets)) - 1  # the last target token is not fed
    flops = {
        "train_step": softprompt_step(shape, lm, train_batch, P),
        "inference": scoring_flops(shape, lm, args.infer_batch_size, P, width, choices),
    }
    rows, results = (
        [],
        {
            "peak_flops": peak,
            "per_size": {n: summary([pk["per_size"][n] for pk in peaks]) for n in sizes},
        },
    )
    rows.append(
        [
            "matmul peak (best of sizes " + ",".join(map(str, sizes)) + ")",
            "",
            fmt_spread(peak, 1e-9),
            "100%",
        ]
    )
    for name, label in (
        ("train_step", f"training step, B={args.batch_size}, T={train_width}"),
        ("inference", f"rank classification, B={args.infer_batch_size}, T={width}, L={len(words)}"),
    ):
        f = flops[name]["total"]
        rate = summary([f / t for t in times[name]])
        util = summary([f / t / peak["median"] for t in times[name]])
        results[name] = {
            "flops": flops[name],
            "seconds": summary(times[name]),
            "flops_per_s": rate,
            "utilization": util,
        }
        rows.append(
            [
                label,
                fmt_spread(summary(times[name])),
                fmt_spread(rate, 1e-9),
                f"{util['median']:.0%} ({util['min']:.0%}-{util['max']:.0%})",
            ]
        )
    results["train_step"].update(width=train_width, shared_prefix=shared_prefix(lm, P))
    report.table(
        "Achieved vs measured peak (median (min-max))",
        ["work", "seconds", "GFLOP/s", "of peak"],
        rows,
    )
    report.table("Matmul throughput by size", ["n", "GFLOP/s"],
                 [[n, fmt_spread(results["per_size"][n], 1e-9)] for n in sizes])
    if lm.device.type == "cpu":
        results["train_step"]["time_by_kernel"] = where_time_goes(train_step, flops["train_step"])
        report.table(
            "Where a training step's time goes (torch.profiler, one step, self CPU time)",
            ["kernels", "share of time", "FLOPs counted", "GFLOP/s", "of peak"],
            [
                [
                    kind,
                    f"{k['share']:.0%}",
                    fmt(k["flops"] / 1e9) + " G",
                    fmt(k["flops_per_s"] / 1e9) if k["flops"] else "",
                    f"{k['flops_per_s'] / peak['median']:.0%}" if k["flops"] else "",
                ]
                for kind, k in results["train_step"]["time_by_kernel"].items()
            ],
        )
    report.target(
        "training step utilization",
        f">= {TARGET_UTILIZATION:.0%} of matmul peak",
        results["train_step"]["utilization"]["median"] * 100,
        results["train_step"]["utilization"]["median"] >= TARGET_UTILIZATION,
        "%",
    )
    report.results = {**results, "model_shape": shape.to_dict()}
    report.note(
        f"FLOPs of the training step: {fmt(flops['train_step']['total'] / 1e9)} G = linear "
        f"{fmt(flops['train_step']['linear'] / 1e9)} + attention "
        f"{fmt(flops['train_step']['attention'] / 1e9)} + LM head "
        f"{fmt(flops['train_step']['head'] / 1e9)}; N = {shape.body_params:,} decoder-stack linear "
        f"parameters, L = {shape.layers}, d = {shape.attn_dim}, V = {shape.vocab}. Formula and "
        "what is left out: bench/flops.py (forward 2NBT + 4T^2dLB + 2VEH; frozen weights, so the "
        "backward computes input gradients only: 4NBT + 12T^2dLB + 4VEH per step instead of "
        "6NBT). "
        + (
            f"The [lead; P] prefix ({shared_prefix(lm, P)} positions) runs once per batch, so it "
            "is counted once, not per row."
            if lm.shares_prefix()
            else "The prompt runs in every row (no shared prefix on this device)."
        )
    )
    report.write(lm.device)
    return report.results


if __name__ == "__main__":
    main()
