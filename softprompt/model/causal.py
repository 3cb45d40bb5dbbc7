"""Decoder-only passes, where the model reads `[lead; P; X; Y]` (see placement).

Work is cut to what the result needs, exactly (tests compare against the plain model). The LM
head and the last layer's MLP run only where a target is predicted (see stack). The last target
token is not fed. Where the batch has fewer distinct prompts than rows, each `[lead; P]` runs
once (see prefix_cache), and short training rows of mixed lengths go end to end in one sequence
instead of padded (see packing). Rank classification feeds all labels' tokens in the input's
own pass. bench/ measures each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from softprompt.model.masks import Rows, packed_choices_mask, pad_rows, padding_mask, to_device
from softprompt.model.packing import run_packed_rows
from softprompt.model.placement import TextLayout, expand_prompts, prefix_prompt_after_bos
from softprompt.model.prefix_cache import distinct_prompts, prefix_cache

if TYPE_CHECKING:
    from softprompt.model.frozen import Batch, FrozenLM


class DecoderPass(NamedTuple):
    """One pass of `[lead; P; row]` over a batch of rows (right-padded to T tokens)."""

    hidden: torch.Tensor  # [B, T, H] (or [B, T + F, H] with packed tokens) at the rows' positions
    last: torch.Tensor  # [B, H] the hidden state of each row's last token
    mask: torch.Tensor  # [B, lead + P + T] attention mask over prefix and rows
    lengths: torch.Tensor  # [B] lead + P + the row's own length
    cache: object | None  # the key/value cache, where the caller asked to keep one


class PackedChoices(NamedTuple):
    """F tokens appended to every row after its padding (rank classification's later tokens)."""

    ids: torch.Tensor  # [F]
    sees: torch.Tensor  # [F, F] bool, which packed tokens each packed token may see
    offset: torch.Tensor  # [F] position after the row's end


class CausalLM:
    """Target log-probs, label scores and greedy generation for a decoder-only FrozenLM."""

    # Targets follow the input after a space, the input needs no EOS, and the BOS token stays
    # first where the tokenizer adds one.
    layout = TextLayout(target_separator=" ", input_ends_with_eos=False, keeps_bos=True)

    def __init__(self, lm: FrozenLM) -> None:
        self.lm = lm
        self.stack = lm.decoder_stack

    def lead(self) -> torch.Tensor:
        """The embedded lead tokens [l, E] (BOS, or nothing)."""
        lm = self.lm
        return lm.embed(torch.tensor(lm.lead_ids, dtype=torch.long, device=lm.device))

    def run(
        self,
        prompts: torch.Tensor,
        rows: Rows,
        use_cache: bool = False,
        packed: PackedChoices | None = None,
        read: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> DecoderPass:
        """Runs `[lead; P; row]` for each row (right-padded to T tokens); see DecoderPass.

        Where `share_prompt_prefix` allows (by default on CPU) and the batch has fewer distinct
        prompts than rows, each distinct `[lead; P]` runs once (see prefix_cache).

        `packed` (PackedChoices) appends F more tokens to every row, after its padding. Each
        sees the row's prefix and real tokens, and the packed tokens `sees` allows, at position
        `lengths + offset` (a 4-D mask). `hidden` is then [B, T + F, H].

        `read` = (rows [N], positions [N]) in `hidden`'s coordinates says where the caller
        reads it (see DecoderStack.run); `hidden` and `last` are exact only there.
        """
        lm = self.lm
        B = len(rows)
        ids, tok_len = pad_rows(rows, lm.pad_id, lm.device)
        T = ids.shape[1]
        tok = lm.embed(ids)  # [B, T, E]
        lead = self.lead()  # [l, E]
        prompts = prompts.to(device=tok.device, dtype=tok.dtype)
        prefix_len = lead.shape[0] + prompts.shape[-2]
        lengths = tok_len + prefix_len
        mask = padding_mask(lengths, prefix_len + T)
        share = prefix_len > 0 and lm.shares_prefix()
        if share:  # finding the distinct prompts syncs a GPU, so only where sharing is on
            distinct, owner = distinct_prompts(prompts, B)
            share = distinct.shape[0] < B
        # [B, T] positions after the prefix
        positions = (prefix_len + torch.arange(T, device=lm.device))[None].expand(B, -1)
        attention_mask = mask
        if packed is not None:
            tok = torch.cat([tok, lm.embed(packed.ids)[None].expand(B, -1, -1)], dim=1)
            positions = torch.cat([positions, lengths[:, None] + packed.offset[None]], dim=1)
            attention_mask = packed_choices_mask(
                tok_len, prefix_len, packed.sees, not share, lm.embedding.weight.dtype
            )
        if share:
            cache = prefix_cache(self.stack, lead, distinct, owner, keep=use_cache)
            hidden, cache = self.stack.run(
                inputs_embeds=tok,
                attention_mask=attention_mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                read=read,
            )
        else:
            embeds = prefix_prompt_after_bos(lead, expand_prompts(prompts, B), tok)
            prefix_positions = torch.arange(prefix_len, device=lm.device)[None].expand(B, -1)
            if read is not None:
                read = (read[0], read[1] + prefix_len)
            hidden, cache = self.stack.run(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                position_ids=torch.cat([prefix_positions, positions], dim=1),
                use_cache=use_cache,
                read=read,
            )
            hidden = hidden[:, prefix_len:]
        last = hidden[torch.arange(B, device=lm.device), tok_len - 1]
        return DecoderPass(hidden, last, mask, lengths, cache if use_cache else None)

    def target_logprobs(
        self, prompts: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of every target token; see FrozenLM.target_logprobs."""
        lm = self.lm
        # The last target token is only predicted, never an input: it is not fed.
        rows = [list(x) + list(y[:-1]) for x, y in zip(batch.inputs, batch.targets, strict=True)]
        expand_prompts(prompts, len(rows))  # shape check
        # Target token k of example i sits at row position len(x_i) + k; it is predicted one
        # position earlier.
        row_idx, pos_idx, tgt = [], [], []
        for i, (x, y) in enumerate(zip(batch.inputs, batch.targets, strict=True)):
            start = len(x)
            for k, t in enumerate(y):
                row_idx.append(i)
                pos_idx.append(start + k - 1)
                tgt.append(t)
        read = (
            to_device(torch.tensor(row_idx), lm.device),
            to_device(torch.tensor(pos_idx), lm.device),
        )
        if prompts.dim() == 2 and lm.packs_rows([len(r) for r in rows], prompts.shape[0]):
            hidden = run_packed_rows(self.stack, lm.embed, self.lead(), prompts, rows, read)
        else:
            hidden = self.run(prompts, rows, read=read).hidden
        logprobs = self.stack.head(hidden[read])
        targets = to_device(torch.tensor(tgt), lm.device)[:, None]
        return logprobs.gather(1, targets).squeeze(1), read[0]

    def packs_choices(self, width: int) -> bool:
        """Whether a sequence of `width` positions may carry choices packed behind a 4-D mask.

        A custom 4-D mask would bypass sliding-window attention, so a model whose window is
        shorter takes one short pass per choice instead (`repeated_choice_scores`)."""
        window = getattr(self.lm.model.config, "sliding_window", None)
        return window is None or width <= window

    @torch.no_grad()
    def score_choices(self, prompts: torch.Tensor, inputs: Rows, choices: Rows) -> torch.Tensor:
        """Summed log-likelihood of each choice given each input [B, L].

        All choices' later tokens are packed after each input in the input's own pass, each
        seeing the input and its own choice's earlier tokens only (a 4-D mask), so L labels cost
        one forward of T + F positions (F = the choices' tokens after their first).
        """
        lm = self.lm
        B, L = len(inputs), len(choices)
        expand_prompts(prompts, B)  # shape check
        # Every choice's tokens but its first (predicted from the input's last position) and its
        # last (only a target) are fed after the input: F tokens per row, all choices packed.
        feed = [(label, j) for label, ids in enumerate(choices) for j in range(len(ids) - 1)]
        F, T = len(feed), max(map(len, inputs))
        if feed and not self.packs_choices(len(lm.lead_ids) + prompts.shape[-2] + T + F):
            prefix = self.run(prompts, inputs, use_cache=True)
            first = self.first_token_scores(prefix.last, choices)
            return first + self.repeated_choice_scores(prefix, choices)
        dev = lm.device
        last_pos = to_device(torch.tensor([len(x) - 1 for x in inputs]), dev)
        if not feed:
            last = self.run(prompts, inputs, read=(torch.arange(B, device=dev), last_pos)).last
            return self.first_token_scores(last, choices)
        owner = to_device(torch.tensor([label for label, _ in feed]), dev)  # [F]
        offset = to_device(torch.tensor([j for _, j in feed]), dev)  # [F]
        ids = to_device(torch.tensor([choices[label][j] for label, j in feed]), dev)  # [F]
        nxt = to_device(torch.tensor([choices[label][j + 1] for label, j in feed]), dev)  # [F]
        # [F, F] each packed token sees its own choice's earlier tokens
        sees = (owner[:, None] == owner[None, :]) & (offset[None, :] <= offset[:, None])
        read = (
            torch.arange(B, device=dev).repeat_interleave(F + 1),
            torch.cat(
                [last_pos[:, None], T + torch.arange(F, device=dev).expand(B, F)], dim=1
            ).flatten(),
        )  # each row's last input token and its F packed tokens
        out = self.run(prompts, inputs, packed=PackedChoices(ids, sees, offset), read=read)
        tok_lp = self.stack.head(out.hidden[:, -F:].reshape(B * F, -1))
        tok_lp = tok_lp.gather(1, nxt.repeat(B)[:, None]).view(B, F)
        later = torch.zeros(B, L, device=dev).index_add_(1, owner, tok_lp)
        return self.first_token_scores(out.last, choices) + later

    def first_token_scores(self, last: torch.Tensor, choices: Rows) -> torch.Tensor:
        """Log-probability of each choice's first token from each input's last hidden state.

        `last` [B, H] -> [B, L]."""
        return self.stack.head(last)[:, [ids[0] for ids in choices]]

    def repeated_choice_scores(self, prefix: DecoderPass, choices: Rows) -> torch.Tensor:
        """Every choice's tokens after its first, one short pass per choice [B, L].

        It serves models whose sliding-window attention a custom 4-D mask would bypass. The pass
        runs over `prefix`'s kept cache repeated L times (instead of packing the choices after
        the input), and consumes that cache.
        """
        dev = self.lm.device
        B, L = prefix.mask.shape[0], len(choices)
        choice_ids, choice_len = pad_rows(choices, self.lm.pad_id, dev)  # [L, M]
        cache = prefix.cache
        cache.batch_repeat_interleave(L)
        feed = choice_ids[:, :-1].repeat(B, 1)  # [B*L, M-1]
        start = prefix.lengths.repeat_interleave(L)[:, None]
        pos = start + torch.arange(feed.shape[1], device=dev)[None, :]
        full_mask = torch.cat([prefix.mask.repeat_interleave(L, 0), torch.ones_like(feed)], dim=1)
        hidden, _ = self.stack.run(
            input_ids=feed, attention_mask=full_mask, position_ids=pos, cache=cache, use_cache=True
        )  # [B*L, M-1, H]
        nxt = choice_ids[:, 1:].repeat(B, 1)  # [B*L, M-1]
        later = torch.arange(1, choice_ids.shape[1], device=dev)[None, :]
        valid = (later < choice_len[:, None]).repeat(B, 1)
        tok_lp = self.stack.head(hidden[valid]).gather(1, nxt[valid][:, None]).squeeze(1)
        rows = valid.nonzero()[:, 0]
        return torch.zeros(B * L, device=dev).index_add_(0, rows, tok_lp).view(B, L)

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, inputs: Rows, max_new_tokens: int) -> list[list[int]]:
        """Greedy decoding after `[lead; P; X]` from the kept cache; the new ids per example
        (EOS included where it came)."""
        lm = self.lm
        B = len(inputs)
        expand_prompts(prompts, B)  # shape check
        start = self.run(prompts, inputs, use_cache=True)
        mask, lengths, cache = start.mask, start.lengths, start.cache
        nxt = self.stack.head(start.last).argmax(-1)
        seqs = [[] for _ in range(B)]
        done = torch.zeros(B, dtype=torch.bool, device=lm.device)
        for step in range(max_new_tokens):
            for i in range(B):
                if not done[i]:
                    seqs[i].append(int(nxt[i]))
            done |= nxt == lm.eos_id
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            ones = torch.ones(B, 1, dtype=mask.dtype, device=lm.device)
            mask = torch.cat([mask, ones], dim=1)
            hidden, cache = self.stack.run(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=(lengths + step)[:, None],
                cache=cache,
                use_cache=True,
            )
            nxt = self.stack.head(hidden[:, -1]).argmax(-1)
        return seqs
