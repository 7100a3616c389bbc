"""A real browser for tests: Debian's Chromium driven by Playwright.

No browser can be downloaded on these machines (`playwright install` does
not work), so Playwright launches /usr/bin/chromium.  Without it the tests
skip with a message, and fail in CI (CI=true).  Screenshots of every page
go to `$ARCHIVA_TEST_ARTIFACTS/screenshots/` (default `test-artifacts/`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from django.db import connections

from tests.servers import missing

CHROMIUM = os.environ.get("ARCHIVA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("ARCHIVA_TEST_ARTIFACTS") or ROOT / "test-artifacts")
SCREENSHOTS = ARTIFACTS / "screenshots"
TIMEOUT_MS = 15_000


@pytest.fixture
def browser(live_server, transactional_db, monkeypatch):
    """Chromium for one test, started after the database is ready.

    Playwright's sync API keeps an asyncio loop running in this thread while
    it lives; Django's ORM, used by the test between browser steps, refuses
    to run beside a running loop unless told it is safe (it is: the loop
    only drives the browser).  Per test, so no other test runs beside it.
    """
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright", "pip install -r requirements-dev.txt")
    if not Path(CHROMIUM).exists():
        missing("Chromium", f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
        # Beside the running loop, asgiref gives this thread another set of
        # database connections; close them here, or they outlive the test
        # and block dropping the test database.
        connections.close_all()


class Screenshots:
    """Numbered full-page screenshots of one test: `<prefix>-01-<name>.png`, …"""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.count = 0

    def __call__(self, page, name: str) -> Path:
        if self.count == 0:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            for old in SCREENSHOTS.glob(f"{self.prefix}-*.png"):
                old.unlink()
        self.count += 1
        path = SCREENSHOTS / f"{self.prefix}-{self.count:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def shots(request) -> Screenshots:
    """Screenshots named after the test (a test may set `shots.prefix` before the first)."""
    return Screenshots(re.sub(r"^test_", "", request.node.name)[:40].rstrip("_"))


@pytest.fixture
def page(browser, live_server):
    """A fresh browser context (own cookies) on the live server, with clipboard access."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server.url)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.console_errors = []  # type: ignore[attr-defined]
    page.on("console", lambda message: message.type == "error" and page.console_errors.append(message.text))
    yield page
    context.close()


def new_page(browser, live_server):
    """A second person's browser (own cookies), for flows with two people."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server.url)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.console_errors = []  # type: ignore[attr-defined]
    page.on("console", lambda message: message.type == "error" and page.console_errors.append(message.text))
    return page
