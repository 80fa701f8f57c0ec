"""`raftlm serve`'s page (GET /) in a real headless chromium, driven by selenium, against a live server
with a tiny two-field run: fill the form, submit, read the number, the interval and the bars from the
DOM, and compare them with `raftlm predict`. Skipped where chromium and its driver are not installed
(`apt-get install chromium chromium-driver`; `.ci/run` does).

Also a script: ``python tests/test_serve_page.py URL OUT.png [field=text ...]`` screenshots the page of a
running server after one prediction (docs/img/serve-page.png was made so).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")
# offline, sandbox-less, quiet: what this machine (and CI's) needs; a fresh profile every time
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)
NEEDS_BROWSER = pytest.mark.skipif(
    not (CHROMIUM and DRIVER and importlib.util.find_spec("selenium")),
    reason="needs chromium and chromedriver (apt-get install chromium chromium-driver) and selenium",
)


@contextmanager
def browser():
    """A headless chromium under selenium (the installed driver: selenium never downloads one)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="raftlm-chromium-") as profile:
        options = Options()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(DRIVER), options=options)
        try:
            driver.set_page_load_timeout(60)
            yield driver
        finally:
            driver.quit()


def predict_on_page(driver, url: str, row: dict, timeout: float = 120) -> None:
    """Open the page, fill one text box per template field, submit, wait for the answer."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/")
    wait = WebDriverWait(driver, timeout)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready")
    for name, text in row.items():
        box = driver.find_element(By.ID, f"field-{name}")
        box.clear()
        box.send_keys(text)
    driver.find_element(By.ID, "predict").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run whose template has two fields, calibrated on its 40 rows."""
    from helpers import train_args, write_csv

    from raftlm.cli import main

    d = tmp_path_factory.mktemp("page")
    words = ["awful", "bad", "fine", "good", "great"]
    rows = [
        {"title": f"item {i}", "text": f"it was {words[i % 5]}{' really' * (i % 3)}", "target": i % 5 + 1}
        for i in range(40)
    ]
    data = write_csv(d / "toy.csv", rows)
    template = "{title}: {text}. rating:"
    assert main(train_args(data, d / "run", "--template", template)) == 0
    assert main(["calibrate", str(d / "run"), "--input", str(data)]) == 0
    return d / "run", d


@NEEDS_BROWSER
def test_the_page_predicts_like_raftlm_predict(run):
    """The page's number, interval, bars and card equal `raftlm predict`'s; a refused row shows the
    server's line; /docs renders from the server alone (one server, one browser)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from test_serve import offline, server

    run_dir, d = run
    row = {"title": "a new kettle", "text": "it was great, really"}
    (d / "one.jsonl").write_text(json.dumps(row) + "\n")
    want = offline(run_dir, d / "one.jsonl", d / "one.out.jsonl", "--with-probs", "--interval", "0.9")[0]
    with server(run_dir) as (url, _, _), browser() as driver:
        predict_on_page(driver, url, row)
        assert driver.find_element(By.ID, "error").text == ""
        shown = driver.find_element(By.ID, "prediction")
        assert float(shown.get_attribute("data-value")) == want["prediction"]
        assert shown.text == f"{want['prediction']:.3f}"
        interval = driver.find_element(By.ID, "interval")
        assert float(interval.get_attribute("data-lower")) == want["lower"]
        assert float(interval.get_attribute("data-upper")) == want["upper"]
        assert interval.text.startswith("90 % interval [") and "(cqr)" in interval.text
        bars = driver.find_elements(By.CSS_SELECTOR, "#chart rect.bar")
        assert [b.get_attribute("data-label") for b in bars] == list(want["probs"])
        assert [float(b.get_attribute("data-prob")) for b in bars] == list(want["probs"].values())
        heights = [float(b.get_attribute("height")) for b in bars]
        tallest = max(want["probs"], key=want["probs"].get)
        assert bars[heights.index(max(heights))].get_attribute("data-label") == tallest
        # the run's card
        assert driver.find_element(By.ID, "card-base").text == "tiny-random-llama"
        assert driver.find_element(By.ID, "card-method").text == "raft"
        assert driver.find_element(By.ID, "card-grid").text == "1, 2, 3, 4, 5"
        assert driver.find_element(By.ID, "card-calibration").text == "cqr, n=40 (toy.csv)"
        test_row = driver.find_element(By.CSS_SELECTOR, '#card-metrics tr[data-split="test"]')
        assert test_row.text.split()[0] == "test" and test_row.text.split()[-1] == "4"  # n
        # a row the contract refuses: the server's one line, on the page
        predict_on_page(driver, url, {"title": "   ", "text": "fine"})
        assert "request row 1: field 'title' is empty" in driver.find_element(By.ID, "error").text

        # GET /docs (Swagger UI) loads its script and styles from the server itself (fastapi-offline): the
        # page listed no operation where the server or its users cannot reach jsDelivr, as here
        driver.get(url + "/docs")
        assert "cdn.jsdelivr.net" not in driver.page_source
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
        paths = {e.text.strip() for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert {"/predict", "/invocations", "/info"} <= paths, paths


@NEEDS_BROWSER
def test_the_page_predicts_for_head_runs_with_and_without_a_grid(run, tmp_path):
    """A predictive head has no grid distribution: the page asks for none and shows the number (it asked
    for grid probabilities of every run, and a head run's server refused them). raft-head's bars are its
    grid probabilities and the note names its correction."""
    from helpers import train_args
    from selenium.webdriver.common.by import By
    from test_serve import offline, servers

    from raftlm.cli import main

    _, d = run
    row = {"title": "a new kettle", "text": "it was great, really"}
    (d / "one.jsonl").write_text(json.dumps(row) + "\n")
    template = "{title}: {text}. rating:"
    for method in ("head-pooled", "raft-head"):
        args = train_args(d / "toy.csv", tmp_path / method, "--template", template, "--method", method)
        assert main(args) == 0
    # (run, server flags, what the page's note says): the two heads; then a server that decodes with the
    # median (raft-head: of its shifted distribution) or decodes text: the page says what the number is (a
    # greedy server has no probabilities to give, and is not asked for them)
    cases = [
        (tmp_path / "head-pooled", (), "this run predicts one number (a head): no grid distribution"),
        (tmp_path / "raft-head", (), "their mean + the head's correction"),
        (
            tmp_path / "raft-head",
            ("--decoder", "median"),
            "(dashed: the prediction, their median + the head's",
        ),
        (
            run[0],
            ("--decoder", "greedy"),
            "this server decodes text (--decoder greedy): no grid distribution",
        ),
    ]
    wants = []
    for i, (run_dir, flags, _) in enumerate(cases):
        probs = ("--with-probs",) if run_dir.name == "raft-head" and not flags else ()
        wants.append(offline(run_dir, d / "one.jsonl", tmp_path / f"want{i}.jsonl", *flags, *probs)[0])
    # the four servers start side by side (each spends seconds importing torch); one browser, a page each
    with servers(*[(run_dir, flags) for run_dir, flags, _ in cases]) as ready, browser() as driver:
        for (run_dir, flags, said), want, (url, _, _) in zip(cases, wants, ready, strict=True):
            predict_on_page(driver, url, row)
            assert driver.find_element(By.ID, "error").text == ""
            value = float(driver.find_element(By.ID, "prediction").get_attribute("data-value"))
            assert value == want["prediction"]
            note = driver.find_element(By.ID, "chart-note").text
            assert said in note
            bars = driver.find_elements(By.CSS_SELECTOR, "#chart rect.bar")
            if run_dir.name == "head-pooled":
                assert not bars and note == said
            elif flags == ():  # raft-head's bars are its grid probabilities; the note gives its correction
                assert [float(b.get_attribute("data-prob")) for b in bars] == list(want["probs"].values())
                assert f"{said} {want['correction']:.3f}" in note
            else:
                # calibrated runs, but a greedy server gives no intervals: the page offers none
                assert driver.find_element(By.ID, "level-box").is_displayed() == (flags[1] != "greedy")


def screenshot(url: str, out: str, row: dict) -> None:
    """The whole page after one prediction, as a PNG (chromium's own full-page capture)."""
    with browser() as driver:
        predict_on_page(driver, url, row)
        size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(base64.b64decode(shot["data"]))


if __name__ == "__main__":
    url, out, *fields = sys.argv[1:]
    screenshot(url.rstrip("/"), out, dict(f.split("=", 1) for f in fields))
    print(f"wrote {out}")
