"""Three tasks served by the inference service in tests (tests/serve): their templates and label
words, prompts published to a local registry, the service config, and checks that an answer
equals the library's own prediction."""

from __future__ import annotations

import socket

import torch
from prometheus_client.parser import text_string_to_metric_families

from softprompt.ensemble import ensemble_scores, majority_vote
from softprompt.scoring import label_scores
from softprompt.serve.config import ServeConfig, TaskServing

TOKEN = "test-token-1234"
# The service's max_input_tokens: longer inputs keep their last 64 tokens, as in training.
MAX_TOKENS = 64
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# name: (template, label words, prompt length); `yesno` is served as a 3-prompt ensemble.
TASKS = {
    "senti": ("Review: {sentence}\nSentiment:", ["negative", "positive"], 4),
    "nli": (
        "Premise: {premise}\nHypothesis: {hypothesis}\nEntailment, contradiction or neutral?",
        ["entailment", "contradiction", "neutral"],
        6,
    ),
    "yesno": ("Question: {question}\nAnswer:", ["yes", "no"], 4),
}
INPUTS = {
    "senti": [
        {"sentence": "the movie was great and lovely"},
        {"sentence": "awful boring plot"},
        {"sentence": "quite a story"},
    ],
    "nli": [
        {"premise": "The fox jumps.", "hypothesis": "A fox moves."},
        {"premise": "the cast was brilliant", "hypothesis": "the acting was terrible"},
    ],
    "yesno": [
        {"question": "is the quick brown fox lazy"},
        {"question": "was the film really boring"},
    ],
}


def lineage(lm, task, fingerprint=None):
    template, words, length = TASKS[task]
    return {
        "task": task,
        "base_model": lm.name,
        "base_model_fingerprint": fingerprint or lm.fingerprint,
        "init": "random_uniform",
        "prompt_length": length,
        "objective": "lm",
        "hyperparameters": {},
        "dataset_version": None,
        "code_version": None,
        "metrics": {},
        "label_words": words,
        "template": template,
        "metric": "accuracy",
    }


def random_prompt(lm, task, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(TASKS[task][2], lm.dim, generator=g) * 2 - 1) * 0.5


def publish(reg, lm, task, seed, fingerprint=None):
    return reg.publish(task, random_prompt(lm, task, seed), lineage(lm, task, fingerprint))


def serve_config(**kw):
    tasks = [TaskServing("senti"), TaskServing("nli"), TaskServing("yesno", ensemble=3)]
    base = dict(
        registry="unused",
        tasks=tasks,
        token=TOKEN,
        max_wait_ms=300,
        max_body_bytes=2048,
        max_input_chars=300,
        max_input_tokens=MAX_TOKENS,
        poll_seconds=0,
    )
    return ServeConfig(**(base | kw))


def library_answer(lm, reg, task, fields, versions=None):
    """The library's own answer: rank classification (or the ensemble's majority vote)."""
    template, words, _ = TASKS[task]
    ids = lm.encode_input(template.format(**fields).strip(), MAX_TOKENS)[0]
    if versions:
        prompts = [reg.pull(task, v)[0] for v in versions]
        scores = ensemble_scores(lm, prompts, [ids], words)  # [N, 1, L]
        return words[int(majority_vote(scores)[0][0])], scores[:, 0].sum(0)
    scores = label_scores(lm, reg.pull(task, "production")[0], [ids], words)[0]
    return words[int(scores.argmax())], scores


def check_answer(lm, reg, task, fields, answer):
    versions = [1, 2, 3] if task == "yesno" else None
    label, scores = library_answer(lm, reg, task, fields, versions)
    assert answer["label"] == label, (task, fields, answer)
    assert torch.allclose(
        torch.tensor([answer["scores"][w] for w in TASKS[task][1]]), scores, atol=1e-4
    )
    assert answer["versions"] == (versions or [1])


def metric_samples(client, name, path="/metrics"):
    """{labels tuple: value} of one Prometheus sample name."""
    text = client.get(path).text
    return {
        tuple(sorted(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
