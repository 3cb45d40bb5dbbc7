"""FrozenLM, a pretrained LM with every weight frozen and soft prompts put in its input.

The wrapper freezes the model and holds what every architecture shares (tokenization, the
embedding, the fingerprint, options). The passes themselves belong to the architecture object
(CausalLM or Seq2SeqLM), chosen once from the model's config.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import nn

from softprompt.model import packing
from softprompt.model.causal import CausalLM
from softprompt.model.compiled import check_mode
from softprompt.model.masks import Rows
from softprompt.model.placement import expand_prompts
from softprompt.model.seq2seq import Seq2SeqLM
from softprompt.model.stack import DecoderStack


@dataclass(frozen=True)
class ModelOptions:
    """How a FrozenLM runs; fixed per wrapper (`FrozenLM.with_options` makes a new one)."""

    # Text put before every target. "<extra_id_0> " gives the paper's "span corruption +
    # sentinel" setting for T5 checkpoints that were not LM-adapted (see
    # softprompt.training.lm_adaptation).
    target_prefix: str = ""
    # One prompt for the whole batch: run [lead; P] once and share its KV cache (saves P
    # positions per row). It pays where FLOPs bound the step (CPU). On an H200 the step is
    # launch-bound (results/gpu_h200: time flat from B=8 to B=64) and the extra decoder
    # pass made it 2x PEFT's, so None means: share on CPU only.
    share_prompt_prefix: bool | None = None
    # Training rows end to end in one sequence instead of padded (see softprompt.model.packing):
    # None = whenever the cost model in `packing.packs_rows` says it saves work.
    pack_rows: bool | None = None
    # torch.compile of a decoder-only model's frozen stack: "off", or a mode in
    # compiled.COMPILE_MODES ("reduce-overhead" and "max-autotune" capture CUDA graphs, so CUDA
    # only). Compiled passes are padded to static shapes and take no key/value cache, so a
    # compiled wrapper shares no prompt prefix unless `share_prompt_prefix` asks for it.
    # Encoder-decoder passes run uncompiled.
    compile: str = "off"


class VocabScale(NamedTuple):
    """The scale of the embedded vocabulary: prompts are judged and trained against it."""

    max_row_norm: float  # the largest row norm
    entry_rms: float  # the root mean square of all entries (a row's norm over sqrt(E))


@dataclass
class Batch:
    """Token ids of a batch, unpadded (lists of lists); padding happens per architecture."""

    inputs: list[list[int]]
    targets: list[list[int]] | None = None


class FrozenLM(nn.Module):
    """A frozen Hugging Face LM plus its tokenizer. Only prompts passed in carry gradients."""

    def __init__(
        self, model: nn.Module, tokenizer, name: str = "model", options: ModelOptions | None = None
    ) -> None:
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        # The one place the architecture is decided; `architecture` binds it to this wrapper.
        self.architecture_type = Seq2SeqLM if self.is_encoder_decoder else CausalLM
        self.embedding = model.get_input_embeddings()
        self.dim = int(self.embedding.weight.shape[1])
        self.vocab_size = int(self.embedding.weight.shape[0])
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        if self.eos_id is None:
            raise ValueError(f"{name}: tokenizer has no EOS token; targets need one to end on")
        # Decoder-only: keep BOS first when the tokenizer normally adds it (Gemma degrades without).
        probe = tokenizer("a").input_ids
        bos = tokenizer.bos_token_id
        keeps = self.architecture_type.layout.keeps_bos and bos is not None and probe[:1] == [bos]
        self.lead_ids = [bos] if keeps else []
        self.options = options or ModelOptions()
        self.plain_stack = DecoderStack(model)
        # Compiled stacks by (mode, backend), one dict shared by every view of this wrapper, so
        # each compiles once.
        self.compiled_stacks: dict[tuple[str, str], DecoderStack] = {}
        self.decoder_stack = self.stack_for(self.options.compile)

    @property
    def architecture(self) -> CausalLM | Seq2SeqLM:
        """This wrapper's passes (target log-probs, label scores, generation).

        Bound afresh on each use, so views made by `with_options` or copy.copy run under their
        own options and lead tokens."""
        return self.architecture_type(self)

    def with_options(self, **changes) -> FrozenLM:
        """The same frozen weights under other options; this wrapper is left as it is. A view
        keeps this wrapper's decoder stack unless its `compile` mode differs."""
        view = copy.copy(self)
        view.options = replace(self.options, **changes)
        if view.options.compile != self.options.compile:
            view.decoder_stack = self.stack_for(view.options.compile)
        return view

    def with_compile(self, mode: str, backend: str = "inductor") -> FrozenLM:
        """A view whose decoder stack runs through torch.compile in `mode` with `backend`
        (tests use "aot_eager", which compiles in seconds)."""
        view = copy.copy(self)
        view.options = replace(self.options, compile=mode)
        view.decoder_stack = self.stack_for(mode, backend)
        return view

    def stack_for(self, mode: str, backend: str = "inductor") -> DecoderStack:
        """The plain decoder stack ("off"), or the one compiled in `mode` with `backend`,
        compiled on first use and then shared by every view of this wrapper."""
        check_mode(mode, self.device)
        if mode == "off":
            return self.plain_stack
        if (mode, backend) not in self.compiled_stacks:
            self.compiled_stacks[mode, backend] = self.plain_stack.with_compile(mode, backend)
        return self.compiled_stacks[mode, backend]

    @property
    def target_prefix(self) -> str:
        return self.options.target_prefix

    @property
    def share_prompt_prefix(self) -> bool | None:
        return self.options.share_prompt_prefix

    @property
    def pack_rows(self) -> bool | None:
        return self.options.pack_rows

    @property
    def last_mlp(self) -> nn.Module | None:
        """The last decoder layer's MLP (None where the architecture has no `layers[-1].mlp`)."""
        return self.decoder_stack.last_mlp

    @property
    def decoder_linear_params(self) -> int:
        """Parameters of every nn.Linear in the decoder stack (LM head and embedding excluded)."""
        return self.decoder_stack.linear_params

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    # ---------------------------------------------------------------- tokens and embeddings
    def tokenize(self, text: str) -> list[int]:
        """Text -> ids, no special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def encode_input(self, text: str, max_tokens: int) -> tuple[list[int], bool]:
        """Input text -> (ids, truncated); T5 inputs end with EOS.

        Over-long inputs keep their last `max_tokens` tokens (templates end with the question
        and the answer cue, which must survive)."""
        ids = self.tokenize(text)
        if self.architecture_type.layout.input_ends_with_eos:
            ids = ids + [self.eos_id]
        if len(ids) > max_tokens:
            return ids[-max_tokens:], True
        return ids, False

    def encode_target(self, text: str) -> list[int]:
        """Target text -> ids ending in EOS, after `target_prefix`. Decoder-only targets follow
        the input after a space."""
        separator = self.architecture_type.layout.target_separator
        return self.tokenize(separator + self.target_prefix + text) + [self.eos_id]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [...] -> embeddings [..., E], through the model's own embedding module (with any
        scaling)."""
        return self.embedding(ids.to(self.device))

    def common_token_ids(self, k: int = 5000) -> list[int]:
        """The k "most common" token ids, for sampled-vocab init.

        Ids in vocabulary order, skipping special and added tokens. For sentencepiece unigram
        vocabularies (T5, Gemma) pieces are stored by descending probability; for BPE vocabularies
        (GPT-2 / Llama / SmolLM2 style) ids follow merge order, and merges happen in order of pair
        frequency in the tokenizer's training corpus; both make low ids the frequent ones. (The
        first 256 ids of byte-level BPE are the single bytes, frequent or not.)
        """
        special = set(self.tokenizer.all_special_ids)
        special.update(getattr(self.tokenizer, "added_tokens_decoder", {}).keys())
        out = [i for i in range(self.vocab_size) if i not in special]
        return out[:k]

    @functools.cached_property
    def vocab_scale(self) -> VocabScale:
        """How large the embedded vocabulary's rows and entries are, in one pass. Embedded in
        chunks, so a large vocabulary never needs a second full copy of the matrix."""
        largest, squares = 0.0, 0.0
        with torch.no_grad():
            for start in range(0, self.vocab_size, 8192):
                ids = torch.arange(start, min(start + 8192, self.vocab_size))
                rows = self.embed(ids).float()  # [chunk, E]
                largest = max(largest, float(rows.norm(dim=1).max()))
                squares += float(rows.double().pow(2).sum())
        return VocabScale(largest, math.sqrt(squares / (self.vocab_size * self.dim)))

    @property
    def vocab_max_norm(self) -> float:
        """The largest row norm of the embedded vocabulary: the scale a prompt's rows are judged
        against (softprompt.prompt.prompt_norm)."""
        return self.vocab_scale.max_row_norm

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the input-embedding matrix (fp32 bytes), since a prompt only fits the model
        it was trained on. Computed once per wrapper; `del lm.fingerprint` recomputes it."""
        weight = self.embedding.weight.detach().float().contiguous().cpu()
        return "sha256:" + hashlib.sha256(weight.numpy().tobytes()).hexdigest()

    # ---------------------------------------------------------------- forward passes
    def expand_prompts(self, prompts: torch.Tensor, batch: int) -> torch.Tensor:
        """[P, E] or [B, P, E] -> [B, P, E]."""
        return expand_prompts(prompts, batch)

    def shares_prefix(self) -> bool:
        """Whether a batch's `[lead; P]` prefixes run once each rather than in every row (see
        softprompt.model.prefix_cache); by default on CPU only, and never when compiled (a
        compiled pass reads no cache)."""
        if self.share_prompt_prefix is not None:
            return self.share_prompt_prefix
        return self.device.type == "cpu" and self.options.compile == "off"

    def packs_rows(self, lengths: Sequence[int], prompt_length: int) -> bool:
        """Whether training rows of these lengths (after one shared prompt's prefix) run packed
        end to end rather than padded. `pack_rows` decides where set, else the cost model
        `packing.packs_rows` (packed when that costs fewer FLOPs)."""
        prefix = len(self.lead_ids) + prompt_length
        # Packed rows read the shared prefix's cache: with no prefix (no BOS and an empty prompt,
        # as model tuning runs) there is nothing to share and the rows run padded.
        if prefix == 0 or not self.shares_prefix():
            return False
        if self.pack_rows is not None:
            return self.pack_rows
        return packing.packs_rows(lengths, prefix, self.model.config, self.decoder_linear_params)

    def target_logprobs(
        self, prompts: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of every target token given `[P; X]`.

        Returns (logprobs [N], row [N]) over all N target tokens of the batch, where `row` says
        which example each belongs to. Training minimizes `-logprobs.mean()`; per-example sums score
        a label. Gradients flow into `prompts` only.
        """
        assert batch.targets is not None, "target_logprobs needs targets"
        return self.architecture.target_logprobs(prompts, batch)

    @torch.no_grad()
    def score_choices(self, prompts: torch.Tensor, inputs: Rows, choices: Rows) -> torch.Tensor:
        """Rank classification, the summed log-likelihood of each choice (label) given each input.

        The input is encoded once for all choices. Decoder-only models pack all choices' later
        tokens after each input in the same pass, each seeing the input and its own choice's
        earlier tokens only (a 4-D mask), so L labels cost one forward of T + F positions (F = the
        choices' tokens after their first). Encoder-decoder models run the encoder once and the
        decoder reads its output per choice. Returns [B, L].
        """
        return self.architecture.score_choices(prompts, inputs, choices)

    @torch.no_grad()
    def generate(
        self, prompts: torch.Tensor, inputs: Rows, max_new_tokens: int = 8
    ) -> list[list[int]]:
        """Greedy decoding after `[P; X]`; returns the new ids per example, up to (not including)
        EOS."""
        seqs = self.architecture.generate(prompts, inputs, max_new_tokens)
        return [s[: s.index(self.eos_id)] if self.eos_id in s else s for s in seqs]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)
