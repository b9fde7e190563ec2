"""A test reader of watch streams: a thread reads SSE frames into a queue; tests wait on the queue.

Deliberately independent of ``tenure.client`` (which has its own parser), so the
wire format is checked by a second reading of the SSE spec.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx

END = object()


@dataclass
class Frame:
    event: str
    id: int | None
    data: dict[str, Any]


@dataclass
class Stream:
    """One open watch; ``frames`` receives :class:`Frame` objects, then ``END`` when the stream ends."""

    response: httpx.Response
    frames: queue.Queue[Any] = field(default_factory=queue.Queue)
    thread: threading.Thread | None = None

    def next(self, timeout: float = 10.0) -> Frame:
        item = self.frames.get(timeout=timeout)
        assert item is not END, "the stream ended"
        return item  # type: ignore[no-any-return]

    def events(self, n: int, timeout: float = 20.0) -> list[Frame]:
        """The next ``n`` non-bookmark frames."""
        out: list[Frame] = []
        while len(out) < n:
            f = self.next(timeout)
            if f.event != "bookmark":
                out.append(f)
        return out

    def until_end(self, timeout: float = 20.0) -> list[Frame]:
        """Every frame up to the end of the stream."""
        out = []
        while True:
            item = self.frames.get(timeout=timeout)
            if item is END:
                return out
            out.append(item)

    def quiet(self, timeout: float = 0.3) -> list[Frame]:
        """Frames already sent (waits ``timeout`` for the next one)."""
        out = []
        while True:
            try:
                item = self.frames.get(timeout=timeout)
            except queue.Empty:
                return out
            if item is END:
                self.frames.put(END)
                return out
            out.append(item)

    def close(self) -> None:
        """Close our end. The reader thread may stay blocked until the server ends the stream (at the
        latest when the test's server stops); it is a daemon and holds nothing else."""
        self.response.close()


def parse(lines: Any, out: queue.Queue[Any]) -> None:
    event, ident, data = "message", None, []
    try:
        for line in lines:
            if line == "":
                if data:
                    out.put(Frame(event, int(ident) if ident is not None else None, json.loads("\n".join(data))))
                event, ident, data = "message", None, []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "id":
                ident = value
            elif name == "data":
                data.append(value)
    except (httpx.HTTPError, RuntimeError):
        pass
    finally:
        out.put(END)


def open_stream(client: httpx.Client, token: str, params: Any = None, headers: dict[str, str] | None = None) -> Stream:
    request = client.build_request("GET", "/v1/watch", params=params,
                                   headers={"Authorization": f"Bearer {token}", **(headers or {})},
                                   timeout=httpx.Timeout(30, read=60))
    response = client.send(request, stream=True)
    assert response.status_code == 200, response.read()
    s = Stream(response)
    s.thread = threading.Thread(target=parse, args=(response.iter_lines(), s.frames), daemon=True)
    s.thread.start()
    return s
