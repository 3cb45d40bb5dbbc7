"""Training throughput: our prompt tuning vs PEFT's, same model, data, batch, prompt and optimizer.

Both train a [P, E] prompt on the same frozen model object (PEFT wraps it with
`get_peft_model(model, PromptTuningConfig(task_type=CAUSAL_LM, num_virtual_tokens=P))`), start
from the same prompt values, see the same batches in the same order, and step the paper's
Adafactor (softprompt.training.make_optimizer). One step = forward, backward, optimizer step.
The loss both compute is the mean NLL of the target tokens; the first step's two losses are
recorded as a check that they train the same thing.

Shapes: `fixed` = B inputs of exactly --input-tokens tokens (+ P prompt tokens, + the target);
`task` = the task's real training examples (default SST-2), drawn as the training loop draws them.

    nice -n 19 python -m bench.train_vs_peft [--reps 5] [--shapes fixed,task]
"""

from __future__ import annotations

import itertools
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
    paired_ratio,
    parse_ints,
    summary,
    task_examples,
)
from bench.flops import ModelShape, softprompt_step
from softprompt.model import Batch, FrozenLM
from softprompt.prompt import PromptConfig, random_uniform
from softprompt.scoring import encode_examples, lm_loss
from softprompt.training.config import TrainConfig
from softprompt.training.loop import batch_indices
from softprompt.training.optim import make_optimizer
from softprompt.training.recipe import PAPER_LR

TARGET_SPEEDUP = 1.5


def peft_tensors(lm: FrozenLM, batch: Batch) -> dict:
    """A causal-LM batch as a PEFT user feeds it.

    That is right-padded ids, the attention mask, and labels that are -100 except at targets."""
    rows = [list(x) + list(y) for x, y in zip(batch.inputs, batch.targets, strict=True)]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), lm.pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (row, x) in enumerate(zip(rows, batch.inputs, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, len(x) : len(row)] = torch.tensor(row[len(x) :])
        mask[i, : len(row)] = 1
    return {
        "input_ids": ids.to(lm.device),
        "attention_mask": mask.to(lm.device),
        "labels": labels.to(lm.device),
    }


class Trainers:
    """Our step and PEFT's step on one frozen model, each with its own prompt and optimizer."""

    def __init__(self, lm: FrozenLM, prompt_length: int, seed: int) -> None:
        from peft import PromptTuningConfig, TaskType, get_peft_model

        self.lm = lm
        self.config = TrainConfig(
            prompt=PromptConfig(length=prompt_length), recipe="paper", lr=PAPER_LR
        )
        self.init = random_uniform(prompt_length, lm.dim, torch.Generator().manual_seed(seed))
        self.prompt = torch.nn.Parameter(self.init.clone().to(lm.device))
        self.peft_model = get_peft_model(
            lm.model,
            PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=prompt_length),
        )
        self.reset()

    def reset(self) -> None:
        """Both prompts back to the same initial values, fresh optimizers: each shape starts equal,
        so its first-step losses must agree (Adafactor's normalized steps soon make the two
        trajectories drift apart through rounding alone)."""
        table = self.peft_model.prompt_encoder["default"].embedding.weight
        with torch.no_grad():
            self.prompt.copy_(self.init.to(self.prompt.device))
            table.copy_(self.init.to(table.dtype))
        self.ours_opt = make_optimizer(self.config, [self.prompt])
        self.peft_opt = make_optimizer(self.config, [table])

    def ours(self, batch: Batch) -> float:
        self.ours_opt.zero_grad(set_to_none=True)
        loss = lm_loss(self.lm, self.prompt, batch)
        loss.backward()
        self.ours_opt.step()
        return loss.item()

    def peft(self, batch: Batch) -> float:
        self.peft_opt.zero_grad(set_to_none=True)
        loss = self.peft_model(**peft_tensors(self.lm, batch)).loss
        loss.backward()
        self.peft_opt.step()
        return loss.item()


def task_batches(
    lm: FrozenLM, task: str, data_dir: str | None, batch: int, count: int, seed: int
) -> list[Batch]:
    """The first `count` training batches the training loop would draw from the task."""
    _, examples = task_examples(task, data_dir, split="train")
    out = []
    for step in range(count):
        chosen = [examples[i] for i in batch_indices(len(examples), batch, step, seed)]
        enc = encode_examples(lm, chosen, max_input_tokens=256)
        out.append(Batch(enc.inputs, enc.targets))
    return out


def measure_shape(
    lm: FrozenLM, trainers: Trainers, batches: Sequence[Batch], args, shape: ModelShape
) -> dict:
    """Interleaved rounds of: our step, PEFT's step, the matmul peak. Round r uses batches[r]."""
    trainers.reset()
    ours_iter, peft_iter = itertools.cycle(batches), itertools.cycle(batches)
    first: dict[str, float] = {}
    peaks: list[float] = []

    def ours():
        first.setdefault("ours", trainers.ours(next(ours_iter)))

    def peft():
        first.setdefault("peft", trainers.peft(next(peft_iter)))

    times = interleaved(
        {
            "ours": ours,
            "peft": peft,
            # The peak in the frozen weights' dtype: bf16 matmuls on a GPU run far faster
            # than fp32 ones.
            "matmul_peak": lambda: peaks.append(
                matmul_peak(args.mm_sizes, device=lm.device, dtype=lm.embedding.weight.dtype)[
                    "peak"
                ]
            ),
        },
        args.reps,
        args.warmup,
        lm.device,
    )
    peak = summary(peaks[-args.reps :])
    timed = [batches[(args.warmup + r) % len(batches)] for r in range(args.reps)]
    P = args.prompt_length
    out = {
        "peak_flops": peak,
        "first_loss": first,
        "seconds": {},
        "examples_per_s": {},
        "tokens_per_s": {},
        "flops": {},
        "flops_per_s": {},
        "utilization": {},
    }
    for name in ("ours", "peft"):
        t = times[name]
        if name == "ours":
            flops = [softprompt_step(shape, lm, b, P)["total"] for b in timed]
        else:  # PEFT feeds [P; x; y] padded, the LM head on every position
            widths = [
                P + max(len(x) + len(y) for x, y in zip(b.inputs, b.targets, strict=True))
                for b in timed
            ]
            flops = [
                shape.prompt_step(len(b.inputs), w, len(b.inputs) * w)["total"]
                for b, w in zip(timed, widths, strict=True)
            ]
        tokens = [
            sum(len(x) + len(y) for x, y in zip(b.inputs, b.targets, strict=True)) for b in timed
        ]
        out["seconds"][name] = summary(t)
        out["examples_per_s"][name] = summary(
            [len(b.inputs) / s for b, s in zip(timed, t, strict=True)]
        )
        out["tokens_per_s"][name] = summary([n / s for n, s in zip(tokens, t, strict=True)])
        out["flops"][name] = summary(flops)
        out["flops_per_s"][name] = summary([f / s for f, s in zip(flops, t, strict=True)])
        out["utilization"][name] = summary(
            [f / s / peak["median"] for f, s in zip(flops, t, strict=True)]
        )
    out["speedup"] = paired_ratio(times["peft"], times["ours"])
    out["mean_tokens"] = (
        sum(sum(len(x) + len(y) for x, y in zip(b.inputs, b.targets, strict=True)) for b in timed)
        / len(timed)
        / len(timed[0].inputs)
    )
    out["flop_ratio"] = out["flops"]["peft"]["median"] / out["flops"]["ours"]["median"]
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--input-tokens", type=int, default=128, help="input length of the fixed shape")
    p.add_argument("--shapes", default="fixed,task", help="comma list of: fixed, task")
    p.add_argument(
        "--task",
        default="sst2",
        help="task (name or spec path) whose training data gives the real lengths",
    )
    p.add_argument("--data-dir", default=None)
    p.add_argument("--label-words", default="negative,positive", help="targets of the fixed shape")
    p.add_argument(
        "--mm-sizes",
        default=None,
        help="square matmul sizes for the peak (default 1024,1536,2048; --quick 256,512; a GPU "
        "needs 4096 or more to reach its peak)",
    )
    args = p.parse_args(argv)
    check_args(args)
    default_sizes = "256,512" if args.quick else "1024,1536,2048"
    args.mm_sizes = parse_ints(args.mm_sizes or default_sizes, "--mm-sizes")
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if not shapes or set(shapes) - {"fixed", "task"}:
        raise SystemExit(f"--shapes: choose from fixed, task; got {args.shapes!r}")

    report = Report(
        "train_vs_peft", "Training throughput: softprompt vs PEFT prompt tuning", args, argv
    )
    lm = load_lm(args)
    shape = ModelShape.of(lm)
    trainers = Trainers(lm, args.prompt_length, args.seed)
    rows, results = [], {}
    for name in shapes:
        count = args.warmup + args.reps
        if name == "fixed":
            batches = [
                Batch(
                    *fixed_batch(
                        lm,
                        args.batch_size,
                        args.input_tokens,
                        args.label_words.split(","),
                        args.seed + i,
                    )
                )
                for i in range(count)
            ]
            label = (
                f"fixed: B={args.batch_size}, {args.input_tokens} input + "
                f"{args.prompt_length} prompt tokens"
            )
        else:
            batches = task_batches(lm, args.task, args.data_dir, args.batch_size, count, args.seed)
            label = (
                f"{args.task}: B={args.batch_size}, real lengths + "
                f"{args.prompt_length} prompt tokens"
            )
        r = measure_shape(lm, trainers, batches, args, shape)
        r["label"] = label
        results[name] = r
        rows += [
            [
                label,
                who,
                fmt_spread(r["seconds"][key]),
                fmt_spread(r["examples_per_s"][key]),
                fmt_spread(r["tokens_per_s"][key], digits=4),
                fmt(r["flops_per_s"][key]["median"] / 1e9),
                f"{r['utilization'][key]['median']:.0%}",
                fmt(r["first_loss"][key], 5),
            ]
            for who, key in (("softprompt", "ours"), ("PEFT", "peft"))
        ]
        rows.append([label, "**speedup**", f"**{fmt_spread(r['speedup'])}x**", "", "", "", "", ""])
        report.target(
            f"training speedup vs PEFT ({name})",
            f">= {TARGET_SPEEDUP}x",
            r["speedup"]["median"],
            r["speedup"]["median"] >= TARGET_SPEEDUP,
            "x",
        )
    report.table(
        "Training step, interleaved (median (min-max) over repetitions)",
        [
            "shape",
            "implementation",
            "s/step",
            "examples/s",
            "tokens/s",
            "GFLOP/s",
            "of matmul peak",
            "first loss",
        ],
        rows,
    )
    report.results = {"shapes": results, "model_shape": shape.to_dict()}
    report.note(
        "tokens/s counts input + target tokens (no prompt, no padding); FLOP/s counts the matmul "
        "FLOPs each implementation performs on padded shapes (bench/flops.py): PEFT runs the LM "
        "head on every position, softprompt only where a target token is predicted, and does not "
        "feed the last target token; "
        + (
            "it runs the [lead; P] prefix once per batch, and packs a batch's rows end to end (no "
            "padding) when that costs fewer FLOPs (FrozenLM.packs_rows; short rows of mixed "
            "lengths, as SST-2's). "
            if lm.shares_prefix()
            else "the prompt runs in every row here (no shared prefix on this device). "
        )
        + "The FLOP ratio PEFT/ours is "
        + ", ".join(f"{k}: {v['flop_ratio']:.2f}" for k, v in results.items())
        + "."
    )
    report.note(
        "Equal settings: same frozen model object, same initial prompt, same batches in the same "
        "order, same Adafactor (lr 0.3, weight decay 1e-5, decay_rate -0.8, no parameter "
        "scaling); first-loss columns should agree."
    )
    report.write(lm.device)
    return report.results


if __name__ == "__main__":
    main()
