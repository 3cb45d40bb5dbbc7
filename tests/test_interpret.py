import json

import pytest
import torch

from softprompt.cli import main
from softprompt.interpret import (
    interpret_report,
    label_token_ids,
    nearest_tokens,
    render_html,
    render_text,
)
from softprompt.prompt import save_prompt


def _token_prompt(lm, ids):
    """[P, E]: the raw embedding rows of `ids` (cosine 1 with themselves)."""
    return lm.embedding.weight.detach()[torch.tensor(ids)].clone()


def test_nearest_token_of_a_token_embedding_is_itself(tiny_causal):
    ids = [tiny_causal.tokenize(" great")[0], tiny_causal.tokenize(" movie")[0]]
    neighbours = nearest_tokens(tiny_causal, _token_prompt(tiny_causal, ids), k=3)
    assert len(neighbours) == 2 and all(len(row) == 3 for row in neighbours)
    for row, i in zip(neighbours, ids, strict=True):
        assert row[0][0] == tiny_causal.decode([i]) and row[0][1] == pytest.approx(1.0, abs=1e-4)
        assert row[0][1] >= row[1][1] >= row[2][1]  # nearest first


def test_label_persistence_against_the_random_control(tiny_causal):
    labels = ["negative", "positive"]
    label_ids = label_token_ids(tiny_causal, labels)
    first = [sorted(label_ids[w])[0] for w in labels]
    prompt = torch.cat(
        [
            _token_prompt(tiny_causal, first),
            torch.randn(3, tiny_causal.dim, generator=torch.Generator().manual_seed(1)),
        ]
    )
    report = interpret_report(tiny_causal, prompt, labels, k=3, seed=0)
    assert report["positions"][0]["labels"] == ["negative"] and report["positions"][1][
        "labels"
    ] == ["positive"]
    assert report["positions_with_label"] >= 2 and report["label_rate"] >= 0.4
    assert report["mean_top1_cosine"] > report["control"]["mean_top1_cosine"]
    assert report["label_rate"] > report["control"]["label_rate"]
    text, page = render_text(report), render_html(report)
    assert "<- label negative" in text and "random control" in text
    assert page.startswith("<!doctype html>") and page.count("<tr") == 1 + prompt.shape[0]


def test_bad_prompt_shape_is_refused(tiny_causal):
    with pytest.raises(ValueError, match=r"\[P, E=32\]"):
        nearest_tokens(tiny_causal, torch.zeros(3, 7))
    with pytest.raises(ValueError, match="k must be"):
        nearest_tokens(tiny_causal, torch.zeros(3, tiny_causal.dim), k=0)


def test_interpret_command_writes_text_html_and_json(
    tiny_causal_dir, tiny_causal, tmp_path, capsys
):
    path = tmp_path / "p.safetensors"
    save_prompt(torch.randn(4, tiny_causal.dim), path)
    html_out, json_out = tmp_path / "r" / "report.html", tmp_path / "report.json"
    rc = main(
        [
            "interpret",
            "--prompt",
            str(path),
            "--labels",
            "negative",
            "positive",
            "--model",
            str(tiny_causal_dir),
            "--k",
            "2",
            "--out",
            str(html_out),
            "--json",
            str(json_out),
        ]
    )
    assert rc == 0
    assert "Prompt of 4 vectors" in capsys.readouterr().out
    assert "<table" in html_out.read_text()
    report = json.loads(json_out.read_text())
    assert len(report["positions"]) == 4 and "softprompt interpret" in report["command"]
