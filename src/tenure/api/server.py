"""The HTTP server machinery around the app: uvicorn, configured and extended for Tenure.

:func:`server_for` builds the :class:`Server` that ``tenure serve`` and ``tenure agent`` run (and the
tests, through :func:`server_config`).
"""

from __future__ import annotations

import logging
from typing import Any

import uvicorn
from fastapi import FastAPI


def server_config(app: Any, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for the app (``overrides``: more uvicorn options, e.g. a log level)."""
    # No proxy-header rewriting: Tenure is not meant to sit behind a proxy that it trusts blindly.
    options: dict[str, Any] = {"log_level": "warning", "access_log": False, "lifespan": "on",
                               "timeout_graceful_shutdown": 10, "proxy_headers": False}
    return uvicorn.Config(app, **{**options, **overrides})


def server_for(app: Any) -> Server:
    return Server(server_config(app))


class Server(uvicorn.Server):
    """uvicorn's server, ending watch streams first when it shuts down, and dropping cut-off ones.

    uvicorn waits for open responses to finish before it runs the app's shutdown; a watch never
    finishes on its own, so the hub ends every stream (clients resume elsewhere or later) first.

    A stream cut off because its reader stopped reading ends without completing its response, and
    uvicorn then *closes* the transport, which waits for the unread bytes to drain: forever, for a
    reader that never reads (and a shutdown would wait on it). ASGI has no way to say "abort", so the
    hub is given one here: find the connection serving that request and abort its transport.
    """

    def _state(self) -> Any:
        app = self.config.loaded_app if self.config.loaded else self.config.app
        return getattr(getattr(_unwrap(app), "state", None), "tenure", None)

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        state = self._state()
        if state is not None:
            state.hub.abort_connection = self._abort

    def _abort(self, scope: Any) -> None:
        for conn in list(self.server_state.connections):
            cycle = getattr(conn, "cycle", None)
            if cycle is not None and cycle.scope is scope:
                conn.transport.abort()
                return

    async def shutdown(self, sockets: Any = None) -> None:
        state = self._state()
        if state is not None:
            state.hub.close()
        await super().shutdown(sockets)


def _unwrap(app: Any) -> Any:
    """The FastAPI app under uvicorn's middleware wrappers."""
    while not isinstance(app, FastAPI) and hasattr(app, "app"):
        app = app.app
    return app


class _QuietCutoffs(logging.Filter):
    """A watcher cut off while the server was blocked writing to it ends without a final chunk; uvicorn
    reports that as an error. It is expected (the hub logs the cut-off), so it goes to debug instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == "ASGI callable returned without completing response.":
            logging.getLogger("tenure.watch").debug("stream ended without its final chunk (cut off)")
            return False
        return True


logging.getLogger("uvicorn.error").addFilter(_QuietCutoffs())
