"""Reports people read, as plain SVG and HTML text: a training run's learning curve (from its
metrics.jsonl) and the evaluation report of an ensemble of prompts.

Pure functions with no plotting library: the output is a string that a KFP HTML artifact, a
notebook or a file can hold as it is. The same records always give the same bytes (fixed number
formatting, no timestamps, no generated ids), so a report can be compared or cached.

Records are the dicts train() writes, one per line: {"event": "step", "step", "loss", ...} per
optimizer step and {"event": "eval", "step", "score", ...} per dev evaluation. Other events and
records missing a finite step, loss or score are left out of the pictures.
"""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path
from xml.sax.saxutils import escape

log = logging.getLogger(__name__)

# SVG geometry in pixels: two panels stacked, sharing the step axis.
WIDTH = 640
PANEL_HEIGHT = 180
TOP = 40  # room for the title
GAP = 50  # room for the upper panel's step labels
LEFT, RIGHT, BOTTOM = 70, 20, 45


def read_metrics_log(path: str | Path) -> list[dict]:
    """The records of a run's metrics.jsonl, in file order (blank lines skipped).

    Raises FileNotFoundError for a missing file and ValueError naming the file and line for a
    line that is not a JSON object. The exception is a last line with no newline that does not
    parse. A run killed while writing it leaves such a line, so it is skipped with a warning."""
    from softprompt.task_data import read_jsonl
    from softprompt.tasks import TaskDataError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log")
    records = []
    try:
        for _, record in read_jsonl(path):
            records.append(record)
    except TaskDataError:
        # Only a bad line at the end, with no newline after it, was still being written.
        lines = path.read_text(encoding="utf-8-sig").split("\n")
        complete = sum(1 for line in lines[:-1] if line.strip())
        if not lines[-1].strip() or len(records) != complete:
            raise
        log.warning("%s:%d: skipped a half-written last line", path, len(lines))
    return records


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(records: list[dict], event: str, field: str) -> list[tuple[float, float]]:
    """(step, value) of the records of `event` whose step and `field` are finite numbers."""
    return [
        (r["step"], r[field]) for r in records
        if r.get("event") == event and _finite(r.get("step")) and _finite(r.get(field))
    ]


def _span(values: list[float], pad: float | None = None) -> tuple[float, float]:
    """(low, high) of values, widened by `pad` (default: 10% of the value, or 1) when they are
    all equal, so the scale never divides by 0 and a lone point sits in the middle."""
    low, high = min(values), max(values)
    if low == high:
        pad = pad or abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    return low, high


def _number(value: float) -> str:
    """A tick label: integers as integers, other values with 4 significant digits."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def _text(x: float, y: float, content: str, anchor: str = "middle", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>'
            f"{escape(content)}</text>")


def _panel(
    points: list[tuple[float, float]], x_span: tuple[float, float], top: float, label: str,
    color: str, markers: bool,
) -> list[str]:
    """SVG elements of one panel: frame, axis labels, min/max ticks and the polyline of `points`
    (one polyline point per (step, value)), each point also a circle when `markers`. x_span:
    the step range shared by both panels; top: the panel's upper edge in pixels."""
    plot_w = WIDTH - LEFT - RIGHT
    bottom = top + PANEL_HEIGHT
    out = [f'<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_HEIGHT}" '
           'fill="none" stroke="#999"/>',
           _text(LEFT + plot_w / 2, bottom + 32, "step"),
           _text(18, top + PANEL_HEIGHT / 2, label,
                 extra=f' transform="rotate(-90 18 {top + PANEL_HEIGHT / 2:.1f})"')]
    if not points:
        return [*out, _text(LEFT + plot_w / 2, top + PANEL_HEIGHT / 2, f"no data ({label})")]
    x_low, x_high = x_span
    y_low, y_high = _span([v for _, v in points])

    def xy(step: float, value: float) -> tuple[float, float]:
        return (LEFT + (step - x_low) / (x_high - x_low) * plot_w,
                bottom - (value - y_low) / (y_high - y_low) * PANEL_HEIGHT)

    coords = [xy(s, v) for s, v in points]
    out += [_text(LEFT, bottom + 16, _number(x_low)),
            _text(LEFT + plot_w, bottom + 16, _number(x_high)),
            _text(LEFT - 6, bottom, _number(y_low), anchor="end"),
            _text(LEFT - 6, top + 10, _number(y_high), anchor="end"),
            f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="'
            + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords) + '"/>']
    if markers:
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in coords]
    return out


def learning_curve_svg(records: list[dict], title: str = "") -> str:
    """A self-contained SVG (640 px wide) of a run: training loss per step (event "step", upper
    panel) and dev score per evaluation (event "eval", field "score", lower panel, each
    evaluation also a dot), on one shared step axis with min/max tick labels. Non-finite values
    are skipped; with nothing to draw the picture says "no data"."""
    losses = _series(records, "step", "loss")
    scores = _series(records, "eval", "score")
    height = TOP + 2 * PANEL_HEIGHT + GAP + BOTTOM
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
           f"<title>{escape(title or 'learning curve')}</title>",
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>']
    if title:
        out.append(_text(WIDTH / 2, 22, title, extra=' font-size="15"'))
    if not losses and not scores:
        out.append(_text(WIDTH / 2, height / 2, "no data: no training steps or evaluations logged"))
    else:
        x_span = _span([s for s, _ in losses + scores], pad=1.0)  # steps are whole numbers
        out += _panel(losses, x_span, TOP, "training loss", "#1f77b4", markers=len(losses) == 1)
        out += _panel(scores, x_span, TOP + PANEL_HEIGHT + GAP, "dev score", "#d62728",
                      markers=True)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _evaluation_rows(records: list[dict]) -> list[str]:
    """Table rows (step, score, best so far) of the evaluations. Best so far follows the
    training loop's rule: only a strictly higher finite score is a new best."""
    rows, best = [], None
    for r in records:
        if r.get("event") != "eval":
            continue
        score = r.get("score")
        improved = _finite(score) and (best is None or score > best)
        if improved:
            best = score
        cells = [escape(str(r.get("step", ""))),
                 f"{score:.4f}" if _finite(score) else escape(str(score)),
                 "" if best is None else f"{best:.4f}"]
        mark = ' class="best"' if improved else ""
        rows.append(f"<tr{mark}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return rows


def learning_curve_html(records: list[dict], title: str) -> str:
    """A complete small HTML page: the title, learning_curve_svg inline and a table of the
    evaluations (step, dev score, best so far; rows that set a new best in bold). For the
    Kubeflow UI's HTML artifact viewer, which shows one self-contained file."""
    rows = _evaluation_rows(records) or ['<tr><td colspan="3">no evaluations logged</td></tr>']
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "tr.best td{font-weight:bold}</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(title)}</h1>",
        learning_curve_svg(records, title),
        "<table>",
        "<thead><tr><th>step</th><th>dev score</th><th>best so far</th></tr></thead>",
        "<tbody>",
        *rows,
        "</tbody>",
        "</table>",
        "</body>",
        "</html>",
        "",
    ])


# ---------------------------------------------------------------------------- evaluation report
REPORT_CSS = (
    "body{font-family:sans-serif;margin:1.5em;color:#222;max-width:75em}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "th,td{border:1px solid #ccc;padding:3px 9px;text-align:right}"
    "th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}"
    "td.text,th.text{text-align:left}tr.aggregate td{font-weight:bold;background:#fafafa}"
    "td.hit{background:#e3f1e3}tr.baseline td{font-style:italic;color:#555}"
    ".headline{font-size:1.3em}figure{margin:0 0 1.5em}figcaption{color:#555}"
)


def _table(head: list[str], rows: list[list[str]], row_class: list[str] | None = None) -> str:
    """An HTML table; cells are already escaped or formatted (a header or cell may carry its
    own <th> or <td> tag)."""
    header = "".join(h if h.startswith("<th") else f"<th>{h}</th>" for h in head)
    classes = row_class or [""] * len(rows)
    body = "".join(
        (f'<tr class="{cls}">' if cls else "<tr>")
        + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>"
        for row, cls in zip(rows, classes, strict=True))
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _score_rows(summary: dict) -> tuple[list[list[str]], list[str]]:
    """Rows of the scores table (each prompt, then the aggregates, then the template alone when
    the summary has its scores) and their CSS classes."""
    esc = html.escape
    selected = summary["selected"]["member"]
    rows, classes = [], []
    for m in summary["members"]:
        mark = " (registered)" if m["index"] == selected else ""
        rows.append([f"{m['index']}{mark}", f'<td class="text">{esc(m["init"])}</td>',
                     str(m["seed"]),
                     f"{m['dev']['score']:.4f}", f"{m['test']['score']:.4f}"])
        classes.append("")
    for label, key in (("ensemble (majority vote)", "ensemble"), ("average of prompts", "average"),
                       ("best prompt", "best")):
        dev, test = summary["dev"][key], summary["test"][key]
        if key == "ensemble":
            dev, test = dev["score"], test["score"]
        rows.append([label, "", "", f"{dev:.4f}", f"{test:.4f}"])
        classes.append("aggregate")
    # The floor every prompt should clear: the frozen LM with the template and no soft prompt.
    # Summaries written before it was scored have no such row.
    zero_shot = summary.get("zero_shot") or {}
    if zero_shot:
        cells = [f"{zero_shot[split]['score']:.4f}" if split in zero_shot else "-"
                 for split in ("dev", "test")]
        rows.append(["template alone (zero-shot)", "", "", *cells])
        classes.append("baseline")
    return rows, classes


def _confusion_table(labels: list[str], confusion: list[list[int]]) -> str:
    """Rows: gold label, columns: predicted label, then each row's total; the diagonal (correct
    answers) is shaded."""
    esc = html.escape
    rows = []
    for i, (word, row) in enumerate(zip(labels, confusion, strict=True)):
        cells = [f'<td class="hit">{n}</td>' if i == j else str(n) for j, n in enumerate(row)]
        rows.append([f"<b>{esc(word)}</b>", *cells, str(sum(row))])
    return _table(["gold \\ predicted", *(esc(w) for w in labels), "total"], rows)


def _curve_figures(members: list[dict], curves: list[list[dict]]) -> list[str]:
    """One learning-curve SVG per prompt (from its metrics.jsonl records), inline."""
    parts = []
    for m, records in zip(members, curves, strict=True):
        title = f"prompt {m['index']} ({m['init']}, seed {m['seed']})"
        parts.append(f"<figure>{learning_curve_svg(records, title)}"
                     f"<figcaption>{escape(title)}: training loss per step and dev score per "
                     "evaluation</figcaption></figure>")
    return parts


def evaluation_html(summary: dict, base_model: str, labels: list[str],
                    confusion: list[list[int]], neighbours: list[list[list[tuple[str, float]]]],
                    n_test: int, tie_break: str, curves: list[list[dict]] | None = None) -> str:
    """The evaluation report of an ensemble (softprompt.evaluation), one self-contained HTML page
    (inline CSS and SVG, nothing fetched): per-prompt and ensemble dev/test scores (and the
    template alone's, zero-shot, when the summary has them), the ensemble's confusion matrix
    on test, each prompt's learning curve (`curves[i]`, the records of member i's metrics.jsonl;
    None leaves the section out) and each prompt's nearest vocabulary tokens
    (`neighbours[i][position]` = [(token, cosine), ...])."""
    esc = html.escape
    members = summary["members"]
    rows, classes = _score_rows(summary)
    ensemble = summary["test"]["ensemble"]["score"]
    title = f"{summary['task']}: {len(members)} prompts on {base_model}"
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>softprompt evaluation: {esc(title)}</title>",
        f"<style>{REPORT_CSS}</style>", "</head>", "<body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="headline">Ensemble test {esc(summary["metric"])}: <b>{ensemble:.4f}</b> '
        f"(registered prompt {summary['selected']['member']}: "
        f"{summary['selected']['test']['score']:.4f})</p>",
        f"<p>Metric: {esc(summary['metric'])} (score). Dev: {members[0]['dev']['n']} examples; "
        f"test: {n_test} examples. Ensemble ties broken by {esc(tie_break)}.</p>",
        "<h2>Scores</h2>",
        _table(["prompt", '<th class="text">init</th>', "seed", "dev", "test"], rows, classes),
        "<h2>Ensemble confusion matrix (test; rows: gold, columns: predicted)</h2>",
        _confusion_table(labels, confusion),
    ]
    if curves is not None:
        parts += ["<h2>Learning curves</h2>", *_curve_figures(members, curves)]
    parts.append("<h2>Nearest tokens</h2>")
    for m, table in zip(members, neighbours, strict=True):
        k = len(table[0]) if table else 0
        cells = [[str(p), *(f"<code>{esc(repr(tok))}</code> {sim:.3f}" for tok, sim in row)]
                 for p, row in enumerate(table)]
        parts.append(f"<h3>Prompt {m['index']} ({esc(m['init'])}, seed {m['seed']}): "
                     f"{k} nearest tokens by cosine</h3>")
        parts.append(_table(["position", *(f"#{i + 1}" for i in range(k))], cells))
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
