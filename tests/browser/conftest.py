"""Browser tests: the real bot and the fakes (as in tests/e2e), and Debian's Chromium driven
headless by Playwright. Playwright's own browser download is never used: the README's test
command installs Chromium from Debian's packages when it is missing (tests/setup.sh)."""

from __future__ import annotations

import pytest_asyncio
from playwright.async_api import async_playwright

from tests.e2e.conftest import (  # noqa: F401  (the same fixtures as the e2e tests)
    _show_bot_log_on_failure,
    pytest_runtest_makereport,
    world,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def chromium():
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM,
                                                   args=CHROMIUM_ARGS, headless=True)
        yield browser
        await browser.close()
