"""Headless Chromium (Debian's /usr/bin/chromium) driven by Playwright against the local stack.

Skipped with the reason when Chromium or the playwright package is missing, unless
HARMONY_BROWSER_REQUIRED=1 (`make test-browser`, which installs both first), which fails instead.
`playwright install` (a browser download) is never used: Playwright launches /usr/bin/chromium.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support import REPO, app_stack

CHROMIUM = os.environ.get("HARMONY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# `make test-browser` refreshes the docs' screenshot; other runs (make test) leave the tree clean.
SCREENSHOT = (
    REPO / "docs" / "img" / "page.png"
    if os.environ.get("HARMONY_BROWSER_REQUIRED") == "1"
    else Path(tempfile.gettempdir()) / "harmony-page.png"
)


def _unavailable() -> str | None:
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} is absent (Debian packages chromium + chromium-driver; `make test-browser` installs them)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (`make test-browser` installs it)"
    return None


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    why = _unavailable()
    if why:
        if os.environ.get("HARMONY_BROWSER_REQUIRED") == "1":
            pytest.fail(why)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        # a persistent context gives Chromium the fresh --user-data-dir the flags above expect
        ctx = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 820},
        )
        try:
            yield ctx
        finally:
            ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def web_stack(tmp_path_factory):
    with app_stack(tmp_path_factory.mktemp("harmony-web"), bucket="harmony-web-test") as st:
        yield st


@pytest.fixture
def page(browser, web_stack):
    p = browser.new_page()
    messages: list[str] = []
    p.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
    p.goto(web_stack.url)
    p.messages = messages
    yield p
    p.close()
