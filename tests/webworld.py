"""The shared browser for web console tests: one headless Debian Chromium per test session.

- `browser`: session-scoped selenium WebDriver (chromium + /usr/bin/chromedriver), a fresh
  profile directory, every host name except loopback unresolvable (a test that follows a bad
  redirect fails on the spot instead of leaving the machine).
- `page`: the same browser for one test, its cookies and storage cleared first (servers of
  different tests share 127.0.0.1, and cookies do not care about ports).
- helpers: `login(browser, base_url, user, password)`, `wait_for(browser, css)`, `screenshot(...)`.

Register new fixtures in tests/conftest.py by importing them there.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,900",
    # Safety net: no name but loopback resolves, so nothing a page does can reach the outside.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
)
WAIT = 15.0


def make_browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver


@pytest.fixture(scope="session")
def browser():
    profile = Path(tempfile.mkdtemp(prefix="netslate-chromium-"))
    driver = make_browser(profile)
    try:
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser):
    """The session's browser, clean for this test: no cookies, no storage, no pending alert."""
    reset(browser)
    yield browser
    reset(browser)


def reset(driver) -> None:
    try:
        driver.switch_to.alert.dismiss()
    except Exception:
        pass
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    driver.execute_cdp_cmd("Storage.clearDataForOrigin", {"origin": "*", "storageTypes": "all"})
    driver.get("about:blank")
    try:
        driver.get_log("browser")  # drain: each test reads only its own console messages
    except Exception:
        pass


def on_loopback(driver) -> bool:
    host = urlsplit(driver.current_url).hostname
    return host in ("127.0.0.1", "localhost", "::1")


def wait_for(driver, css: str, timeout: float = WAIT):
    """The first element matching `css`, waiting until it is there."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def wait_until(predicate, timeout: float = WAIT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def login(driver, base_url: str, username: str, password: str, next_path: str | None = None) -> None:
    """Fill the real login form and submit it (with the keyboard: Enter in the password field)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(base_url + "/login" + (f"?next={next_path}" if next_path else ""))
    wait_for(driver, "form[action='/login']")
    driver.find_element(By.ID, "username").send_keys(username)
    field = driver.find_element(By.ID, "password")
    field.send_keys(password)
    old = driver.current_url
    field.send_keys(Keys.ENTER)
    wait_until(lambda: driver.current_url != old or driver.find_elements(By.CSS_SELECTOR, "p.error"), what="the login answer")


def alert_text(driver) -> str | None:
    """The text of an open JavaScript alert/confirm, or None."""
    try:
        return driver.switch_to.alert.text
    except Exception:
        return None


def screenshot(driver, path: Path, width: int = 1280, height: int = 900) -> Path:
    """A PNG of the current page at this window size (for docs/img/)."""
    driver.set_window_size(width, height)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    return path
