"""Achieved FLOP/s of a prompt-tuning training step and of inference, against the machine's
measured matrix-multiply peak (the physical limit for this work), all in one interleaved run.

- peak: best torch.mm of square fp32 (GPU: the model's dtype) matrices, sizes --mm-sizes.
- training step: softprompt's step (forward, backward to the prompt, Adafactor) on B fixed-length
  inputs; FLOPs as in bench/flops.py (4 N B T + 12 T^2 d L B + 4 V E H: no weight gradients).
- inference: rank classification of B inputs over the label words (FrozenLM.score_choices: one
  forward over [P; X] plus the label tokens from its KV cache).
- MFU curve: training steps at every batch size of --batch-sizes (default 8 to 256) on the
  task's real training inputs (default SST-2, drawn as the training loop draws them): step time,
  FLOPs, and FLOP/s against the peak, as a table and utilization.png.
On a GPU this is model FLOPs utilization (MFU) against the measured, not the datasheet, peak.
Targets: on CPU the fixed-shape step at >= 75% of the peak; on CUDA the best batch of the curve
at >= 30% (each reported "not measured" on the other device).

    nice -n 19 python -m bench.utilization [--reps 5] [--batch-sizes 8,16,32,64,128,256]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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

TARGET_UTILIZATION = 0.75  # CPU: the fixed-shape training step against the matmul peak
TARGET_MFU = 0.30  # CUDA: the best batch of the curve
BATCH_SIZES = "8,16,32,64,128,256"
QUICK_BATCH_SIZES = "2,4"


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


def curve_batches(lm: FrozenLM, args, sizes: Sequence[int]) -> dict[int, Batch]:
    """The first training batch of each size, as the training loop draws the task's examples."""
    from bench.train_vs_peft import task_batches

    return {b: task_batches(lm, args.task, args.data_dir, b, 1, args.seed)[0] for b in sizes}


def curve_results(
    shape: ModelShape, lm: FrozenLM, batches: dict[int, Batch], times: dict, peak: float, P: int
) -> dict:
    """Per batch size: FLOPs of a step, its seconds, examples/s, FLOP/s and utilization."""
    out = {}
    for b, batch in batches.items():
        flops = softprompt_step(shape, lm, batch, P)
        seconds = times[f"B={b}"]
        out[b] = {
            "flops": flops,
            "mean_tokens": sum(
                len(x) + len(y) for x, y in zip(batch.inputs, batch.targets, strict=True)
            ) / b,
            "seconds": summary(seconds),
            "examples_per_s": summary([b / t for t in seconds]),
            "flops_per_s": summary([flops["total"] / t for t in seconds]),
            "utilization": summary([flops["total"] / t / peak for t in seconds]),
        }
    return out


def plot_curve(path, curve: dict, device: str) -> None:
    """MFU and examples/s against batch size (log 2 axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(curve)
    fig, (mfu, rate) = plt.subplots(1, 2, figsize=(9, 3.8))
    mfu.plot(sizes, [100 * curve[b]["utilization"]["median"] for b in sizes], marker="o")
    mfu.set(ylabel="% of measured matmul peak", title=f"MFU of a training step ({device})")
    rate.plot(sizes, [curve[b]["examples_per_s"]["median"] for b in sizes], marker="o")
    rate.set(ylabel="examples/s", title="training throughput")
    for ax in (mfu, rate):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_curve(report: Report, curve: dict, args, device: str) -> None:
    """The curve's table, plot and the CUDA target on its best batch."""
    report.table(
        f"MFU against batch size, {Path(args.task).stem} training inputs + {args.prompt_length} "
        "prompt tokens (median (min-max))",
        ["batch", "tokens/row", "s/step", "examples/s", "GFLOP/s", "of peak"],
        [
            [
                b,
                fmt(c["mean_tokens"]),
                fmt_spread(c["seconds"]),
                fmt_spread(c["examples_per_s"]),
                fmt_spread(c["flops_per_s"], 1e-9),
                f"{c['utilization']['median']:.1%}",
            ]
            for b, c in curve.items()
        ],
    )
    best = max(curve, key=lambda b: curve[b]["utilization"]["median"])
    mfu = curve[best]["utilization"]["median"]
    report.target(
        f"MFU at the best batch of the curve (B={best})",
        f">= {TARGET_MFU:.0%} of matmul peak",
        mfu * 100,
        mfu >= TARGET_MFU,
        "%",
        on="cuda",
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_curve(out / "utilization.png", curve, device)


def main(argv: Sequence[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=8, help="training batch")
    p.add_argument("--infer-batch-size", type=int, default=16, help="inference batch")
    p.add_argument("--input-tokens", type=int, default=128)
    p.add_argument("--label-words", default="negative,positive")
    p.add_argument("--mm-sizes", default="1024,1536,2048", help="square matmul sizes for the peak")
    p.add_argument(
        "--batch-sizes",
        default=None,
        help=f"training batches of the MFU curve (default {BATCH_SIZES}; --quick "
        f"{QUICK_BATCH_SIZES}; none: no curve)",
    )
    p.add_argument("--task", default="sst2", help="task whose training inputs the curve uses")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    check_args(args)
    if args.quick:
        args.mm_sizes = "128,256"
    args.batch_sizes = args.batch_sizes or (QUICK_BATCH_SIZES if args.quick else BATCH_SIZES)
    sizes = parse_ints(args.mm_sizes, "--mm-sizes")
    curve_sizes = (
        [] if args.batch_sizes == "none" else parse_ints(args.batch_sizes, "--batch-sizes")
    )
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
    batches = curve_batches(lm, args, curve_sizes)

    def train_step(batch: Batch = train_batch):
        opt.zero_grad(set_to_none=True)
        lm_loss(lm, prompt, batch).backward()
        opt.step()

    cases = {
        "matmul": lambda: peaks.append(matmul_peak(sizes, device=lm.device, dtype=mm_dtype)),
        "train_step": train_step,
        "inference": lambda: lm.score_choices(prompt.detach(), infer_inputs, choices),
    }
    cases |= {f"B={b}": lambda batch=batch: train_step(batch) for b, batch in batches.items()}
    times = interleaved(cases, args.reps, args.warmup, lm.device)
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
        on="cpu",
    )
    if batches:
        results["curve"] = curve_results(shape, lm, batches, times, peak["median"], P)
        where = torch.cuda.get_device_name() if lm.device.type == "cuda" else "CPU"
        report_curve(report, results["curve"], args, where)
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
