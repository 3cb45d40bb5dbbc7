"""The KFP v2 components: one per stage, each a thin shell over softprompt.

KFP serializes each function's source into the component, so every body imports what it uses
(softprompt, from the project image; nothing is pip-installed at run time: install_kfp_package is
off because the image already has kfp). Artifacts between steps:

  prepare_data    -> train_dev: Dataset (train.jsonl, dev.jsonl, meta.json), test_set: Dataset
  lm_adapt_model  -> checkpoint: Model (a checkpoint dir load_frozen_lm reads)
  train_prompt    -> run: Model (a train run dir: config.json, metrics.jsonl, checkpoint.pt,
                     prompt.safetensors, result.json), metrics: Metrics
  ensemble_prompts-> ensemble: Model (members/<i>/ copies of the runs + ensemble.json), metrics
  evaluate        -> metrics: Metrics, confusion: ClassificationMetrics, report: HTML, summary: Artifact (JSON)
  register_prompt -> registration: Artifact (the manifest), version, promoted

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
    data_dir: str,
    data_version: str,
    max_train_examples: int,
    max_dev_examples: int,
    max_test_examples: int,
    seed: int,
    train_dev: Output[Dataset],
    test_set: Output[Dataset],
) -> str:
    """Normalized examples of a task; train/dev and test in separate artifacts, so training
    never sees test. Caps > 0 keep a seeded random subset of that split. Returns the dataset
    version the registry records: the DVC hash (`<md5>.dir`) of the train/dev folder."""
    import random

    from softprompt.data_version import dataset_version
    from softprompt.tasks import TaskDataError, load_spec, load_task, write_prepared

    spec = load_spec(task)
    stats: dict = {}
    data = load_task(spec, data_dir or None, stats)
    for split in ("train", "dev", "test"):
        if split not in data:
            raise TaskDataError(f"task {spec.name} ({spec.spec_file}): no {split!r} split; the pipeline needs train, dev and test")
    caps = {"train": max_train_examples, "dev": max_dev_examples, "test": max_test_examples}
    for split, cap in caps.items():
        if cap < 0:
            raise ValueError(f"max_{split}_examples must be >= 0 (0 = all), got {cap}")
        if cap and len(data[split]) > cap:
            keep = sorted(random.Random(seed).sample(range(len(data[split])), cap))
            data[split] = [data[split][i] for i in keep]
    meta = write_prepared(spec, {"train": data["train"], "dev": data["dev"]}, train_dev.path, stats)
    write_prepared(spec, {"test": data["test"]}, test_set.path)
    version = dataset_version(train_dev.path)
    for artifact, splits in ((train_dev, ("train", "dev")), (test_set, ("test",))):
        artifact.metadata.update({f"{s}_examples": len(data[s]) for s in splits})
        artifact.metadata.update(task=spec.name, data_version=data_version or "unversioned")
    train_dev.metadata["dataset_version"] = version
    test_set.metadata["dataset_version"] = dataset_version(test_set.path)
    train_dev.metadata["skipped_rows"] = len(meta["skipped_rows"])
    return version


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
    import os
    import shutil

    from softprompt.lm_adapt import LMAdaptConfig, lm_adapt

    config = LMAdaptConfig(model=base_model, corpus=corpus, steps=steps, lr=lr, batch_size=batch_size,
                           max_tokens=max_tokens, seed=seed, data_dir=data_dir or None)
    summary = lm_adapt(config, checkpoint.path)
    checkpoint.metadata.update(base_model=base_model, objective="prefix_lm", steps=steps,
                               first_loss=summary["first_loss"], last_loss=summary["last_loss"])
    if not export_dir:
        return checkpoint.path
    name = f"{os.path.basename(base_model.rstrip('/'))}-lm-adapted-{steps}steps-seed{seed}"
    target = os.path.join(export_dir, name)
    shutil.copytree(checkpoint.path, target, dirs_exist_ok=True)
    checkpoint.metadata["exported_to"] = target
    return target


@component
def train_prompt(
    task: str,
    train_dev: Input[Dataset],
    base_model: str,
    prompt_config: dict,
    prompt_length: int,
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
):
    """Trains one prompt (one item of the ParallelFor: {"seed", "init", "init_text"}).

    The run directory is where a retry looks for `checkpoint.pt`: with `checkpoint_root` set (a
    volume that outlives the pod) it is `checkpoint_root/run_key/<init>-seed<seed>`, copied into
    the output artifact at the end; else it is the output artifact's path itself, which a retry
    on one machine (kfp.local: same run, same path) or on a FUSE-mounted pipeline root sees again.
    Either way train() resumes from the last checkpoint instead of starting over."""
    import json
    import os
    import shutil

    from softprompt.prompt import PromptConfig
    from softprompt.train import TrainConfig, train

    unknown = set(prompt_config) - {"seed", "init", "init_text"}
    if unknown:
        raise ValueError(f"prompt_configs item {prompt_config}: unknown keys {sorted(unknown)}; use seed, init, init_text")
    seed = int(prompt_config.get("seed", 0))  # JSON numbers arrive as floats
    init = str(prompt_config.get("init", "class_label"))
    config = TrainConfig(
        task=task, model=base_model,
        prompt=PromptConfig(length=prompt_length, init=init, init_text=prompt_config.get("init_text")),
        optimizer=optimizer, lr=lr, batch_size=batch_size, micro_batch_size=micro_batch_size, max_steps=max_steps,
        max_minutes=max_minutes or None, eval_every=eval_every, patience=patience or None,
        eval_max_examples=eval_max_examples or None, eval_batch_size=eval_batch_size, max_input_tokens=max_input_tokens, seed=seed,
        prepared_dir=train_dev.path,
    )
    name = f"{init}-seed{seed}"
    run_dir = os.path.join(checkpoint_root, run_key, name) if checkpoint_root else run.path
    resumed = os.path.isfile(os.path.join(run_dir, "checkpoint.pt"))
    result = train(config, run_dir, progress=False)
    if run_dir != run.path:
        shutil.copytree(run_dir, run.path, dirs_exist_ok=True)
    run.metadata.update(name=name, seed=seed, init=init, base_model=base_model, resumed=resumed,
                        best_step=result["best_step"], steps=result["steps"], dev_score=result["dev"]["score"])
    values = {"dev_score": result["dev"]["score"], "best_step": result["best_step"], "train_seconds": result["train_seconds"]}
    for key, value in values.items():
        metrics.log_metric(key, value)
    with open(metrics.path, "w") as f:
        json.dump(values, f)


@component
def ensemble_prompts(
    task: str,
    runs: Input[list[Model]],
    train_dev: Input[Dataset],
    base_model: str,
    max_input_tokens: int,
    eval_batch_size: int,
    ensemble: Output[Model],
    metrics: Output[Metrics],
):
    """Collects the N trained prompts into one ensemble and scores it on dev in one pass (each
    example replicated N times); every member's dev score comes from the same pass."""
    import json
    import os
    import shutil

    from softprompt.ensemble import ensemble_evaluate
    from softprompt.model import load_frozen_lm
    from softprompt.prompt import load_prompt
    from softprompt.scoring import encode_examples
    from softprompt.tasks import load_prepared, load_spec

    spec = load_spec(task)
    members, prompts = [], []
    for i, run in enumerate(runs):
        target = os.path.join(ensemble.path, "members", str(i))
        shutil.copytree(run.path, target, ignore=shutil.ignore_patterns("checkpoint.pt*"), dirs_exist_ok=True)
        prompts.append(load_prompt(os.path.join(target, "prompt.safetensors")))
        with open(os.path.join(target, "config.json")) as f:
            config = json.load(f)
        members.append({"index": i, "name": run.metadata.get("name", str(i)), "seed": config["seed"],
                        "init": config["prompt"]["init"], "dir": f"members/{i}"})
    dev = load_prepared(train_dev.path)["dev"]
    lm = load_frozen_lm(base_model)
    scores = ensemble_evaluate(lm, prompts, spec, dev, encode_examples(lm, dev, max_input_tokens), batch_size=eval_batch_size)
    for member, member_scores in zip(members, scores["per_prompt"], strict=True):
        member["dev"] = member_scores
    best = max(range(len(members)), key=lambda i: scores["per_prompt"][i]["score"])  # first maximum wins ties
    summary = {"task": spec.name, "metric": spec.metric, "base_model": base_model, "members": members, "best_member": best,
               "dev": {"ensemble": scores["ensemble"], "average": scores["average"], "best": scores["best"], "ties": scores["ties"]}}
    with open(os.path.join(ensemble.path, "ensemble.json"), "w") as f:
        json.dump(summary, f, indent=2)
    ensemble.metadata.update(n_prompts=len(members), best_member=best, dev_ensemble_score=scores["ensemble"]["score"],
                             dev_average_score=scores["average"], dev_best_score=scores["best"])
    values = {"dev_ensemble": scores["ensemble"]["score"], "dev_average": scores["average"], "dev_best": scores["best"]}
    for i, member_scores in enumerate(scores["per_prompt"]):
        values[f"dev_prompt_{i}"] = member_scores["score"]
    for key, value in values.items():
        metrics.log_metric(key, value)
    with open(metrics.path, "w") as f:
        json.dump(values, f)


@component
def evaluate(
    task: str,
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
    """Test scores of every prompt and of the ensemble (Metrics), the ensemble's confusion matrix
    (ClassificationMetrics), an HTML report with the scores and each prompt's nearest tokens, and
    the JSON summary (every dev/test score, the selected prompt) the register step gates on."""
    import html
    import json
    import os

    from softprompt.ensemble import ensemble_evaluate
    from softprompt.interpret import nearest_tokens
    from softprompt.model import load_frozen_lm
    from softprompt.prompt import load_prompt
    from softprompt.scoring import encode_examples
    from softprompt.tasks import load_prepared, load_spec

    spec = load_spec(task)
    with open(os.path.join(ensemble.path, "ensemble.json")) as f:
        result = json.load(f)
    members = result["members"]
    prompts = [load_prompt(os.path.join(ensemble.path, m["dir"], "prompt.safetensors")) for m in members]
    test = load_prepared(test_set.path)["test"]
    lm = load_frozen_lm(base_model)
    scores = ensemble_evaluate(lm, prompts, spec, test, encode_examples(lm, test, max_input_tokens), batch_size=eval_batch_size)
    for member, member_scores in zip(members, scores["per_prompt"], strict=True):
        member["test"] = member_scores
    best = result["best_member"]
    result["test"] = {"ensemble": scores["ensemble"], "average": scores["average"], "best": scores["best"], "ties": scores["ties"]}
    result["selected"] = {"member": best, "dev": members[best]["dev"], "test": members[best]["test"]}

    values = {"test_ensemble": scores["ensemble"]["score"], "test_average": scores["average"], "test_best": scores["best"],
              "test_selected": members[best]["test"]["score"], "dev_selected": members[best]["dev"]["score"],
              "dev_ensemble": result["dev"]["ensemble"]["score"]}
    for i, member_scores in enumerate(scores["per_prompt"]):
        values[f"test_prompt_{i}"] = member_scores["score"]
    for key, value in values.items():
        metrics.log_metric(key, value)
    with open(metrics.path, "w") as f:
        json.dump(values, f)

    words = spec.label_words
    matrix = [[0] * len(words) for _ in words]
    for example, predicted in zip(test, scores["predictions"], strict=True):
        matrix[words.index(example.target)][words.index(predicted)] += 1
    confusion.log_confusion_matrix(words, matrix)
    with open(confusion.path, "w") as f:
        json.dump({"categories": words, "matrix": matrix}, f)

    esc = html.escape
    rows = []
    for m in members:
        mark = " (registered)" if m["index"] == best else ""
        rows.append(f"<tr><td>{m['index']}{mark}</td><td>{esc(m['init'])}</td><td>{m['seed']}</td>"
                    f"<td>{m['dev']['score']:.4f}</td><td>{m['test']['score']:.4f}</td></tr>")
    for label, key in (("ensemble (majority vote)", "ensemble"), ("average of prompts", "average"), ("best prompt", "best")):
        dev_value = result["dev"][key]["score"] if key == "ensemble" else result["dev"][key]
        test_value = result["test"][key]["score"] if key == "ensemble" else result["test"][key]
        rows.append(f"<tr><th colspan='3'>{label}</th><td>{dev_value:.4f}</td><td>{test_value:.4f}</td></tr>")
    head = "".join(f"<th>{esc(w)}</th>" for w in words)
    cm_rows = "".join(f"<tr><th>{esc(w)}</th>{''.join(f'<td>{c}</td>' for c in row)}</tr>" for w, row in zip(words, matrix, strict=True))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>softprompt evaluation</title></head><body>",
        f"<h1>{esc(spec.name)}: {len(members)} prompts on {esc(base_model)}</h1>",
        f"<p>Metric: {esc(spec.metric)} (score). Dev: {members[0]['dev']['n']} examples; "
        f"test: {len(test)} examples. Ensemble ties broken by {esc(scores['tie_break'])}.</p>",
        "<h2>Scores</h2><table border='1' cellpadding='3'><tr><th>prompt</th><th>init</th><th>seed</th><th>dev</th><th>test</th></tr>",
        *rows, "</table>",
        f"<h2>Ensemble confusion matrix (test; rows: gold, columns: predicted)</h2><table border='1' cellpadding='3'><tr><th></th>{head}</tr>{cm_rows}</table>",
    ]
    for m, prompt in zip(members, prompts, strict=True):
        neighbours = nearest_tokens(lm, prompt, k=nearest_k)
        cells = "".join(
            f"<tr><td>{p}</td>{''.join(f'<td><code>{esc(repr(tok))}</code> {sim:.3f}</td>' for tok, sim in row)}</tr>"
            for p, row in enumerate(neighbours)
        )
        parts.append(f"<h2>Prompt {m['index']} ({esc(m['init'])}, seed {m['seed']}): {nearest_k} nearest tokens by cosine</h2>"
                     f"<table border='1' cellpadding='3'><tr><th>position</th>{''.join(f'<th>#{i + 1}</th>' for i in range(nearest_k))}</tr>{cells}</table>")
    parts.append("</body></html>\n")
    with open(report.path, "w") as f:
        f.write("\n".join(parts))
    with open(summary.path, "w") as f:
        json.dump(result, f, indent=2)
    summary.metadata.update(selected_member=best, dev_selected=values["dev_selected"], test_ensemble=values["test_ensemble"])


@component
def register_prompt(
    task: str,
    ensemble: Input[Model],
    summary: Input[Artifact],
    registry_uri: str,
    alias: str,
    min_improvement: float,
    dataset_version: str,
    code_version: str,
    registration: Output[Artifact],
) -> NamedTuple("Registration", [("version", int), ("promoted", bool)]):
    """Registers the ensemble's best prompt (by dev score) always; moves `alias` to it only if its
    dev score beats the prompt the alias points at by more than `min_improvement` (or if the task
    has no such alias yet). The alias moves by compare-and-swap, so a concurrent promotion is
    never overwritten silently."""
    import json
    import os
    from collections import namedtuple

    from softprompt.prompt import load_prompt
    from softprompt.registry import NotFoundError, lineage_from_run, open_registry

    with open(summary.path) as f:
        scores = json.load(f)
    best = scores["selected"]["member"]
    member_dir = os.path.join(ensemble.path, scores["members"][best]["dir"])
    # code_version '' -> the registry records the source's git commit (or the package version).
    lineage = lineage_from_run(member_dir, dataset_version=dataset_version or None, code_version=code_version or None)
    # dev/test from the evaluation passes (whole prepared splits), replacing training's dev subset.
    lineage["metrics"].update(
        dev=scores["selected"]["dev"], test=scores["selected"]["test"],
        ensemble={"n_prompts": len(scores["members"]), "dev": scores["dev"]["ensemble"], "test": scores["test"]["ensemble"]},
    )
    name = lineage["task"]  # the spec's name: `task` may be a spec path
    reg = open_registry(registry_uri)
    new_score = scores["selected"]["dev"]["score"]
    try:
        current = reg.manifest(name, alias)
    except NotFoundError:
        current = None  # no prompt behind the alias yet: the first one is promoted
    manifest = reg.publish(name, load_prompt(os.path.join(member_dir, "prompt.safetensors")), lineage)
    current_score = current.metrics.get("dev", {}).get("score") if current is not None else None
    promoted = current_score is None or new_score > current_score + min_improvement
    if promoted:
        reg.promote(name, alias, manifest.version, expected_version=current.version if current is not None else None)
    if current is None:
        against = f"{alias} had no prompt"
    elif current_score is None:
        against = f"{alias} v{current.version} has no dev score"
    else:
        against = f"{alias} v{current.version} dev {current_score:.4f} + min_improvement {min_improvement}"
    decision = f"{'promoted' if promoted else 'kept'} {alias} {'to' if promoted else 'at'} v{manifest.version if promoted else current.version}: " \
               f"new v{manifest.version} dev {new_score:.4f} vs {against}"
    record = {"registry_uri": registry_uri, "task": name, "version": manifest.version, "alias": alias, "promoted": promoted,
              "decision": decision, "previous": None if current is None else {"version": current.version, "dev_score": current_score},
              # the registry's layout, the same on every backend
              "manifest_uri": f"{registry_uri.rstrip('/')}/prompts/{name}/{manifest.version}/manifest.json",
              "manifest": manifest.to_dict()}
    with open(registration.path, "w") as f:
        json.dump(record, f, indent=2, default=str)
    registration.metadata.update(registry_uri=registry_uri, task=name, version=manifest.version, alias=alias,
                                 promoted=promoted, decision=decision, dev_score=new_score)
    print(decision)
    return namedtuple("Registration", ["version", "promoted"])(manifest.version, promoted)
