"""Encoder-decoder (T5-style) passes, where the encoder reads `[P; X]` and the decoder Y."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from softprompt.model.masks import Rows, pad_rows, padding_mask
from softprompt.model.placement import TextLayout, expand_prompts, prefix_prompt

if TYPE_CHECKING:
    from softprompt.model.frozen import Batch, FrozenLM


class Encoded(NamedTuple):
    """The encoder's output over `[P; X]`."""

    hidden: torch.Tensor  # [B, P + T, H]
    mask: torch.Tensor  # [B, P + T]


class Seq2SeqLM:
    """Target log-probs, label scores and greedy generation for an encoder-decoder FrozenLM."""

    # Targets start the decoder's own sequence, the input ends with EOS, and no BOS is placed.
    layout = TextLayout(target_separator="", input_ends_with_eos=True, keeps_bos=False)

    def __init__(self, lm: FrozenLM) -> None:
        self.lm = lm

    def encode(self, prompts: torch.Tensor, inputs: Rows) -> Encoded:
        """The encoder over `[P; X]` for each input (right-padded)."""
        lm = self.lm
        ids, lengths = pad_rows(inputs, lm.pad_id, lm.device)
        tok = lm.embed(ids)
        prompts = expand_prompts(prompts, len(inputs)).to(device=tok.device, dtype=tok.dtype)
        embeds = prefix_prompt(prompts, tok)
        mask = padding_mask(lengths + prompts.shape[1], embeds.shape[1])
        hidden = lm.model.get_encoder()(inputs_embeds=embeds, attention_mask=mask)
        return Encoded(hidden.last_hidden_state, mask)

    def _decode(
        self, hidden: torch.Tensor, mask: torch.Tensor, targets: Rows
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced decoder over right-padded `targets` [N, Ty] after the encoder output
        `hidden` [N, S, H] with its `mask` [N, S]. Returns (token log-probs [N, Ty], the [N, Ty]
        mask of real target tokens)."""
        labels, lengths = pad_rows(targets, -100, self.lm.device)
        dec_mask = padding_mask(lengths, labels.shape[1])
        ids = labels.clamp(min=0)
        out = self.lm.model(
            encoder_outputs=(hidden,),
            attention_mask=mask,
            labels=ids.masked_fill(dec_mask == 0, self.lm.pad_id),
            decoder_attention_mask=dec_mask,
        )
        logprobs = torch.log_softmax(out.logits.float(), dim=-1)  # [N, Ty, V]
        return logprobs.gather(2, ids[..., None]).squeeze(2), dec_mask

    def target_logprobs(
        self, prompts: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of every target token; see FrozenLM.target_logprobs."""
        enc = self.encode(prompts, batch.inputs)
        token_lp, dec_mask = self._decode(enc.hidden, enc.mask, batch.targets)
        keep = dec_mask.bool()
        row = torch.arange(len(batch.inputs), device=self.lm.device)[:, None]
        return token_lp[keep], row.expand_as(token_lp)[keep]

    @torch.no_grad()
    def score_choices(self, prompts: torch.Tensor, inputs: Rows, choices: Rows) -> torch.Tensor:
        """Summed log-likelihood of each choice given each input [B, L].

        The encoder runs once and the decoder reads its output per choice."""
        B, L = len(inputs), len(choices)
        enc = self.encode(prompts, inputs)
        hidden, mask = enc.hidden.repeat_interleave(L, 0), enc.mask.repeat_interleave(L, 0)
        token_lp, dec_mask = self._decode(hidden, mask, list(choices) * B)  # row b*L + l
        return (token_lp * dec_mask).sum(1).view(B, L)

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, inputs: Rows, max_new_tokens: int) -> list[list[int]]:
        """Greedy decoding from the encoder's output; the new ids per example (EOS included
        where it came)."""
        from transformers.modeling_outputs import BaseModelOutput

        enc = self.encode(prompts, inputs)
        out = self.lm.model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=enc.hidden),
            attention_mask=enc.mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
        )
        return [row[1:].tolist() for row in out]  # drop the decoder start token
