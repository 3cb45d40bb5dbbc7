"""A group of prompts trained in one batch: each member ends as its own single run would, the
members may differ only in seed and init, and a killed group resumes exactly."""

import json

import pytest
import torch

from softprompt.prompt import PromptConfig, load_prompt
from softprompt.tasks import load_spec
from softprompt.training.config import TrainConfig
from softprompt.training.prompt_group import GROUP_DIR, check_group, train_group
from softprompt.training.prompt_tuning import train


def _config(toy_task, **kw):
    base = dict(task=str(toy_task["spec_path"]), prompt=PromptConfig(length=4, init="class_label"),
                batch_size=8, micro_batch_size=4, max_steps=6, eval_every=2,
                data_dir=str(toy_task["data_dir"]), lr=0.3, check_examples=16,
                eval_max_examples=24, final_candidates=2, test_max_examples=20)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def unpacked(tiny_causal):
    """The tiny model with rows never packed: a single run's [P, E] prompt could pack its rows,
    a group's per-row prompts never do, and the two kernels differ in the last float bits."""
    return tiny_causal.with_options(pack_rows=False)


def _records(run_dir, event):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


@pytest.mark.parametrize("length_buckets, recipe", [("off", "stable"), ("on", "stable"),
                                                    ("off", "paper")])
def test_a_group_of_two_matches_two_single_runs(unpacked, toy_task, tmp_path, length_buckets,
                                                recipe):
    """Seeds 0 and 1 (one of them with another init), with checks, and under the stable recipe
    its moving average and norm cap: the same prompts, steps and choices as two single runs."""
    spec = load_spec(toy_task["spec_path"])
    same = dict(length_buckets=length_buckets, recipe=recipe)
    configs = [_config(toy_task, seed=0, **same),
               _config(toy_task, seed=1, **same,
                       prompt=PromptConfig(length=4, init="sampled_vocab"))]
    singles = [train(c, tmp_path / f"single{c.seed}", lm=unpacked, spec=spec, progress=False)
               for c in configs]
    dirs = [tmp_path / "group" / f"seed{c.seed}" for c in configs]
    results = train_group(configs, dirs, lm=unpacked, spec=spec, progress=False)
    saved = torch.load(dirs[0] / GROUP_DIR / "checkpoint.pt", weights_only=True)
    for n, (config, single, grouped) in enumerate(zip(configs, singles, results, strict=True)):
        lone = tmp_path / f"single{config.seed}"
        last = torch.load(lone / "checkpoint.pt", weights_only=True)
        assert torch.allclose(saved["prompt"][n], last["prompt"], atol=1e-4)
        assert torch.allclose(saved["average"][n], last["average"], atol=1e-4)
        assert torch.allclose(load_prompt(dirs[n] / "prompt.safetensors"),
                              load_prompt(lone / "prompt.safetensors"), atol=1e-4)
        for key in ("best_step", "steps", "stop_reason", "dev", "zero_shot", "candidates"):
            assert grouped[key] == single[key], key
        assert grouped["test"]["score"] == single["test"]["score"]
        assert set(grouped) == set(single) | {"group"}
        assert grouped["group"]["members"] == 2 and grouped["group"]["index"] == n
        assert json.loads((dirs[n] / "result.json").read_text()) == grouped
        assert json.loads((dirs[n] / "config.json").read_text()) == config.to_dict()
        # The member's metrics.jsonl: its own losses and checks, as its single run logged them.
        for event, keys in (("step", ("step", "loss")), ("eval", ("step", "score", "best_step"))):
            mine = [r[k] for r in _records(dirs[n], event) for k in keys]
            theirs = [r[k] for r in _records(lone, event) for k in keys]
            assert mine == pytest.approx(theirs, abs=1e-4), event
        (start,) = _records(dirs[n], "start")
        assert set(start) == set(_records(lone, "start")[0])
        assert _records(dirs[n], "done")[0]["best_step"] == single["best_step"]


def test_members_may_differ_only_in_seed_and_init(toy_task):
    check_group([_config(toy_task, seed=0),
                 _config(toy_task, seed=1, prompt=PromptConfig(length=4, init="random_uniform"))])
    with pytest.raises(ValueError, match=r"max_steps is 6 for seed 0 and 7 for seed 1"):
        check_group([_config(toy_task, seed=0), _config(toy_task, seed=1, max_steps=7)])
    with pytest.raises(ValueError, match=r"prompt.length is 4 for seed 0 and 5 for seed 1"):
        check_group([_config(toy_task), _config(toy_task, seed=1, prompt=PromptConfig(length=5))])


def test_run_directories_must_be_one_per_member(unpacked, toy_task, tmp_path):
    configs = [_config(toy_task, seed=0), _config(toy_task, seed=1)]
    with pytest.raises(ValueError, match="distinct run directories"):
        train_group(configs, [tmp_path / "a", tmp_path / "a"], lm=unpacked, progress=False)


def test_a_killed_group_resumes_exactly(unpacked, toy_task, tmp_path, monkeypatch):
    import softprompt.training.prompt_group as group_mod

    configs = [_config(toy_task, seed=0), _config(toy_task, seed=1)]
    whole = [tmp_path / "a" / f"seed{c.seed}" for c in configs]
    train_group(configs, whole, lm=unpacked, progress=False)

    calls = {"n": 0}
    real = group_mod.group_loss

    def dying_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * 3 + 1:  # in step 4 (2 micro-batches a step): after step 2's check
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    killed = [tmp_path / "b" / f"seed{c.seed}" for c in configs]
    monkeypatch.setattr(group_mod, "group_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        train_group(configs, killed, lm=unpacked, progress=False)
    monkeypatch.setattr(group_mod, "group_loss", real)
    results = train_group(configs, killed, lm=unpacked, progress=False)
    a = torch.load(whole[0] / GROUP_DIR / "checkpoint.pt", weights_only=True)
    b = torch.load(killed[0] / GROUP_DIR / "checkpoint.pt", weights_only=True)
    assert torch.equal(a["prompt"], b["prompt"])
    for n, run_dir in enumerate(killed):
        assert _records(run_dir, "resume") == [{"event": "resume", "step": 2}]
        steps = [r["step"] for r in _records(run_dir, "step")]
        # Step 3 ran before the kill and again after the resume from step 2, as in a single run.
        assert steps == [1, 2, 3, 3, 4, 5, 6] and results[n]["steps"] == 6
        assert json.loads((run_dir / "result.json").read_text())["best_step"] == (
            json.loads((whole[n] / "result.json").read_text())["best_step"])
    # Other members cannot resume from this group's checkpoint.
    other = [configs[0], _config(toy_task, seed=2)]
    with pytest.raises(ValueError, match="group checkpoint holds the members"):
        train_group(other, [killed[0], tmp_path / "c"], lm=unpacked, progress=False)


def test_equal_members_still_get_their_own_gradients(unpacked, toy_task, tmp_path):
    """Two members starting from the same text prompt would share one prefix (and its gradient)
    where prefixes are shared (on CPU): the steps where they are equal run unshared, and each
    member still trains as its single run."""
    assert unpacked.shares_prefix()
    text = PromptConfig(length=4, init="text", init_text="great awful movie")
    configs = [_config(toy_task, seed=s, prompt=text, max_steps=2) for s in (0, 1)]
    dirs = [tmp_path / "group" / f"seed{c.seed}" for c in configs]
    train_group(configs, dirs, lm=unpacked, progress=False)
    saved = torch.load(dirs[0] / GROUP_DIR / "checkpoint.pt", weights_only=True)
    for n, config in enumerate(configs):
        train(config, tmp_path / f"single{n}", lm=unpacked, progress=False)
        last = torch.load(tmp_path / f"single{n}" / "checkpoint.pt", weights_only=True)
        assert torch.allclose(saved["prompt"][n], last["prompt"], atol=1e-4)


def test_a_compiled_group_trains_as_the_plain_one(unpacked, toy_task, tmp_path):
    """A group under --compile: its [N, P, E] prompts go through the compiled decoder stack
    (the CPU backend aot_eager here; on a GPU, inductor) and end as the plain group's do."""
    spec = load_spec(toy_task["spec_path"])
    configs = [_config(toy_task, seed=s, max_steps=4) for s in (0, 1)]
    compiled = unpacked.with_compile("default", backend="aot_eager")
    assert not compiled.shares_prefix()  # a compiled wrapper runs whole rows
    results = {}
    for name, lm in (("plain", unpacked), ("compiled", compiled)):
        dirs = [tmp_path / name / f"seed{c.seed}" for c in configs]
        results[name] = train_group(configs, dirs, lm=lm, spec=spec, progress=False)
    for n, config in enumerate(configs):
        plain, fast = (tmp_path / name / f"seed{config.seed}" for name in ("plain", "compiled"))
        assert torch.allclose(load_prompt(fast / "prompt.safetensors"),
                              load_prompt(plain / "prompt.safetensors"), atol=1e-4)
        for key in ("best_step", "steps", "candidates"):
            assert results["compiled"][n][key] == results["plain"][n][key], key
