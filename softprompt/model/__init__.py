"""A pretrained LM with every weight frozen, and soft prompts in its input (Lester et al. 2021).

Two architectures:
- decoder-only (causal LM) models read `[lead; P_e; X_e; Y_e]`, where `lead` is the BOS token
  for tokenizers that add one (Gemma breaks without it) and is empty otherwise.
- encoder-decoder (T5-style) models read `[P_e; X_e]` in the encoder and are trained on Y in
  the decoder.

Modules, read top to bottom:
- masks: padding and attention masks, pure functions.
- placement: where the prompt goes (`prefix_prompt_after_bos`, `prefix_prompt`).
- compiled: the decoder stack under torch.compile, fed static (padded) shapes.
- stack: the decoder stack with the last MLP and the LM head only where read.
- prefix_cache: each distinct `[lead; P]` run once, its key/value cache shared.
- packing: training rows end to end instead of padded, and the cost model that decides.
- causal, seq2seq: the passes of each architecture, behind the same method names.
- frozen: FrozenLM, the wrapper that freezes the model and picks the architecture once.
- loading: offline GGUF checkpoints and `load_frozen_lm`.
"""

from softprompt.model.causal import CausalLM, DecoderPass, PackedChoices
from softprompt.model.compiled import COMPILE_MODES
from softprompt.model.frozen import Batch, FrozenLM, ModelOptions
from softprompt.model.loading import DEFAULT_CACHE, DEFAULT_MODEL, OFFLINE_MODELS, load_frozen_lm
from softprompt.model.seq2seq import Encoded, Seq2SeqLM
from softprompt.model.stack import DecoderStack, StackOutput

__all__ = [
    "COMPILE_MODES",
    "DEFAULT_CACHE",
    "DEFAULT_MODEL",
    "OFFLINE_MODELS",
    "Batch",
    "CausalLM",
    "DecoderPass",
    "DecoderStack",
    "Encoded",
    "FrozenLM",
    "ModelOptions",
    "PackedChoices",
    "Seq2SeqLM",
    "StackOutput",
    "load_frozen_lm",
]
