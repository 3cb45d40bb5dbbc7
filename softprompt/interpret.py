"""Reading a learned prompt (Lester et al. 2021, section 7): each prompt vector's nearest
vocabulary tokens by cosine similarity, whether the task's label tokens are among them, and the
same statistics for random vectors as a control (what "label persistence" looks like by chance).

Cosine similarity ignores scale, so the raw embedding rows serve even for models whose embedding
module scales its output (Gemma).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import torch

from softprompt.model import FrozenLM


def _vocabulary(lm: FrozenLM) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [V'], unit-norm embeddings [V', E]) of the vocabulary without special tokens."""
    special = set(lm.tokenizer.all_special_ids)
    ids = torch.tensor([i for i in range(lm.vocab_size) if i not in special])
    weight = lm.embedding.weight.detach().float().cpu()[ids]
    return ids, torch.nn.functional.normalize(weight, dim=1)


def _neighbours(lm: FrozenLM, vectors: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """vectors [P, E] -> (cosine [P, k], token ids [P, k]) of the k nearest vocabulary tokens."""
    if vectors.dim() != 2 or vectors.shape[1] != lm.dim:
        raise ValueError(f"prompt must be [P, E={lm.dim}], got {list(vectors.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ids, vocab = _vocabulary(lm)
    unit = torch.nn.functional.normalize(vectors.detach().float().cpu(), dim=1)  # [P, E]
    cosine = unit @ vocab.T  # [P, V']
    sims, idx = cosine.topk(min(k, len(ids)), dim=1)
    return sims, ids[idx]


def nearest_tokens(lm: FrozenLM, prompt: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
    """For each of the P prompt vectors, its k nearest tokens as (text, cosine), nearest first."""
    sims, ids = _neighbours(lm, prompt, k)
    return [
        [
            (lm.decode([t]), round(float(s), 4))
            for t, s in zip(row_ids.tolist(), row_sims, strict=True)
        ]
        for row_ids, row_sims in zip(ids, sims, strict=True)
    ]


def label_token_ids(lm: FrozenLM, label_words: Sequence[str]) -> dict[str, set[int]]:
    """Each label word's token ids, as targets see it (with the leading space of decoder-only
    targets) and bare; EOS excluded."""
    out = {}
    for word in label_words:
        ids = set(lm.encode_target(word)[:-1]) | set(lm.tokenize(word))
        out[word] = ids - {lm.eos_id}
    return out


def _stats(lm: FrozenLM, vectors: torch.Tensor, labels: dict[str, set[int]], k: int) -> dict:
    sims, ids = _neighbours(lm, vectors, k)
    hits = [[w for w, wids in labels.items() if wids & set(row)] for row in ids.tolist()]
    return {
        "positions_with_label": sum(bool(h) for h in hits),
        "label_rate": sum(bool(h) for h in hits) / len(hits),
        "mean_top1_cosine": round(float(sims[:, 0].mean()), 4),
        "hits": hits,
        "sims": sims,
        "ids": ids,
    }


def interpret_report(
    lm: FrozenLM,
    prompt: torch.Tensor,
    label_words: Sequence[str],
    k: int = 5,
    seed: int = 0,
    controls: int = 5,
) -> dict:
    """Nearest tokens of every prompt vector, label persistence, and a random-vector control.

    The control draws `controls` sets of P Gaussian vectors (direction uniform on the sphere; cosine
    ignores norm) and reports their mean label rate and top-1 cosine. Returns a JSON-ready dict:
    {"positions": [{"index", "norm", "neighbours": [[token, cosine]...], "labels": [...]}, ...],
     "label_rate", "mean_top1_cosine", "control": {...}, "k", "label_words", "model"}.
    """
    labels = label_token_ids(lm, label_words)
    real = _stats(lm, prompt, labels, k)
    generator = torch.Generator().manual_seed(seed)
    runs = [
        _stats(lm, torch.randn(prompt.shape, generator=generator), labels, k)
        for _ in range(controls)
    ]
    positions = []
    for p in range(prompt.shape[0]):
        neighbours = [
            [lm.decode([t]), round(float(s), 4)]
            for t, s in zip(real["ids"][p].tolist(), real["sims"][p], strict=True)
        ]
        positions.append(
            {
                "index": p,
                "norm": round(float(prompt[p].float().norm()), 4),
                "neighbours": neighbours,
                "labels": real["hits"][p],
            }
        )
    return {
        "model": lm.name,
        "k": k,
        "label_words": list(label_words),
        "prompt_length": int(prompt.shape[0]),
        "positions": positions,
        "positions_with_label": real["positions_with_label"],
        "label_rate": real["label_rate"],
        "mean_top1_cosine": real["mean_top1_cosine"],
        "control": {
            "kind": f"{controls} draws of {prompt.shape[0]} Gaussian random vectors (seed {seed})",
            "label_rate": sum(r["label_rate"] for r in runs) / controls,
            "mean_top1_cosine": round(sum(r["mean_top1_cosine"] for r in runs) / controls, 4),
        },
    }


def render_text(report: dict) -> str:
    """A plain-text report: one line per prompt vector, then the label and control summary."""
    lines = [
        f"Prompt of {report['prompt_length']} vectors on {report['model']}; "
        f"{report['k']} nearest tokens by cosine",
        "",
    ]
    for pos in report["positions"]:
        tokens = ", ".join(f"{tok!r} {sim:.3f}" for tok, sim in pos["neighbours"])
        mark = f"  <- label {'/'.join(pos['labels'])}" if pos["labels"] else ""
        lines.append(f"{pos['index']:>4}  |v|={pos['norm']:.2f}  {tokens}{mark}")
    control = report["control"]
    lines += [
        "",
        f"label words: {', '.join(report['label_words'])}",
        "positions with a label among the neighbours: "
        f"{report['positions_with_label']}/{report['prompt_length']}"
        f" (rate {report['label_rate']:.3f}; random control {control['label_rate']:.3f})",
        f"mean top-1 cosine: {report['mean_top1_cosine']:.3f} "
        f"(random control {control['mean_top1_cosine']:.3f})",
        f"control: {control['kind']}",
    ]
    return "\n".join(lines) + "\n"


def render_html(report: dict) -> str:
    """The same report as a standalone HTML page (label tokens highlighted)."""
    esc = html.escape
    rows = []
    for pos in report["positions"]:
        cells = "".join(
            f"<td><code>{esc(repr(tok))}</code> {sim:.3f}</td>" for tok, sim in pos["neighbours"]
        )
        style = ' style="background:#ffe9a8"' if pos["labels"] else ""
        labels = esc(", ".join(pos["labels"]))
        rows.append(
            f"<tr{style}><td>{pos['index']}</td><td>{pos['norm']:.2f}</td>{cells}"
            f"<td>{labels}</td></tr>"
        )
    control = report["control"]
    head = "".join(f"<th>#{i + 1}</th>" for i in range(report["k"]))
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<title>prompt interpretation</title></head><body>"
        f"<h1>Prompt of {report['prompt_length']} vectors on {esc(report['model'])}</h1>"
        f"<p>Label words: {esc(', '.join(report['label_words']))}. "
        f"Positions with a label among the {report['k']} nearest tokens: "
        f"{report['positions_with_label']}/{report['prompt_length']} "
        f"(rate {report['label_rate']:.3f}; random control "
        f"{control['label_rate']:.3f}). "
        f"Mean top-1 cosine {report['mean_top1_cosine']:.3f} (random control "
        f"{control['mean_top1_cosine']:.3f}). Control: {esc(control['kind'])}.</p>"
        "<table border='1' cellpadding='3'><tr><th>position</th><th>norm</th>"
        f"{head}<th>labels</th></tr>{''.join(rows)}</table>"
        "</body></html>\n"
    )
