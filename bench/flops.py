"""FLOP counts of a decoder-only LM's forward and of a prompt-tuning step (matmuls only).

Counting (multiply-add = 2 FLOPs; norms, activations, softmax and RoPE are left out: they are
a few percent of the total and run at memory speed, not matmul speed):
- linear layers: a token through a weight matrix of n parameters costs 2 n. With N = the
  parameters of every nn.Linear in the decoder stack (the LM head and the embedding excluded),
  a forward over B sequences padded to T positions costs 2 N B T.
- attention scores and mixing: per layer and sequence Q K^T and A V cost 2 T^2 d each (d = heads
  x head_dim), 4 T^2 d together; counted over the full T x T square (the kernel does not skip
  the masked half).
- LM head: 2 V E per position it runs on (V vocabulary, E hidden size).
- backward of a prompt-tuning step: the weights are frozen, so there are no weight gradients
  (in full fine-tuning those cost another 2 N B T); only gradients with respect to activations,
  which flow back to the prompt: 2 N B T for the linears (dX = dY W^T), 2 x the forward for
  attention (dQ, dK, dA, dV: 8 T^2 d), 2 V E per head position. A step is therefore
  4 N B T + 12 T^2 d L B + 4 V E H, against the usual 6 N B T of full training.
- a shared prompt prefix (FrozenLM.shares_prefix: one [P, E] prompt for the batch, on CPU by
  default): its S = lead + P positions run once, not once per row, so the rows cost their own
  T - S positions (attending to all T keys) plus one sequence of S. Counting S per row would
  credit us with work we do not do. The rows' own token embeddings then carry no gradient, so
  the first layer's query, key and value projections (Q parameters) have no backward for them:
  2 Q per row position less in the step (PEFT's input includes the prompt: all of it has one).
- the last layer's MLP (R parameters) runs only where the head reads (DecoderStack.run `read`):
  2 R per head position instead of per position. PEFT's plain forward reads every position, so
  for it the count is the plain 2 N B T.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from torch import nn


def _linear_params(module: nn.Module | None, skip: str = "") -> int:
    """Weights of the nn.Linear layers inside `module` (0 for None).

    The layer named `skip` is left out."""
    if module is None:
        return 0
    return sum(
        m.weight.numel()
        for name, m in module.named_modules()
        if isinstance(m, nn.Linear) and name != skip
    )


@dataclass
class ModelShape:
    layers: int
    hidden: int
    attn_dim: int  # heads x head_dim
    vocab: int
    body_params: int  # parameters of the decoder stack's nn.Linear layers
    last_mlp_params: int  # of those, the last layer's MLP: it runs only where the head reads
    first_qkv_params: int  # the first layer's query, key and value projections (see prompt_step)

    @classmethod
    def of(cls, lm) -> ModelShape:
        cfg = lm.model.config
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads

        first_attention = getattr(
            getattr(lm.model.base_model, "layers", [None])[0], "self_attn", None
        )
        return cls(
            cfg.num_hidden_layers,
            cfg.hidden_size,
            heads * head_dim,
            lm.vocab_size,
            lm.decoder_linear_params,
            _linear_params(lm.last_mlp),
            _linear_params(first_attention, skip="o_proj"),
        )

    def forward(self, batch: int, width: int, head_rows: int, keys: int | None = None) -> dict:
        """One forward of `batch` sequences of `width` new positions attending to `keys` positions
        (default: width; more when reading a KV cache), the LM head (and the last MLP) on
        `head_rows` positions."""
        keys = width if keys is None else keys
        linear = (
            2 * (self.body_params - self.last_mlp_params) * batch * width
            + 2 * self.last_mlp_params * head_rows
        )
        attention = 4 * width * keys * self.attn_dim * self.layers * batch
        head = 2 * self.vocab * self.hidden * head_rows
        return {
            "linear": linear,
            "attention": attention,
            "head": head,
            "total": linear + attention + head,
        }

    def run(self, batch: int, width: int, head_rows: int, shared_prefix: int = 0,
            packed: Sequence[int] | None = None) -> dict:
        """A forward over `batch` rows of `width` positions, of which the first `shared_prefix` run
        once for the whole batch (their keys are read by every row). `packed` (the rows' own
        lengths): the rows instead run end to end as one sequence after the shared prefix, with
        no padding, every position attending over the whole pack (softprompt.model.packing)."""
        if packed:
            parts = [self.forward(1, sum(packed), head_rows, keys=shared_prefix + sum(packed))]
        else:
            parts = [self.forward(batch, width - shared_prefix, head_rows, keys=width)]
        if shared_prefix:
            parts.append(self.forward(1, shared_prefix, 0))
        out = {k: sum(part[k] for part in parts) for k in ("linear", "attention", "head")}
        out["total"] = sum(out.values())
        return out

    def prompt_step(self, batch: int, width: int, head_rows: int, shared_prefix: int = 0,
            packed: Sequence[int] | None = None) -> dict:
        """A prompt-tuning training step: forward plus backward to the inputs only (frozen weights).
        Behind a shared prefix the rows' first-layer q/k/v projections have no backward (their
        input, the token embeddings, carries no gradient)."""
        f = self.run(batch, width, head_rows, shared_prefix, packed)
        row_positions = sum(packed) if packed else batch * (width - shared_prefix)
        no_backward = 2 * self.first_qkv_params * row_positions if shared_prefix else 0
        out = {
            "linear": 2 * f["linear"] - no_backward,
            "attention": 3 * f["attention"],
            "head": 2 * f["head"],
        }
        out["total"] = sum(out.values())
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def shared_prefix(lm, prompt_length: int) -> int:
    """Positions of [lead; P] that `lm` runs once per batch rather than once per row.

    It is 0 where `lm` does not share the prefix."""
    return len(lm.lead_ids) + prompt_length if lm.shares_prefix() else 0


def softprompt_step(shape: ModelShape, lm, batch, prompt_length: int) -> dict:
    """FLOPs of our training step on `batch` (a softprompt.model.Batch), as FrozenLM.target_logprobs
    runs it: rows [lead; P; x; y without its last token], the prefix once where it is shared, the
    rows packed where `lm.packs_rows` says so, the head on target positions only."""
    rows = [len(x) + len(y) - 1 for x, y in zip(batch.inputs, batch.targets, strict=True)]
    prefix = shared_prefix(lm, prompt_length)
    packed = rows if lm.packs_rows(rows, prompt_length) else None
    return shape.prompt_step(
        len(rows),
        len(lm.lead_ids) + prompt_length + max(rows),
        sum(map(len, batch.targets)),
        prefix,
        packed,
    )
