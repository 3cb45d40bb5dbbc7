"""The read-only registry web page (softprompt.webui): the page builders over a real local
registry, the app served for real on 127.0.0.1, and the `softprompt ui` command."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from html.parser import HTMLParser

import httpx
import pytest
import torch

from bench.server_thread import ServerThread
from softprompt.cli import build_parser
from softprompt.registry import open_registry
from softprompt.webui import (
    create_app,
    flatten,
    index_page,
    manifest_url,
    read_registry,
    read_task,
    task_page,
    version_page,
)

TEMPLATE = 'Review <script>alert("x")</script> & more: {sentence}\nSentiment:'
FINGERPRINT = "sha256:" + "ab" * 32


def _lineage(task: str, dev: float, test: float, init: str) -> dict:
    return {
        "task": task, "base_model": "tiny-<b>model</b>", "base_model_fingerprint": FINGERPRINT,
        "init": init, "prompt_length": 4, "objective": "target_nll",
        "hyperparameters": {"lr": 0.3, "prompt": {"length": 4, "init": init}, "seed": 7},
        "dataset_version": "md5:1234.dir", "code_version": "abc123+dirty",
        "metrics": {"dev": {"score": dev, "n": 16}, "test": {"score": test, "n": 16},
                    "best_step": 4},
        "label_words": ["negative", "positive"], "template": TEMPLATE, "metric": "accuracy",
    }


@pytest.fixture()
def registry(tmp_path):
    """Task `senti`: 3 versions, production moved 1 -> 2 -> 3 -> 2, staging at 3; task `empty`
    has one version and no alias."""
    reg = open_registry(tmp_path / "registry")
    scores = [(0.5, 0.4375), (0.8125, 0.75), (0.75, 0.6875)]
    for i, (dev, test) in enumerate(scores):
        reg.publish("senti", torch.full((4, 8), float(i)), _lineage("senti", dev, test, "vocab"))
    for version in (1, 2, 3, 2):
        reg.promote("senti", "production", version)
    reg.promote("senti", "staging", 3)
    reg.publish("empty", torch.zeros(4, 8), _lineage("empty", 0.5, 0.5, "random_uniform"))
    return reg


class _Page(HTMLParser):
    """The links, script elements and visible text of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.links, self.scripts, self.text = [], 0, []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if tag == "a" and k == "href"]
        self.scripts += tag == "script"

    def handle_data(self, data):
        self.text.append(data)


def test_index_shows_each_task_production_version_scores_and_aliases(registry):
    page = _Page(index_page(read_registry(registry), registry.uri))
    text = " ".join(page.text)
    assert "/tasks/senti/2" in page.links and "/tasks/empty" in page.links
    # senti: production v2 with its dev and test scores; 3 versions; both aliases.
    assert re.search(r"v2\s+0\.8125\s+0\.7500\s+accuracy\s+3", text)
    assert "production → v2, staging → v3" in text
    assert "none" in text  # `empty` has no production version
    assert page.scripts == 0


def test_task_page_lists_every_version_and_every_alias_move(registry):
    html = task_page(read_task(registry, "senti"))
    page = _Page(html)
    text = " ".join(page.text)
    for m in registry.list_versions("senti"):
        assert f"/tasks/senti/{m.version}" in page.links
        assert m.created_at in text
    assert text.index("v3") < text.index("v1")  # newest first
    assert "md5:1234.dir" in text and "abc123+dirty" in text and "vocab" in text
    assert "0.4375" in text and "0.6875" in text
    production = registry.alias("senti", "production")
    assert "4 move(s)" in text
    for move in production.history:
        assert move["moved_at"] in text
    assert "staging" in text and "1 move(s)" in text


def test_version_page_escapes_the_template_and_links_the_manifest(registry):
    m = registry.manifest("senti", 3)
    html = version_page(m, read_task(registry, "senti"))
    page = _Page(html)
    text = "".join(page.text)
    # The template's markup is shown as text, never as an element.
    assert page.scripts == 0 and "<script>" not in html
    assert '&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more' in html
    assert 'Review <script>alert("x")</script> & more: {sentence}' in text
    assert "tiny-<b>model</b>" in text and "<b>model" not in html
    assert manifest_url("senti", 3) == "/tasks/senti/3/manifest.json"
    assert "/tasks/senti/3/manifest.json" in page.links
    for key in ("dev.score", "test.n", "best_step", "prompt.length", "lr", FINGERPRINT,
                m.blob_sha256, "negative", "positive", "staging"):
        assert key in text


def test_flatten_gives_dotted_keys_in_order():
    assert flatten({"b": {"y": 1, "x": {}}, "a": [1, 2]}) == [
        ("a", [1, 2]), ("b.x", "{}"), ("b.y", 1)]
    assert flatten({}) == [] and flatten(3, "k") == [("k", 3)]


def test_served_pages_follow_the_registry(registry):
    """The app on 127.0.0.1 serves every page, the raw manifest, and 404 for what is missing;
    a promotion shows on the next request."""
    with ServerThread(create_app(registry)) as srv, httpx.Client(base_url=srv.url) as client:
        index = client.get("/")
        assert index.status_code == 200 and "text/html" in index.headers["content-type"]
        assert "/tasks/senti/2" in _Page(index.text).links
        assert client.get("/tasks/senti").status_code == 200
        version = client.get("/tasks/senti/1")
        assert version.status_code == 200 and "<script>" not in version.text
        raw = client.get("/tasks/senti/1/manifest.json")
        assert raw.headers["content-type"] == "application/json"
        assert raw.json() == registry.manifest("senti", 1).to_dict()
        for missing in ("/tasks/nope", "/tasks/senti/9", "/tasks/senti/9/manifest.json",
                        "/tasks/BAD..name"):
            response = client.get(missing)
            assert response.status_code == 404, missing
            assert "<h1>404</h1>" in response.text
        registry.promote("senti", "production", 1)
        assert re.search(r"v1\s+0\.5000", " ".join(_Page(client.get("/").text).text))


def test_ui_help_has_a_worked_example(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ui", "--help"])
    out = capsys.readouterr().out
    assert "example:" in out and "softprompt ui --registry registry --port 8600" in out
    assert "127.0.0.1" in out and "8600" in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_command_serves_the_registry(registry):
    """`softprompt ui` as a process: it serves the registry's index until stopped."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "softprompt.cli", "ui", "--registry", str(registry.uri),
         "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/tasks/senti/2/manifest.json")
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "softprompt ui did not start"
                time.sleep(0.2)
        assert json.loads(response.text)["version"] == 2
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in out
