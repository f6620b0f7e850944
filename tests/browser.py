"""Browser tests: Debian's chromium driven by playwright's async API in the test's event loop
(so it shares the loop with ``tests/live.py``'s uvicorn and the test's runtime).

We never run ``playwright install``: ``./dev test`` installs the distribution's chromium and
this launches it by path. Without it the browser tests are skipped, or fail under ``CI=true``.
A screenshot of every page a browser test opened is left in ``tests/artifacts/`` (the name
says whether the test failed).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("CC_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).parent / "artifacts"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-gpu",
]
# Pages of a customer's site are served as http://shop.test:<port>/, resolved to loopback by
# chromium itself (no DNS), so the widget runs cross-origin as it does on a real site.
SHOP_HOST = "shop.test"

NewPage = Callable[..., Awaitable[Any]]


def require_chromium() -> None:
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (./dev test installs Debian's chromium)"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is missing (pip install -e '.[dev]')"
    if problem:
        if IN_CI:
            pytest.fail(problem + " (CI=true: browser tests must run)")
        pytest.skip(problem)


@asynccontextmanager
async def launch() -> AsyncIterator[Any]:
    """A headless chromium for one test."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*LAUNCH_ARGS, f"--host-resolver-rules=MAP {SHOP_HOST} 127.0.0.1"],
        )
        try:
            yield browser
        finally:
            await browser.close()


def artifact_name(nodeid: str, index: int, failed: bool) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("::", 1)[-1])
    return ARTIFACTS / f"{stem}-{index}{'-FAILED' if failed else ''}.png"
