"""Snakemake's HTML report as a user sees it: Debian's chromium, headless, driven by selenium through
Debian's chromedriver (the same source package as chromium, so the two versions always match).

Each page is opened from the menu as a user clicks it; what it shows and what the browser console
says are read back.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = "chromium"
CHROMEDRIVER = "chromedriver"
INSTALL = "apt-get install chromium chromium-driver"


@dataclass
class Page:
    """One menu entry of the report after a click: its results table and what its first result shows."""

    rows: list[list[str]] = field(default_factory=list)   # the results table, one list of cells per row
    shown: dict[str, int] = field(default_factory=dict)   # after clicking the first result: PNGs, tables
    graphics: int = 0                                      # svg and canvas elements (Workflow, Statistics)
    errors: list[str] = field(default_factory=list)       # console messages of level SEVERE


def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver), or a skip naming the install command; in CI (CI=true) their absence fails."""
    found = shutil.which(CHROMIUM), shutil.which(CHROMEDRIVER)
    if not all(found):
        message = f"chromium and chromedriver are not installed ({INSTALL}): the report is not checked in a browser"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; .ci/run installs them")
        pytest.skip(message)
    return found


def _wait(condition, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def open_pages(report: Path, entries: list[str]) -> dict[str, Page]:
    """Open `report` in headless chromium once per menu entry, click the entry, read what it shows.

    Args:
        report: a `snakemake --report` HTML file.
        entries: menu entries to click, e.g. "Workflow", "Statistics" or a result category.
    Returns:
        {entry: Page}.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    chromium, chromedriver = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    pages = {}
    try:
        for entry in entries:
            page = pages[entry] = Page()
            driver.get(report.resolve().as_uri())
            link = _wait(lambda: [a for a in driver.find_elements(By.TAG_NAME, "a") if a.text.strip() == entry])
            assert link, f"no menu entry {entry!r} in {report}"
            link[0].click()
            table = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "table"), timeout=3)
            if table:
                page.rows = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
                             for row in table[0].find_elements(By.CSS_SELECTOR, "tbody tr")]
                view = table[0].find_elements(By.CSS_SELECTOR, "a[iconname=eye]")
                if view:
                    view[0].click()
                    _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "iframe, main img, #content img"), timeout=5)
                frames = driver.find_elements(By.TAG_NAME, "iframe")
                page.shown = {"img": len(driver.find_elements(By.CSS_SELECTOR, "img[src^='data:image/png']")),
                              "iframe tables": 0}
                if frames:  # an HTML result: the tables of the page shown in it
                    driver.switch_to.frame(frames[0])
                    page.shown["iframe tables"] = len(_wait(lambda: driver.find_elements(By.TAG_NAME, "table")))
                    driver.switch_to.default_content()
            page.graphics = len(driver.find_elements(By.CSS_SELECTOR, "svg, canvas"))
            page.errors = [log["message"] for log in driver.get_log("browser") if log["level"] == "SEVERE"]
    finally:
        driver.quit()
    return pages
