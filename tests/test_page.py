"""The service's page at / against a real ``halp serve``: the read endpoints it views, and the page itself
in headless Chromium (device, tables, staircase, queue, search, cancel, the token), every request it
makes going to the service."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.browser import chromium, console_errors, requested_urls
from tests.conftest import wait_job

TOKEN = "page-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STAIRS = "conv2d-k3x3-s1x1-p1x1-d1x1-g1-h14w14-b1-fp32"
POINTWISE = "conv2d-k1x1-s1x1-p0x0-d1x1-g1-h14w14-b1-fp32"
LONG = "conv2d-k3x3-s1x1-p1x1-d1x1-g1-h56w56-b1-fp32"
STAIRS_GRID = {"cin": [8, 16, 24, 32, 48], "cout": list(range(8, 65, 8))}
LONG_GRID = {"cin": list(range(8, 257, 8)), "cout": list(range(64, 513, 64))}  # minutes: cancelled long before


def _submit(client: httpx.Client, shape: str, grid: dict) -> str:
    answer = client.post(f"/lut/{shape}", json=grid)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


@pytest.fixture
def served(make_service):
    """A service with a token, two measured tables, and a long job queued behind nothing."""
    svc = make_service(env={"HALP_API_TOKEN": TOKEN})
    with httpx.Client(base_url=svc.url, headers=AUTH, timeout=30) as client:
        jobs = {
            shape: _submit(client, shape, grid)
            for shape, grid in ((STAIRS, STAIRS_GRID), (POINTWISE, {"cin": [16], "cout": [8, 16]}))
        }
        for job in jobs.values():
            assert wait_job(client, f"/jobs/{job}")["state"] == "done"
        jobs[LONG] = _submit(client, LONG, LONG_GRID)
        yield svc, client, jobs


def test_the_read_endpoints_the_page_views(served):
    svc, client, jobs = served
    health = httpx.get(f"{svc.url}/healthz").json()  # no token: a load balancer's probe
    assert health["version"] == "1" and health["uptime_s"] > 0
    assert health["token_required"] is True and health["reads_protected"] is False
    assert httpx.get(f"{svc.url}/auth").status_code == 401
    assert httpx.get(f"{svc.url}/auth", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/auth").status_code == 200

    luts = {t["shape"]: t for t in client.get("/luts").json()}
    stairs = luts[STAIRS]
    assert stairs["points"] == 40 and stairs["last_job"] == jobs[STAIRS]
    assert stairs["first_measured"] <= stairs["last_measured"]
    assert luts[POINTWISE]["points"] == 2 and luts[POINTWISE]["last_job"] == jobs[POINTWISE]

    recent = client.get("/jobs").json()
    assert [j["id"] for j in recent] == [jobs[LONG], jobs[POINTWISE], jobs[STAIRS]]  # newest first
    assert recent[0]["shape"] == LONG and recent[0]["created_at"] and recent[0]["total"] == 256
    assert [j["id"] for j in client.get("/jobs", params={"active": True}).json()] == [jobs[LONG]]
    assert [j["id"] for j in client.get("/jobs", params={"limit": 1}).json()] == [jobs[LONG]]
    assert client.get("/jobs", params={"limit": 0}).status_code == 422

    page = httpx.get(f"{svc.url}/")  # the shell: no data in it, so no token is needed to load it
    assert page.status_code == 200 and 'data-token-required="true"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert stairs["last_job"] not in page.text and STAIRS not in page.text
    plotly = httpx.get(f"{svc.url}/ui/plotly.min.js")
    assert plotly.status_code == 200 and plotly.headers["content-type"].startswith("text/javascript")
    assert len(plotly.content) > 1_000_000 and b"plotly.js" in plotly.content[:500]
    assert httpx.get(f"{svc.url}/ui/index.html").status_code == 404  # only the named assets
    assert "[The service's page](/)" in httpx.get(f"{svc.url}/openapi.json").json()["info"]["description"]  # /docs


def _wait(driver, condition, timeout: float = 30.0):
    """Until ``condition`` holds; the queue is drawn anew at every poll, so an element found a moment ago
    may be gone (stale): that is "not yet", not a failure."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=ignored).until(condition)


def _click(driver, css: str) -> None:
    from selenium.webdriver.common.by import By

    _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, css).click() or True)


def _rows(driver, table: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")


def _traces(driver) -> int:
    from selenium.webdriver.common.by import By

    return len(driver.find_elements(By.CSS_SELECTOR, "#staircase .scatterlayer .trace"))


def test_the_service_page_in_a_real_browser(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    svc, client, jobs = served
    shots = Path(os.environ.get("HALP_SCREENSHOTS", tmp_path))  # set it to keep the pictures (README's)
    with chromium(height=1500) as driver:
        driver.get(f"{svc.url}/")
        # with a token set the page asks for it and shows nothing else; a wrong one is refused
        _wait(driver, lambda d: d.find_element(By.ID, "login").is_displayed())
        assert not driver.find_element(By.ID, "content").is_displayed()
        driver.find_element(By.ID, "token-input").send_keys("wrong")
        driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
        _wait(driver, lambda d: "Wrong token" in d.find_element(By.ID, "token-error").text)
        assert not driver.find_element(By.ID, "content").is_displayed()
        driver.save_screenshot(str(shots / "service-page-token.png"))
        driver.find_element(By.ID, "token-input").clear()
        driver.find_element(By.ID, "token-input").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, "#token-form button").click()

        # the device, as /device says
        device = client.get("/device").json()
        _wait(driver, lambda d: device["fingerprint"] in d.find_element(By.ID, "device").text)
        assert device["accelerator"] in driver.find_element(By.ID, "device").text
        assert "healthy" in driver.find_element(By.ID, "health").text

        # the tables: searchable, sortable; one opens on its staircase, a band and a line per curve
        _wait(driver, lambda d: len(_rows(d, "luts")) >= 2)
        search = driver.find_element(By.ID, "search")
        search.send_keys("k1x1")
        _wait(driver, lambda d: [r.get_attribute("data-shape") for r in _rows(d, "luts")] == [POINTWISE])
        search.clear()
        search.send_keys("h14w14")
        _wait(driver, lambda d: len(_rows(d, "luts")) == 2)
        driver.find_element(By.CSS_SELECTOR, '#luts th[data-key="points"]').click()
        _wait(driver, lambda d: [r.get_attribute("data-shape") for r in _rows(d, "luts")] == [POINTWISE, STAIRS])
        driver.find_element(By.CSS_SELECTOR, '#luts th[data-key="points"]').click()  # again: descending
        _wait(driver, lambda d: [r.get_attribute("data-shape") for r in _rows(d, "luts")] == [STAIRS, POINTWISE])
        _click(driver, f'#luts tr[data-shape="{STAIRS}"] button')
        _wait(driver, lambda d: _traces(d) == 2 * len(STAIRS_GRID["cin"]))
        assert "40 points measured" in driver.find_element(By.ID, "staircase-note").text
        Select(driver.find_element(By.ID, "axis")).select_by_value("cin")  # a curve per cout: 8 of them
        _wait(driver, lambda d: _traces(d) == 2 * len(STAIRS_GRID["cout"]))
        Select(driver.find_element(By.ID, "axis")).select_by_value("cout")
        search.clear()
        search.send_keys("h")  # every table, for the picture
        _wait(driver, lambda d: _traces(d) == 2 * len(STAIRS_GRID["cin"]))

        # the queue: the long job runs, with its progress; its cancel button cancels it
        long_row = f'#jobs tr[data-job="{jobs[LONG]}"]'
        _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, long_row).get_attribute("data-state") == "running")
        _wait(driver, lambda d: int(d.find_element(By.CSS_SELECTOR, f"{long_row} progress").get_attribute("value")) > 0)
        driver.save_screenshot(str(shots / "service-page.png"))
        _click(driver, f"{long_row} button.cancel")
        _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, long_row).get_attribute("data-state") == "cancelled")
        assert client.get(f"/jobs/{jobs[LONG]}").json()["state"] == "cancelled"

        # nothing left the machine: every request the page made went to this service
        urls = requested_urls(driver)
        assert urls and all(u.startswith(f"{svc.url}/") for u in urls), urls
        assert {f"{svc.url}/ui/plotly.min.js", f"{svc.url}/luts", f"{svc.url}/lut/{STAIRS}"} <= urls
        assert console_errors(driver) == []
