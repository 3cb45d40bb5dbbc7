"""What a person sees, in a real headless Chromium driven by Selenium: the registry page of
`softprompt ui` and the evaluation report, both over what a whole local prompt-tuning pipeline
(kfp.local, tiny model) produced.

Needs Debian's `chromium` and `chromium-driver` (installed by `make setup`); without them the
tests fail and say so. Select them with `pytest -m browser`."""

from __future__ import annotations

import os
import shutil

import pytest

from bench.server_thread import ServerThread
from softprompt.registry import open_registry
from softprompt.webui import create_app

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = pytest.mark.browser


def start_chromium(width: int = 1200, height: int = 800):
    """A headless Chromium under Selenium, through the system chromedriver (Selenium Manager
    cannot download one offline). Fails, naming the fix, when either program is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: run `make setup` (it installs the "
                    "chromium and chromium-driver packages)", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: run `make setup`", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium()
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def pipeline_run(tiny_causal_dir, tmp_path_factory) -> dict:
    """The prompt-tuning pipeline on kfp.local: 2 prompts of the toy task, registered in
    `<root>/registry` (production moves to version 1), with its evaluation report."""
    from conftest import write_toy_task

    from components.runner import run_prompt_tuning

    root = tmp_path_factory.mktemp("browser")
    spec_path = write_toy_task(root, sizes=(64, 16, 16))["spec_path"]
    params = {
        "base_model": str(tiny_causal_dir), "data_dir": str(root / "data"),
        "prompt_configs": [{"seed": 0, "init": "class_label"},
                           {"seed": 1, "init": "sampled_vocab"}],
        "prompt_length": 4, "batch_size": 8, "micro_batch_size": 8, "max_steps": 2,
        "eval_every": 2, "max_input_tokens": 64, "eval_batch_size": 16, "nearest_k": 3,
    }
    run = run_prompt_tuning(str(spec_path), params, root=root)
    assert run["status"] == "SUCCEEDED" and run["promoted"] is True
    return run


def _text(browser) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.TAG_NAME, "body").text


def test_registry_page_in_chromium(browser, pipeline_run):
    """The index shows the production version and its dev score; its link leads to the version
    page, and that page's link to the raw manifest."""
    from selenium.webdriver.common.by import By

    registry = open_registry(pipeline_run["registry_uri"])
    manifest = registry.manifest("toy", "production")
    dev = f"{manifest.metrics['dev']['score']:.4f}"
    with ServerThread(create_app(registry)) as srv:
        browser.get(srv.url + "/")
        assert browser.title == "Prompt registry"
        row = browser.find_element(By.XPATH, "//tr[td/a[text()='toy']]").text
        assert f"v{manifest.version}" in row and dev in row
        assert "production → v1" in row

        browser.find_element(By.LINK_TEXT, f"v{manifest.version}").click()
        assert browser.current_url == f"{srv.url}/tasks/toy/{manifest.version}"
        page = _text(browser)
        assert "toy v1" in page and manifest.base_model_fingerprint in page
        assert manifest.template.splitlines()[0] in page
        assert all(word in page for word in manifest.label_words)

        browser.find_element(By.LINK_TEXT, "manifest.json").click()
        assert browser.current_url.endswith("/tasks/toy/1/manifest.json")
        assert f'"blob_sha256": "{manifest.blob_sha256}"' in _text(browser)


def test_evaluation_report_in_chromium(browser, pipeline_run, tmp_path):
    """The report file the pipeline wrote shows the ensemble's test score, the confusion matrix,
    a learning curve per prompt and the nearest tokens."""
    from selenium.webdriver.common.by import By

    # KFP names the artifact file `report`; the .html suffix makes Chromium render it as a page.
    report = tmp_path / "report.html"
    shutil.copyfile(pipeline_run["report"], report)
    browser.get(report.as_uri())
    ensemble = f"{pipeline_run['metrics']['test_ensemble']:.4f}"
    headline = browser.find_element(By.CSS_SELECTOR, "p.headline").text
    assert f"Ensemble test accuracy: {ensemble}" in headline
    tables = browser.find_elements(By.TAG_NAME, "table")
    matrix = tables[1]
    assert matrix.find_element(By.TAG_NAME, "th").text.startswith("gold")
    cells = [int(td.text) for td in matrix.find_elements(By.CSS_SELECTOR, "tbody td")
             if td.text.isdigit()]
    assert sum(cells) == 2 * 16  # every test example counted twice: its cell and its row total
    assert len(browser.find_elements(By.TAG_NAME, "svg")) == 2
    assert "Nearest tokens" in _text(browser)


def test_missing_chromium_fails_naming_make_setup(monkeypatch):
    """Without the browser the tests fail (never skip) and say how to install it."""
    monkeypatch.setattr(f"{__name__}.CHROMEDRIVER", "/nonexistent/chromedriver")
    with pytest.raises(pytest.fail.Exception, match="run `make setup`"):
        start_chromium()
