"""Shared fixtures: tiny models built from configs (no downloads) and a tiny synthetic task.

- `tiny_causal_dir`: a 2-layer Llama with a byte-level BPE tokenizer trained here.
- `tiny_t5_dir`: a 2-layer T5 with a sentencepiece model trained here (no T5 tokenizer exists
  offline).
- `lm`: both tiny models in turn; `reviews(lm)`: three short inputs encoded for `lm`.
- `toy_task`: a sentiment task whose label is decided by one word, in a data folder and a tasks
  folder of its own, so prompt tuning can visibly learn it in a few steps.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

# The session-scoped `s3_server` fixture (a real SeaweedFS S3 server, started only when used).
pytest_plugins = ["s3server", "kfp_api_server"]

POSITIVE = ["great", "wonderful", "superb", "lovely", "brilliant"]
NEGATIVE = ["awful", "terrible", "dreadful", "boring", "horrible"]
FILLER = [
    "the",
    "movie",
    "was",
    "plot",
    "acting",
    "really",
    "quite",
    "and",
    "a",
    "story",
    "film",
    "cast",
]


def _toy_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        word = rng.choice(POSITIVE if label else NEGATIVE)
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 7))]
        words.insert(rng.randint(0, len(words)), word)
        rows.append({"sentence": " ".join(words), "label": label, "idx": i})
    return rows


def corpus() -> list[str]:
    lines = [r["sentence"] for r in _toy_rows(400, 99)]
    lines += [
        "Review: positive negative Sentiment: yes no entailment contradiction neutral first second"
    ] * 20
    lines += [
        "The quick brown fox jumps over the lazy dog. Premise Hypothesis Question Answer Passage"
    ] * 20
    return lines


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory) -> Path:
    return build_tiny_causal(tmp_path_factory.mktemp("tiny_causal"))


def build_tiny_causal(out: Path) -> Path:
    """A 2-layer Llama (hidden size 32) with a byte-level BPE tokenizer trained on the toy
    corpus, saved under `out` (the tests' tiny causal model; scripts/screenshots.py uses it too)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    import sentencepiece as spm
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    out = tmp_path_factory.mktemp("tiny_t5")
    text = out / "corpus.txt"
    text.write_text("\n".join(corpus()))
    spm.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(out / "spiece"),
        vocab_size=150,
        model_type="unigram",
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
    )
    # T5Tokenizer.from_pretrained(folder) would parse spiece.model with protobuf >= 7, which kfp's
    # pin (< 7) rules out; the trained model's pieces and scores build the same tokenizer.
    sp = spm.SentencePieceProcessor(model_file=str(out / "spiece.model"))
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=10)
    assert tokenizer("great movie").input_ids[:-1] == sp.encode("great movie")
    out = out / "model"
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        decoder_start_token_id=tokenizer.pad_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        initializer_factor=3.0,
    )
    T5ForConditionalGeneration(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_causal(tiny_causal_dir):
    from softprompt.model import load_frozen_lm

    return load_frozen_lm(str(tiny_causal_dir))


@pytest.fixture(scope="session")
def tiny_t5(tiny_t5_dir):
    from softprompt.model import load_frozen_lm

    return load_frozen_lm(str(tiny_t5_dir))


REVIEWS = [
    "Review: the movie was great\nSentiment:",
    "Review: awful\nSentiment:",
    "Review: a story and a plot and the cast was really quite boring\nSentiment:",
]


@pytest.fixture(params=["tiny_causal", "tiny_t5"])
def lm(request):
    return request.getfixturevalue(request.param)


@pytest.fixture()
def reviews():
    """reviews(lm) -> the three REVIEWS encoded as inputs of `lm` (up to 64 tokens each)."""
    return lambda lm: [lm.encode_input(text, 64)[0] for text in REVIEWS]


TOY_SPEC = {
    "name": "toy",
    "description": "one sentiment word decides the label",
    "format": "jsonl",
    "splits": {"train": "toy/train.jsonl", "dev": "toy/dev.jsonl", "test": "toy/test.jsonl"},
    "template": "Review: {sentence}\nSentiment:",
    "label_field": "label",
    "labels": {"0": "negative", "1": "positive"},
    "metric": "accuracy",
}


@pytest.fixture()
def toy_task(tmp_path) -> dict:
    """{'data_dir', 'tasks_dir', 'spec_path'} for the synthetic task `toy`."""
    return write_toy_task(tmp_path)


def write_toy_task(root: Path, sizes: tuple[int, int, int] = (96, 32, 32)) -> dict:
    """The task `toy` under `root`: `sizes` train/dev/test rows in root/data/toy/ and its spec
    root/tasks/toy.yaml. Returns {'data_dir', 'tasks_dir', 'spec_path'}."""
    import yaml

    data_dir = root / "data"
    (data_dir / "toy").mkdir(parents=True)
    for split, n, seed in zip(("train", "dev", "test"), sizes, (1, 2, 3), strict=True):
        with (data_dir / "toy" / f"{split}.jsonl").open("w") as f:
            for row in _toy_rows(n, seed):
                f.write(json.dumps(row) + "\n")
    tasks_dir = root / "tasks"
    tasks_dir.mkdir()
    spec_path = tasks_dir / "toy.yaml"
    spec_path.write_text(yaml.safe_dump(TOY_SPEC))
    return {"data_dir": data_dir, "tasks_dir": tasks_dir, "spec_path": spec_path}


@pytest.fixture()
def catalogue(tmp_path) -> dict:
    """Empty local catalogue folders (tasks/, data/) beside a registry and a runs folder."""
    tasks_dir, data_dir = tmp_path / "tasks", tmp_path / "data"
    tasks_dir.mkdir()
    return {"tasks_dir": tasks_dir, "data_dir": data_dir, "registry": tmp_path / "registry",
            "runs": tmp_path / "runs"}
