"""Helpers of the browser tests: Debian's headless Chromium driven by Selenium, and the ways a user acts on a page
(type into a field and leave it, pick an option, open a "More settings" fold). With ZLORA_SCREENSHOTS=1, ``shot``
writes the README's screenshots to docs/screenshots/."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import REPO

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium and chromium-driver (make test installs them as root)",
)


def wait(cond, timeout: float = 120.0, what: str = ""):
    end = time.monotonic() + timeout
    while True:
        try:
            value = cond()
            if value:
                return value
        except Exception:  # the element is being re-rendered
            pass
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def reveal(driver, element) -> None:
    """Open the "More settings" fold an element sits in and scroll it to the middle of the window, as a user
    would before using it (not under the sticky action bar)."""
    driver.execute_script(
        "const d = arguments[0].closest('details'); if (d && !d.open) d.querySelector('summary').click();"
        "arguments[0].scrollIntoView({block: 'center'})",
        element,
    )


def click(driver, element):
    reveal(driver, element)
    element.click()
    return element


def choose(driver, field_id: str, value: str) -> None:
    """Pick an option of a select the way a user does."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    def picked():
        e = driver.find_element(By.ID, field_id)
        reveal(driver, e)
        Select(e).select_by_value(value)
        return True

    wait(picked, 10, field_id)
    time.sleep(0.4)


def type_into(driver, field_id: str, value: str) -> None:
    """Type into a field the way a user does (then leave it, which fires its change event)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def typed():
        e = driver.find_element(By.ID, field_id)
        reveal(driver, e)
        e.clear()
        e.send_keys(value + Keys.TAB)
        return True

    wait(typed, 10, field_id)
    time.sleep(0.4)  # the form resolves the config (debounced) and may re-render


def shot(driver, name: str, tmp_path: Path) -> None:
    folder = REPO / "docs" / "screenshots" if os.environ.get("ZLORA_SCREENSHOTS") else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    time.sleep(0.3)
    driver.save_screenshot(str(folder / f"{name}.png"))
