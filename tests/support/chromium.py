"""Debian's chromium, headless, through Selenium and Debian's chromedriver (both from scripts/system-deps; nothing
downloads a browser): the one way the browser tests (tests/browser) and bench/console.py start it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-extensions", "--window-size=1280,800")


def installed() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


def start(profile: Path, *, flags: Sequence[str] = (), console_log: bool = False) -> Any:
    """A new browser with its own profile directory; ``console_log``: the page's console readable by get_log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", *flags):
        options.add_argument(flag)
    if console_log:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
