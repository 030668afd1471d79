"""Pages tested as people use them: Debian's headless Chromium driven by Playwright.

A test marked ``browser_test`` skips, saying why, where either is missing; the ``browser``
fixture is a launched Chromium. ``CURATE_SHOTS=DIR`` saves screenshots there (:func:`shoot`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from benchmarks._common import CHROMIUM, CHROMIUM_ARGS


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, as .ci/run does)"
    return None


browser_test = pytest.mark.skipif(_browser_missing() is not None, reason=_browser_missing() or "")


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def shoot(page, name: str) -> None:
    folder = os.environ.get("CURATE_SHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)
