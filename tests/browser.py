"""Browser fixtures: Debian's Chromium driven by Playwright, a static site on another loopback port to play the
portal's origin, and the gateway under gunicorn with a configuration that the developer's environment cannot
change. Loaded by `pytest_plugins` in conftest.py."""

import functools
import http.server
import os
import shutil
import tempfile
import threading

import pytest

from gateway.config import NAMES
from tests.conftest import Gunicorn, live_config

# Chromium as this machine's notes require it: no sandbox (root), and none of its background traffic, which a
# closed network would refuse many times over. Playwright gives every launch a fresh profile directory.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTALL_HINT = "run `make test`, which installs it (scripts/prerequisites.sh test, requirements-test.txt)"

# Records, in the page itself, every Content-Security-Policy violation the browser reports.
RECORD_CSP_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.cspViolations.push(`${event.effectiveDirective}: ${event.blockedURI || "inline"} (${event.sample})`);
});
"""


def hermetic(**overrides):
    """Every gateway variable named: unset ones as empty (their default), so nothing exported leaks in."""
    return {**{name: "" for name in NAMES}, "GATEWAY_BIND": "", "GATEWAY_WORKERS": "1",
            "GATEWAY_THREADS": "8", **overrides}


def live_gateway(**overrides):
    """The gateway under gunicorn against the real Keycloak, with exactly this configuration."""
    return Gunicorn(hermetic(**live_config(**overrides))).wait_ready()


def chromium_executable():
    """Debian's Chromium (package `chromium`); Playwright's own browser download is not reachable here."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(f"Chromium (Debian package chromium) is not installed; {INSTALL_HINT}", pytrace=False)
    return path


# Module scope: while Playwright's sync API is started, an asyncio loop counts as running in this thread, and
# Django (the SimpleJWT reference tests) then refuses its database calls as "from an async context".
@pytest.fixture(scope="module")
def chromium():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # fail, never skip: CI must not pass without the browser tests
        pytest.fail(f"Playwright is not installed; {INSTALL_HINT}", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_executable(), args=CHROMIUM_FLAGS,
                                             headless=True)
        yield browser
        browser.close()


class BrowserPage:
    """A page in a fresh browser context (no cookies, no storage), with what went wrong in it recorded."""

    def __init__(self, browser, viewport):
        self.context = browser.new_context(viewport=viewport)
        self.context.add_init_script(RECORD_CSP_VIOLATIONS)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.console_errors, self.page_errors = [], []
        self.page.on("console", lambda message: message.type == "error" and self.console_errors.append(message.text))
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))

    def csp_violations(self):
        return self.page.evaluate("window.cspViolations")

    def stored(self):
        """Everything the page could have kept beyond its memory: storage and cookies."""
        return {
            "localStorage": self.page.evaluate("Object.keys(localStorage)"),
            "sessionStorage": self.page.evaluate("Object.keys(sessionStorage)"),
            "document.cookie": self.page.evaluate("document.cookie"),
            "cookies": self.context.cookies(),
        }


@pytest.fixture
def browser_page(chromium):
    """A desktop-sized page; `browser_page.page` is Playwright's."""
    opened = BrowserPage(chromium, {"width": 1000, "height": 900})
    yield opened
    opened.context.close()


@pytest.fixture
def open_page(chromium):
    """Open more pages, e.g. at a phone's size: `open_page({"width": 375, "height": 740})`."""
    opened = []

    def open_(viewport):
        opened.append(BrowserPage(chromium, viewport))
        return opened[-1]

    yield open_
    for page in opened:
        page.context.close()


class StaticSite:
    """A plain page on its own loopback port: a portal's origin, `http://127.0.0.1:<port>`."""

    PAGE = b"<!doctype html><html lang='en'><head><title>portal</title></head><body>portal</body></html>"

    def __init__(self):
        self.directory = tempfile.mkdtemp(prefix="edm-portal-")
        with open(os.path.join(self.directory, "index.html"), "wb") as index:
            index.write(self.PAGE)
        handler = functools.partial(_QuietHandler, directory=self.directory)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.directory, ignore_errors=True)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def static_sites():
    """Two portal origins on two ports: the tests allow the first and not the second."""
    sites = StaticSite(), StaticSite()
    yield sites
    for site in sites:
        site.stop()
