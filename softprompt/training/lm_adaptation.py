"""LM adaptation of encoder-decoder checkpoints (Lester et al. 2021, section 3.1).

T5 checkpoints are pre-trained on span corruption: they never saw natural text as output, and
frozen, they make poor prompt-tuning bases. LM adaptation continues their self-supervised
training for a while with the prefix-LM objective: a natural-text prefix goes into the encoder
and the decoder produces its continuation. The result is a new checkpoint, adapted once and then
frozen and reused by every task (load it with `load_frozen_lm(out_dir)`). The training itself is
the shared loop (softprompt.training.loop), without evaluation.

The paper's two alternatives need no new checkpoint:
- "span corruption": prompt-tune the original checkpoint as is;
- "span corruption + sentinel": the same, with a sentinel before every target
  (`TrainConfig(target_prefix="<extra_id_0> ")`), so targets look like pre-training outputs.

Decoder-only models (SmolLM2, Gemma 3) were pre-trained on exactly the LM objective: they need no
adaptation, and `lm_adapt` refuses them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from softprompt.fileio import atomic_write
from softprompt.model import OFFLINE_MODELS, Batch, load_frozen_lm
from softprompt.prompt_design import empty_prompt
from softprompt.scoring import lm_loss
from softprompt.task_data import load_task
from softprompt.tasks import load_spec
from softprompt.training import loop
from softprompt.training.config import LMAdaptConfig
from softprompt.training.model_tuning import trainable_copy  # one way to unfreeze a model
from softprompt.training.optim import make_optimizer
from softprompt.training.progress import MetricsLog

DECODER_ONLY_MESSAGE = (
    "{model} is a decoder-only model: it was pre-trained with the language-modelling objective "
    "already and needs no LM adaptation; prompt-tune it directly"
)


def read_corpus(corpus: str, data_dir: str | None = None) -> list[str]:
    """Documents of the corpus: lines of a text file, or a task's training inputs (labels
    unused)."""
    path = Path(corpus)
    if path.suffix in (".txt", ".text"):
        if not path.is_file():
            raise FileNotFoundError(f"corpus file not found: {path}")
        lines = path.read_text(encoding="utf-8").splitlines()
        docs = [line.strip() for line in lines if line.strip()]
    else:
        docs = [e.input for e in load_task(load_spec(corpus), data_dir)["train"]]
    if not docs:
        raise ValueError(f"corpus {corpus}: no text")
    return docs


def prefix_lm_example(
    ids: list[int], eos_id: int, max_tokens: int, rng: random.Random
) -> tuple[list[int], list[int]]:
    """One prefix-LM pair from a document's ids: a random window of at most `max_tokens`, split at
    a random point into (prefix + EOS, continuation + EOS)."""
    if len(ids) > max_tokens:
        start = rng.randrange(len(ids) - max_tokens + 1)
        ids = ids[start : start + max_tokens]
    cut = rng.randint(1, len(ids) - 1)
    return ids[:cut] + [eos_id], ids[cut:] + [eos_id]


def check_loadable(model: str) -> None:
    """Fails early, and clearly, on a hub name where the hub is off (the project image sets
    HF_HUB_OFFLINE=1): the checkpoint must then be a directory the process can read."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if offline and model not in OFFLINE_MODELS and not Path(model).exists():
        raise ValueError(
            f"base model {model!r} is neither a local checkpoint directory nor an offline model, "
            "and HF_HUB_OFFLINE=1 forbids downloading it; copy the checkpoint to a volume the "
            "run mounts (e.g. /mnt/checkpoints/base-models/<name>) and pass that path"
        )


def adapt_and_export(
    config: LMAdaptConfig, out_dir: str | Path, export_dir: str = ""
) -> tuple[str, dict]:
    """`lm_adapt` into `out_dir`, then, with `export_dir`, a copy in
    `export_dir/<model>-lm-adapted-<steps>steps-seed<seed>` (a volume every pipeline pod mounts).
    Returns the path later runs take as base_model, and metadata describing the checkpoint."""
    summary = lm_adapt(config, out_dir)
    metadata = {
        "base_model": config.model,
        "objective": "prefix_lm",
        "steps": config.steps,
        "first_loss": summary["first_loss"],
        "last_loss": summary["last_loss"],
    }
    if not export_dir:
        return str(out_dir), metadata
    name = f"{Path(config.model.rstrip('/')).name}-lm-adapted-{config.steps}steps-seed{config.seed}"
    target = Path(export_dir) / name
    shutil.copytree(out_dir, target, dirs_exist_ok=True)
    return str(target), metadata | {"exported_to": str(target)}


def lm_adapt(config: LMAdaptConfig, out_dir: str | Path) -> dict:
    """Adapts `config.model` with the prefix-LM objective; writes the new checkpoint (weights,
    tokenizer, lm_adapt.json, metrics.jsonl) to `out_dir` and returns the summary."""
    _refuse_decoder_only(config.model)
    docs = read_corpus(config.corpus, config.data_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(out / "metrics.jsonl")
    lm = trainable_copy(load_frozen_lm(config.model))
    tokenized = [ids for ids in (lm.tokenize(d) for d in docs) if len(ids) >= config.min_tokens]
    if not tokenized:
        raise ValueError(
            f"corpus {config.corpus}: no document has {config.min_tokens} tokens or more"
        )
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    none = empty_prompt(lm)

    def step_batches(step: int) -> loop.StepBatches:
        """A fresh draw of documents, windows and split points, as one micro-batch. The draws
        follow one seeded stream, in step order."""
        pairs = [
            prefix_lm_example(rng.choice(tokenized), lm.eos_id, config.max_tokens, rng)
            for _ in range(config.batch_size)
        ]
        batch = Batch([x for x, _ in pairs], [y for _, y in pairs])
        return loop.StepBatches([batch], sum(len(y) for _, y in pairs))

    trainable = loop.Trainable(
        params=params,
        optimizer=make_optimizer(config, params),
        batches=step_batches,
        loss=lambda batch, tokens: lm_loss(lm, none, batch, normalizer=tokens),
    )
    started = time.monotonic()
    outcome = loop.train_loop(
        trainable, loop.Schedule(max_steps=config.steps, log_every=config.log_every), metrics
    )
    lm.model.save_pretrained(str(out))
    lm.tokenizer.save_pretrained(str(out))
    return _summary(config, out, len(tokenized), outcome.losses, time.monotonic() - started)


def _refuse_decoder_only(model: str) -> None:
    """Raises for a model that is not an encoder-decoder (DECODER_ONLY_MESSAGE)."""
    from transformers import AutoConfig

    check_loadable(model)
    # The offline short names and GGUF files are all decoder-only (GGUF loads as a causal LM).
    known_causal = model in OFFLINE_MODELS or model.endswith(".gguf")
    if known_causal or not getattr(AutoConfig.from_pretrained(model), "is_encoder_decoder", False):
        raise ValueError(DECODER_ONLY_MESSAGE.format(model=model))


def _summary(
    config: LMAdaptConfig, out: Path, documents: int, losses: list[float], seconds: float
) -> dict:
    """Writes lm_adapt.json, the run's config and how the loss moved (means over a few steps)."""
    window = max(1, min(10, len(losses) // 4))
    summary = {
        "objective": "prefix_lm",
        "base_model": config.model,
        "config": asdict(config),
        "documents": documents,
        "steps": config.steps,
        "first_loss": sum(losses[:window]) / window,
        "last_loss": sum(losses[-window:]) / window,
        "train_seconds": round(seconds, 1),
        "out_dir": str(out),
    }
    atomic_write(out / "lm_adapt.json", json.dumps(summary, indent=2).encode())
    return summary
