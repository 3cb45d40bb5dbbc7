"""The frozen decoder stack of a decoder-only model, run only as far as the result needs.

The LM head and the last layer's MLP run only where a target is predicted. The vocabulary
projection at every position is the single largest matmul of the model, and nothing follows
the last layer's MLP but the head, so both are cut to the read positions exactly (tests compare
against the plain model; bench/flops.py counts the saving).
"""

from __future__ import annotations

import functools
import inspect
from typing import NamedTuple

import torch
from torch import nn

from softprompt.model.compiled import CompiledForward

# The arguments of a pass a compiled stack can take (no cache read, none kept).
COMPILED_ARGUMENTS = {"inputs_embeds", "attention_mask", "position_ids"}


class StackOutput(NamedTuple):
    """What one pass of the decoder stack returns."""

    hidden: torch.Tensor  # [B, T, H] last hidden states (exact where read)
    cache: object | None  # the key/value cache, where the pass was asked for one


class DecoderStack:
    """A causal LM's decoder stack (no LM head) and its head, as the prompt passes run them.

    `run` is the one place a decoder-only pass enters the model, so tests wrap it to count
    passes. `compiled`, where set, runs the passes that neither read nor keep a cache.
    """

    def __init__(self, model: nn.Module, compiled: CompiledForward | None = None) -> None:
        self.model = model
        self.compiled = compiled
        # transformers 5.24 renamed `past_key_values` (argument and output field) to `cache`.
        params = inspect.signature(model.base_model.forward).parameters
        self.cache_name = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def last_mlp(self) -> nn.Module | None:
        """The last decoder layer's MLP (None where the architecture has no `layers[-1].mlp`)."""
        return getattr(getattr(self.model.base_model, "layers", [None])[-1], "mlp", None)

    @functools.cached_property
    def linear_params(self) -> int:
        """Parameters of every nn.Linear in the stack (the LM head and embedding excluded)."""
        modules = self.model.base_model.modules()
        return sum(m.weight.numel() for m in modules if isinstance(m, nn.Linear))

    def with_compile(self, mode: str, backend: str = "inductor") -> DecoderStack:
        """A stack over the same model whose cache-free passes run through torch.compile in
        `mode` with `backend` (see compiled.CompiledForward)."""
        return DecoderStack(self.model, CompiledForward(self.model, mode, backend))

    def run(self, cache=None, read=None, **kwargs) -> StackOutput:
        """One pass of the stack over `kwargs` (the model's own arguments), reading `cache`.

        `read` = (rows [N], positions [N]) names the only places whose output the caller reads.
        Nothing follows the last layer but the head, so its MLP (three quarters of a layer's
        FLOPs) runs only there, and elsewhere the returned states lack it. Keys and values (the
        cache) are computed before the MLP and stay exact.

        A compiled stack runs cache-free passes whole instead, exact at every position. N
        changes with every batch, so a cut inside the compiled graph would either recompile per
        batch or need its reads padded, gathered and scattered. The cut saves three quarters of
        one layer out of many (SmolLM2-135M has 30), which is little where kernel launches, not
        FLOPs, bound the step, and the LM head stays cut, outside the graph.
        """
        if self.compiled is not None and cache is None and not kwargs.get("use_cache"):
            given = {k for k, v in kwargs.items() if v is not None and k != "use_cache"}
            if given == COMPILED_ARGUMENTS:
                hidden = self.compiled(
                    kwargs["inputs_embeds"], kwargs["attention_mask"], kwargs["position_ids"]
                )
                return StackOutput(hidden, None)
        if cache is not None:
            kwargs[self.cache_name] = cache
        mlp = self.last_mlp
        if read is None or mlp is None:
            out = self.model.base_model(**kwargs)
            return StackOutput(out.last_hidden_state, getattr(out, self.cache_name, None))
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
        return StackOutput(out.last_hidden_state, getattr(out, self.cache_name, None))

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head on selected hidden states [N, H] -> log-probs [N, V].

        Gemma's final logit soft-capping applies where the config sets it."""
        logits = self.model.get_output_embeddings()(hidden).float()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return torch.log_softmax(logits, dim=-1)
