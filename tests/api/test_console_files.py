"""The web console's files (docs/console.md, section 1): served at /ui/ from the package, with a policy that lets
the page run only the server's own code, and the vendored libraries exactly what the lock file pins."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tenure.api.ui import STATIC

REPO = Path(__file__).resolve().parents[2]


def test_the_console_is_served_with_its_security_headers(api):
    page = api.client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-cache" and page.headers["etag"]
    # No script in the page itself (the policy would refuse it): only modules from the server.
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.text)
    again = api.client.get("/ui/", headers={"if-none-match": page.headers["etag"]})
    assert again.status_code == 304 and again.headers["content-security-policy"] == csp


def test_versioned_libraries_are_cached_for_good_and_the_consoles_own_files_revalidated(api):
    manifest = json.loads((STATIC / "vendor" / "manifest.json").read_text())
    for library in manifest["libraries"]:
        module = api.client.get(f"/ui/vendor/{library['module']}")  # what the console imports: revalidated
        assert module.status_code == 200 and module.headers["cache-control"] == "no-cache"
        assert module.headers["content-type"].startswith("text/javascript")
        target = re.search(r"from '\./([^']+)'", module.text).group(1)
        file = api.client.get(f"/ui/vendor/{target}")
        assert file.status_code == 200 and file.headers["content-type"].startswith("text/javascript")
        assert file.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert api.client.get("/ui/js/app.js").headers["cache-control"] == "no-cache"


def test_what_is_not_a_file_of_the_console_is_a_json_error(api):
    for path in ("/ui/nothing.js", "/ui/%2e%2e/%2e%2e/pyproject.toml", "/ui/vendor/", "/ui/js/..%2f..%2f__init__.py"):
        r = api.client.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert r.json()["error"]["code"] == "not_found"
        assert r.headers["cache-control"] == "no-store" and "content-security-policy" in r.headers
    assert api.client.get("/ui/../pyproject.toml").status_code == 404
    r = api.client.post("/ui/index.html")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    moved = api.client.get("/ui", follow_redirects=False)
    assert moved.status_code == 308 and moved.headers["location"] == "/ui/"
    assert api.client.head("/ui", follow_redirects=False).status_code == 308
    paths = api.client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/ui" or p.startswith("/ui/")]  # not part of the API


def test_the_vendored_files_are_the_ones_the_lock_file_pins():
    # What scripts/vendor-ui --check does without npm: every manifest's versions against ui/package-lock.json,
    # every file's SHA-256, a licence beside each library, nothing unlisted.
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "vendor-ui"), "--check"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lock = json.loads((REPO / "ui" / "package-lock.json").read_text())["packages"]
    manifest = json.loads((STATIC / "vendor" / "manifest.json").read_text())
    assert {(x["name"], x["version"]) for x in manifest["libraries"]} == {
        (name, lock[f"node_modules/{name}"]["version"]) for name in ("uplot", "cytoscape", "vis-timeline")}

