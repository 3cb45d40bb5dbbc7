"""The KFP v2 components: one per stage, each a thin shell over softprompt.

Each body reads its inputs, calls one library function and writes its outputs and metadata.
KFP serializes each function's source into the component, so every body imports what it uses
(softprompt, from the project image; nothing is pip-installed at run time: install_kfp_package
is off because the image already has kfp). Artifacts between steps:

  prepare_data     -> spec: Artifact (the task spec's YAML), train_dev: Dataset (train.jsonl,
                      dev.jsonl, meta.json), test_set: Dataset; outputs dataset_version (the
                      data's DVC hash) and data_source (where it came from)
  lm_adapt_model   -> checkpoint: Model (a checkpoint dir load_frozen_lm reads)
  train_prompt     -> run: Model (a train run dir), metrics: Metrics, curve: HTML
  ensemble_prompts -> ensemble: Model (members/<i>/ copies of the runs + ensemble.json), metrics
  evaluate         -> metrics: Metrics, confusion: ClassificationMetrics, report: HTML,
                      summary: Artifact (JSON)
  register_prompt  -> registration: Artifact (the record), version, promoted

Metrics-type outputs also get their values written to their file: kfp.local's cache treats an
output whose file is missing as a miss.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.cluster import PROJECT_IMAGE


def component(func):
    """Every step runs from the project image, with nothing installed at run time."""
    return dsl.component(func, base_image=PROJECT_IMAGE, install_kfp_package=False)


@component
def prepare_data(
    task: str,
    task_spec: str,
    data_dir: str,
    data_repo: str,
    data_rev: str,
    data_remote: str,
    data_path: str,
    data_version: str,
    max_train_examples: int,
    max_dev_examples: int,
    max_test_examples: int,
    seed: int,
    spec: Output[Artifact],
    train_dev: Output[Dataset],
    test_set: Output[Dataset],
) -> NamedTuple("Prepared", [("dataset_version", str), ("data_source", dict)]):
    """Fetches the task's spec and data by version (softprompt.data_source), checks the data
    against the promised DVC hash, and writes the normalized examples: train/dev and test in
    separate artifacts, so training never sees test."""
    from collections import namedtuple

    from softprompt.data_source import DataRef, parse_spec_text, prepare, read_spec_text

    text, where = read_spec_text(task, task_spec)
    parsed = parse_spec_text(task, text, where)
    ref = DataRef(task=task, version=data_version, repo=data_repo, rev=data_rev,
                  remote=data_remote, path=data_path, data_dir=data_dir)
    caps = {"train": max_train_examples, "dev": max_dev_examples, "test": max_test_examples}
    info = prepare(parsed, ref, train_dev.path, test_set.path, caps, seed)
    with open(spec.path, "w", encoding="utf-8") as f:
        f.write(text)
    spec.metadata.update(task=task, spec_sha256=parsed.digest, source=where)
    for artifact, splits in ((train_dev, ("train", "dev")), (test_set, ("test",))):
        artifact.metadata.update({f"{s}_examples": info["counts"][s] for s in splits})
        artifact.metadata.update(task=task, dataset_version=info["dataset_version"],
                                 data_source=info["source"])
    train_dev.metadata["skipped_rows"] = info["skipped_rows"]
    print(f"task {task}: data {info['dataset_version']} ({info['source']}), "
          f"examples {info['counts']}")
    return namedtuple("Prepared", ["dataset_version", "data_source"])(
        info["dataset_version"], info["source"])


@component
def lm_adapt_model(
    base_model: str,
    corpus: str,
    data_dir: str,
    steps: int,
    lr: float,
    batch_size: int,
    max_tokens: int,
    seed: int,
    export_dir: str,
    checkpoint: Output[Model],
) -> str:
    """Prefix-LM adaptation of an encoder-decoder checkpoint (once per base checkpoint). Returns
    the path task pipelines take as `base_model`: `export_dir/<run>` when set (a shared volume
    every pod mounts), else the artifact's own path (one machine)."""
    params = dict(locals())  # the parameters as passed; the config reads those named after fields
    import logging

    from softprompt.settings import config_from_pipeline
    from softprompt.training.config import LMAdaptConfig
    from softprompt.training.lm_adaptation import adapt_and_export

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_pipeline(LMAdaptConfig, params)
    path, metadata = adapt_and_export(config, checkpoint.path, export_dir)
    checkpoint.metadata.update(metadata)
    return path


@component
def train_prompt(
    task: str,
    spec: Input[Artifact],
    train_dev: Input[Dataset],
    base_model: str,
    prompt_config: dict,
    prompt_length: int,
    recipe: str,
    optimizer: str,
    lr: float,
    batch_size: int,
    micro_batch_size: int,
    max_steps: int,
    max_minutes: float,
    eval_every: int,
    patience: int,
    eval_max_examples: int,
    eval_batch_size: int,
    max_input_tokens: int,
    checkpoint_root: str,
    run_key: str,
    run: Output[Model],
    metrics: Output[Metrics],
    curve: Output[HTML],
    num_gpus: int = 1,
):
    """Trains one prompt (one item of the ParallelFor: {"seed", "init", "init_text"}), logging
    one line per evaluation, and publishes its learning curve (HTML plot, and the dev scores in
    the run's metadata).

    An item with "seeds": [0, 1, 2] instead of "seed" trains one prompt per seed, all in one
    batch in this one pod (softprompt.training.prompt_group: on a launch-bound GPU N prompts
    cost about one run). The `run` artifact then holds the member runs in seed<S>/ (its metadata
    "members" lists their dirs, names and scores), which ensemble_prompts takes as it takes
    single runs. The curve then shows the members' mean check score.

    The run directory is where a retry looks for its checkpoint: with `checkpoint_root` set (a
    volume that outlives the pod) it is `checkpoint_root/run_key/<init>-seed<seed>` (a group:
    `<init>-seeds<s0>-<s1>...`), copied into the output artifact at the end; else it is the
    output artifact's path itself, which a retry on one machine (kfp.local: same run, same path)
    sees again. Either way training resumes from the last checkpoint instead of starting over."""
    params = dict(locals())  # the parameters as passed; the config reads those named after fields
    import json
    import logging
    import os
    import shutil

    from softprompt.data_source import read_spec
    from softprompt.prompt import prompt_config_from_item
    from softprompt.report import learning_curve_html, read_metrics_log
    from softprompt.settings import config_from_pipeline
    from softprompt.training.config import TrainConfig
    from softprompt.training.prompt_group import GROUP_DIR, train_group
    from softprompt.training.prompt_tuning import train

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    item = {k: v for k, v in prompt_config.items() if k != "seeds"}
    if "seeds" in prompt_config and "seed" in item:
        raise ValueError(f"prompt_configs item {prompt_config}: give seed or seeds, not both")
    prompt = prompt_config_from_item(item, prompt_length)
    # JSON numbers arrive as floats. A group's members go in seed<S>/; a single run is the root.
    seeds = [int(s) for s in prompt_config.get("seeds", [item.get("seed", 0)])]
    group = "seeds" in prompt_config
    # 0 reads as None for the optional fields (max_minutes, patience, eval_max_examples).
    configs = [config_from_pipeline(TrainConfig, params, prompt=prompt, seed=seed,
                                    prepared_dir=train_dev.path) for seed in seeds]
    name = f"{prompt.init}-seed{'s' * group}{'-'.join(map(str, seeds))}"
    run_dir = os.path.join(checkpoint_root, run_key, name) if checkpoint_root else run.path
    dirs = [f"seed{seed}" for seed in seeds] if group else [""]
    task_spec = read_spec(task, spec.path)
    if num_gpus > 1:  # torchrun on num_gpus GPUs, as a job of the cluster (components/trainjob/)
        from job_launch import train_on_cluster  # embedded in this step by components.pipelines

        if group:
            raise ValueError(f"prompt_configs item {prompt_config}: a group trains in one "
                             "process; run it with num_gpus=1")
        resumed = os.path.isfile(os.path.join(run_dir, "checkpoint.pt"))
        results = [train_on_cluster(configs[0], run_dir, spec.path, num_gpus)]
    elif group:
        resumed = os.path.isfile(os.path.join(run_dir, dirs[0], GROUP_DIR, "checkpoint.pt"))
        results = train_group(configs, [os.path.join(run_dir, d) for d in dirs], progress=False,
                              spec=task_spec)
    else:
        resumed = os.path.isfile(os.path.join(run_dir, "checkpoint.pt"))
        results = [train(configs[0], run_dir, progress=False, spec=task_spec)]
    if run_dir != run.path:
        shutil.copytree(run_dir, run.path, dirs_exist_ok=True)
    members = []
    for seed, member_dir, result in zip(seeds, dirs, results, strict=True):
        records = read_metrics_log(os.path.join(run.path, member_dir, "metrics.jsonl"))
        members.append({"dir": member_dir, "name": f"{prompt.init}-seed{seed}", "seed": seed,
                        "best_step": result["best_step"], "steps": result["steps"],
                        "dev_score": result["dev"]["score"],
                        "dev_curve": [[r["step"], r["score"]] for r in records
                                      if r.get("event") == "eval"]})
    shown = os.path.join(dirs[0], GROUP_DIR) if group else ""
    records = read_metrics_log(os.path.join(run.path, shown, "metrics.jsonl"))
    title = f"{task}: prompts {name} (mean check score)" if group else f"{task}: prompt {name}"
    with open(curve.path, "w", encoding="utf-8") as f:
        f.write(learning_curve_html(records, title))
    scores = [m["dev_score"] for m in members]
    run.metadata.update(name=name, init=prompt.init, base_model=base_model, resumed=resumed,
                        steps=results[0]["steps"], dev_score=sum(scores) / len(scores))
    if group:
        run.metadata.update(seeds=seeds, members=members)
        values = {f"dev_score_seed{m['seed']}": m["dev_score"] for m in members}
        values.update({f"best_step_seed{m['seed']}": m["best_step"] for m in members},
                      dev_score=run.metadata["dev_score"],
                      train_seconds=results[0]["group"]["train_seconds_shared"])
    else:
        run.metadata.update(seed=seeds[0], best_step=members[0]["best_step"],
                            dev_curve=members[0]["dev_curve"])
        values = {"dev_score": scores[0], "best_step": members[0]["best_step"],
                  "train_seconds": results[0]["train_seconds"]}
    for key, value in values.items():
        metrics.log_metric(key, value)
    with open(metrics.path, "w") as f:
        json.dump(values, f)


@component
def ensemble_prompts(
    task: str,
    spec: Input[Artifact],
    runs: Input[list[Model]],
    train_dev: Input[Dataset],
    base_model: str,
    max_input_tokens: int,
    eval_batch_size: int,
    ensemble: Output[Model],
    metrics: Output[Metrics],
):
    """Collects the N trained prompts into one ensemble and scores it on dev in one pass (each
    example replicated N times); every member's dev score comes from the same pass. A run from
    a grouped train step gives one member per seed."""
    import json
    import os

    from softprompt.data_source import read_spec
    from softprompt.evaluation import ensemble_on_dev
    from softprompt.model import load_frozen_lm
    from softprompt.prepared import load_prepared

    # A grouped train step's run holds its members' runs (metadata "members"): each is one.
    named = []
    for i, r in enumerate(runs):
        members = r.metadata.get("members") or [{"dir": "", "name": r.metadata.get("name", str(i))}]
        named.extend((os.path.join(r.path, m["dir"]), m["name"]) for m in members)
    summary = ensemble_on_dev(read_spec(task, spec.path), load_frozen_lm(base_model), named,
                              load_prepared(train_dev.path)["dev"], ensemble.path,
                              max_input_tokens, eval_batch_size)
    dev = summary["dev"]
    ensemble.metadata.update(n_prompts=len(named), best_member=summary["best_member"],
                             dev_ensemble_score=dev["ensemble"]["score"],
                             dev_average_score=dev["average"], dev_best_score=dev["best"])
    values = {"dev_ensemble": dev["ensemble"]["score"], "dev_average": dev["average"],
              "dev_best": dev["best"]}
    for member in summary["members"]:
        values[f"dev_prompt_{member['index']}"] = member["dev"]["score"]
    for key, value in values.items():
        metrics.log_metric(key, value)
    with open(metrics.path, "w") as f:
        json.dump(values, f)


@component
def evaluate(
    task: str,
    spec: Input[Artifact],
    ensemble: Input[Model],
    test_set: Input[Dataset],
    base_model: str,
    max_input_tokens: int,
    eval_batch_size: int,
    nearest_k: int,
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    summary: Output[Artifact],
):
    """Test scores of every prompt and of the ensemble (Metrics), the ensemble's confusion
    matrix (ClassificationMetrics), an HTML report with the scores and each prompt's nearest
    tokens, and the JSON summary (every dev/test score, the selected prompt) the register step
    gates on."""
    import json

    from softprompt.data_source import read_spec
    from softprompt.evaluation import ensemble_on_test
    from softprompt.model import load_frozen_lm
    from softprompt.prepared import load_prepared

    result = ensemble_on_test(read_spec(task, spec.path), load_frozen_lm(base_model),
                              ensemble.path, load_prepared(test_set.path)["test"],
                              max_input_tokens, eval_batch_size, nearest_k, base_model)
    for key, value in result.values.items():
        metrics.log_metric(key, value)
    with open(metrics.path, "w") as f:
        json.dump(result.values, f)
    confusion.log_confusion_matrix(result.labels, result.confusion)
    with open(confusion.path, "w") as f:
        json.dump({"categories": result.labels, "matrix": result.confusion}, f)
    with open(report.path, "w", encoding="utf-8") as f:
        f.write(result.html)
    with open(summary.path, "w") as f:
        json.dump(result.summary, f, indent=2)
    summary.metadata.update(selected_member=result.summary["selected"]["member"],
                            dev_selected=result.values["dev_selected"],
                            test_ensemble=result.values["test_ensemble"])


@component
def register_prompt(
    task: str,
    spec: Input[Artifact],
    ensemble: Input[Model],
    summary: Input[Artifact],
    registry_uri: str,
    alias: str,
    min_improvement: float,
    dataset_version: str,
    data_source: dict,
    code_version: str,
    registration: Output[Artifact],
) -> NamedTuple("Registration", [("version", int), ("promoted", bool)]):
    """Registers the ensemble's best prompt (by dev score) always; moves `alias` to it only if
    its dev score beats the alias's current prompt by more than `min_improvement` (or if the
    task has no such alias yet) and is not below the template alone's (zero-shot) dev score, by
    compare-and-swap (softprompt.registry.promotion)."""
    import json
    from collections import namedtuple

    from softprompt.data_source import read_spec
    from softprompt.registry import open_registry
    from softprompt.registry.promotion import register_selected

    with open(summary.path) as f:
        scores = json.load(f)
    # code_version '' -> the registry records the source's git commit (or the package version).
    record = register_selected(open_registry(registry_uri), scores, ensemble.path,
                               read_spec(task, spec.path), dataset_version or None,
                               data_source, code_version or None, alias, min_improvement)
    with open(registration.path, "w") as f:
        json.dump(record, f, indent=2, default=str)
    registration.metadata.update(
        {k: record[k] for k in ("registry_uri", "task", "version", "alias", "promoted",
                                "decision")},
        dev_score=scores["selected"]["dev"]["score"])
    if record["zero_shot_dev"] is not None:
        registration.metadata["zero_shot_dev"] = record["zero_shot_dev"]
    print(record["decision"])
    registered = namedtuple("Registration", ["version", "promoted"])
    return registered(record["version"], record["promoted"])
