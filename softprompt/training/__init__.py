"""Training: one loop (loop.py) and the methods that use it.

- prompt_tuning: `train`, the [P, E] prompt on a frozen LM (the paper's method);
- model_tuning: `model_tune`, every weight of a copy of the model (the paper's baseline);
- lm_adaptation: `lm_adapt`, continued prefix-LM training of a T5 checkpoint (section 3.1).

Each says what trains and what scores it; config.py holds their configs, optim.py the
optimizers, recipe.py prompt tuning's default settings (lr relative to the embedding's scale,
warmup, update bound, first moment, norm cap, moving average), selection.py how a run chooses
its prompt, batching.py length buckets, progress.py the metrics log and progress lines.
"""
