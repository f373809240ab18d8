"""Driving the web console in Debian's Chromium with Playwright, and checking pages with axe-core.

Playwright's own browser download is not used: the system `chromium` is (CI installs it with
apt; `make test` does too when it can). Without it, or without the playwright package, the
browser tests skip and say why.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
AXE = REPO / "web" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = REPO / "docs" / "console"


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no system Chromium (apt-get install chromium): the console's browser tests need one")
    return found


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Playwright's Browser)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[dev]')")
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page: Any, base: str, email: str, password: str) -> None:
    """Through the sign-in form, as a person would; waits until the console shows who is signed in."""
    page.goto(f"{base}/console/sign-in")
    page.locator("input[type=email]").fill(email)
    page.locator("input[type=password]").fill(password)
    page.locator("button[type=submit]").click()
    page.get_by_text(email).wait_for()


def serious_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now."""
    if not AXE.is_file():
        pytest.skip("axe-core is not installed (cd web && npm ci)")
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => JSON.stringify(await axe.run(document, {resultTypes: ['violations']}))")
    return [{"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:3]}
            for v in json.loads(result)["violations"] if v["impact"] in ("serious", "critical")]


def screenshot(page: Any, name: str) -> None:
    """docs/console/<name>.png, only when INNOSYSTEM_CONSOLE_SCREENSHOTS=1 (a test run leaves the
    committed pictures alone otherwise)."""
    if os.environ.get("INNOSYSTEM_CONSOLE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
