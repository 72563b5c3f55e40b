"""Fixtures for the browser tests: the real services, and Debian's Chromium driven by Playwright.

Skipped, with the reason, when Playwright or Chromium is missing or DARKROOM_BROWSER_TESTS=0.
Playwright's own browser download is never used: tests launch the system's Chromium.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.processes import Services

CHROMIUM = Path(os.environ.get("DARKROOM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",  # Chromium refuses to start as root with its sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAUNCH_TIMEOUT_MS = 30_000
# A launch that stalls is tried once more: in one CI run of 2026-12-02 Chromium's first launch
# hung past the timeout (every browser test errored) and the next run's launched at once.
LAUNCH_ATTEMPTS = 2
ACTION_TIMEOUT_MS = 15_000


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if os.environ.get("DARKROOM_BROWSER_TESTS", "1") == "0":
        pytest.skip("browser tests are off: DARKROOM_BROWSER_TESTS=0")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed: pip install playwright"
    )
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or DARKROOM_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        for attempt in range(1, LAUNCH_ATTEMPTS + 1):
            try:
                browser = playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=LAUNCH_TIMEOUT_MS
                )
                break
            except sync_api.TimeoutError:
                if attempt == LAUNCH_ATTEMPTS:
                    raise
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def services(browser, tmp_path_factory) -> Iterator[Services]:
    # Asks for the browser first, so a missing browser skips before any service starts.
    folder = tmp_path_factory.mktemp("browser")
    running = Services(folder / "data", folder, concurrency="2")
    try:
        running.start_all()
        yield running
    finally:
        running.stop_all()


@pytest.fixture
def open_page(browser, services) -> Iterator[Callable[..., Any]]:
    """Opens the frontend in a fresh browser context; fails the test on script or CSP errors."""
    contexts = []
    problems: list[str] = []

    def open_page(path: str = "/", **context_options: Any) -> Any:
        options = {"viewport": {"width": 1280, "height": 860}, "color_scheme": "dark"}
        context = browser.new_context(
            base_url=services.url("frontend"), accept_downloads=True, **(options | context_options)
        )
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
        page.on("console", lambda message: _note_console(message, problems))
        page.goto(path)
        return page

    try:
        yield open_page
    finally:
        for context in contexts:
            context.close()
    assert not problems, problems


def _note_console(message: Any, problems: list[str]) -> None:
    # A refused upload logs "Failed to load resource: ... 415"; that is the test's point.
    if message.type == "error" and not message.text.startswith("Failed to load resource"):
        problems.append(f"console: {message.text}")


@pytest.fixture
def page(open_page) -> Any:
    return open_page()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(__file__).resolve().parents[2] / "artifacts"
    folder.mkdir(exist_ok=True)
    return folder
