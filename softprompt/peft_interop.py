"""PEFT interop: registry prompts <-> PEFT prompt-tuning adapters.

A PEFT prompt-tuning adapter is a folder with `adapter_config.json` (peft_type PROMPT_TUNING) and
`adapter_model.safetensors` holding `prompt_embeddings` [num_transformer_submodules * P, E].
PEFT prepends the virtual tokens to the embedded input: `[P; X]`, and for encoder-decoders to
the encoder input only (it reads the first P rows). Our FrozenLM places prompts the same way
except for decoder-only tokenizers that add a BOS token (FrozenLM.lead_ids, e.g. Gemma): we feed
`[BOS; P; X]`, PEFT would feed `[P; BOS; X]`, a different model input. Export and import refuse
that case rather than hand over a prompt that silently predicts differently.

Prompts live in the output space of the model's input-embedding module, and PEFT takes its
word embeddings' output too, so scaled embeddings (Gemma's sqrt(E)) agree as well.

An export also writes a model card, `README.md`, as PeftModel.save_pretrained does: what the
prompt was trained for and on, its scores, and how to load it with PEFT or softprompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from softprompt.model import FrozenLM
from softprompt.registry import InvalidArtifactError, Manifest, Registry

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CARD_FILE = "README.md"
WEIGHTS_KEY = "prompt_embeddings"


def check_layout(lm: FrozenLM) -> None:
    """Raises unless PEFT would place a prompt exactly where FrozenLM does."""
    if lm.lead_ids:
        raise InvalidArtifactError(
            f"{lm.name}: its tokenizer adds BOS, so softprompt feeds [BOS; prompt; input] while "
            "PEFT prompt tuning feeds [prompt; BOS; input]; a prompt trained for one layout does "
            "not transfer to the other, so it is not converted"
        )


def _task_type(lm: FrozenLM) -> str:
    return "SEQ_2_SEQ_LM" if lm.is_encoder_decoder else "CAUSAL_LM"


def write_adapter(
    prompt: torch.Tensor,
    out_dir: str | Path,
    lm: FrozenLM,
    base_model_name_or_path: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Writes `prompt` [P, E] as a PEFT prompt-tuning adapter for `lm`; returns the folder."""
    from peft import PromptTuningConfig

    check_layout(lm)
    if prompt.dim() != 2 or prompt.shape[1] != lm.dim:
        raise InvalidArtifactError(
            f"prompt of shape {list(prompt.shape)} does not fit {lm.name} (width {lm.dim})"
        )
    out = Path(out_dir)
    config = PromptTuningConfig(
        task_type=_task_type(lm),
        num_virtual_tokens=int(prompt.shape[0]),
        token_dim=lm.dim,
        # Prompt tuning reads only the first P rows, even for encoder-decoders.
        num_transformer_submodules=1,
        base_model_name_or_path=base_model_name_or_path or lm.name,
        inference_mode=True,
    )
    config.save_pretrained(str(out))
    save_file(
        {WEIGHTS_KEY: prompt.detach().cpu().contiguous()},
        str(out / WEIGHTS_FILE),
        metadata={"format": "pt", **(metadata or {})},
    )
    return out


def read_adapter(
    adapter_dir: str | Path, lm: FrozenLM
) -> tuple[torch.Tensor, dict, dict[str, str]]:
    """Reads a PEFT prompt-tuning adapter for `lm`.

    Returns (prompt [P, E], adapter config, safetensors metadata)."""
    from safetensors import safe_open

    root = Path(adapter_dir)
    config_path, weights_path = root / CONFIG_FILE, root / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise InvalidArtifactError(
                f"{path}: not found; a PEFT adapter folder holds {CONFIG_FILE} and {WEIGHTS_FILE}"
            )
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise InvalidArtifactError(
            f"{config_path}:{err.lineno}: malformed JSON ({err.msg})"
        ) from err
    if not isinstance(config, dict) or config.get("peft_type") != "PROMPT_TUNING":
        peft_type = config.get("peft_type") if isinstance(config, dict) else None
        raise InvalidArtifactError(
            f"{config_path}: field 'peft_type' is {peft_type!r}, "
            "only PROMPT_TUNING adapters can be imported"
        )
    if config.get("task_type") != _task_type(lm):
        raise InvalidArtifactError(
            f"{config_path}: field 'task_type' is {config.get('task_type')!r} "
            f"but {lm.name} needs {_task_type(lm)!r}"
        )
    check_layout(lm)
    n = config.get("num_virtual_tokens")
    subs = config.get("num_transformer_submodules") or 1
    if not isinstance(n, int) or n < 1:
        raise InvalidArtifactError(
            f"{config_path}: field 'num_virtual_tokens' must be a positive integer, got {n!r}"
        )
    if config.get("token_dim") not in (None, lm.dim):
        raise InvalidArtifactError(
            f"{config_path}: field 'token_dim' is {config['token_dim']}, "
            f"{lm.name} has width {lm.dim}"
        )
    tensors = load_file(str(weights_path))
    if WEIGHTS_KEY not in tensors:
        raise InvalidArtifactError(
            f"{weights_path}: no tensor {WEIGHTS_KEY!r} (found {sorted(tensors)})"
        )
    weights = tensors[WEIGHTS_KEY]
    if list(weights.shape) != [n * subs, lm.dim]:
        raise InvalidArtifactError(
            f"{weights_path}: {WEIGHTS_KEY} has shape {list(weights.shape)}, "
            f"expected [{n * subs}, {lm.dim}]"
        )
    with safe_open(str(weights_path), "pt") as f:
        metadata = f.metadata() or {}
    # The first P rows are what PEFT prompt tuning prepends.
    return weights[:n].contiguous(), config, metadata


def export_peft(
    registry: Registry, task: str, ref: int | str, out_dir: str | Path, lm: FrozenLM
) -> tuple[Path, Manifest]:
    """Pulls a registered prompt (verified against `lm`'s fingerprint) and writes it as a PEFT
    adapter that `PeftModel.from_pretrained(base_model, out_dir)` loads."""
    check_layout(lm)
    prompt, m = registry.pull(task, ref, expected_fingerprint=lm.fingerprint)
    meta = {
        "softprompt.task": m.task,
        "softprompt.version": str(m.version),
        "softprompt.blob_sha256": m.blob_sha256,
        "softprompt.base_model_fingerprint": m.base_model_fingerprint,
    }
    out = write_adapter(prompt, out_dir, lm, m.base_model, meta)
    (out / CARD_FILE).write_text(model_card(m, registry.uri, str(out_dir), lm.is_encoder_decoder))
    return out, m


def _details_rows(m: Manifest) -> list[str]:
    """Markdown table rows of what the prompt was trained on and for."""
    details = {
        "base model": m.base_model,
        "base model fingerprint": m.base_model_fingerprint,
        "task": m.task,
        "version": m.version,
        "created_at": m.created_at,
        "data version": m.dataset_version,
        "code version": m.code_version,
        "init": m.init,
        "objective": m.objective,
    }
    return [f"| {name} | {'-' if value is None else value} |" for name, value in details.items()]


def _metrics_rows(m: Manifest) -> list[str]:
    """Markdown table rows of the dev and test metrics, one per split."""
    rows = []
    for split in ("dev", "test"):
        metrics = m.metrics.get(split)
        if isinstance(metrics, dict) and metrics:
            values = ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in sorted(metrics.items())
            )
            rows.append(f"| {split} | {values} |")
    return rows or ["| - | no dev or test scores recorded |"]


def _peft_snippet(m: Manifest, adapter_dir: str, seq2seq: bool) -> list[str]:
    """Python lines that load the adapter onto its base model with PEFT."""
    from softprompt.model import OFFLINE_MODELS

    if m.base_model in OFFLINE_MODELS:
        # A short name of softprompt's offline checkpoints, not a Hugging Face id.
        load = [
            "from softprompt.model import load_frozen_lm",
            "",
            f"base = load_frozen_lm({m.base_model!r}).model  # a transformers model",
        ]
    else:
        cls = "AutoModelForSeq2SeqLM" if seq2seq else "AutoModelForCausalLM"
        load = [
            f"from transformers import {cls}",
            "",
            f"base = {cls}.from_pretrained({m.base_model!r})",
        ]
    return [
        "from peft import PeftModel",
        *load,
        f"model = PeftModel.from_pretrained(base, {adapter_dir!r})",
    ]


def model_card(m: Manifest, registry_uri: str, adapter_dir: str, seq2seq: bool) -> str:
    """The README.md of an exported adapter: YAML front matter as Hugging Face model cards have,
    then the prompt's lineage, scores, template and label words, and how to load it."""
    label_words = ", ".join(f"`{w}`" for w in m.label_words)
    lines = [
        "---",
        f"base_model: {json.dumps(m.base_model)}",
        "library_name: peft",
        "tags:",
        "- prompt-tuning",
        "- softprompt",
        "---",
        "",
        f"# {m.task} version {m.version}: a soft prompt for {m.base_model}",
        "",
        f"A PEFT prompt-tuning adapter ({m.prompt_length} virtual tokens of width {m.shape[1]}) "
        f"exported from the softprompt registry `{registry_uri}`, task `{m.task}`, version "
        f"{m.version}. The base model stays frozen; the prompt is prepended to the embedded "
        "input.",
        "",
        "| field | value |",
        "| --- | --- |",
        *_details_rows(m),
        "",
        "## Metrics",
        "",
        f"Metric: {m.metric or '-'}.",
        "",
        "| split | scores |",
        "| --- | --- |",
        *_metrics_rows(m),
        "",
        "## Template and label words",
        "",
        "Inputs are rendered with this template, and the label words are ranked after it:",
        "",
        "```text",
        m.template or "(no template recorded)",
        "```",
        "",
        f"Label words, in label order: {label_words}.",
        "",
        "## Load it with PEFT",
        "",
        "```python",
        *_peft_snippet(m, adapter_dir, seq2seq),
        "```",
        "",
        "## Load it with softprompt",
        "",
        "```bash",
        *_softprompt_snippet(m, registry_uri, adapter_dir),
        "```",
        "",
    ]
    return "\n".join(lines)


def _softprompt_snippet(m: Manifest, registry_uri: str, adapter_dir: str) -> list[str]:
    """Shell lines that fetch the prompt from its registry, or publish this adapter folder."""
    return [
        "# the prompt from its registry, verified, as a file `--prompt` takes:",
        f"softprompt pull --registry {registry_uri} --task {m.task} --ref {m.version} "
        "--out prompt.safetensors",
        f"softprompt predict --task {m.task} --prompt prompt.safetensors --model {m.base_model} "
        "--text 'an input'",
        "# or this adapter folder, published as a new version of a registry's task:",
        f"softprompt import-peft --registry REGISTRY --task {m.task} --adapter {adapter_dir} "
        f"--model {m.base_model}",
    ]


def import_peft(
    registry: Registry,
    task: str,
    adapter_dir: str | Path,
    lm: FrozenLM,
    lineage: dict | None = None,
) -> Manifest:
    """Publishes a PEFT prompt-tuning adapter trained on `lm` as the task's next version.

    PEFT adapters carry no model fingerprint, so the caller vouches that `lm` is the base model
    (an adapter exported from this registry does carry one, and it must match). `lineage`
    adds to or overrides the fields derived here.
    """
    prompt, config, metadata = read_adapter(adapter_dir, lm)
    recorded = metadata.get("softprompt.base_model_fingerprint")
    if recorded and recorded != lm.fingerprint:
        raise InvalidArtifactError(
            f"{adapter_dir}: adapter was exported for base model fingerprint {recorded}, "
            f"not {lm.name}'s {lm.fingerprint}"
        )
    init = config.get("prompt_tuning_init")
    derived = {
        "base_model": lm.name,
        "base_model_fingerprint": lm.fingerprint,
        "init": f"peft:{str(init).lower()}" if init else None,
        "objective": "peft_prompt_tuning",
        "hyperparameters": {
            k: config.get(k)
            for k in (
                "peft_version",
                "base_model_name_or_path",
                "num_virtual_tokens",
                "prompt_tuning_init_text",
            )
            if config.get(k) is not None
        },
    }
    return registry.publish(task, prompt.float(), {**derived, **(lineage or {})})
