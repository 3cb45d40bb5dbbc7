"""The two pipelines: LM adaptation (once per base checkpoint) and prompt tuning (per task).

prompt-tuning:
  prepare_data -> ParallelFor(prompt_configs): train_prompt [GPU pool]
               -> ensemble_prompts(Collected runs) -> evaluate -> register_prompt (quality gate)
lm-adaptation:
  lm_adapt_model [GPU pool] -> the checkpoint path that task pipelines take as `base_model`

The same pipeline objects run on a Kubeflow cluster (compiled YAML, `components.compile`) and on
one machine (kfp.local, `components.runner`); the Kubernetes settings (GPU, node pool, volume)
are no-ops locally. Caching and retries are set per step:

  step        cache  retries  why
  prepare     on     0        deterministic in its parameters (pin data_version to key new data);
                              a missing revision or object, or a hash mismatch, must fail at once
                              (the S3 client retries transient network errors itself)
  lm-adapt    on     2        expensive and deterministic; a retry starts over (no resume)
  train       on     3        preemptible GPU pods; a retry resumes from the run's checkpoint.pt
  ensemble    on     2        deterministic given the runs; recomputed if preempted
  evaluate    on     2        deterministic given the ensemble
  register    off    0        side effects: must read the registry's current alias every run, and
                              a blind retry after a publish would register a duplicate version

The parameters that are config fields take their defaults from the dataclasses (TrainConfig,
LMAdaptConfig; help in their field metadata), an optional field's None as 0 (0 = none, all or
never below). A step receives the pipeline parameters named as its inputs.

prompt-tuning parameters:
  task: the task's name (the registry's name for it).
  task_spec: the task spec: its YAML text, or a URI/path to it (s3://..., file://...);
      '' = tasks/<task>.yaml in the image (the embedded default).
  base_model: offline short name (smollm2-135m, gemma3-270m), hub name, or a checkpoint dir,
      e.g. the `model_path` output of the LM-adaptation pipeline (on the checkpoint volume).
  prompt_configs: one prompt per item, trained in parallel: {"seed": int,
      "init": class_label | sampled_vocab | random_uniform | text, "init_text": str}. An item
      with "seeds": [int, ...] instead of "seed" trains those prompts in one batch in one pod
      (softprompt.training.prompt_group: about one run's cost where launches bound the GPU step).
  num_gpus: GPUs per prompt; above 1 the train step runs the prompt as a Kubeflow Trainer job
      (TrainJob, or PyTorchJob on older clusters; components/trainjob/) over that many GPUs.
  prompt_length: P, prompt vectors per prompt (paper: 100; 20 is cheap and close).
  recipe: stable | paper: the default lr, warmup, batch and norm cap (softprompt.training.recipe).
  optimizer, lr: adafactor | adamw | sgd, and its learning rate (0 = the recipe's).
  batch_size, micro_batch_size: examples per optimizer step (0 = the recipe's), and per forward.
  max_steps, max_minutes: step budget, and wall-clock budget per prompt (0 = none).
  eval_every, patience, eval_max_examples: dev evaluation every K steps on at most this many dev
      examples (0 = all); stop after `patience` evaluations without a new best (0 = never).
  max_input_tokens, eval_batch_size: input truncation (keeps the end) and scoring batch size.
  data_repo, data_rev: a DVC repository (git URL) and git revision: the data is its DVC-tracked
      folder data_path at that revision ('' rev = HEAD).
  data_remote: a DVC remote (s3://bucket/dvc): the data is the folder whose DVC hash is
      data_version, fetched by hash with no git access (data_rev, data_path: where that hash was
      read, for lineage and errors).
  data_path: the DVC-tracked folder in the repository ('' = data/<task>).
  data_version: the data folder's DVC hash (<md5>.dir), checked against the bytes read from any
      source (required with data_remote; '' = not checked, recorded as read). Also part of the
      prepare step's cache key: pin it (or a commit as data_rev) so new data is never cached.
  data_dir: with no DVC source, the local data folder holding <task>/ ('' = the image's
      $SOFTPROMPT_DATA_DIR; the embedded default).
  max_train_examples, max_dev_examples, max_test_examples, data_seed: seeded subsets (0 = all).
  checkpoint_root: where training checkpoints live so a preempted step resumes (the checkpoint
      volume); '' keeps them in the output artifact (one machine).
  registry_uri, alias, min_improvement: the registry; the alias moves to the new prompt only if
      its dev score beats the alias's current prompt by more than min_improvement.
  code_version: git sha recorded in the manifest.
  nearest_k: nearest vocabulary tokens per prompt vector in the report.

lm-adaptation parameters:
  base_model: required: the encoder-decoder checkpoint, a directory the pod can read (e.g. a T5
      1.1 checkpoint copied to the checkpoint volume; the image is offline, so hub names fail
      early unless the hub is reachable); decoder-only models need no adaptation.
  corpus: unlabeled text: a .txt file (one document per line) or a task name whose train inputs
      are used (the paper used C4).
  data_dir: the raw data location when corpus is a task name ('' = the image's default).
  steps, lr, batch_size, max_tokens, seed: prefix-LM training (paper: 100K steps).
  export_dir: a folder on the checkpoint volume that the adapted checkpoint is copied to, so task
      pipelines can load it as base_model ('' = the artifact's own path; one machine).
"""

import functools
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Artifact, Metrics, Model

from components import trainjob
from components.cluster import CHECKPOINT_MOUNT, DEFAULT_REGISTRY_URI, PROJECT_IMAGE, ClusterConfig
from components.steps import (
    ensemble_prompts,
    evaluate,
    lm_adapt_model,
    prepare_data,
    register_prompt,
    train_prompt,
)
from softprompt.settings import pipeline_defaults
from softprompt.training.config import LMAdaptConfig, TrainConfig

PROMPT_TUNING_NAME = "softprompt-prompt-tuning"
LM_ADAPTATION_NAME = "softprompt-lm-adaptation"
DEFAULT_PROMPT_CONFIGS = [
    {"seed": 0, "init": "class_label"},
    {"seed": 1, "init": "class_label"},
    {"seed": 2, "init": "sampled_vocab"},
]
# Defaults by pipeline parameter name (TRAIN.base_model, TRAIN.prompt_length, ...).
TRAIN = pipeline_defaults(TrainConfig)
LM_ADAPT = pipeline_defaults(LMAdaptConfig)


class PromptTuningOutputs(NamedTuple):
    registration: Artifact  # the registry record: version, alias decision, manifest
    report: HTML
    metrics: Metrics
    ensemble: Model


class LMAdaptationOutputs(NamedTuple):
    checkpoint: Model
    model_path: str  # what prompt-tuning runs take as base_model


def _on_gpu_pool(task: dsl.PipelineTask, cluster: ClusterConfig,
                 retries: int) -> dsl.PipelineTask:
    """A model step: one GPU, scheduled onto the tainted GPU pool, the checkpoint volume mounted."""
    task.set_accelerator_type(cluster.accelerator_type)
    task.set_accelerator_limit(cluster.accelerator_limit)
    task.set_cpu_request(cluster.cpu_request).set_memory_request(cluster.memory_request)
    task.set_retry(num_retries=retries, backoff_duration="60s", backoff_factor=2.0,
                   backoff_max_duration="900s")
    label, value = cluster.node_selector
    kubernetes.add_node_selector(task, label_key=label, label_value=value)
    key, value, effect = cluster.toleration
    kubernetes.add_toleration(task, key=key, operator="Equal", value=value, effect=effect)
    kubernetes.mount_pvc(task, pvc_name=cluster.checkpoint_pvc, mount_path=CHECKPOINT_MOUNT)
    return task


def _step(component, params: dict, **inputs) -> dsl.PipelineTask:
    """Runs `component` on the pipeline parameters named as its inputs, then `inputs` (the
    other steps' outputs, and parameters under another name)."""
    names = component.component_spec.inputs or {}
    return component(**{n: params[n] for n in names if n in params}, **inputs)


@functools.cache
def _train_step():
    """train_prompt with the job launcher embedded (components/trainjob's job_spec.py and
    job_launch.py, importable by their bare names in the step), from the project image with
    nothing installed, as components.steps.component makes it.

    With num_gpus > 1 the step itself launches the prompt's training as a TrainJob and waits
    for it, because KFP cannot branch to a separate light launcher step here: dsl.If/dsl.Else
    inside the ParallelFor needs dsl.OneOf to merge the two branches' runs, and dsl.Collected
    refuses a OneOf ("dsl.OneOf cannot be used inside of dsl.Collected"); the branches wrapped
    in a sub-pipeline returning the OneOf compile, but kfp.local cannot resolve a sub-pipeline's
    OneOf artifact ("Expected 1 artifact in ArtifactSelectorSpec"). The step keeps its own GPU
    while it waits: KFP fixes a step's resources when the pipeline compiles."""
    # The archive is built here, so the folder holds only the modules the step imports (no
    # __pycache__, no CLI) for as long as it takes.
    with tempfile.TemporaryDirectory(prefix="softprompt-trainjob-") as folder:
        for name in trainjob.EMBEDDED:
            shutil.copyfile(Path(trainjob.__file__).parent / name, Path(folder) / name)
        return dsl.component(train_prompt.python_func, base_image=PROJECT_IMAGE,
                             install_kfp_package=False, embedded_artifact_path=folder)


def _prompt_tuning_steps(cluster: ClusterConfig, params: dict) -> PromptTuningOutputs:
    """The prompt-tuning steps, wired; `params` are the pipeline's parameters by name."""
    prepare = _step(prepare_data, params, seed=params["data_seed"])
    prepare.set_display_name("prepare data").set_caching_options(enable_caching=True)
    spec, train_dev = prepare.outputs["spec"], prepare.outputs["train_dev"]

    with dsl.ParallelFor(params["prompt_configs"], name="prompts") as prompt_config:
        train = _step(_train_step(), params, spec=spec, train_dev=train_dev,
                      prompt_config=prompt_config, run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        train.set_display_name("train prompt")
        _on_gpu_pool(train, cluster, retries=cluster.train_retries)
        train.set_caching_options(enable_caching=True)
        # Where a run with num_gpus > 1 sends its training job (components/trainjob/).
        train.set_env_variable(trainjob.SETTINGS_ENV, cluster.job_settings().to_json())

    ensemble = _step(ensemble_prompts, params, spec=spec, train_dev=train_dev,
                     runs=dsl.Collected(train.outputs["run"]))
    ensemble.set_display_name("ensemble")
    _on_gpu_pool(ensemble, cluster, retries=2).set_caching_options(enable_caching=True)

    evaluation = _step(evaluate, params, spec=spec, ensemble=ensemble.outputs["ensemble"],
                       test_set=prepare.outputs["test_set"])
    evaluation.set_display_name("evaluate")
    _on_gpu_pool(evaluation, cluster, retries=2).set_caching_options(enable_caching=True)

    register = _step(register_prompt, params, spec=spec, ensemble=ensemble.outputs["ensemble"],
                     summary=evaluation.outputs["summary"],
                     dataset_version=prepare.outputs["dataset_version"],
                     data_source=prepare.outputs["data_source"])
    register.set_display_name("register (quality gate)").set_caching_options(enable_caching=False)

    return PromptTuningOutputs(register.outputs["registration"], evaluation.outputs["report"],
                               evaluation.outputs["metrics"], ensemble.outputs["ensemble"])


def build_prompt_tuning_pipeline(cluster: ClusterConfig | None = None):
    """The prompt-tuning pipeline with `cluster`'s Kubernetes settings compiled in."""
    cluster = cluster or ClusterConfig()

    @dsl.pipeline(
        name=PROMPT_TUNING_NAME,
        description="Prompt tuning (Lester et al. 2021) for one task: N prompts in parallel on the "
        "GPU pool, their ensemble, evaluation, and registration behind a quality gate on the dev "
        "metric.",
    )
    def prompt_tuning(
        task: str = TRAIN.task,
        task_spec: str = "",
        base_model: str = TRAIN.base_model,
        prompt_configs: list = DEFAULT_PROMPT_CONFIGS,
        prompt_length: int = TRAIN.prompt_length,
        recipe: str = TRAIN.recipe,
        optimizer: str = TRAIN.optimizer,
        lr: float = TRAIN.lr,
        batch_size: int = TRAIN.batch_size,
        micro_batch_size: int = TRAIN.micro_batch_size,
        max_steps: int = TRAIN.max_steps,
        max_minutes: float = TRAIN.max_minutes,
        eval_every: int = TRAIN.eval_every,
        patience: int = TRAIN.patience,
        eval_max_examples: int = TRAIN.eval_max_examples,
        max_input_tokens: int = TRAIN.max_input_tokens,
        eval_batch_size: int = TRAIN.eval_batch_size,
        data_repo: str = "",
        data_rev: str = "",
        data_remote: str = "",
        data_path: str = "",
        data_version: str = "",
        data_dir: str = "",
        max_train_examples: int = 0,
        max_dev_examples: int = 0,
        max_test_examples: int = 0,
        data_seed: int = 0,
        checkpoint_root: str = CHECKPOINT_MOUNT + "/prompt-runs",
        num_gpus: int = 1,
        registry_uri: str = DEFAULT_REGISTRY_URI,
        alias: str = "production",
        min_improvement: float = 0.0,
        code_version: str = "",
        nearest_k: int = 5,
    ) -> PromptTuningOutputs:
        """One task's prompts, ensemble, evaluation and registration (parameters: the module
        docstring)."""
        return _prompt_tuning_steps(cluster, dict(locals()))

    return prompt_tuning


def build_lm_adaptation_pipeline(cluster: ClusterConfig | None = None):
    """The LM-adaptation pipeline with `cluster`'s Kubernetes settings compiled in."""
    cluster = cluster or ClusterConfig()

    @dsl.pipeline(
        name=LM_ADAPTATION_NAME,
        description="LM adaptation of an encoder-decoder checkpoint with the prefix-LM objective "
        "(run once per base checkpoint); its model_path output is the base_model of every "
        "prompt-tuning run.",
    )
    def lm_adaptation(
        base_model: str,
        corpus: str = "sst2",
        data_dir: str = LM_ADAPT.data_dir,
        steps: int = LM_ADAPT.steps,
        lr: float = LM_ADAPT.lr,
        batch_size: int = LM_ADAPT.batch_size,
        max_tokens: int = LM_ADAPT.max_tokens,
        seed: int = LM_ADAPT.seed,
        export_dir: str = CHECKPOINT_MOUNT + "/base-models",
    ) -> LMAdaptationOutputs:
        """One checkpoint's prefix-LM adaptation (parameters: the module docstring)."""
        adapt = _step(lm_adapt_model, dict(locals()))
        adapt.set_display_name("LM-adapt")
        _on_gpu_pool(adapt, cluster, retries=2).set_caching_options(enable_caching=True)
        return LMAdaptationOutputs(adapt.outputs["checkpoint"], adapt.outputs["Output"])

    return lm_adaptation


prompt_tuning_pipeline = build_prompt_tuning_pipeline()
lm_adaptation_pipeline = build_lm_adaptation_pipeline()
