"""Debian's headless Chromium driven by Selenium, and the few ways the UI tests read Dagster's pages.

The browser and its driver are the system's (`bash .ci/system-packages` installs them), never one that
Selenium Manager downloads: the driver path is passed explicitly and `SE_OFFLINE` keeps Selenium
Manager off the network in case anything still calls it.

Dagster's production build strips its `data-testid`s (`testId()` returns null outside jest), so pages
are read by visible text, ARIA labels (icons carry their name as `aria-label`) and the `data-tooltip`
attribute that holds each asset node's full name in the graph. Every wait names what it waited for and
quotes the webserver's log tail, and leaves a screenshot of the page next to the test's other files.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARGUMENTS = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"]

# How long a page element may take to appear: generous, for a loaded 2-core machine.
TIMEOUT_S = 60

T = TypeVar("T")


def require_browser() -> None:
    """Fail (not skip) when the system browser is missing: a skipped UI test would pass CI unseen."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: the UI tests drive Debian's headless Chromium; "
            "install it with `bash .ci/system-packages`",
            pytrace=False,
        )


@contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    """A headless Chromium session from the system packages, closed on exit."""
    require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ARGUMENTS:
        options.add_argument(argument)
    previous = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    finally:
        if previous is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = previous
    try:
        yield driver
    finally:
        driver.quit()


def xpath_literal(text: str) -> str:
    """`text` as an XPath 1.0 string literal (which has no escapes: quotes are spliced with concat)."""
    if "'" not in text:
        return f"'{text}'"
    return "concat(" + ', "\'", '.join(f"'{part}'" for part in text.split("'")) + ")"


def with_text(text: str, tag: str = "*") -> str:
    """XPath of a `tag` element whose own text is exactly `text` (whitespace normalised)."""
    return f"//{tag}[normalize-space(text())={xpath_literal(text)}]"


def with_whole_text(text: str, tag: str = "*") -> str:
    """XPath of a `tag` element whose text, its children's included, is exactly `text` ("Checks (3)")."""
    return f"//{tag}[normalize-space(.)={xpath_literal(text)}]"


def button(label_prefix: str, within: str = "") -> str:
    """XPath of a button whose label starts with `label_prefix` ("Materialize" matches "Materialize…")."""
    return f"{within}//button[starts-with(normalize-space(.), {xpath_literal(label_prefix)})]"


def matches_truncated(label: str, name: str) -> bool:
    """Whether `label` shows `name`: whole, or middle-truncated by the UI (`vector_dimens…matches_model`)."""
    if "…" not in label:
        return label == name
    head, _, tail = label.partition("…")
    return len(head) + len(tail) < len(name) and name.startswith(head) and name.endswith(tail)


class Page:
    """One browser tab on the Dagster webserver at `base_url`.

    `describe` adds context to every timeout (the webserver's log tail); `artifacts` is where a timed-out
    wait leaves its screenshot.
    """

    def __init__(self, driver: webdriver.Chrome, base_url: str, describe: Callable[[], str], artifacts: Path) -> None:
        self.driver = driver
        self.base_url = base_url.rstrip("/")
        self.describe = describe
        self.artifacts = artifacts

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def wait(self, condition: Callable[[], T | None], what: str, timeout_s: float = TIMEOUT_S) -> T:
        """Poll `condition` until it returns something truthy; a re-rendered (stale) element counts as
        not yet. On timeout: an AssertionError naming `what`, the page's URL, a screenshot and the log."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = condition()
            except StaleElementReferenceException:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                shot = self.artifacts / f"timeout-{int(time.time())}.png"
                self.driver.save_screenshot(str(shot))
                raise AssertionError(
                    f"timed out after {timeout_s:.0f} s waiting for {what}\n"
                    f"page: {self.driver.current_url} (screenshot {shot})\n{self.describe()}"
                )
            time.sleep(0.2)

    def visible(self, xpath: str) -> list[WebElement]:
        return [element for element in self.driver.find_elements(By.XPATH, xpath) if element.is_displayed()]

    def find(self, xpath: str, what: str, timeout_s: float = TIMEOUT_S) -> WebElement:
        """The first displayed element matching `xpath`."""
        return self.wait(lambda: next(iter(self.visible(xpath)), None), what, timeout_s)

    def click(self, xpath: str, what: str, timeout_s: float = TIMEOUT_S) -> None:
        """Click the first displayed, enabled element matching `xpath`, once the UI renders it."""

        def clicked() -> bool:
            for element in self.visible(xpath):
                if element.is_enabled():
                    try:
                        element.click()
                    except WebDriverException:  # covered for a moment by an animating overlay
                        return False
                    return True
            return False

        self.wait(clicked, what, timeout_s)

    def fill(self, xpath: str, text: str, what: str, timeout_s: float = TIMEOUT_S) -> None:
        """Type `text` into the first displayed field matching `xpath`, once the UI renders it."""

        def typed() -> bool:
            for element in self.visible(xpath):
                try:
                    element.send_keys(text)
                except WebDriverException:  # replaced by a re-render between finding and typing
                    return False
                return True
            return False

        self.wait(typed, what, timeout_s)

    def texts(self, xpath: str) -> list[str]:
        """The non-empty texts of every element matching `xpath`, scrolled into view or not."""
        return [text for element in self.driver.find_elements(By.XPATH, xpath) if (text := element.text.strip())]

    def attributes(self, xpath: str, name: str) -> set[str]:
        """Attribute `name` of every displayed element matching `xpath`."""
        return {value for element in self.visible(xpath) if (value := element.get_attribute(name))}

    def escape(self) -> None:
        """Press Escape: closes the open menu or popover."""
        self.driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)

    def text(self) -> str:
        """The page's visible text, as a user reads it (one line per block)."""
        return self.driver.find_element(By.TAG_NAME, "body").text

    def labelled_value(self, label: str, what: str, timeout_s: float = TIMEOUT_S) -> str:
        """The line under a `label` line in the page's text: the UI's "Row count" above its number."""
        pattern = re.compile(rf"^{re.escape(label)}\n(.+)$", re.MULTILINE)
        return self.wait(lambda: (m := pattern.search(self.text())) and m.group(1).strip(), what, timeout_s)

    def metadata_value(self, key: str, timeout_s: float = TIMEOUT_S) -> str:
        """The value column of `key`'s row in an asset page's metadata table."""
        cell = f"//tr[td[1][normalize-space(.)={xpath_literal(key)}]]/td[3]"
        return self.wait(lambda: next((e.text.strip() for e in self.visible(cell)), None), f"metadata {key}", timeout_s)

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path
