"""Prompt tuning: only the prompt trains, the best dev prompt is kept, a killed run resumes
exactly, and every evaluation reports one progress line."""

import json
import logging
import re

import pytest
import torch

from softprompt.prompt import PromptConfig, load_prompt
from softprompt.tasks import load_spec
from softprompt.training.config import TrainConfig
from softprompt.training.prompt_tuning import train

PROGRESS_LOGGER = "softprompt.training.progress"


def _config(toy_task, **kw):
    base = dict(task=str(toy_task["spec_path"]), prompt=PromptConfig(length=4, init="class_label"),
                batch_size=8, micro_batch_size=4, max_steps=6, eval_every=3,
                data_dir=str(toy_task["data_dir"]), lr=0.3)
    base.update(kw)
    return TrainConfig(**base)


def _state(lm):
    return {k: v.clone() for k, v in lm.model.state_dict().items()}


@pytest.mark.parametrize("arch", ["tiny_causal", "tiny_t5"])
def test_training_changes_only_the_prompt(arch, toy_task, tmp_path, request):
    lm = request.getfixturevalue(arch)
    before = _state(lm)
    config = _config(toy_task)
    result = train(
        config, tmp_path / "run", lm=lm, spec=load_spec(toy_task["spec_path"]), progress=False
    )
    after = lm.model.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), f"base-model tensor {name} changed"
    # The optimizer held exactly one parameter: the [P, E] prompt (Adafactor's factored moments).
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    groups = ckpt["optimizer"]["param_groups"]
    assert sum(len(g["params"]) for g in groups) == 1
    (state,) = ckpt["optimizer"]["state"].values()
    assert state["exp_avg_sq_row"].shape == (4,) and state["exp_avg_sq_col"].shape == (lm.dim,)
    prompt = load_prompt(tmp_path / "run" / "prompt.safetensors")
    assert prompt.shape == (4, lm.dim)
    assert result["test"]["n"] == 32 and 0 <= result["test"]["accuracy"] <= 1


def test_loss_falls_on_the_toy_task(tiny_causal, toy_task, tmp_path):
    config = _config(toy_task, max_steps=40, eval_every=20, optimizer="adamw", lr=0.3)
    train(config, tmp_path / "run", lm=tiny_causal, progress=False)
    losses = [
        r["loss"]
        for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
        if r["event"] == "step"
    ]
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:3]) / 3


def test_best_dev_checkpoint_is_kept(tiny_causal, toy_task, tmp_path):
    # One candidate kept: no mean of candidates to choose instead of the best check.
    train(
        _config(toy_task, max_steps=6, eval_every=2, final_candidates=1),
        tmp_path / "run",
        lm=tiny_causal,
        progress=False,
    )
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    # The first maximum wins: later ties are not improvements.
    best = max(evals, key=lambda r: r["score"])
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["best_step"] == best["step"] and result["dev"]["score"] == best["score"]


def test_resume_after_kill_matches_an_uninterrupted_run(
    tiny_causal, toy_task, tmp_path, monkeypatch
):
    config = _config(toy_task, max_steps=6, eval_every=2)
    train(config, tmp_path / "a", lm=tiny_causal, progress=False)

    import softprompt.training.prompt_tuning as train_mod

    calls = {"n": 0}
    real = train_mod.lm_loss

    def dying_loss(*args, **kwargs):
        calls["n"] += 1
        # In step 4 (2 micro-batches per step): after the step-2 checkpoint.
        if calls["n"] == 2 * 3 + 1:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "lm_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "b", lm=tiny_causal, progress=False)
    monkeypatch.setattr(train_mod, "lm_loss", real)
    train(config, tmp_path / "b", lm=tiny_causal, progress=False)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert torch.equal(a["prompt"], b["prompt"])
    assert '"event": "resume", "step": 2' in (tmp_path / "b" / "metrics.jsonl").read_text()


def test_changed_config_in_same_run_dir_is_refused(tiny_causal, toy_task, tmp_path):
    train(
        _config(toy_task, max_steps=1, eval_every=1),
        tmp_path / "run",
        lm=tiny_causal,
        progress=False,
    )
    with pytest.raises(ValueError, match="different config"):
        train(
            _config(toy_task, max_steps=2, eval_every=1),
            tmp_path / "run",
            lm=tiny_causal,
            progress=False,
        )


def test_truncated_inputs_are_counted(tiny_causal, toy_task, tmp_path):
    train(
        _config(toy_task, max_steps=1, eval_every=1, max_input_tokens=4),
        tmp_path / "run",
        lm=tiny_causal,
        progress=False,
    )
    start = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["truncated_train_inputs"] == 96


def test_bad_data_fails_before_the_model_loads(toy_task, tmp_path, monkeypatch):
    import softprompt.training.prompt_tuning as train_mod

    monkeypatch.setattr(
        train_mod,
        "load_frozen_lm",
        lambda *_: pytest.fail("model loaded before data was validated"),
    )
    (toy_task["data_dir"] / "toy" / "train.jsonl").write_text(
        '{"sentence": "x", "label": "maybe"}\n'
    )
    from softprompt.tasks import TaskDataError

    with pytest.raises(TaskDataError, match="unknown label 'maybe'"):
        train(_config(toy_task), tmp_path / "run", progress=False)


def test_micro_batching_does_not_change_the_update(tiny_causal, toy_task, tmp_path):
    """The loss is normalized by the whole step's target tokens: accumulation is exact."""
    prompts = []
    for micro in (8, 2):
        run = tmp_path / f"micro{micro}"
        train(
            _config(toy_task, max_steps=2, eval_every=2, micro_batch_size=micro),
            run,
            lm=tiny_causal,
            progress=False,
        )
        prompts.append(torch.load(run / "checkpoint.pt", weights_only=True)["prompt"])
    assert torch.allclose(prompts[0], prompts[1], atol=1e-5)


# ------------------------------------------------------------------ progress lines
def _eval_lines(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == PROGRESS_LOGGER and r.levelno == logging.INFO and " | dev " in r.getMessage()
    ]


def test_each_evaluation_logs_one_line(tiny_causal, toy_task, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    # Checks of the initial prompt (step 0), at steps 2 and 4 in the loop and at 5 after it (5
    # is not a multiple of 2).
    config = _config(toy_task, max_steps=5, eval_every=2, max_minutes=60)
    train(config, tmp_path / "run", lm=tiny_causal, progress=False)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["event"] == "step"]
    evals = [r for r in records if r["event"] == "eval"]
    lines = _eval_lines(caplog)
    assert [r["step"] for r in evals] == [0, 2, 4, 5] and len(lines) == 4
    assert lines.pop(0).startswith("step 0/5 | train loss n/a (no steps since the last ")
    evals.pop(0)
    best = records[[r["event"] for r in records].index("eval")]["score"]
    best_at = 0
    pattern = re.compile(
        r"step (\d+)/5 \| train loss (\S+) \(mean of (\d) steps?\) \| dev accuracy (\S+) \| "
        r"best (\S+) @ step (\d+) \| elapsed \d+s \| ETA (\S+) \((.+)\)"
    )
    for line, record, (first, last) in zip(lines, evals, [(0, 2), (2, 4), (4, 5)], strict=True):
        match = pattern.fullmatch(line)
        assert match, line
        step, loss, n, score, best_score, best_step, eta, which = match.groups()
        mean = sum(losses[first:last]) / (last - first)  # the steps since the previous evaluation
        assert int(step) == record["step"] and int(n) == last - first
        assert float(loss) == pytest.approx(mean, abs=1e-4)
        assert float(score) == pytest.approx(record["score"], abs=1e-4)
        if record["score"] > best:
            best, best_at = record["score"], record["step"]
        assert float(best_score) == pytest.approx(best, abs=1e-4) and int(best_step) == best_at
        # The same fields in metrics.jsonl, next to the ones other readers use.
        assert record["loss_since_last_eval"] == pytest.approx(mean, abs=1e-5)
        assert record["best_score"] == best and record["best_step"] == best_at
        assert {"score", "accuracy", "elapsed", "best"} <= record.keys()
        assert record["eta_by"] == which
        if last < 5:  # an hour's budget is far off: the 5 steps end the run first
            assert which == "step budget" and record["eta_s"] >= 0
    assert which == "stopped: max_steps" and eta == "0s" and evals[-1]["eta_s"] == 0
    stopped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training")]
    assert len(stopped) == 1 and re.fullmatch(
        rf"training stopped at step 5/5 \(max_steps\); best dev accuracy {best:.4f} @ step "
        rf"{best_at}; elapsed \d+s",
        stopped[0],
    ), stopped


def test_with_a_progress_bar_the_line_goes_above_it(
    tiny_causal, toy_task, tmp_path, caplog, capsys
):
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    config = _config(toy_task, max_steps=2, eval_every=2)
    train(config, tmp_path / "run", lm=tiny_causal, progress=True)
    # Not also through the logger: a console handler's line would break the bar.
    assert _eval_lines(caplog) == []
    captured = capsys.readouterr()
    # tqdm clears the bar with a carriage return, writes the line, then redraws the bar below it.
    lines = re.split(r"[\r\n]", captured.err)
    expected = r"step (0/2 \| .* \| ETA \? \(no estimate\)|2/2 \| .* \| ETA 0s \(step budget\))"
    assert [x for x in lines if x.startswith("step ")] == [
        x for x in lines if re.fullmatch(expected, x)
    ] != []
    assert "step 2/2" not in captured.out  # stdout stays free for results


def test_cli_train_logs_progress_without_verbose(
    tiny_causal_dir, toy_task, tmp_path, caplog, capsys
):
    from softprompt.cli import main

    # The CLI, not the library, decides that training progress is shown: start from the default
    # levels (root WARNING), under which a library's INFO line is dropped.
    package, root = logging.getLogger("softprompt"), logging.getLogger()
    saved = package.level, root.level
    package.setLevel(logging.NOTSET)
    root.setLevel(logging.WARNING)
    try:
        assert main([
            "train", "--task", str(toy_task["spec_path"]), "--data-dir", str(toy_task["data_dir"]),
            "--model", str(tiny_causal_dir), "--run-dir", str(tmp_path / "run"),
            "--prompt-length", "4", "--train-batch-size", "8", "--micro-batch-size", "8",
            "--max-steps", "2", "--eval-every", "2", "--eval-max-examples", "16", "--no-progress",
        ]) == 0
    finally:
        package.setLevel(saved[0])
        root.setLevel(saved[1])
    lines = _eval_lines(caplog)
    assert len(lines) == 2
    assert lines[0].startswith("step 0/2 | ") and lines[1].startswith("step 2/2")
    assert json.loads(capsys.readouterr().out)["steps"] == 2


def test_a_diverged_run_fails_without_a_result(tiny_causal, toy_task, tmp_path):
    """A learning rate far too high makes the loss non-finite: the run stops with
    TrainingDiverged and writes no result.json; any best prompt on disk is finite."""
    from softprompt.training.loop import TrainingDiverged

    # The paper's recipe: the stable one's norm cap would pull the prompt back.
    config = _config(toy_task, recipe="paper", optimizer="sgd", lr=1e30, max_steps=6,
                     eval_every=1)
    with pytest.raises(TrainingDiverged, match="diverged at step"):
        train(config, tmp_path / "run", lm=tiny_causal, progress=False)
    assert not (tmp_path / "run" / "result.json").exists()
    best = tmp_path / "run" / "prompt.safetensors"
    assert not best.exists() or torch.isfinite(load_prompt(best)).all()


def test_a_kill_while_config_json_is_rewritten_leaves_a_resumable_run(
    tiny_causal, toy_task, tmp_path, monkeypatch
):
    """On resume config.json is written again; a kill in the middle of that write (here: while
    the new bytes are flushed) leaves the complete old file, and the run still resumes."""
    import softprompt.fileio

    config = _config(toy_task, max_steps=4, eval_every=2)
    run_dir = tmp_path / "run"
    train(config, run_dir, lm=tiny_causal, progress=False)
    before = (run_dir / "config.json").read_text()

    def killed(fd):
        raise KeyboardInterrupt("killed while writing")

    with monkeypatch.context() as patch:
        patch.setattr(softprompt.fileio.os, "fsync", killed)
        with pytest.raises(KeyboardInterrupt):
            train(config, run_dir, lm=tiny_causal, progress=False)
    assert (run_dir / "config.json").read_text() == before
    assert not list(run_dir.glob(".*.tmp"))
    assert train(config, run_dir, lm=tiny_causal, progress=False)["steps"] == 4


def test_an_exploded_prompt_is_flagged_in_the_result(tiny_causal, toy_task, tmp_path,
                                                     monkeypatch):
    """AdamW at lr 1e6 under the paper's recipe (no norm cap) keeps the loss finite on the tiny
    model but blows the prompt's entries far past the vocabulary's scale; the result says so (a
    normal run is not flagged). Scoring here prefers larger prompts, so the exploded one is
    chosen over the initial one."""
    import softprompt.training.prompt_tuning as prompt_tuning

    real = prompt_tuning.evaluate

    def by_norm(lm, prompt, spec, examples, encoded, batch_size):
        metrics = real(lm, prompt, spec, examples, encoded, batch_size=batch_size)
        return metrics | {"score": float(prompt.norm()) if prompt.numel() else 0.0}

    sane = train(_config(toy_task, max_steps=2, eval_every=2), tmp_path / "sane", lm=tiny_causal,
                 progress=False)
    assert sane["prompt_norm"]["exploded"] is False
    assert sane["prompt_norm"]["vocab_max_row_norm"] == pytest.approx(tiny_causal.vocab_max_norm,
                                                                      rel=1e-3)
    monkeypatch.setattr(prompt_tuning, "evaluate", by_norm)
    config = _config(toy_task, recipe="paper", optimizer="adamw", lr=1e6, max_steps=2,
                     eval_every=1)
    result = train(config, tmp_path / "run", lm=tiny_causal, progress=False)
    written = json.loads((tmp_path / "run" / "result.json").read_text())
    assert written["prompt_norm"] == result["prompt_norm"]
    assert result["prompt_norm"]["exploded"] is True
    assert result["prompt_norm"]["ratio"] > 1000


def test_the_result_records_the_choice_the_template_alone_and_the_recipe(
    tiny_causal, toy_task, tmp_path
):
    """Checks score 8 dev examples; the 3 best checks (the initial prompt among the candidates)
    are scored on the 24-example selection set next to the template alone; the test split is a
    seeded subset of 20 of its 32 examples."""
    from softprompt.scoring import encode_examples, evaluate
    from softprompt.task_data import load_task, seeded_subset

    config = _config(toy_task, max_steps=6, eval_every=2, check_examples=8,
                     eval_max_examples=24, final_candidates=3, test_max_examples=20)
    result = train(config, tmp_path / "run", lm=tiny_causal, progress=False)
    assert result["dev"]["n"] == 24 and result["zero_shot"]["dev"]["n"] == 24
    # The mean of the 3 kept prompts comes first, then the 3 checks' prompts.
    mean, *kept = result["candidates"]
    assert len(kept) == 3 and all("mean_of" not in c for c in kept)
    assert mean["mean_of"] == sorted(c["step"] for c in kept) and mean["check_score"] is None
    chosen = max(result["candidates"], key=lambda c: c["selection_score"])  # first on a tie
    assert result["best_step"] == chosen["step"]
    assert result["best_mean_of_steps"] == chosen.get("mean_of")
    assert result["dev"]["score"] == chosen["selection_score"]
    spec = load_spec(toy_task["spec_path"])
    data = load_task(spec, toy_task["data_dir"])
    selection = seeded_subset(data["dev"], 24, config.seed)
    encoded = encode_examples(tiny_causal, selection, config.max_input_tokens)
    alone = evaluate(tiny_causal, torch.zeros(0, tiny_causal.dim), spec, selection, encoded)
    assert result["zero_shot"]["dev"]["score"] == pytest.approx(alone["score"])
    # The saved prompt is the chosen one: it scores the chosen score on the selection set.
    saved = load_prompt(tmp_path / "run" / "prompt.safetensors")
    assert evaluate(tiny_causal, saved, spec, selection, encoded)["score"] == pytest.approx(
        result["dev"]["score"])
    assert (result["test"]["n"], result["test"]["of"]) == (20, 32)
    assert result["recipe"]["name"] == "stable" and result["recipe"]["lr"] == 0.3
    assert result["train_seconds"] >= 0 and result["check_seconds"] >= 0
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    checks = [r for r in records if r["event"] == "eval"]
    assert [r["step"] for r in checks] == [0, 2, 4, 6] and {r["n"] for r in checks} == {8}
    spent = [r["eval_seconds"] for r in checks]  # evaluation time, counted apart and growing
    assert spent == sorted(spent) and spent[-1] <= checks[-1]["elapsed"]
    (start,) = [r for r in records if r["event"] == "start"]
    assert start["check_examples"] == 8 and start["length_buckets"] is False


def test_the_bar_shows_the_time_budgets_eta_not_the_step_budgets(
    tiny_causal, toy_task, tmp_path, capsys
):
    """With --max-minutes the bar's ETA is the time budget's, and tqdm's own remaining time
    (counted toward max_steps, hours away) is not shown."""
    config = _config(toy_task, max_steps=100000, eval_every=1000, max_minutes=0.02)
    train(config, tmp_path / "run", lm=tiny_causal, progress=True)
    bar = capsys.readouterr().err
    assert "(time budget)" in bar and "step budget" not in bar
    assert not re.search(r"\d+:\d+<\d+:\d+", bar)  # tqdm's elapsed<remaining
