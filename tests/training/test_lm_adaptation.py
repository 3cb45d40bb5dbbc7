import json
import random

import pytest

from softprompt.cli import main
from softprompt.model import load_frozen_lm
from softprompt.prompt import PromptConfig
from softprompt.tasks import load_spec
from softprompt.training.config import LMAdaptConfig, TrainConfig
from softprompt.training.lm_adaptation import lm_adapt, prefix_lm_example
from softprompt.training.prompt_tuning import train

WORDS = ["the", "movie", "was", "great", "and", "the", "plot", "was", "boring", "but", "the",
         "acting", "was", "quite", "wonderful"]


@pytest.fixture()
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    rng = random.Random(0)
    path.write_text(
        "\n".join(
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(200)
        )
    )
    return path


def test_prefix_lm_example_splits_a_window():
    rng = random.Random(0)
    for _ in range(20):
        x, y = prefix_lm_example(list(range(10, 40)), 1, 12, rng)
        assert x[-1] == 1 and y[-1] == 1 and 1 <= len(x) - 1 <= 11 and len(x) + len(y) - 2 == 12
        assert x[:-1] + y[:-1] == list(range(x[0], x[0] + 12))  # one contiguous window, split once


def test_loss_falls_and_prompt_tuning_runs_on_the_adapted_checkpoint(
    tiny_t5_dir, tiny_t5, corpus_file, toy_task, tmp_path
):
    before = {k: v.clone() for k, v in tiny_t5.model.state_dict().items()}
    out = tmp_path / "adapted"
    config = LMAdaptConfig(model=str(tiny_t5_dir), corpus=str(corpus_file), steps=40, lr=3e-3,
                           optimizer="adamw", batch_size=8, max_tokens=24, log_every=5)
    summary = lm_adapt(config, out)
    assert summary["last_loss"] < 0.8 * summary["first_loss"]
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(5, 45, 5))
    adapted = load_frozen_lm(str(out))
    assert adapted.is_encoder_decoder and all(
        not p.requires_grad for p in adapted.model.parameters()
    )
    changed = [k for k, v in adapted.model.state_dict().items() if not v.equal(before[k])]
    assert changed, "adaptation changed no weight"
    # The source checkpoint object stayed frozen and unchanged.
    for k, v in tiny_t5.model.state_dict().items():
        assert v.equal(before[k])
    config = TrainConfig(task=str(toy_task["spec_path"]), model=str(out),
                         prompt=PromptConfig(length=4), batch_size=8, micro_batch_size=8,
                         max_steps=3, eval_every=3, data_dir=str(toy_task["data_dir"]))
    result = train(config, tmp_path / "run", spec=load_spec(toy_task["spec_path"]), progress=False)
    assert (
        result["steps"] == 3
        and result["model"] == str(out)
        and 0 <= result["test"]["accuracy"] <= 1
    )


def test_adapting_a_task_corpus_from_the_command_line(
    tiny_t5_dir, toy_task, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("SOFTPROMPT_TASKS_DIR", str(toy_task["tasks_dir"]))
    rc = main(["lm-adapt", "--model", str(tiny_t5_dir), "--corpus", "toy",
               "--data-dir", str(toy_task["data_dir"]), "--out", str(tmp_path / "a"),
               "--steps", "2", "--batch-size", "4"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["documents"] == 96 and summary["objective"] == "prefix_lm"
    assert (tmp_path / "a" / "config.json").is_file() and (
        tmp_path / "a" / "lm_adapt.json"
    ).is_file()


@pytest.mark.parametrize("model", ["smollm2-135m", "causal_dir"])
def test_decoder_only_models_need_no_adaptation(model, tiny_causal_dir, corpus_file, tmp_path):
    name = str(tiny_causal_dir) if model == "causal_dir" else model
    with pytest.raises(ValueError, match="decoder-only model.*needs no LM adaptation"):
        lm_adapt(LMAdaptConfig(model=name, corpus=str(corpus_file), steps=1), tmp_path / "x")


def test_config_and_corpus_errors(tiny_t5_dir, tmp_path):
    with pytest.raises(ValueError, match="steps must be >= 1"):
        LMAdaptConfig(model="m", corpus="c.txt", steps=0)
    with pytest.raises(FileNotFoundError, match="corpus file not found"):
        lm_adapt(
            LMAdaptConfig(model=str(tiny_t5_dir), corpus=str(tmp_path / "none.txt"), steps=1),
            tmp_path / "x",
        )


def test_span_corruption_sentinel_prefixes_every_target(tiny_t5, toy_task, tmp_path):
    sentinel = "<extra_id_0> "
    sentinel_id = tiny_t5.tokenizer.convert_tokens_to_ids("<extra_id_0>")
    config = TrainConfig(task=str(toy_task["spec_path"]), prompt=PromptConfig(length=4),
                         batch_size=8, micro_batch_size=8, max_steps=2, eval_every=2,
                         data_dir=str(toy_task["data_dir"]), target_prefix=sentinel)
    result = train(
        config, tmp_path / "run", lm=tiny_t5, spec=load_spec(toy_task["spec_path"]), progress=False
    )
    assert result["steps"] == 2
    assert tiny_t5.target_prefix == ""  # the caller's model object is untouched
    view = tiny_t5.with_options(target_prefix=sentinel)
    assert (
        view.encode_target("positive")[0] == sentinel_id
        and tiny_t5.encode_target("positive")[0] != sentinel_id
    )
    assert json.loads((tmp_path / "run" / "config.json").read_text())["target_prefix"] == sentinel
