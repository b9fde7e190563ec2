#!/usr/bin/env python3
"""Tenure's single developer entry point (stdlib only, Python 3.11+).

    python3 dev.py serve [args...]        run the server (SQLite, example pools)
    python3 dev.py test [pytest args...]  run the test suite
    python3 dev.py bench NAME [args...]   run bench/NAME.py

Every command first makes sure ./.venv exists and has the project installed
(editable, with test extras).  The install is redone only when pyproject.toml
changed, tracked by a sha256 stamp in .venv/.tenure-installed, so the common
case costs nothing.  Works from any directory.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent
VENV = REPO / ".venv"
VENV_PY = VENV / "bin" / "python"
STAMP = VENV / ".tenure-installed"


def say(msg: str) -> None:
    # flush: output must appear before we exec/replace this process.
    print(f"dev: {msg}", flush=True)


def ensure_venv() -> None:
    if not VENV_PY.exists():
        say(f"creating {VENV.relative_to(REPO)}/")
        if subprocess.run([sys.executable, "-m", "venv", str(VENV)]).returncode != 0:
            sys.exit("dev: 'python3 -m venv' failed (on Debian: apt-get install python3-venv)")
    wanted = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    try:
        current = STAMP.read_text().strip()
    except FileNotFoundError:
        current = ""
    if current == wanted:
        return
    say("installing dependencies into .venv (pyproject.toml changed)")
    install = [str(VENV_PY), "-m", "pip", "install", "-q", "--disable-pip-version-check",
               "-e", ".[test]"]
    if subprocess.run(install, cwd=REPO).returncode != 0:
        sys.exit("dev: pip install failed")
    # Written only after success, so a failed install is retried next time.
    STAMP.write_text(wanted + "\n")


def exec_(argv: list[str]) -> None:
    """Replace this process, so signals and the exit code pass straight through."""
    sys.stdout.flush()
    os.execv(argv[0], argv)


def cmd_serve(args: list[str]) -> None:
    # No system packages needed: the server defaults to SQLite in the default
    # data dir (~/.local/share/tenure), where the CLI finds it with no flags.
    exec_([str(VENV / "bin" / "tenure"), "serve", "--example", *args])


def cmd_test(args: list[str]) -> None:
    # Tests need PostgreSQL binaries etc. Outside CI a missing package only
    # warns (those tests skip); in CI it must fail loudly.
    deps = [str(REPO / "scripts" / "system-deps")]
    if os.environ.get("CI") == "true":
        deps.append("--strict")
    rc = subprocess.run(deps).returncode
    if rc != 0:
        sys.exit(rc)
    os.chdir(REPO)
    exec_([str(VENV_PY), "-m", "pytest", *args])


def cmd_bench(args: list[str]) -> None:
    if not args:
        sys.exit("usage: python3 dev.py bench NAME [args...]   (runs bench/NAME.py)")
    script = REPO / "bench" / f"{args[0]}.py"
    if not script.is_file():
        available = sorted(p.stem for p in (REPO / "bench").glob("*.py"))
        sys.exit(f"dev: no {script.relative_to(REPO)}; available: {', '.join(available) or 'none'}")
    os.chdir(REPO)
    exec_([str(VENV_PY), str(script), *args[1:]])


COMMANDS = {"serve": cmd_serve, "test": cmd_test, "bench": cmd_bench}


def main() -> None:
    # Hand-rolled parsing: everything after the command goes through untouched
    # (argparse would try to interpret options like -q or -k meant for pytest).
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(0 if sys.argv[1:2] in (["-h"], ["--help"], ["help"]) else 2)
    command, args = sys.argv[1], sys.argv[2:]
    ensure_venv()
    COMMANDS[command](args)


if __name__ == "__main__":
    main()
