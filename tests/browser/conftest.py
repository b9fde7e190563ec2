"""The web console in a real browser: Debian's chromium, headless, driven by Selenium through Debian's chromedriver
(both installed by scripts/system-deps; nothing downloads a browser), against a real ``tenure serve`` process.

Bounded: one browser and one server per module; every wait is on a condition with a deadline, never a sleep.
Each test starts with no cookie (signed out) and ends by checking the browser's console: no script error, no
Content-Security-Policy violation. Screenshots go to ``build/screenshots/`` (or ``$TENURE_SCREENSHOTS``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import chromium
from tests.support.postgres import free_port
from tests.system.server import ServerProcess

WAIT = 10.0  # seconds any condition may take in a browser test
SHOTS = Path(os.environ.get("TENURE_SCREENSHOTS", Path(__file__).resolve().parents[2] / "build" / "screenshots"))
VENDOR = Path(__file__).parent / "vendor"
AXE = VENDOR / next(lib["dir"] for lib in json.loads((VENDOR / "manifest.json").read_text())["libraries"]
                    if lib["name"] == "axe-core") / "axe.min.js"

pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    data = tmp_path_factory.mktemp("console")
    proc = ServerProcess(db_url=f"sqlite:///{data / 'tenure.db'}", data_dir=data,
                         listen=f"127.0.0.1:{free_port()}", args=["--example"])
    proc.start()
    try:
        proc.wait_ready()
        with httpx.Client(base_url=proc.url, timeout=10,
                          headers={"authorization": f"Bearer {proc.admin_token}"}) as admin:
            yield Console(proc, admin)
    finally:
        proc.stop()


class Console:
    """The server under test and an admin's API client to change things behind the page's back."""

    def __init__(self, proc: ServerProcess, admin: httpx.Client) -> None:
        self.proc = proc
        self.admin = admin

    @property
    def url(self) -> str:
        return self.proc.url

    def api(self, method: str, path: str, *, token: str | None = None, **kw: Any) -> Any:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        r = self.admin.request(method, path, headers=headers, **kw)
        assert r.status_code < 300, r.text
        return r.json()

    def code_url(self, token: str | None = None) -> str:
        return self.api("POST", "/v1/ui/codes", token=token)["url"]

    def member(self, project: str) -> str:
        return self.api("POST", "/v1/tokens", json={"role": "member", "project": project})["token"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not chromium.installed():
        pytest.skip("chromium and chromium-driver are not installed (scripts/system-deps installs them)")
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"tenure-chromium-{os.getpid()}"
    shutil.rmtree(profile, ignore_errors=True)
    driver = chromium.start(profile, console_log=True)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser: Any, server: Console, request: pytest.FixtureRequest) -> Iterator[Page]:
    browser.get(server.url + "/ui/vendor/manifest.json")  # same origin, no console running: clear its state
    browser.delete_all_cookies()
    browser.execute_script("try { localStorage.clear(); } catch (e) {}")
    browser.set_window_size(1280, 800)
    browser.get_log("browser")  # drop what earlier tests left
    p = Page(browser, server)
    yield p
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        p.screenshot(f"FAILED-{request.node.name}")
        return
    p.assert_clean_console()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


class Page:
    """One browser tab on the console, with waits on conditions (never sleeps)."""

    def __init__(self, driver: Any, server: Console) -> None:
        self.driver = driver
        self.server = server
        self.kept: list[str] = []  # the page's errors read out of the log early (see axe)

    def open(self, fragment: str = "#/overview") -> None:
        self.driver.get(f"{self.server.url}/ui/{fragment}")

    def sign_in(self, token: str | None = None) -> None:
        self.driver.get(self.server.code_url(token))
        self.wait(lambda: self.js("return !document.getElementById('nav').hidden"), "the console after sign-in")
        self.js("window.__tenure_page = 'not reloaded'")  # a reload (or a new document) would lose it

    def not_reloaded(self) -> bool:
        return self.js("return window.__tenure_page") == "not reloaded"

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        def check(_: Any) -> Any:
            try:
                return condition()
            except (WebDriverException, AssertionError, LookupError, ValueError, TypeError):  # (int(None): not there)
                return False
        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(
            check, message=f"waited {timeout} s for {what}")

    def ready(self, view: str, timeout: float = WAIT) -> None:
        """Wait until ``view`` says its first data is drawn (app.js: main's data-ready)."""
        self.wait(lambda: self.attr("#main", "data-ready") == view, f"the {view} view", timeout)

    def link_shares(self) -> dict[str, float]:
        """The Topology view's busiest-links table: each link's reserved share as the page shows it."""
        return self.js("const out = {}; for (const b of document.querySelectorAll('#topo-links button[data-link]'))"
                       " { out[b.dataset.link] = Number(b.closest('tr').querySelector('[data-share]').dataset.share); }"
                       " return out;")

    def find(self, css: str) -> Any:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def finds(self, css: str) -> list[Any]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def attr(self, css: str, name: str) -> str | None:
        """An attribute of the first element ``css`` finds, read in one step in the page (a view that redraws
        between finding an element and reading it would make the element stale). ``None``: no such element."""
        return self.js("const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null",
                       css, name)

    def attrs(self, css: str, name: str) -> list[str | None]:
        """The attribute ``name`` of every element ``css`` finds, read in one step in the page."""
        return self.js("return Array.from(document.querySelectorAll(arguments[0]), e => e.getAttribute(arguments[1]))",
                       css, name)

    def text(self, css: str) -> str:
        return self.find(css).text

    def go(self, fragment: str) -> None:
        self.js("location.hash = arguments[0]", fragment)

    def screenshot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def console_errors(self) -> list[str]:
        fresh = [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]
        errors, self.kept = self.kept + fresh, []
        return errors

    def assert_clean_console(self) -> None:
        # Errors a test provokes on purpose (a 401 after sign-out, the server stopped) are logged by chromium as
        # failed requests: those are the network's, not the page's. Script errors and CSP refusals are the page's.
        errors = [m for m in self.console_errors()
                  if "Failed to load resource" not in m and "net::ERR_" not in m]
        assert not errors, "the browser's console has errors:\n" + "\n".join(errors)

    def axe(self, context: str = "main") -> list[dict[str, Any]]:
        """axe-core's serious and critical violations of WCAG 2.1 A and AA on the page as it is now."""
        self.js(AXE.read_text())
        result = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})"
            ".then(r => done(JSON.stringify(r.violations))).catch(e => done(JSON.stringify([{id: 'axe-error',"
            " impact: 'critical', description: String(e), nodes: []}])));")
        # axe itself, evaluated as a script of the test, makes styles the page's policy refuses: those are logged
        # without a source URL ("security N ..."); the page's own errors (with their file's URL) are kept.
        self.kept += [m for m in self.console_errors() if not m.startswith("security ")]
        return [v for v in json.loads(result) if v.get("impact") in ("serious", "critical")]
