"""Kubeflow Pipelines (KFP v2) components and pipelines over softprompt.

- components.steps: one component per stage (prepare, LM-adapt, train, ensemble, evaluate, register)
- components.pipelines: the LM-adaptation and prompt-tuning pipelines
- components.compile: `python -m components.compile --out build/pipelines` (YAML for upload)
- components.runner: run_prompt_tuning / run_lm_adaptation, locally (kfp.local) or on Kubeflow
"""
