"""`python -m components.trainjob render`: one run's TrainJob or PyTorchJob as YAML, as committed
under infra/k8s/training/."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components.trainjob.job_spec import KINDS, JobSettings, TrainRun, manifest

EXAMPLE_FLAGS = ["--task=sst2", "--data-dir=/mnt/checkpoints/data", "--train-batch-size=32",
                 "--micro-batch-size=8", "--max-steps=2000", "--eval-every=100"]
HEADER = """\
# Written by
#   python -m components.trainjob {args}
# Change that command's options, not this file: tests/test_trainjob.py checks the two agree.
# {what}
# NODES x GPUS_PER_NODE processes, one torchrun per node; every step's batch is split over all
# of them and the prompt gradient all-reduced, so the result matches one process on the same
# batch. The train batch size must be a multiple of micro-batch x processes.
# A run directory that holds checkpoint.pt is resumed: after a failure, delete the job and
# apply it again.
"""
WHAT = {"TrainJob": "Kubeflow Trainer v2.2+ (ClusterTrainingRuntime torch-distributed): "
                    "kubectl apply -k infra/k8s/training",
        "PyTorchJob": "Training Operator v1 (older clusters): "
                      "kubectl apply -k infra/k8s/training/pytorchjob"}


def render(run: TrainRun, settings: JobSettings, command: str) -> str:
    """The job's YAML, under a header naming the `command` that wrote it."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data) -> bool:  # repeated pod templates written out in full
            return True

    text = yaml.dump(manifest(run, settings), Dumper=Dumper, sort_keys=False, width=100)
    return HEADER.format(args=command, what=WHAT[settings.kind]) + text


def main(argv: list[str] | None = None) -> int:
    from components.cluster import ClusterConfig

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m components.trainjob",
                                     description="Multi-GPU training jobs as YAML.")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="write the TrainJob or PyTorchJob of one run",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--kind", choices=KINDS, default="TrainJob")
    r.add_argument("--name", default="softprompt-train-sst2", help="the job's name")
    r.add_argument("--run-dir", default="/mnt/checkpoints/runs/sst2-ddp",
                   help="on the checkpoint volume; an existing run there is resumed")
    r.add_argument("--nodes", type=int, default=2)
    r.add_argument("--gpus-per-node", type=int, default=1)
    r.add_argument("--image", default="softprompt",
                   help="the kustomization's images: entry replaces the name softprompt")
    r.add_argument("--out", default="-", help="output file ('-': stdout)")
    r.add_argument("train_flags", nargs="*", metavar="FLAG",
                   help="`softprompt train` flags, after `--` (default: "
                   f"{' '.join(EXAMPLE_FLAGS)})")
    args = parser.parse_args(argv)
    settings = ClusterConfig().job_settings(image=args.image, kind=args.kind)
    run = TrainRun(args.name, args.run_dir, args.train_flags or EXAMPLE_FLAGS, args.nodes,
                   args.gpus_per_node)
    text = render(run, settings, " ".join(argv))
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0

