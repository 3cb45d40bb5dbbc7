r"""Compiles both pipelines to YAML for upload to Kubeflow Pipelines (UI or API).

    python -m components.compile --out build/pipelines
    SOFTPROMPT_IMAGE=registry.example.com/softprompt@sha256:... \
        python -m components.compile --out build/pipelines

Writes prompt_tuning.yaml and lm_adaptation.yaml; the Kubernetes settings come from
`ClusterConfig` (flags below), the image from `components.cluster.PROJECT_IMAGE`.
"""

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from components.cluster import ClusterConfig
from components.pipelines import build_lm_adaptation_pipeline, build_prompt_tuning_pipeline

FILES = {
    "prompt_tuning.yaml": build_prompt_tuning_pipeline,
    "lm_adaptation.yaml": build_lm_adaptation_pipeline,
}


def compile_pipelines(out_dir: str | Path, cluster: ClusterConfig | None = None) -> list[Path]:
    """Writes the compiled pipelines into `out_dir`; returns their paths."""
    from kfp import compiler

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, build in FILES.items():
        path = out / name
        compiler.Compiler().compile(build(cluster or ClusterConfig()), str(path))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m components.compile",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default="build/pipelines", help="output folder")
    defaults = ClusterConfig()
    for f in fields(ClusterConfig):
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, tuple):
            parser.add_argument(flag, nargs=len(value), default=value, help=f.metadata["help"])
        else:
            parser.add_argument(flag, type=type(value), default=value, help=f.metadata["help"])
    args = parser.parse_args(argv)
    cluster = ClusterConfig(
        **{
            f.name: tuple(v) if isinstance(v := getattr(args, f.name), list) else v
            for f in fields(ClusterConfig)
        }
    )
    for path in compile_pipelines(args.out, cluster):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
