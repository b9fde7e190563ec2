"""Where things live by default: the data dir, its database, admin token and server address.

The data dir is ``$TENURE_DATA_DIR``, else ``$XDG_DATA_HOME/tenure``, else
``~/.local/share/tenure``. ``tenure serve`` writes ``server.json`` there with the
URL it listens on, so the CLI finds the local server and its admin token with no
flags at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SERVER_FILE = "server.json"
ADMIN_TOKEN_FILE = "admin.token"
DEFAULT_LISTEN = "127.0.0.1:7470"
HEADER_TIMEOUT = 10.0  # seconds a connection has to send a request's headers (`tenure serve --header-timeout`)


def default_data_dir() -> Path:
    if env := os.environ.get("TENURE_DATA_DIR"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tenure"


def default_db_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir.resolve() / 'tenure.db'}"


def write_server_info(data_dir: Path, url: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / (SERVER_FILE + ".tmp")
    tmp.write_text(json.dumps({"url": url}) + "\n")
    os.replace(tmp, data_dir / SERVER_FILE)


def local_server_url(data_dir: Path) -> str | None:
    try:
        return json.loads((data_dir / SERVER_FILE).read_text())["url"]
    except (OSError, ValueError, KeyError):
        return None


def local_admin_token(data_dir: Path) -> str | None:
    try:
        return (data_dir / ADMIN_TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class Settings:
    """Tunables of a runtime (``tenure serve`` options)."""

    history_age: float = 24 * 3600.0  # seconds of event history kept for resuming watchers
    history_events: int = 1_000_000  # at most this many events kept
    compact_interval: float = 60.0  # how often the history is compacted
    agent_down_after: float = 75.0  # an agent silent this long is marked down (Neutron's default)
    agent_sweep_interval: float = 5.0  # how often silent agents are looked for
    token_use_interval: float = 60.0  # how often the tokens' last use is written
    reservation_horizon: float = 366 * 86400.0  # no reservation may end later than this from now
    reservation_retention: float = 7 * 86400.0  # ended reservations stay readable this long, then are purged
    reservation_start_grace: float = 300.0  # a start this far in the past is taken as now; further is refused
    instance_types: Mapping[str, float] | None = None  # type -> operation timeout; None: the built-in types'
    instance_report_grace: float = 30.0  # beyond twice the timeout, how long to wait for an agent's report
    housekeeping: bool = True  # run the background threads (tests drive them by hand instead)
