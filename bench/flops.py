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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn


@dataclass
class ModelShape:
    layers: int
    hidden: int
    attn_dim: int  # heads x head_dim
    vocab: int
    body_params: int  # parameters of the decoder stack's nn.Linear layers

    @classmethod
    def of(cls, lm) -> ModelShape:
        cfg = lm.model.config
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        body = sum(m.weight.numel() for m in lm.model.base_model.modules() if isinstance(m, nn.Linear))
        return cls(cfg.num_hidden_layers, cfg.hidden_size, heads * head_dim, lm.vocab_size, body)

    def forward(self, batch: int, width: int, head_rows: int, keys: int | None = None) -> dict:
        """One forward of `batch` sequences of `width` new positions attending to `keys` positions
        (default: width; more when reading a KV cache), LM head on `head_rows` positions."""
        keys = width if keys is None else keys
        linear = 2 * self.body_params * batch * width
        attention = 4 * width * keys * self.attn_dim * self.layers * batch
        head = 2 * self.vocab * self.hidden * head_rows
        return {"linear": linear, "attention": attention, "head": head, "total": linear + attention + head}

    def prompt_step(self, batch: int, width: int, head_rows: int) -> dict:
        """A prompt-tuning training step: forward plus backward to the inputs only (frozen weights)."""
        f = self.forward(batch, width, head_rows)
        out = {"linear": 2 * f["linear"], "attention": 3 * f["attention"], "head": 2 * f["head"]}
        out["total"] = sum(out.values())
        return out

    def to_dict(self) -> dict:
        return asdict(self)
