"""Headless Chromium from Debian's packages (``apt-get install chromium chromium-driver``), driven by
Selenium at those binaries: nothing is downloaded (Selenium Manager is kept offline)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator:
    """A headless browser that logs every request it makes (``requested_urls``) and its console."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no headless Chromium here: apt-get install chromium chromium-driver (CI does)")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for a driver online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(arg)  # no sandbox: CI runs as root, where Chromium refuses to start with one
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def requested_urls(driver) -> set[str]:
    """Every URL the page asked for since the last call (Chrome's performance log, read destructively)."""
    urls = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
    return urls


def console_errors(driver) -> list[str]:
    """The page's console errors, less the failed requests a test provoked (a 401 it asked for)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"]
