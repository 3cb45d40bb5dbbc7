import json
import math
import re
import xml.etree.ElementTree as ET

import pytest

from softprompt.report import (
    evaluation_html,
    learning_curve_html,
    learning_curve_svg,
    read_metrics_log,
)

SVG = "{http://www.w3.org/2000/svg}"


def _records() -> list[dict]:
    """A run's log: 6 steps (one NaN and one inf loss among them) and 3 evaluations."""
    out = [{"event": "start", "train_examples": 96}]
    losses = [2.0, float("nan"), 1.5, 1.2, float("inf"), 0.9]
    for step, loss in enumerate(losses, 1):
        out.append({"event": "step", "step": step, "loss": loss, "elapsed": step * 0.5})
        if step % 2 == 0:
            out.append({"event": "eval", "step": step, "score": [0.5, 0.75, 0.625][step // 2 - 1]})
    out.append({"event": "done", "best_step": 4, "steps": 6, "stop_reason": "max_steps"})
    return out


def _polylines(svg: str) -> list[list[tuple[float, float]]]:
    root = ET.fromstring(svg)
    return [[tuple(map(float, p.split(","))) for p in line.get("points").split()]
            for line in root.iter(f"{SVG}polyline")]


def _texts(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg).iter(f"{SVG}text")]


def test_one_polyline_point_per_finite_step_and_per_evaluation():
    loss_line, score_line = _polylines(learning_curve_svg(_records(), "toy"))
    assert len(loss_line) == 4  # 6 steps, NaN and inf skipped
    assert len(score_line) == 3
    # Higher values are drawn higher (smaller y): the loss falls, the best score is at step 4.
    assert [y for _, y in loss_line] == sorted(y for _, y in loss_line)
    assert min(score_line, key=lambda p: p[1]) == score_line[1]


def test_points_lie_inside_their_panels_on_a_shared_step_axis():
    root = ET.fromstring(learning_curve_svg(_records(), "toy"))
    frames = [r for r in root.iter(f"{SVG}rect") if r.get("fill") == "none"]
    assert len(frames) == 2
    for frame, line in zip(frames, _polylines(learning_curve_svg(_records(), "toy")), strict=True):
        x0, y0 = float(frame.get("x")), float(frame.get("y"))
        x1, y1 = x0 + float(frame.get("width")), y0 + float(frame.get("height"))
        assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in line)
    loss_line, score_line = _polylines(learning_curve_svg(_records(), "toy"))
    assert loss_line[-1][0] == score_line[-1][0]  # step 6 is at the same x in both panels


def test_axes_are_labelled_with_min_and_max_ticks():
    texts = _texts(learning_curve_svg(_records(), "toy"))
    assert texts.count("step") == 2 and "training loss" in texts and "dev score" in texts
    assert {"1", "6", "0.9", "2", "0.5", "0.75"} <= set(texts)


def test_title_is_escaped():
    svg = learning_curve_svg(_records(), 'run <script>alert("x")</script> & co')
    root = ET.fromstring(svg)
    assert not [e for e in root.iter() if e.tag.endswith("script")]
    assert 'run <script>alert("x")</script> & co' in _texts(svg)
    assert "<script>" not in svg
    html = learning_curve_html(_records(), "<script>alert(1)</script>")
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.parametrize(
    "records", [[], [{"event": "start"}], [{"event": "step", "step": 1, "loss": math.nan}]]
)
def test_nothing_to_draw_gives_a_valid_svg_saying_so(records):
    svg = learning_curve_svg(records, "empty")
    assert _polylines(svg) == []
    assert any(t.startswith("no data") for t in _texts(svg))


def test_a_single_record_is_drawn_as_a_point():
    svg = learning_curve_svg([{"event": "step", "step": 1, "loss": 0.7}])
    (line,) = _polylines(svg)
    assert len(line) == 1
    root = ET.fromstring(svg)
    assert len(list(root.iter(f"{SVG}circle"))) == 1  # a one-point polyline alone draws nothing
    assert all(math.isfinite(v) for v in line[0])
    assert "no data (dev score)" in _texts(svg)


def test_output_is_deterministic():
    assert learning_curve_svg(_records(), "toy") == learning_curve_svg(_records(), "toy")
    assert learning_curve_html(_records(), "toy") == learning_curve_html(_records(), "toy")
    assert learning_curve_svg(_records(), "toy") != learning_curve_svg(_records()[:-3], "toy")


def test_html_page_embeds_the_svg_and_a_table_of_evaluations():
    html = learning_curve_html(_records(), "toy run")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert html.count("<svg ") == 1 and "<h1>toy run</h1>" in html
    # step, score, best so far; a score below the best keeps the best.
    assert '<tr class="best"><td>2</td><td>0.5000</td><td>0.5000</td></tr>' in html
    assert '<tr class="best"><td>4</td><td>0.7500</td><td>0.7500</td></tr>' in html
    assert "<tr><td>6</td><td>0.6250</td><td>0.7500</td></tr>" in html
    assert "no evaluations logged" in learning_curve_html([], "empty")


def test_read_metrics_log_names_file_and_line_of_bad_json(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records()[:3]) + "\n")
    records = read_metrics_log(path)
    assert [r["event"] for r in records] == ["start", "step", "step"]
    assert math.isnan(records[2]["loss"])  # Python's json writes and reads NaN
    path.write_text('{"event": "start"}\n{"event": "step", "step": 1,\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: malformed JSON"):
        read_metrics_log(path)
    path.write_text('{"event": "start"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: expected a JSON object"):
        read_metrics_log(path)


def test_a_half_written_last_line_is_skipped_with_a_warning(tmp_path, caplog):
    """A run killed while appending leaves a last line without its newline: it is skipped with
    a warning, and the training curves can still be written. A broken line that was finished
    (newline written) still fails, naming the file and line."""
    from softprompt.data_version import write_curves

    path = tmp_path / "metrics.jsonl"
    complete = "".join(json.dumps(r) + "\n" for r in _records()[:2])
    path.write_text(complete + '{"event": "step", "step": 2, "lo')
    with caplog.at_level("WARNING", logger="softprompt.report"):
        records = read_metrics_log(path)
    assert [r["event"] for r in records] == ["start", "step"]
    assert "metrics.jsonl:3: skipped a half-written last line" in caplog.text
    assert write_curves(tmp_path, tmp_path / "curves") == {"loss": 1, "dev": 0}
    path.write_text('{"event": "start"}\n{"event": "st\n{"event": "step", "step": 2, "lo')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: malformed JSON"):
        read_metrics_log(path)


def _summary() -> dict:
    """An ensemble summary as softprompt.evaluation writes it: 2 prompts, member 1 selected."""
    members = [
        {"index": i, "name": f"p{i}", "seed": i, "init": init, "dir": f"members/{i}",
         "dev": {"score": dev, "n": 16}, "test": {"score": test, "n": 8}}
        for i, (init, dev, test) in enumerate([("class_label", 0.5, 0.625),
                                               ("<img src=x>", 0.75, 0.875)])
    ]
    aggregate = {"ensemble": {"score": 0.8125}, "average": 0.625, "best": 0.75, "ties": 0}
    return {"task": "toy", "metric": "accuracy", "members": members, "best_member": 1,
            "dev": aggregate, "test": aggregate | {"ensemble": {"score": 0.9375}},
            "selected": {"member": 1, "dev": members[1]["dev"], "test": members[1]["test"]}}


def _evaluation(curves=None) -> str:
    neighbours = [[[("good", 0.5), ("<bad>", 0.25)]] * 4] * 2  # [prompt][position][k]
    return evaluation_html(_summary(), "tiny", ["negative", "positive"], [[3, 1], [0, 4]],
                           neighbours, 8, "lowest index", curves=curves)


def test_evaluation_report_is_one_self_contained_page():
    """Scores of each prompt and of the ensemble, the confusion matrix, a learning curve per
    prompt and the nearest tokens, with inline CSS and SVG and nothing fetched."""
    html = _evaluation([_records(), []])
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "<style>" in html and not re.search(r"""(src|href)=["']""", html)
    assert "Ensemble test accuracy: <b>0.9375</b>" in html
    assert "<td>1 (registered)</td>" in html and "ensemble (majority vote)" in html
    assert '<tr class="aggregate"><td>ensemble (majority vote)</td><td></td><td></td>' \
           "<td>0.8125</td><td>0.9375</td></tr>" in html
    # Confusion matrix: rows gold, columns predicted, the diagonal shaded, row totals.
    assert ('<tr><td><b>negative</b></td><td class="hit">3</td><td>1</td><td>4</td></tr>'
            in html)
    assert "<h2>Learning curves</h2>" in html and html.count("<svg ") == 2
    assert "no data: no training steps" in html  # the second prompt logged nothing
    assert "2 nearest tokens by cosine" in html and "&#x27;&lt;bad&gt;&#x27;" in html
    # Markup from the summary is escaped: an init named like an element is text.
    assert "<img" not in html and "&lt;img src=x&gt;" in html
    assert _evaluation([_records(), []]) == html  # deterministic


def test_evaluation_report_shows_the_template_alone_when_scored():
    """A summary with the zero-shot scores gets their row after the aggregates; one without it
    (written before they were scored) has no such row."""
    summary = _summary()
    summary["zero_shot"] = {"dev": {"score": 0.5625, "n": 16}, "test": {"score": 0.375, "n": 8}}
    neighbours = [[[("good", 0.5)]] * 4] * 2
    html = evaluation_html(summary, "tiny", ["negative", "positive"], [[3, 1], [0, 4]],
                           neighbours, 8, "lowest index")
    assert ('<tr class="baseline"><td>template alone (zero-shot)</td><td></td><td></td>'
            "<td>0.5625</td><td>0.3750</td></tr>" in html)
    assert "zero-shot" not in _evaluation()


def test_evaluation_report_without_curves_leaves_the_section_out():
    html = _evaluation()
    assert "Learning curves" not in html and "<svg" not in html
    assert "Nearest tokens" in html
