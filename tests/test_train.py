import json

import pytest
import torch

from softprompt.prompt import PromptConfig, load_prompt
from softprompt.tasks import load_spec
from softprompt.train import TrainConfig, batch_indices, train


def _config(toy_task, **kw):
    base = dict(task=str(toy_task["spec_path"]), prompt=PromptConfig(length=4, init="class_label"), batch_size=8,
                micro_batch_size=4, max_steps=6, eval_every=3, data_dir=str(toy_task["data_dir"]), lr=0.3)
    base.update(kw)
    return TrainConfig(**base)


def _state(lm):
    return {k: v.clone() for k, v in lm.model.state_dict().items()}


@pytest.mark.parametrize("arch", ["tiny_causal", "tiny_t5"])
def test_training_changes_only_the_prompt(arch, toy_task, tmp_path, request):
    lm = request.getfixturevalue(arch)
    before = _state(lm)
    config = _config(toy_task)
    result = train(config, tmp_path / "run", lm=lm, spec=load_spec(toy_task["spec_path"]), progress=False)
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
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if r["event"] == "step"]
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:3]) / 3


def test_best_dev_checkpoint_is_kept(tiny_causal, toy_task, tmp_path):
    train(_config(toy_task, max_steps=6, eval_every=2), tmp_path / "run", lm=tiny_causal, progress=False)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    best = max(evals, key=lambda r: r["score"])  # first maximum wins: later ties are not improvements
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["best_step"] == best["step"] and result["dev"]["score"] == best["score"]


def test_resume_after_kill_matches_an_uninterrupted_run(tiny_causal, toy_task, tmp_path, monkeypatch):
    config = _config(toy_task, max_steps=6, eval_every=2)
    train(config, tmp_path / "a", lm=tiny_causal, progress=False)

    import softprompt.train as train_mod

    calls = {"n": 0}
    real = train_mod.lm_loss

    def dying_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * 3 + 1:  # in step 4 (2 micro-batches per step): after the step-2 checkpoint
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
    train(_config(toy_task, max_steps=1, eval_every=1), tmp_path / "run", lm=tiny_causal, progress=False)
    with pytest.raises(ValueError, match="different config"):
        train(_config(toy_task, max_steps=2, eval_every=1), tmp_path / "run", lm=tiny_causal, progress=False)


def test_truncated_inputs_are_counted(tiny_causal, toy_task, tmp_path):
    train(_config(toy_task, max_steps=1, eval_every=1, max_input_tokens=4), tmp_path / "run", lm=tiny_causal, progress=False)
    start = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["truncated_train_inputs"] == 96


def test_bad_data_fails_before_the_model_loads(toy_task, tmp_path, monkeypatch):
    import softprompt.train as train_mod

    monkeypatch.setattr(train_mod, "load_frozen_lm", lambda *_: pytest.fail("model loaded before data was validated"))
    (toy_task["data_dir"] / "toy" / "train.jsonl").write_text('{"sentence": "x", "label": "maybe"}\n')
    from softprompt.tasks import TaskDataError

    with pytest.raises(TaskDataError, match="unknown label 'maybe'"):
        train(_config(toy_task), tmp_path / "run", progress=False)


def test_batch_order_is_deterministic_and_covers_epochs():
    first = [i for s in range(5) for i in batch_indices(10, 4, s, seed=3)]
    assert first == [i for s in range(5) for i in batch_indices(10, 4, s, seed=3)]
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:20]) == list(range(10))


@pytest.mark.parametrize("kw, message", [({"optimizer": "lion"}, "unknown optimizer"), ({"batch_size": 6, "micro_batch_size": 4}, "multiple")])
def test_config_validation(toy_task, kw, message):
    with pytest.raises(ValueError, match=message):
        _config(toy_task, **kw)


def test_micro_batching_does_not_change_the_update(tiny_causal, toy_task, tmp_path):
    """The loss is normalized by the whole step's target tokens: accumulation is exact."""
    prompts = []
    for micro in (8, 2):
        run = tmp_path / f"micro{micro}"
        train(_config(toy_task, max_steps=2, eval_every=2, micro_batch_size=micro), run, lm=tiny_causal, progress=False)
        prompts.append(torch.load(run / "checkpoint.pt", weights_only=True)["prompt"])
    assert torch.allclose(prompts[0], prompts[1], atol=1e-5)
