"""The client side of bench/watch.py, run as separate processes (not a benchmark itself).

    python bench/benchkit/watchclient.py watchers URL TOKEN [--etcd]
    python bench/benchkit/watchclient.py load URL TOKEN POOL --hosts LO:HI --rate R --seconds S [--etcd] ...

``watchers``: many ``GET /v1/watch`` Server-Sent Events streams in one process, on raw asyncio
protocols (uvloop when installed) with a minimal HTTP/1.1 reader (status line, headers, chunked
body) and SSE frame splitter: no HTTP library, so one process keeps up with thousands of streams.
It takes commands as JSON lines on stdin and answers each with one JSON line on stdout:

    {"cmd": "open", "hosts": [LO, HI]}   open one watcher per host hLO..hHI-1, each filtered with
                                         ``kind=claim&selector=host=hN``; answers when every stream got
                                         its 200 (or failed)
    {"cmd": "reset"}                     forget what was received; start the CPU and wall clocks
    {"cmd": "count"}                     events received since the reset, disconnects
    {"cmd": "stats"}                     everything recorded since the reset (latencies, revisions, ...)
    {"cmd": "close"}                     close every stream
    {"cmd": "exit"}

For every ``created`` event a watcher receives it records ``receive time - ts`` (``time.time()`` when
the bytes arrived, taken before parsing; ``ts`` is the server's commit-batch time, same clock), the
revision, and whether the event's ``host`` label is the watcher's own.

``--etcd`` (bench/watch_etcd.py): the same watchers and load against etcd 3.4's JSON gateway instead. A
watcher is ``POST /v3/watch`` of the key prefix ``/c/hN/`` (newline-delimited JSON messages in a chunked
body; it counts as open once etcd answered ``created``); a bulk claim of ``--keys`` keys is one
``POST /v3/kv/txn`` that puts them all if none exists yet (a claim by key: compare ``create_revision == 0``).

``--stamp`` (both targets): the load writes each request's due time into its keys (``...@SECONDS``), and the
watchers record ``receive time - due time`` for each stamped key as well as the key itself: the one latency
measured alike on Tenure and etcd, from when the request was due to the watcher's receipt (any wait for a
free connection, the request, the commit and its fsync, the dispatch, the stream).

``load``: paced claims, open loop: bulk requests of ``--keys`` claims, all for one host, the hosts taken
in turn, request ``j`` due at ``start + j / (rate / keys)``, over ``--connections`` keep-alive
connections. A request the server's pace makes late is sent at once; none is sent after
``start + seconds + grace``: a server that cannot keep up shows as a lower achieved rate over the same
window (and the run stays bounded), not as a longer run. Prints one JSON line at the end: requests,
requests skipped, claims created, non-2xx, the revisions committed, wall time from the first send to the
last answer, and its own CPU time (and, with ``--stamp``, the keys created).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import resource
import sys
import time
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _loop_policy() -> None:
    try:
        import uvloop
    except ImportError:  # plain asyncio is fine, only heavier
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# ---------------------------------------------------------------------------------------------- watchers


class Recorder:
    """What every watcher of this process received since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.lat: list[float] = []  # seconds, receive time - event ts
        self.ts: list[float] = []  # the events' ts (commit-batch time, epoch seconds)
        self.revs: list[int] = []
        self.keys: list[str] = []  # stamped keys received (--stamp)
        self.lat_send: list[float] = []  # seconds, receive time - the load's send time stamped in the key
        self.wrong_host = 0
        self.out_of_order = 0
        self.bookmarks = 0
        self.errors: list[str] = []
        self.disconnects = 0
        self.cpu0 = _cpu()
        self.t0 = time.time()

    def stamped(self, now: float, key: str) -> None:
        _, at, stamp = key.rpartition("@")
        if at:
            self.keys.append(key)
            self.lat_send.append(now - float(stamp))


class SSEWatcher(asyncio.Protocol):
    __slots__ = ("buf", "chunked", "closing", "host", "last_rev", "opened", "rec", "sse", "state", "transport")

    def __init__(self, host: str, rec: Recorder, opened: asyncio.Future[str | None]) -> None:
        self.host = host
        self.rec = rec
        self.opened = opened
        self.buf = bytearray()
        self.sse = bytearray()
        self.state = "head"
        self.chunked = True
        self.closing = False
        self.last_rev = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_result(f"connection lost before the answer: {exc}")
        elif not self.closing:
            self.rec.disconnects += 1
            if len(self.rec.errors) < 20:
                self.rec.errors.append(f"{self.host}: disconnected ({exc})")
        self.transport = None

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buf
        buf += data
        if self.state == "head":
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[: end + 4]
            status = head[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
            if len(status) < 2 or status[1] != "200":
                self.opened.set_result(f"{head[0]} {bytes(buf[:300]).decode(errors='replace')}")
                self.close()
                return
            self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            self.state = "body"
            self.headed()
        if not self.chunked:  # HTTP/1.0-style body to the end of the connection
            self.sse += buf
            buf.clear()
        else:
            while True:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    break
                size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
                if size == 0:  # the server ended the stream
                    if not self.closing:
                        self.rec.disconnects += 1
                        if len(self.rec.errors) < 20:
                            self.rec.errors.append(f"{self.host}: stream ended by the server")
                    buf.clear()
                    self.close()
                    break
                if len(buf) < eol + 2 + size + 2:
                    break
                self.sse += buf[eol + 2: eol + 2 + size]
                del buf[: eol + 2 + size + 2]
        self._frames(now)

    def headed(self) -> None:
        """The answer's 200 arrived: an SSE watch is open (the server registers it before answering)."""
        self.opened.set_result(None)

    def _frames(self, now: float) -> None:
        sse = self.sse
        start = 0
        while True:
            end = sse.find(b"\n\n", start)
            if end < 0:
                break
            frame = bytes(sse[start:end])
            start = end + 2
            event, data = "message", ""
            for line in frame.decode().split("\n"):
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data = line[5:].strip()
            rec = self.rec
            if event == "bookmark":
                rec.bookmarks += 1
            elif event == "error":
                if len(rec.errors) < 20:
                    rec.errors.append(f"{self.host}: error frame {data[:300]}")
            else:
                d = json.loads(data)
                rev = d["revision"]
                ts = datetime.fromisoformat(d["ts"]).timestamp()
                rec.lat.append(now - ts)
                rec.ts.append(ts)
                rec.revs.append(rev)
                rec.stamped(now, d["object"]["key"])
                if d["labels"].get("host") != self.host:
                    rec.wrong_host += 1
                if rev <= self.last_rev:
                    rec.out_of_order += 1
                self.last_rev = rev
        if start:
            del sse[:start]


class EtcdWatcher(SSEWatcher):
    """One etcd watch through the JSON gateway: newline-delimited ``{"result": ...}`` messages."""

    __slots__ = ("prefix",)

    def __init__(self, host: str, rec: Recorder, opened: asyncio.Future[str | None]) -> None:
        super().__init__(host, rec, opened)
        self.prefix = f"/c/{host}/"

    def headed(self) -> None:
        pass  # open once etcd says "created"

    def _frames(self, now: float) -> None:
        sse = self.sse
        start = 0
        rec = self.rec
        while True:
            end = sse.find(b"\n", start)
            if end < 0:
                break
            line = bytes(sse[start:end])
            start = end + 1
            if not line.strip():
                continue
            res = json.loads(line).get("result")
            if res is None or res.get("canceled"):
                if len(rec.errors) < 20:
                    rec.errors.append(f"{self.host}: {line[:300]!r}")
                continue
            if res.get("created") and not self.opened.done():
                self.opened.set_result(None)
            for ev in res.get("events", ()):
                kv = ev["kv"]
                key = base64.b64decode(kv["key"]).decode()
                rev = int(kv["mod_revision"])
                rec.revs.append(rev)
                rec.stamped(now, key.rsplit("/", 1)[-1])  # the name, as the load reports it
                if not key.startswith(self.prefix):
                    rec.wrong_host += 1
                if rev < self.last_rev:  # the puts of one transaction share its revision
                    rec.out_of_order += 1
                self.last_rev = rev
        if start:
            del sse[:start]


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class Watchers:
    def __init__(self, url: str, token: str, etcd: bool = False) -> None:
        u = urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.token = token
        self.etcd = etcd
        self.rec = Recorder()
        self.open: list[SSEWatcher] = []

    def _request(self, host: str) -> bytes:
        if self.etcd:  # the key range [/c/hN/, /c/hN0): every key under the prefix
            body = json.dumps({"create_request": {"key": _b64(f"/c/{host}/"), "range_end": _b64(f"/c/{host}0")}})
            return (f"POST /v3/watch HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
        q = f"kind=claim&selector={quote('host=' + host, safe='')}"
        return (f"GET /v1/watch?{q} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n").encode()

    async def open_one(self, host: str, sem: asyncio.Semaphore) -> str | None:
        loop = asyncio.get_running_loop()
        async with sem:
            opened: asyncio.Future[str | None] = loop.create_future()
            try:
                kind = EtcdWatcher if self.etcd else SSEWatcher
                transport, proto = await loop.create_connection(lambda: kind(host, self.rec, opened),
                                                                self.host, self.port)
            except OSError as e:
                return f"{host}: connect: {e}"
            transport.write(self._request(host))
            try:
                err = await asyncio.wait_for(opened, 30)
            except TimeoutError:
                err = "no answer within 30 s"
            if err is None:
                self.open.append(proto)
                return None
            proto.close()
            return f"{host}: {err}"

    async def open_range(self, lo: int, hi: int) -> dict[str, object]:
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(64)
        errs = [e for e in await asyncio.gather(*(self.open_one(f"h{i}", sem) for i in range(lo, hi))) if e]
        return {"opened": hi - lo - len(errs), "failed": len(errs), "errors": errs[:10],
                "seconds": round(time.perf_counter() - t0, 3)}

    async def close_all(self) -> dict[str, object]:
        n = len(self.open)
        for w in self.open:
            w.close()
        self.open = []
        await asyncio.sleep(0.2)
        return {"closed": n}

    def stats(self) -> dict[str, object]:
        r = self.rec
        return {"lat": [round(x, 6) for x in r.lat], "ts": [round(x, 6) for x in r.ts], "revs": r.revs,
                "keys": r.keys, "lat_send": [round(x, 6) for x in r.lat_send], "wrong_host": r.wrong_host,
                "out_of_order": r.out_of_order, "bookmarks": r.bookmarks, "errors": r.errors,
                "disconnects": r.disconnects, "open": len(self.open), "cpu": round(_cpu() - r.cpu0, 4),
                "wall": round(time.time() - r.t0, 4)}


async def watchers_main(url: str, token: str, etcd: bool) -> None:
    ws = Watchers(url, token, etcd)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(obj: object) -> None:
        sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    reply({"ready": True})
    while line := await reader.readline():
        cmd = json.loads(line)
        match cmd["cmd"]:
            case "open":
                lo, hi = cmd["hosts"]
                reply(await ws.open_range(lo, hi))
            case "reset":
                ws.rec.reset()
                reply({"ok": True})
            case "count":
                reply({"events": len(ws.rec.revs), "disconnects": ws.rec.disconnects, "open": len(ws.open),
                       "cpu": round(_cpu() - ws.rec.cpu0, 4), "wall": round(time.time() - ws.rec.t0, 4)})
            case "stats":
                reply(ws.stats())
            case "close":
                reply(await ws.close_all())
            case "exit":
                break
    await ws.close_all()


# ------------------------------------------------------------------------------------------------- load


class Conn:
    """One keep-alive HTTP/1.1 connection: POST JSON, read a Content-Length answer."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.r: asyncio.StreamReader | None = None
        self.w: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, token: str) -> tuple[int, bytes]:
        if self.w is None:
            self.r, self.w = await asyncio.open_connection(self.host, self.port)
        assert self.r is not None
        auth = f"Authorization: Bearer {token}\r\n" if token != "-" else ""  # "-": none (etcd takes it as its own)
        self.w.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{auth}"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        head = (await self.r.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        length, close = 0, False
        for h in head[1:]:
            k, _, v = h.partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v)
            elif k == "connection" and "close" in v.lower():
                close = True
        data = await self.r.readexactly(length)
        if close:
            self.w.close()
            self.r = self.w = None
        return status, data


def _bodies(args: argparse.Namespace, hosts: list[str], total: int) -> tuple[str, Any]:
    """The request path, and ``body(j, at)``: request ``j``'s body and its keys' names (with ``--stamp``, built
    as it goes out, ``at`` written into every name)."""
    keys = args.keys

    def names(j: int, at: float) -> list[str]:
        stamp = f"@{at:.6f}" if args.stamp else ""
        return [f"{args.prefix}-{j}-{k}{stamp}" for k in range(keys)]

    if args.etcd:
        def etcd_body(j: int, at: float) -> tuple[bytes, list[str]]:
            host = hosts[j % len(hosts)]
            ns = names(j, at)
            ks = [_b64(f"/c/{host}/{n}") for n in ns]
            value = _b64(host)
            return json.dumps({"compare": [{"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
                                           for k in ks],
                               "success": [{"request_put": {"key": k, "value": value}} for k in ks]}).encode(), ns
        return "/v3/kv/txn", etcd_body

    def tenure_body(j: int, at: float) -> tuple[bytes, list[str]]:
        ns = names(j, at)
        return json.dumps({"claims": [{"key": n} for n in ns], "host": hosts[j % len(hosts)]}).encode(), ns

    path = f"/v1/pools/{quote(args.pool, safe='')}/claims:bulk"
    if args.stamp:
        return path, tenure_body
    prebuilt = [tenure_body(j, 0.0) for j in range(total)]
    return path, lambda j, at: prebuilt[j]


async def load_main(args: argparse.Namespace) -> None:
    u = urlsplit(args.url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    lo, hi = (int(x) for x in args.hosts.split(":"))
    hosts = [f"h{i}" for i in range(lo, hi)]
    keys = args.keys
    req_rate = args.rate / keys
    total = max(1, round(args.rate * args.seconds / keys))
    path, body = _bodies(args, hosts, total)
    state = {"next": 0, "attempted": 0}
    out: dict[str, Any] = {"requests": 0, "skipped": 0, "created": 0, "non_2xx": 0, "errors": [], "revisions": [],
                           "keys": [], "late_ms_max": 0.0}
    first_send: list[float] = []
    last_answer = [0.0]
    cpu0 = _cpu()
    start = time.monotonic() + 0.05
    end = start + args.seconds + args.grace
    wall = time.time() - time.monotonic()  # a request's due time on the wall clock: wall + due

    def answered(data: bytes, sent: list[str]) -> None:
        d = json.loads(data)
        if args.etcd:
            if not d.get("succeeded"):
                out["errors"].append(f"txn did not succeed: {data[:200]!r}")
                return
            out["created"] += keys
            out["revisions"].append(int(d["header"]["revision"]))
            if args.stamp:
                out["keys"].extend(sent)
            return
        for c in d["claims"]:
            if c["created"]:
                out["created"] += 1
                out["revisions"].append(c["revision"])
                if args.stamp:
                    out["keys"].append(c["key"])

    async def worker() -> None:
        conn = Conn(host, port)
        while True:
            j = state["next"]
            if j >= total:
                return
            state["next"] = j + 1
            due = start + j / req_rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif time.monotonic() > end:  # the window is over: the server could not keep up (counted as skipped)
                state["next"] = total
                return
            else:
                out["late_ms_max"] = max(out["late_ms_max"], -delay * 1000)
            if not first_send:
                first_send.append(time.monotonic())
            state["attempted"] += 1
            # Stamped with its due time, not the send time: a request the client or the server's pace held back
            # counts its wait (no coordinated omission).
            sent, ns = body(j, wall + due)
            try:
                status, data = await conn.post(path, sent, args.token)
            except (OSError, asyncio.IncompleteReadError) as e:
                out["errors"].append(f"request {j}: {e!r}")
                conn = Conn(host, port)
                continue
            out["requests"] += 1
            last_answer[0] = time.monotonic()
            if status // 100 != 2:
                out["non_2xx"] += 1
                if len(out["errors"]) < 10:
                    out["errors"].append(f"{status} {data[:200]!r}")
                continue
            answered(data, ns)

    await asyncio.gather(*(worker() for _ in range(args.connections)))
    out["skipped"] = total - state["attempted"]
    out["wall"] = round(last_answer[0] - (first_send[0] if first_send else start), 4)
    out["cpu"] = round(_cpu() - cpu0, 4)
    out["offered_rate"] = args.rate
    out["errors"] = out["errors"][:10]
    sys.stdout.write(json.dumps(out, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="role", required=True)
    w = sub.add_parser("watchers")
    w.add_argument("url")
    w.add_argument("token")
    w.add_argument("--etcd", action="store_true", help="watch etcd's JSON gateway instead of Tenure")
    ld = sub.add_parser("load")
    ld.add_argument("url")
    ld.add_argument("token")
    ld.add_argument("pool")
    ld.add_argument("--hosts", required=True, help="LO:HI, hosts hLO..hHI-1 in turn")
    ld.add_argument("--rate", type=float, required=True, help="claims (events) per second")
    ld.add_argument("--seconds", type=float, required=True)
    ld.add_argument("--keys", type=int, default=4, help="claims per bulk request (all for one host)")
    ld.add_argument("--connections", type=int, default=16)
    ld.add_argument("--prefix", default="k")
    ld.add_argument("--grace", type=float, default=1.0, help="send nothing later than seconds + grace after the start")
    ld.add_argument("--etcd", action="store_true", help="transactions on etcd's JSON gateway instead of claims")
    ld.add_argument("--stamp", action="store_true", help="write the send time into every key")
    args = ap.parse_args()
    _loop_policy()
    if args.role == "watchers":
        asyncio.run(watchers_main(args.url, args.token, args.etcd))
    else:
        asyncio.run(load_main(args))


if __name__ == "__main__":
    main()
