"""The web console in real headless Chromium (Debian's chromium + chromedriver, via Selenium),
against a real server on loopback: the page loads, signs in, the map shows the tiles a job holds,
a job submitted from the form appears and completes with its loss curve, log and report, and the
browser console has no errors. Skipped, saying why, where Chromium is not installed
(`make browser` installs it)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("selenium")

from selenium import webdriver
from selenium.webdriver.common.by import By

from dojo.client import Client

from .procs import Server, make_tenant, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture()
def browser() -> Iterator[Any]:
    if not (CHROMIUM and DRIVER):
        pytest.skip("no chromium/chromedriver on PATH (apt-get install chromium "
                    "chromium-driver, or make browser)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1100,640"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def sign_in(driver: Any, url: str, token: str) -> None:
    driver.get(url + "/")
    assert driver.title == "dojo service"
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "signin").click()
    wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#map .tile")) == 6, 20,
             0.2, what="the 2 x 3 map of V1")


def test_console_loads_and_draws_the_machine(tmp_path: Path, browser: Any) -> None:
    token = make_tenant(tmp_path, "acme")
    with Server(tmp_path) as server:
        sign_in(browser, server.url, token)
        assert "tenant acme" in browser.find_element(By.ID, "who").text
        assert browser.find_elements(By.CSS_SELECTOR, "#map .tile.busy") == []
        browser.find_element(By.NAME, "tiles").clear()
        browser.find_element(By.NAME, "tiles").send_keys("9")
        browser.find_element(By.CSS_SELECTOR, "#submit button").click()
        wait_for(lambda: "tiles = 9" in browser.find_element(By.ID, "submit-error").text, 10,
                 0.2, what="the 422 line for tiles")
        # The failed submission is a handled 422, not a script error; nothing else logged.
        errors = [e for e in console_errors(browser) if "422" not in e]
        assert errors == []


@pytest.mark.slow
def test_console_job_appears_runs_on_the_map_and_completes(tmp_path: Path,
                                                           browser: Any) -> None:
    token = make_tenant(tmp_path, "acme")
    other = make_tenant(tmp_path, "zeta")
    with Server(tmp_path) as server:
        sign_in(browser, server.url, token)
        # Another tenant's job: its tiles show as "other", without its id.
        Client(server.url, other).submit({"kind": "train", "model": "mlp", "tiles": 1,
                                          "plan": "dp=25", "batch": 50, "steps": 40,
                                          "min_step_s": 1.0})
        form = {"model": "mlp", "tiles": "2", "plan": "dp=50", "batch": "100", "steps": "12"}
        for name, value in form.items():
            browser.find_element(By.NAME, name).clear()
            browser.find_element(By.NAME, name).send_keys(value)
        browser.find_element(By.CSS_SELECTOR, "#submit button").click()
        row = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "tr.job-row"), 20,
                       what="the job in the queue")
        job_id = row[0].get_attribute("data-job")
        busy = wait_for(lambda: browser.find_elements(
            By.CSS_SELECTOR, f"#map .tile.busy[data-job='{job_id}']"), 60, 0.3,
            what="the job's tiles on the map")
        assert len(busy) == 2
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#map .tile.other"), 60, 0.3,
                 what="the other tenant's tile")
        shot = os.environ.get("DOJO_CONSOLE_SCREENSHOT")
        time.sleep(1.5)
        browser.save_screenshot(shot or str(tmp_path / "console.png"))
        browser.get(f"{server.url}/#job/{job_id}")
        wait_for(lambda: browser.find_element(By.ID, "job-state").text == "succeeded", 240, 1,
                 what="the job to succeed")
        wait_for(lambda: "[worker] done" in browser.find_element(By.ID, "job-log").text, 10,
                 0.3, what="the whole log")
        points = browser.find_element(By.CSS_SELECTOR, "#loss polyline").get_attribute("points")
        assert len(points.split()) == 12
        assert "step_time_s" in browser.find_element(By.ID, "job-result").text
        wait_for(lambda: browser.find_element(By.ID, "job-report").get_attribute("src")
                 .startswith("blob:"), 10, 0.3, what="the report")
        assert console_errors(browser) == []
