"""Browser fixtures for the dashboard tests: one headless Debian Chromium per module, driven by Playwright.

Chromium comes from Debian's `chromium` package (`make test` installs it; see the Makefile's `chromium`
target). Never `playwright install`: it downloads a browser build, which fails on machines without the
internet and is not the browser users run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.dashboard import Dashboard, Shots
from tests.support.ftserve_process import REPO_ROOT, FtserveProcess

CHROMIUM = Path("/usr/bin/chromium")
# The background-networking flags stop Chromium from calling Google's hosts, which a closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OUTPUT_DIR = REPO_ROOT / "test-output" / "ui"
KEY_PATTERN = re.compile(r"ftsk-[A-Za-z0-9]{16,}")


def ensure_chromium() -> str | None:
    """None when /usr/bin/chromium runs (installing Debian's package first if it is missing and we are root
    with apt-get), else the reason it cannot be had."""
    if not CHROMIUM.exists():
        if not shutil.which("apt-get"):
            return f"{CHROMIUM} is missing and there is no apt-get to install Debian's chromium package"
        if os.geteuid() != 0:
            return (
                f"{CHROMIUM} is missing and installing Debian's chromium package needs root (run `make test`)"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            if result.returncode != 0 and command[1] == "install":
                return f"`apt-get install chromium` failed: {result.stderr.strip()[-500:]}"
    try:
        subprocess.run([str(CHROMIUM), "--version"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{CHROMIUM} does not run: {exc}"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = ensure_chromium()
    if reason:
        print(f"\nSKIP: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(scope="module")
def dashboard(ftserve_server: FtserveProcess) -> Iterator[Dashboard]:
    key = ftserve_server.create_key("ui-tests")
    root = ftserve_server.base_url.removesuffix("/v1")
    with httpx.Client(base_url=root, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        yield Dashboard(server=ftserve_server, key=key, root=root, http=http)


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Shots:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    return Shots(OUTPUT_DIR / name)


@pytest.fixture
def open_page(browser: Any, dashboard: Dashboard) -> Iterator[Callable[..., Any]]:
    """open_page(path, width=1280, sign_in=True): a page in a fresh browser context (its own sessionStorage).

    At teardown, every HTML document the page loaded and its final DOM are checked for the API key: the key
    may live in sessionStorage only. Console errors and uncaught exceptions fail the test."""
    contexts: list[Any] = []
    documents: list[tuple[str, str]] = []
    problems: list[str] = []

    def opener(path: str = "/ui", *, width: int = 1280, sign_in: bool = True) -> Any:
        context = browser.new_context(viewport={"width": width, "height": 900}, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)

        def on_response(response: Any) -> None:
            if response.request.resource_type == "document":
                try:
                    documents.append((response.url, response.text()))
                except Exception:  # noqa: BLE001 (a document replaced mid-load has no body to read)
                    pass

        page.on("response", on_response)
        page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
        page.on(
            "console",
            lambda msg: (
                problems.append(f"console: {msg.text}")
                if msg.type == "error" and not _expected_console_error(msg.text)
                else None
            ),
        )
        page.goto(dashboard.url(path))
        if sign_in:
            sign_in_with(page, dashboard.key)
        return page

    yield opener

    for context in contexts:
        for page in context.pages:
            dom = page.content()
            assert dashboard.key not in dom, "the API key was rendered into the page"
            assert not KEY_PATTERN.search(dom), "something key-shaped was rendered into the page"
        context.close()
    for url, body in documents:
        assert dashboard.key not in body, f"the API key is in the HTML of {url}"
        assert not KEY_PATTERN.search(body), f"something key-shaped is in the HTML of {url}"
    assert not problems, "browser errors:\n" + "\n".join(problems)


def _expected_console_error(text: str) -> bool:
    # Chromium logs every non-2xx fetch; the tests provoke some on purpose (a rejected upload, a bad key).
    return "Failed to load resource" in text


def sign_in_with(page: Any, key: str) -> None:
    page.fill("#api-key", key)
    page.click("form.signin button[type=submit]")
    page.wait_for_selector("nav.nav:not([hidden])")
