"""The systemd units (issue 17, docs/operations.md section 7): `systemd-analyze verify` finds nothing to say about
them, `systemd-analyze security` rates the server's exposure low, and `tenure serve` speaks the notify protocol:
READY=1 only once it serves (/healthz 200), RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 when it stops."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "contrib" / "systemd"
TENURE = Path(sys.executable).parent / "tenure"


def _analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is missing: scripts/system-deps installs it (Debian package systemd)")
    return found


def _units(tmp_path: Path) -> list[Path]:
    """The units as shipped, their ExecStart pointed at this checkout's tenure (verify checks it exists)."""
    out = []
    for unit in sorted(UNITS.glob("*.service")):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/usr/bin/tenure", str(TENURE)))
        out.append(copy)
    return out


def test_the_units_verify_without_a_word(tmp_path: Path) -> None:
    units = _units(tmp_path)
    assert [u.name for u in units] == ["tenure-agent.service", "tenure.service"]
    done = subprocess.run([_analyze(), "verify", *map(str, units)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "" and done.stderr.strip() == "", done.stdout + done.stderr


def test_the_server_unit_is_hardened(tmp_path: Path) -> None:
    server = next(u for u in _units(tmp_path) if u.name == "tenure.service")
    done = subprocess.run([_analyze(), "security", "--offline=yes", str(server)], capture_output=True, text=True,
                          timeout=60)
    m = re.search(r"Overall exposure level for tenure\.service: ([0-9.]+)", done.stdout + done.stderr)
    assert m is not None, done.stdout + done.stderr
    assert float(m.group(1)) <= 2.0, done.stdout  # systemd calls up to 2.0 "OK"; unhardened services score ~9
    agent = (UNITS / "tenure-agent.service").read_text()
    assert "CapabilityBoundingSet=CAP_NET_ADMIN\n" in agent and "AmbientCapabilities=CAP_NET_ADMIN\n" in agent


def test_serve_says_ready_only_when_it_serves_and_reloading_and_stopping(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(60)
    data = tmp_path / "data"
    proc = subprocess.Popen([str(TENURE), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)],
                            env={**os.environ, "NOTIFY_SOCKET": str(path)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        ready = sock.recv(4096).decode()
        assert ready.splitlines()[0] == "READY=1" and "STATUS=serving" in ready
        url = json.loads((data / "server.json").read_text())["url"]
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200  # ready means serving
        proc.send_signal(signal.SIGHUP)
        assert sock.recv(4096).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert sock.recv(4096).decode() == "READY=1"
        assert proc.poll() is None and httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096).decode() == "STOPPING=1"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sock.close()
