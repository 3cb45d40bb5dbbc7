"""The benchmarks run end to end in quick mode on the tiny model and write sane results files.
No timing assertions: only that the tables, targets and fields are there and physically sensible."""

from __future__ import annotations

import json

import pytest
import torch

from bench.common import interleaved, matmul_peak, paired_ratio, peak_memory, summary
from bench.flops import ModelShape


def _record(out, name):
    record = json.loads((out / f"{name}.json").read_text())
    md = (out / f"{name}.md").read_text()
    assert record["benchmark"] == name and record["tables"] and record["tables"][0]["rows"]
    assert record["environment"]["torch"] == torch.__version__
    assert set(record["load_avg_1m"]) == {"before", "after"}
    assert record["command"].startswith(f"python -m bench.{name}")
    assert "| " in md and "load average" in md and "torch " in md
    for t in record["targets"]:
        assert set(t) >= {"name", "goal", "measured", "met"}
    return record


def test_summary_and_ratio():
    s = summary([2.0, 1.0, 4.0])
    assert (s["median"], s["min"], s["max"], s["spread"]) == (2.0, 1.0, 4.0, 1.5)
    assert paired_ratio([2.0, 6.0, 3.0], [1.0, 2.0, 3.0])["median"] == 2.0


def test_interleaved_rotates_order():
    calls = []
    times = interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=2, warmup=1
    )
    assert calls == ["a", "b", "a", "b", "b", "a"]
    assert [len(v) for v in times.values()] == [2, 2]


def test_peak_memory_sees_an_allocation():
    m = peak_memory(lambda: torch.ones(64 * 2**20 // 4).sum())  # 64 MiB, touched
    assert m["delta"] > 48 * 2**20 and m["peak"] >= m["base"]


def test_matmul_peak_is_positive():
    peak = matmul_peak((64, 128), iters=2)
    assert set(peak["per_size"]) == {64, 128} and peak["peak"] > 1e6


def test_flop_counts(tiny_causal):
    shape = ModelShape.of(tiny_causal)
    cfg = tiny_causal.model.config
    # q, o: E x E; k, v: E x kv_dim; gate, up, down: E x I, per layer.
    kv = cfg.num_key_value_heads * cfg.hidden_size // cfg.num_attention_heads
    per_layer = (
        2 * cfg.hidden_size**2
        + 2 * cfg.hidden_size * kv
        + 3 * cfg.hidden_size * cfg.intermediate_size
    )
    assert shape.body_params == cfg.num_hidden_layers * per_layer
    last_mlp = 3 * cfg.hidden_size * cfg.intermediate_size
    assert shape.last_mlp_params == last_mlp
    f = shape.forward(batch=2, width=10, head_rows=3)  # the last MLP runs on the 3 head rows only
    assert f["linear"] == 2 * (shape.body_params - last_mlp) * 20 + 2 * last_mlp * 3
    assert (
        shape.forward(batch=2, width=10, head_rows=20)["linear"] == 2 * shape.body_params * 20
    )  # a plain forward
    step = shape.prompt_step(batch=2, width=10, head_rows=3)
    assert step["linear"] == 2 * f["linear"] and step["attention"] == 3 * f["attention"]
    # A shared prefix of 4 positions runs once. That is 2 rows x 6 own positions + 4, the rows
    # attending to all 10 keys.
    shared = shape.run(batch=2, width=10, head_rows=3, shared_prefix=4)
    assert shared["linear"] == 2 * (shape.body_params - last_mlp) * (2 * 6 + 4) + 2 * last_mlp * 3
    assert shared["attention"] == 4 * shape.attn_dim * shape.layers * (2 * 6 * 10 + 4 * 4)
    assert shape.first_qkv_params == cfg.hidden_size**2 + 2 * cfg.hidden_size * kv
    # Behind the shared prefix the rows' first-layer q/k/v projections (12 row positions) have no
    # backward.
    shared_step = shape.prompt_step(batch=2, width=10, head_rows=3, shared_prefix=4)
    assert shared_step["linear"] == 2 * shared["linear"] - 2 * shape.first_qkv_params * 12
    assert shared_step["total"] < step["total"]
    # Rows of 3 and 6 own positions packed end to end make 9 positions attending to 4 + 9 keys,
    # with no padding.
    packed = shape.run(batch=2, width=10, head_rows=3, shared_prefix=4, packed=[3, 6])
    assert packed["linear"] == 2 * (shape.body_params - last_mlp) * (9 + 4) + 2 * last_mlp * 3
    assert packed["attention"] == 4 * shape.attn_dim * shape.layers * (9 * 13 + 4 * 4)


def test_rows_first_layer_projections_have_no_backward(tiny_causal):
    """The premise of ModelShape.prompt_step's shared-prefix count: the prefix's first-layer q/k/v
    outputs need a gradient (the prompt is their input), the rows' do not."""
    from softprompt.model import Batch

    assert tiny_causal.shares_prefix()
    needs_grad = []
    handle = tiny_causal.model.base_model.layers[0].self_attn.q_proj.register_forward_hook(
        lambda module, args, out: needs_grad.append(out.requires_grad))
    prompt = torch.nn.Parameter(torch.randn(4, tiny_causal.dim))
    try:
        logprobs, _ = tiny_causal.target_logprobs(
            prompt, Batch([[5, 6, 7], [8, 9, 10]], [[11, 2], [12, 2]])
        )
    finally:
        handle.remove()
    assert needs_grad == [True, False]  # the prefix pass, then the rows' pass
    logprobs.sum().backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0


@pytest.fixture()
def quick_args(tiny_causal_dir, tmp_path):
    return ["--model", str(tiny_causal_dir), "--quick", "--threads", "1", "--out", str(tmp_path)]


def test_train_vs_peft(quick_args, toy_task, tmp_path):
    pytest.importorskip("peft")
    from bench import train_vs_peft

    train_vs_peft.main(
        quick_args
        + [
            "--task",
            str(toy_task["spec_path"]),
            "--data-dir",
            str(toy_task["data_dir"]),
            "--input-tokens",
            "16",
        ]
    )
    rec = _record(tmp_path, "train_vs_peft")
    for shape in ("fixed", "task"):
        r = rec["results"]["shapes"][shape]
        # Same prompt, same batch, same objective: the two first losses agree.
        assert r["first_loss"]["ours"] == pytest.approx(r["first_loss"]["peft"], rel=1e-4)
        assert r["speedup"]["median"] > 0 and r["examples_per_s"]["ours"]["median"] > 0
        assert (
            r["flops"]["peft"]["median"] > r["flops"]["ours"]["median"]
        )  # PEFT's head runs everywhere
    assert len(rec["targets"]) == 2


def test_utilization(quick_args, toy_task, tmp_path):
    from bench import utilization

    utilization.main(
        quick_args
        + ["--input-tokens", "16", "--batch-sizes", "2,4", "--task", str(toy_task["spec_path"])]
        + ["--data-dir", str(toy_task["data_dir"])]
    )
    record = _record(tmp_path, "utilization")
    r = record["results"]
    # The MFU curve: one row per batch size, its FLOPs growing with the batch, and a plot.
    assert list(r["curve"]) == ["2", "4"]
    assert r["curve"]["4"]["flops"]["total"] > r["curve"]["2"]["flops"]["total"] > 0
    assert all(c["utilization"]["median"] > 0 for c in r["curve"].values())
    assert (tmp_path / "utilization.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The CPU goal is measured here; the GPU goal is "not measured", neither met nor failed.
    assert record["device"] == "cpu"
    statuses = {t["on"]: (t["status"], t["met"]) for t in record["targets"]}
    assert statuses["cuda"] == ("not measured", None)
    assert statuses["cpu"][0] in ("met", "not met")
    assert "not measured (a cuda goal)" in (tmp_path / "utilization.md").read_text()
    assert r["peak_flops"]["median"] > 0
    for work in ("train_step", "inference"):
        assert r[work]["flops"]["total"] > 0 and r[work]["utilization"]["median"] > 0
    # A step does forward + input-gradient backward: twice a forward's linear FLOPs, over 8 rows'
    # own positions plus the [lead; P] prefix once (shared on CPU), less the rows' first-layer
    # q/k/v backward.
    step = r["train_step"]
    assert (
        step["width"] > 20 + 16 and step["shared_prefix"] >= 20
    )  # prompt + input + target positions
    kinds = step["time_by_kernel"]  # the profiled step's time, split by kernel
    assert (
        sum(k["share"] for k in kinds.values()) == pytest.approx(1)
        and kinds["matmul (linear layers, LM head)"]["seconds"] > 0
    )
    rows = 8 * (step["width"] - step["shared_prefix"])
    positions = rows + step["shared_prefix"]
    shape = r["model_shape"]
    targets = step["flops"]["head"] // (4 * shape["vocab"] * shape["hidden"])  # head rows
    assert step["flops"]["linear"] == (
        4 * (shape["body_params"] - shape["last_mlp_params"]) * positions
        + 4 * shape["last_mlp_params"] * targets
        - 2 * shape["first_qkv_params"] * rows
    )


def test_targets_for_another_device_are_not_measured(tmp_path):
    """A goal for one device type is reported "not measured" from a run on another, whatever its
    number; a goal for every device is met or not."""
    import argparse

    from bench.common import Report

    args = argparse.Namespace(out=str(tmp_path), reps=1)
    report = Report("probe", "Probe", args, [])
    report.table("t", ["a"], [[1]])
    report.target("anywhere", ">= 1", 2.0, True)
    report.target("gpu only", ">= 1", 2.0, True, on="cuda")
    report.target("cpu only", ">= 1", 0.5, False, on="cpu")
    report.write("cpu")
    record = json.loads((tmp_path / "probe.json").read_text())
    assert (record["device"], record["device_name"]) == ("cpu", record["environment"]["cpu"])
    assert [(t["met"], t["status"]) for t in record["targets"]] == [
        (True, "met"),
        (None, "not measured"),
        (False, "not met"),
    ]


def test_rank_labels(quick_args, tmp_path):
    from bench import rank_labels

    rank_labels.main(quick_args + ["--input-tokens", "16", "--labels", "2,3", "--naive"])
    rec = _record(tmp_path, "rank_labels")
    cases = rec["results"]["cases"]
    assert set(cases) == {"forward", "L=2", "naive L=2", "L=3", "naive L=3"}
    assert cases["forward"]["ratio_to_forward"]["median"] == 1.0
    assert rec["targets"][0]["name"].startswith("rank classification")


def test_rank_labels_rejects_too_many_labels(quick_args):
    from bench import rank_labels

    with pytest.raises(SystemExit, match="at most"):
        rank_labels.main(quick_args + ["--labels", "99"])


def test_run_all_passes_options_and_writes_summary(tiny_causal_dir, tmp_path):
    from bench.__main__ import main

    main(
        [
            "--only",
            "rank_labels",
            "--reps",
            "1",
            "--quick",
            "--model",
            str(tiny_causal_dir),
            "--out",
            str(tmp_path),
        ]
    )
    rec = _record(tmp_path, "rank_labels")
    assert rec["config"]["reps"] == 1  # without --reps, --quick would run 2
    assert rec["results"]["cases"]["forward"]["seconds"]["n"] == 1
    assert "rank classification" in (tmp_path / "summary.md").read_text()


def test_ensemble_batch(quick_args, tmp_path):
    from bench import ensemble_batch

    ensemble_batch.main(quick_args + ["--input-tokens", "16", "--ensembles", "1,3"])
    r = _record(tmp_path, "ensemble_batch")["results"]["ensembles"]
    assert set(r) == {"1", "3"}
    for v in r.values():
        assert v["max_abs_score_difference"] < 1e-3  # one batch scores what N passes score
        assert v["one_batch"]["memory"]["peak"] > 0


def test_mixed_tasks(quick_args, toy_task, tmp_path):
    from bench import mixed_tasks

    spec = str(toy_task["spec_path"])
    mixed_tasks.main(
        quick_args
        + ["--tasks", f"{spec},{spec}", "--data-dir", str(toy_task["data_dir"]), "--per-task", "3"]
    )
    r = _record(tmp_path, "mixed_tasks")["results"]
    assert r["rows"] == 6 and r["max_abs_score_difference"] < 1e-3
    assert (
        r["service"]["speedup_vs_per_task"]["median"] > 0
        and r["one_batch"]["speedup_vs_per_task"]["median"] > 0
    )
    assert r["service_groups_by_prompt"]  # CPU: the service batches each prompt's rows together


def test_memory(quick_args, tmp_path):
    pytest.importorskip("peft")
    from bench import memory

    memory.main(
        quick_args
        + [
            "--tasks-resident",
            "1,100",
            "--requests",
            "4",
            "--serve-input-tokens",
            "8",
            "--input-tokens",
            "16",
        ]
    )
    rec = _record(tmp_path, "memory")
    r = rec["results"]
    for pattern in ("one_task", "spread"):
        served = r["serving"][pattern]
        assert served["100"]["prompt_bytes"] == 100 * served["1"]["prompt_bytes"]
        assert served["1"]["peak"]["median"] > r["model_bytes"]  # the process holds the model
    assert set(r["training"]) >= {"softprompt", "PEFT"}
    assert [t["name"] for t in rec["targets"]] == ["serving 100 tasks vs 1"]


def test_group_step(quick_args, tmp_path):
    from bench import group_step

    group_step.main(quick_args + ["--input-tokens", "8", "--batch-size", "2", "--members", "2,5"])
    rec = _record(tmp_path, "group_step")
    assert set(rec["results"]) == {"N=1", "N=2", "N=5"}  # one prompt is always the reference
    assert rec["results"]["N=1"]["ratio_to_one"]["median"] == 1.0
    assert rec["results"]["N=5"]["seconds"]["median"] > 0
    (target,) = rec["targets"]
    assert target["name"] == "group step, 5 prompts"
    assert target["met"] is None  # a GPU goal: a CPU run does not measure it


def test_benchmarks_refuse_cuda_graphs_on_cpu(quick_args):
    from bench import group_step

    with pytest.raises(ValueError, match="compile"):
        group_step.main(quick_args + ["--compile", "reduce-overhead", "--device", "cpu"])
