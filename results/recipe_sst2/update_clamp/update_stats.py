"""`softprompt train` with Adafactor's per-step update statistics written to $DIAG_LOG.

The runs in this folder were made with it:

    DIAG_LOG=F DIAG_MODE=base|clamp DIAG_CLAMP=2.0 OMP_NUM_THREADS=T \
        .venv/bin/python results/recipe_sst2/update_clamp/update_stats.py train --task sst2 ...

Each line of the log is one optimizer step of the 2-D prompt: the normalized update's RMS and
largest entry before Adafactor's RMS clip (raw_rms, raw_max, in units of lr), the largest entry
after the clip and the optional per-entry bound (clipped_max), and the gradient's RMS. The step
is softprompt.training.adafactor's for a 2-D parameter without a first moment, with the bound
placed where the library's `update_clamp` is (the clamp runs' first 40 losses equal those of
`softprompt train` with the stable recipe's update_clamp 2.0).
"""

import json
import math
import os
import sys

from softprompt import cli
from softprompt.training import adafactor as af

MODE = os.environ.get("DIAG_MODE", "base")  # base: the plain update; clamp: entries bounded
BOUND = float(os.environ.get("DIAG_CLAMP", "2.0"))


def _update(self, p, group, log):
    grad = p.grad
    state = self.state[p]
    if not state:
        af._init_state(state, grad, False)
    state["step"] += 1
    lr = group["lr"]
    beta2t = 1.0 - math.pow(state["step"], group["decay_rate"])
    squared = grad**2 + group["eps"][0]
    row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
    row.mul_(beta2t).add_(squared.mean(dim=-1), alpha=1.0 - beta2t)
    col.mul_(beta2t).add_(squared.mean(dim=-2), alpha=1.0 - beta2t)
    row_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1)
    update = row_factor.mul(col.unsqueeze(-2).rsqrt()).mul_(grad)  # [P, E], units of lr
    raw_rms = float(af.member_rms(update).max())
    raw_max = float(update.abs().max())
    update.div_((af.member_rms(update) / group["clip_threshold"]).clamp_(min=1.0))
    if MODE == "clamp":
        update.clamp_(-BOUND, BOUND)
    record = {
        "step": state["step"],
        "raw_rms": round(raw_rms, 4),
        "raw_max": round(raw_max, 3),
        "clipped_max": round(float(update.abs().max()), 3),
        "grad_rms": float(grad.pow(2).mean().sqrt()),
        "lr": lr,
    }
    log.write(json.dumps(record) + "\n")
    log.flush()
    update.mul_(lr)
    if group["weight_decay"] != 0:
        p.add_(p, alpha=-group["weight_decay"] * lr)
    p.add_(-update)


if __name__ == "__main__":
    with open(os.environ["DIAG_LOG"], "w") as stats:
        af.Adafactor._update = lambda self, p, group: _update(self, p, group, stats)
        sys.exit(cli.main(sys.argv[1:]))
