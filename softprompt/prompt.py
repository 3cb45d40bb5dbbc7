"""The soft prompt `P_e` of shape [P, E] and the paper's initializers.

A soft prompt is one unbatched [P, E] tensor that lives in the output space of the model's
input-embedding module (so models that scale their embeddings, e.g. Gemma's sqrt(E), get
prompts on the same scale as real token embeddings). It is prepended to the embedded input:
`[P_e; X_e]`. Nothing here knows about a specific model: the initializers take an `embed`
callable that maps token ids [N] to embeddings [N, E].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save

from softprompt.fileio import atomic_write

INITS = ("random_uniform", "sampled_vocab", "class_label", "text", "file")
PROMPT_KEY = "prompt"

Embed = Callable[[torch.Tensor], torch.Tensor]  # token ids [N] -> embeddings [N, E]


@dataclass
class PromptConfig:
    """How a soft prompt is shaped and initialized (Lester et al. 2021, section 3)."""

    length: int = field(
        default=20,
        metadata={
            "help": "P, the number of prompt vectors (paper: 1, 5, 20, 100, 150).",
            "flag": "--prompt-length",
        },
    )
    init: str = field(
        default="class_label", metadata={"help": "Prompt initialization.", "choices": INITS}
    )
    uniform_range: float = field(
        default=0.5, metadata={"help": "random_uniform draws from [-r, r] (paper: 0.5)."}
    )
    vocab_top_k: int = field(
        default=5000, metadata={"help": "sampled_vocab draws from the k most common tokens."}
    )
    init_text: str | None = field(
        default=None, metadata={"help": "Text whose token embeddings fill the prompt (init=text)."}
    )
    init_file: str | None = field(
        default=None, metadata={"help": "safetensors file holding a [P, E] prompt (init=file)."}
    )

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"prompt length must be >= 1, got {self.length}")
        if self.init not in INITS:
            raise ValueError(f"unknown prompt init {self.init!r}; choose one of {', '.join(INITS)}")
        if self.uniform_range <= 0:
            raise ValueError(f"uniform_range must be > 0, got {self.uniform_range}")
        if self.vocab_top_k < 1:
            raise ValueError(f"vocab_top_k must be >= 1, got {self.vocab_top_k}")
        if self.init == "text" and not self.init_text:
            raise ValueError("init=text needs init_text")
        if self.init == "file" and not self.init_file:
            raise ValueError("init=file needs init_file")

    def to_dict(self) -> dict:
        return asdict(self)


ITEM_KEYS = ("seed", "init", "init_text")


def prompt_config_from_item(item: dict, length: int) -> PromptConfig:
    """The PromptConfig of one `prompt_configs` item of a pipeline run ({"seed", "init",
    "init_text"}; the seed is the run's, read by the caller). Unknown keys are refused."""
    unknown = sorted(set(item) - set(ITEM_KEYS))
    if unknown:
        raise ValueError(
            f"prompt_configs item {item}: unknown keys {unknown}; use {', '.join(ITEM_KEYS)}"
        )
    return PromptConfig(
        length=length, init=str(item.get("init", "class_label")), init_text=item.get("init_text")
    )


def random_uniform(
    length: int, dim: int, generator: torch.Generator, half_range: float = 0.5
) -> torch.Tensor:
    """[P, E] drawn from U[-r, r]. (The official code's default draws from [0, r); the paper
    says [-r, r].)"""
    return (torch.rand(length, dim, generator=generator) * 2 - 1) * half_range


def sampled_vocab(
    length: int, common_ids: Sequence[int], embed: Embed, generator: torch.Generator
) -> torch.Tensor:
    """[P, E] embeddings of `length` tokens drawn without replacement from `common_ids`.

    With fewer common ids than positions, draws repeat (the pool is cycled in a fresh
    permutation each time) rather than failing.
    """
    pool = torch.as_tensor(list(common_ids), dtype=torch.long)
    if pool.numel() == 0:
        raise ValueError("sampled_vocab needs at least one candidate token id")
    picks = []
    while sum(p.numel() for p in picks) < length:
        picks.append(pool[torch.randperm(pool.numel(), generator=generator)])
    ids = torch.cat(picks)[:length]
    return embed(ids).detach().float()


def class_label(
    length: int,
    label_token_ids: Sequence[Sequence[int]],
    common_ids: Sequence[int],
    embed: Embed,
    generator: torch.Generator,
) -> torch.Tensor:
    """[P, E]: position i < L holds label i's sub-token embeddings averaged; the rest are
    sampled vocab.

    More labels than positions is an error: dropping labels silently would bias the prompt.
    """
    if len(label_token_ids) > length:
        raise ValueError(
            "class_label init needs at least one prompt position per label: "
            f"{len(label_token_ids)} labels but prompt length {length}; use a longer prompt or "
            "init=sampled_vocab"
        )
    rows = []
    for ids in label_token_ids:
        if not ids:
            raise ValueError("a label tokenized to no tokens; class_label init cannot embed it")
        rows.append(embed(torch.as_tensor(list(ids), dtype=torch.long)).detach().float().mean(0))
    rest = length - len(rows)
    parts = [torch.stack(rows)]
    if rest:
        parts.append(sampled_vocab(rest, common_ids, embed, generator))
    return torch.cat(parts)


def from_text(length: int, text_ids: Sequence[int], embed: Embed) -> torch.Tensor:
    """[P, E] from a text's token embeddings, repeated to fill P or cut to P."""
    if not text_ids:
        raise ValueError("init text tokenized to no tokens")
    reps = -(-length // len(text_ids))
    ids = torch.as_tensor(list(text_ids) * reps, dtype=torch.long)[:length]
    return embed(ids).detach().float()


# A prompt whose largest row is this many times the vocabulary's largest row has exploded. With
# Adafactor's relative step and no parameter scaling, each step moves an entry by about lr, so
# even 30,000 steps at lr 0.3 stay about two orders of magnitude below this; a diverging optimizer
# (AdamW at lr 1e6 reaches entries of 8e6) lands far above it.
EXPLODED_NORM_RATIO = 1000.0


class PromptNorm(NamedTuple):
    """How large a prompt's rows are next to the embedded vocabulary's."""

    max_row_norm: float  # the prompt's largest row norm
    vocab_max_row_norm: float  # the vocabulary's largest (FrozenLM.vocab_max_norm)
    ratio: float
    exploded: bool  # ratio above EXPLODED_NORM_RATIO, or not finite

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self._asdict().items()}


def prompt_norm(prompt: torch.Tensor, vocab_max_norm: float) -> PromptNorm:
    """The prompt [P, E]'s largest row norm, compared with the vocabulary's."""
    largest = float(prompt.detach().float().norm(dim=1).max())
    ratio = largest / vocab_max_norm if vocab_max_norm > 0 else math.inf
    exploded = not math.isfinite(ratio) or ratio > EXPLODED_NORM_RATIO
    return PromptNorm(largest, vocab_max_norm, ratio, exploded)


def load_prompt(path: str | Path, expected_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Reads a [P, E] prompt from a safetensors file (never a pickle), checking its shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    tensors = load_file(str(path))
    if PROMPT_KEY not in tensors:
        raise ValueError(f"{path}: no tensor named {PROMPT_KEY!r} (found {sorted(tensors)})")
    prompt = tensors[PROMPT_KEY]
    if prompt.dim() != 2:
        raise ValueError(f"{path}: prompt must be [P, E], got shape {list(prompt.shape)}")
    if expected_shape is not None and tuple(prompt.shape) != tuple(expected_shape):
        raise ValueError(
            f"{path}: prompt shape {list(prompt.shape)} does not match expected "
            f"{list(expected_shape)}"
        )
    return prompt.float()


def save_prompt(
    prompt: torch.Tensor, path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Writes a [P, E] prompt as safetensors, atomically (temp file then rename)."""
    tensors = {PROMPT_KEY: prompt.detach().float().contiguous().cpu()}
    atomic_write(path, save(tensors, metadata=metadata))


def initialize(
    config: PromptConfig,
    dim: int,
    embed: Embed,
    common_ids: Sequence[int],
    tokenize: Callable[[str], list[int]],
    label_words: Sequence[str] = (),
    seed: int = 0,
) -> torch.Tensor:
    """Builds the initial [P, E] prompt for `config`.

    `common_ids` are the model's most common token ids (see `FrozenLM.common_token_ids`),
    `tokenize` maps text to ids without special tokens, `label_words` are the task's labels.
    """
    generator = torch.Generator().manual_seed(seed)
    length = config.length
    if config.init == "random_uniform":
        return random_uniform(length, dim, generator, config.uniform_range)
    if config.init == "sampled_vocab":
        return sampled_vocab(length, list(common_ids)[: config.vocab_top_k], embed, generator)
    if config.init == "class_label":
        if not label_words:
            raise ValueError("class_label init needs the task's label words")
        label_ids = [tokenize(word) for word in label_words]
        return class_label(
            length, label_ids, list(common_ids)[: config.vocab_top_k], embed, generator
        )
    if config.init == "text":
        return from_text(length, tokenize(config.init_text or ""), embed)
    return load_prompt(config.init_file or "", expected_shape=(length, dim))
