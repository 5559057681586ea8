"""The console in a real browser: Debian's chromium, driven by chromedriver through selenium.

tests/run.sh installs chromium and chromium-driver when they are missing. Without them
the test skips locally and fails under CI=true: the console's page is only proven in a
browser. Screenshots are kept under tests/console/artifacts/ (ignored by git).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.console.conftest import ADMIN_KEY, PROXY_KEY

ARTIFACTS = Path(__file__).parent / "artifacts"
XSS = '<img src=x onerror="window.__xss=1">bomb</textarea><script>window.__xss=2</script>'


def _browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture
def browser() -> Iterator[Any]:
    paths = _browser_paths()
    if paths is None:
        message = "chromium and chromedriver are not installed (tests/run.sh installs Debian's chromium and chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("selenium is not installed (pip install -e '.[test]')")
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    chromium, driver_path = paths
    profile = tempfile.mkdtemp(prefix="guardproxy-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--window-size=1400,1100",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _shot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _post(proxy: Any, content: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": content}], **extra},
        headers={"authorization": f"Bearer {PROXY_KEY}"},
        timeout=10,
    )


@pytest.mark.usefixtures("console_env")
def test_console_page(console_proxy: Any, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.wait import WebDriverWait

    driver = browser
    proxy = console_proxy(audit=f'path = "{tmp_path / "audit.jsonl"}"\ncapture = "all"')
    for text in ("Tell me about bread.", "Some risky advice please.", "How do I bake rye?"):
        _post(proxy, text)
    trace = [f" step{i}" for i in range(12)] + [" detonator"] + [f" more{i}" for i in range(12)]
    aborted = _post(proxy, "Explain plants.", stream=True, x_script={"reasoning": trace, "answer": ["No."], "delay": 0.005})
    aborted_id = aborted.headers["x-request-id"]
    wait = WebDriverWait(driver, 10, poll_frequency=0.02)

    # A proxy key is refused; the admin key opens the console.
    driver.get(f"{proxy.url}/console")
    driver.find_element(By.ID, "admin-key").send_keys(PROXY_KEY)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait.until(lambda d: "proxy key" in d.find_element(By.ID, "status").text)
    driver.find_element(By.ID, "admin-key").send_keys(ADMIN_KEY)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait.until(lambda d: d.find_element(By.ID, "console").is_displayed())
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#rows tr")) == 4)
    wait.until(lambda d: d.find_element(By.ID, "status").text == "Live.")

    # A blocked request (its prompt an XSS attempt) shows within 1 s of its end.
    r = _post(proxy, XSS)
    ended = time.monotonic()
    assert r.status_code == 400
    rid = r.headers["x-request-id"]
    row = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#rows tr[data-request-id="{rid}"]'))
    shown_after = time.monotonic() - ended
    assert shown_after < 1.0, f"the blocked request showed {shown_after:.2f} s after its end"
    assert row[0].find_elements(By.TAG_NAME, "td")[5].text == "blocked"
    _shot(driver, "01-live-blocked")

    # Its timeline: the prompt check, the cut, what the client saw; the prompt as text.
    row[0].click()
    wait.until(lambda d: d.find_element(By.ID, "t-id").text == rid)
    events = driver.find_element(By.ID, "t-events").text
    assert "Prompt check" in events and "risk 90" in events and "Cut: the prompt was stopped (block)" in events
    assert "HTTP error 400 content_policy_violation" in events
    content = driver.find_element(By.ID, "t-content")
    assert '<img src=x onerror="window.__xss=1">bomb</textarea><script>' in content.text
    assert content.find_elements(By.TAG_NAME, "img") == [] and content.find_elements(By.TAG_NAME, "script") == []
    assert driver.execute_script("return window.__xss === undefined")
    _shot(driver, "02-timeline")

    # A label for the prompt's verdict, stored with the record.
    driver.find_element(By.CSS_SELECTOR, '#t-labels button[data-stage="prompt"][data-verdict="right"]').click()
    wait.until(lambda d: "Label saved" in d.find_element(By.ID, "status").text)
    assert proxy.console.wait_for(rid)["labels"] == {"prompt": "right"}

    # What if: at "loose" the risky prompt (45) passes, the others stay as they were.
    Select(driver.find_element(By.ID, "w-strictness")).select_by_visible_text("loose")
    driver.find_element(By.ID, "w-run").click()
    wait.until(lambda d: "1 of 5 outcomes change" in d.find_element(By.ID, "w-summary").text)
    changed = driver.find_elements(By.CSS_SELECTOR, "#rows td.changed")
    assert [c.text for c in changed] == ["passed*"]

    # The charts: outcomes over time as bars, risk scores with the thresholds drawn.
    assert len(driver.find_elements(By.CSS_SELECTOR, "#chart-outcomes rect")) >= 2
    assert {e.get_attribute("data-outcome") for e in driver.find_elements(By.CSS_SELECTOR, "#chart-outcomes rect")} == {
        "passed",
        "blocked",
        "aborted",
    }
    assert len(driver.find_elements(By.CSS_SELECTOR, "#chart-scores line.threshold")) == 2  # current 40, what-if 60
    assert driver.find_elements(By.CSS_SELECTOR, "#chart-scores rect[data-stage='prompt']")

    # Calibration from the labels, with the TOML to apply: one kind of label alone
    # proposes nothing; the risky prompt's block labelled wrong and a pass labelled right
    # put the threshold between 45 and 90.
    driver.find_element(By.ID, "c-run").click()
    wait.until(lambda d: "needs labels of both kinds" in d.find_element(By.ID, "c-table").text)
    for outcome_text, verdict in (("MIS", "wrong"), ("", "right")):
        target = next(
            tr
            for tr in driver.find_elements(By.CSS_SELECTOR, "#rows tr")
            if tr.find_elements(By.TAG_NAME, "td")[8].text == outcome_text
        )
        request_id = target.get_attribute("data-request-id")
        target.click()
        wait.until(lambda d, r=request_id: d.find_element(By.ID, "t-id").text == r)
        driver.find_element(By.CSS_SELECTOR, f'#t-labels button[data-stage="prompt"][data-verdict="{verdict}"]').click()
        wait.until(lambda d, r=request_id, v=verdict: proxy.console.wait_for(r).get("labels") == {"prompt": v})
    driver.find_element(By.ID, "c-run").click()
    wait.until(lambda d: "strictness = 46" in d.find_element(By.ID, "c-toml").text)
    assert "46" in driver.find_element(By.ID, "c-table").text
    _shot(driver, "03-whatif-charts-calibration")

    # A reasoning abort's timeline: each check at its token position, then the cut.
    driver.find_element(By.CSS_SELECTOR, f'#rows tr[data-request-id="{aborted_id}"]').click()
    wait.until(lambda d: d.find_element(By.ID, "t-id").text == aborted_id)
    events = driver.find_element(By.ID, "t-events").text
    assert "Choice 0, reasoning check at token 4 (" in events and "Judgment 1" in events
    assert "Cut: reasoning stopped at token" in events and "finish_reason content_filter" in events
    _shot(driver, "04-reasoning-timeline")
    assert driver.execute_script("return window.__xss === undefined")
