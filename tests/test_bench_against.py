"""bench.against: the same benchmarks on this checkout and on another commit, alternating."""

from __future__ import annotations

import json

from bench.against import main, within_noise


def test_within_noise_is_the_base_range_widened():
    assert within_noise([1.04], [1.0, 1.02], tolerance=0.05)
    assert within_noise([0.96], [1.0, 1.02], tolerance=0.05)
    assert not within_noise([1.10], [1.0, 1.02], tolerance=0.05)
    assert not within_noise([0.90, 0.91, 1.5], [1.0, 1.02], tolerance=0.05)  # the median counts


def test_runs_both_trees_in_alternation(tiny_causal_dir, tmp_path):
    """Against HEAD itself (the base tree is a fresh worktree of it): every target gets one
    sample per round from each tree, and the worktree is gone afterwards."""
    record = main([
        "--base", "HEAD", "--only", "rank_labels", "--rounds", "2", "--out", str(tmp_path),
        "--", "--model", str(tiny_causal_dir), "--quick", "--reps", "1", "--threads", "1",
    ])
    assert record["targets"]
    for target in record["targets"]:
        assert len(target["base"]) == 2 and len(target["head"]) == 2
        assert target["measured"] > 0
    saved = json.loads((tmp_path / "against.json").read_text())
    assert saved["targets"] == record["targets"]
    assert "within noise" in (tmp_path / "against.md").read_text()
