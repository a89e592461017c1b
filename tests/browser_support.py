"""A headless Chromium for page tests: Debian's chromium and chromedriver through selenium.

    with chromium() as browser:
        browser.get(url)
        series = wait_for_panels(browser, keys)     # {panel key: drawn series}
        save_screenshot(browser, tmp_path / "page.png")

`make setup` installs /usr/bin/chromium and /usr/bin/chromedriver; a machine without them
fails the test with that hint instead of skipping it.
"""

from __future__ import annotations

import base64
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL_HINT = "run `make setup` (apt-get install chromium chromium-driver)"
LAPTOP = (1440, 900)


@contextmanager
def chromium(width: int = LAPTOP[0], height: int = LAPTOP[1]) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a `width` x `height` window, quit on exit."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            raise AssertionError(f"{path} is not installed: {INSTALL_HINT}")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def panel_states(driver: webdriver.Chrome) -> dict[str, dict[str, str | None]]:
    """Every `.panel` element's data-series and data-error, by panel key."""
    return driver.execute_script(
        """
        const out = {};
        for (const el of document.querySelectorAll('.panel[id^="panel-"]')) {
          out[el.id.slice(6)] = {series: el.getAttribute('data-series'),
                                 error: el.getAttribute('data-error')};
        }
        return out;
        """
    )


def wait_for_panels(
    driver: webdriver.Chrome,
    keys: Iterable[str],
    timeout_s: float = 30.0,
    min_series: int = 0,
    refreshes: int = 1,
) -> dict[str, int]:
    """Polls until every panel in `keys` has been drawn at least `refreshes` times (the
    page counts on body[data-refreshes]) with >= `min_series` series; returns the counts.
    AssertionError with what was missing at the deadline."""
    keys = sorted(keys)
    deadline = time.monotonic() + timeout_s
    while True:
        states = panel_states(driver)
        done = int(driver.execute_script("return document.body.dataset.refreshes || '0'"))
        counts = {
            k: int(states[k]["series"])
            for k in keys
            if k in states and states[k]["series"] is not None
        }
        if done >= refreshes and all(counts.get(k, -1) >= min_series for k in keys):
            return counts
        if time.monotonic() > deadline:
            missing = {k: states.get(k) for k in keys if counts.get(k, -1) < min_series}
            raise AssertionError(
                f"after {timeout_s} s ({done} refreshes) panels not drawn with >= {min_series} "
                f"series: {missing}; page error: {page_error(driver)!r}"
            )
        time.sleep(0.2)


def page_error(driver: webdriver.Chrome) -> str:
    """The error banner's text ('' when hidden)."""
    return driver.execute_script(
        "const e = document.getElementById('error'); return e && !e.hidden ? e.textContent : '';"
    )


def save_screenshot(driver: webdriver.Chrome, path: Path, full_page: bool = False) -> Path:
    """A PNG of the window (or of the whole page with `full_page`) at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if full_page:
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
        )
        path.write_bytes(base64.b64decode(shot["data"]))
    else:
        if not driver.save_screenshot(str(path)):
            raise AssertionError(f"the screenshot could not be written to {path}")
    return path
