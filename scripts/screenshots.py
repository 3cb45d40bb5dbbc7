"""Screenshots of the registry web page and of the evaluation report, for the documentation.

Builds everything from scratch on the CPU in a minute: a tiny 2-layer Llama with its own
tokenizer (no download), the synthetic `toy` sentiment task of the tests, two prompts trained
for a few steps, their ensemble evaluated on test (the HTML report), and a local registry with
two versions whose `production` alias moved twice (v1, then v2). Then it opens the registry page
(`softprompt ui`'s app on 127.0.0.1) and the report in headless Chromium and saves

    docs/img/registry-ui.png          the task page: versions, scores and alias history
    docs/img/evaluation-report.png    the evaluation report

    .venv/bin/python scripts/screenshots.py
    .venv/bin/python scripts/screenshots.py --out /tmp/img --workdir /tmp/shots --keep

Needs Debian's chromium and chromium-driver (`make setup`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conftest import build_tiny_causal, write_toy_task  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1200, 800)


def train_and_register(root: Path, steps: int) -> tuple[Path, Path]:
    """Two prompts trained for `steps` steps, their ensemble report, and a registry holding
    both as versions 1 and 2 with `production` moved to v1, then to v2.
    Returns (registry folder, report file)."""
    from softprompt.evaluation import ensemble_on_dev, ensemble_on_test
    from softprompt.model import load_frozen_lm
    from softprompt.prompt import load_prompt
    from softprompt.registry import lineage_from_run, open_registry
    from softprompt.registry.promotion import register_selected
    from softprompt.task_data import load_task
    from softprompt.tasks import load_spec
    from softprompt.training.config import TrainConfig
    from softprompt.training.prompt_tuning import train

    model = build_tiny_causal(root / "model")
    spec_path = write_toy_task(root)["spec_path"]
    spec = load_spec(spec_path)
    runs = []
    for seed, init in ((0, "class_label"), (1, "sampled_vocab")):
        config = TrainConfig(task=str(spec_path), model=str(model), batch_size=8,
                             micro_batch_size=8, max_steps=steps, eval_every=5, seed=seed,
                             max_input_tokens=64, data_dir=str(root / "data"))
        config.prompt.length, config.prompt.init = 4, init
        train(config, root / f"run{seed}", progress=False)
        runs.append((str(root / f"run{seed}"), f"{init}-seed{seed}"))
    lm = load_frozen_lm(str(model))
    data = load_task(spec, root / "data")
    ensemble = root / "ensemble"
    ensemble_on_dev(spec, lm, runs, data["dev"], str(ensemble), max_input_tokens=64, batch_size=16)
    result = ensemble_on_test(spec, lm, str(ensemble), data["test"], 64, 16, nearest_k=3,
                              base_model="tiny-llama")
    report = root / "evaluation-report.html"
    report.write_text(result.html, encoding="utf-8")

    registry = open_registry(root / "registry")
    register_selected(registry, result.summary, str(ensemble), spec, dataset_version=None,
                      data_source=None, code_version=None, alias="production",
                      min_improvement=0.0)
    # The other prompt becomes version 2 and production moves to it: a second move.
    other = runs[1 - result.summary["selected"]["member"]][0]
    lineage = lineage_from_run(other, spec=spec)
    m = registry.publish(spec.name, load_prompt(Path(other) / "prompt.safetensors"), lineage)
    registry.promote(spec.name, "production", m.version)
    return root / "registry", report


def screenshot(url: str, path: Path) -> None:
    """Opens `url` in headless Chromium (WINDOW pixels) and saves the visible part as PNG."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--hide-scrollbars", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        # The window size includes the browser's frame; this fixes the page's viewport itself.
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False})
        driver.get(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(path))
    finally:
        driver.quit()
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB) from {url}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img",
                        help="folder for the PNG files")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to build the model, runs and registry (default: a temp dir)")
    parser.add_argument("--steps", type=int, default=40, help="training steps per prompt")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    for program in (CHROMIUM, CHROMEDRIVER):
        if not Path(program).exists():
            parser.error(f"{program} not found: run `make setup`")
    root = Path(args.workdir or tempfile.mkdtemp(prefix="softprompt-shots-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        from bench.server_thread import ServerThread
        from softprompt.registry import open_registry
        from softprompt.webui import create_app, task_url

        registry_dir, report = train_and_register(root, args.steps)
        with ServerThread(create_app(open_registry(registry_dir))) as server:
            screenshot(server.url + task_url("toy"), args.out / "registry-ui.png")
        screenshot(report.resolve().as_uri(), args.out / "evaluation-report.png")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
