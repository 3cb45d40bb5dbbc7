"""Three tasks served by the inference service in tests (tests/serve): their templates and label
words, prompts published to a local registry, the service config, and checks that an answer
equals the library's own prediction. Also a registry object that answers with unusable
manifests (a stand-in for a tampered store), and raw-socket helpers for connection limits."""

from __future__ import annotations

import dataclasses
import socket
import time

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
        max_batch_items=12,
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
    """`answer` (a response body, or the client's Prediction) equals the library's own."""
    if dataclasses.is_dataclass(answer):
        answer = dataclasses.asdict(answer)
    versions = [1, 2, 3] if task == "yesno" else None
    label, scores = library_answer(lm, reg, task, fields, versions)
    assert answer["label"] == label, (task, fields, answer)
    assert torch.allclose(
        torch.tensor([answer["scores"][w] for w in TASKS[task][1]]), scores, atol=1e-4
    )
    assert list(answer["versions"]) == (versions or [1])


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


# Manifest changes no service can use, as a tampered store could hold them:
# name -> (changed manifest fields, the field the refusal names).
UNUSABLE = {
    "no-template": ({"template": None}, "template"),
    "no-label-words": ({"label_words": []}, "label_words"),
    "int-label-words": ({"label_words": [0, 1]}, "label_words"),
    "duplicate-label-words": ({"label_words": ["positive", "positive"]}, "label_words"),
    "empty-label-word": ({"label_words": ["", "positive"]}, "label_words"),
    "unclosed-brace": ({"template": "Review: {sentence\nSentiment:"}, "template"),
    "format-spec": ({"template": "Review: {sentence:d}\nSentiment:"}, "template"),
    "huge-padding": ({"template": "Review: {sentence:>100000000}\nSentiment:"}, "template"),
}


class TamperedRegistry:
    """A registry object that answers for each task in `bad` (task -> changed manifest fields)
    with senti's prompt under a changed manifest, and for any other task from `real`."""

    def __init__(self, real, bad: dict[str, dict]) -> None:
        self.real, self.bad = real, bad

    def _manifest(self, task: str):
        good = self.real.manifest("senti", "production")
        return dataclasses.replace(good, task=task, **self.bad[task])

    def manifest(self, task, ref):
        return self._manifest(task) if task in self.bad else self.real.manifest(task, ref)

    def list_versions(self, task):
        return [self._manifest(task)] if task in self.bad else self.real.list_versions(task)

    def pull(self, task, ref="production", expected_fingerprint=None):
        if task in self.bad:
            prompt = self.real.pull("senti", "production", expected_fingerprint)[0]
            return prompt, self._manifest(task)
        return self.real.pull(task, ref, expected_fingerprint=expected_fingerprint)


def connect(url: str) -> socket.socket:
    """A raw TCP connection to a server's base URL (http://host:port)."""
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_until_closed(sock: socket.socket, seconds: float, trickle: bytes = b"") -> tuple:
    """(everything the server sent, seconds until it closed the connection or None if it had not
    within `seconds`). With `trickle`, it is sent again every 0.2 s meanwhile."""
    start, received = time.monotonic(), b""
    sock.settimeout(0.2)
    while time.monotonic() - start < seconds:
        if trickle:
            try:
                sock.sendall(trickle)
            except OSError:  # reset or broken pipe: closed by the server
                return received, time.monotonic() - start
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return received, time.monotonic() - start
        if not chunk:
            return received, time.monotonic() - start
        received += chunk
    return received, None
