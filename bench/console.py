#!/usr/bin/env python3
"""The web console in a real browser on a large state (issue 16).

    python3 dev.py bench console [--runs 5] [--quick] [--reservations N] [--k K]

The state: the k=16 fat tree of bench/reservations.py (1,344 nodes, 3,072 links) with ``--reservations``
100,000 bandwidth reservations booked through the library (random host pairs, windows in the next week), then a
real ``tenure serve`` on a copy of that store, and Debian's chromium (headless, 1280x800, through Selenium and
chromedriver) signed in to its console. Measured in the browser, each ``--runs`` times, medians reported:

topology ready      from setting the route to #/topology until the view says its first data is drawn (the graph
                    laid out and every link coloured): the issue's "interactive within 2 s of navigation". The
                    floor, in the same page: GET /v1/topology and GET /v1/links/usage alone.
slider              moving the time slider one step: from the input event until the new colours are applied
                    and a frame has been painted; 20 positions a run. The floor: GET /v1/links/usage?at= alone.
booking recolour    a reservation booked through the API (a random host pair, 1 Mbit/s, the next hour) while
                    the Topology view is open: from the POST until the view has applied the colours of that
                    revision (from its watch) and painted a frame; 5 bookings a run, timed from this script (so
                    WebDriver's round trip, a few ms, is included). The issue's "recolour within 1 s".
timeline scroll     #/reservations with the first 10,000 reservations on the timeline; for 3 s a wheel event
                    each frame scrolls it (vertically, then sideways); frames/s from requestAnimationFrame
                    timestamps, and the frames that took over 25 ms.
live at 1,000/s     an idle Overview, then an idle Events view, while 1,000 events/s are made (bulk claims of
                    100 keys every 100 ms, then released): the long tasks (over 50 ms, PerformanceObserver)
                    the page had in 10 s, and the longest.

Goals (issue 16): topology ready <= 2 s; slider recolour <= 100 ms; booking recolour <= 1 s; timeline >= 60
frames/s; no long task over
50 ms at 1,000 events/s. The script reports and never gates (exit 0). Run on a quiet machine: the server, the
load and the browser share its cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/http.py shadows http
sys.path.append(str(HERE))

import argparse  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sqlite3  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import Any  # noqa: E402

import benchkit  # noqa: E402
import httpx  # noqa: E402
from benchkit import Goal, Report, fmt, median  # noqa: E402
from reservations import Server, Store, fat_tree, gen_requests  # noqa: E402

from tenure.domain.topology import Topology  # noqa: E402
from tests.support import chromium  # noqa: E402


def browser(profile: Path) -> Any:
    # Kept running at full speed: the measurements must not be throttled as a background page's would be.
    driver = chromium.start(profile, flags=("--disable-background-timer-throttling",
                                            "--disable-renderer-backgrounding"))
    driver.set_script_timeout(600)
    driver.set_page_load_timeout(120)
    return driver


def run_async(driver: Any, body: str, *args: Any) -> Any:
    """``body`` is an async function's body; its answer comes back (the last argument is Selenium's callback)."""
    answer = driver.execute_async_script(
        "const done = arguments[arguments.length - 1]; const args = [...arguments].slice(0, -1);"
        f"(async (...args) => {{ {body} }})(...args).then(done, (e) => done({{error: String(e)}}));", *args)
    if isinstance(answer, dict) and "error" in answer:
        raise RuntimeError(answer["error"])
    return answer


READY = """
const [view, hash] = args;
const main = document.getElementById('main');
const until = (ok, what) => new Promise((resolve, reject) => {
  const end = performance.now() + 90000;
  const w = () => ok() ? resolve() : performance.now() > end
    ? reject(new Error(`${what}: still ${main.dataset.ready} at ${location.hash}: ${main.innerText.slice(0, 300)}`))
    : setTimeout(w, 5);
  w();
});
if (location.hash.startsWith('#/' + view)) { location.hash = '#/events'; }
await until(() => main.dataset.ready && !location.hash.startsWith('#/' + view), 'another view');
const t0 = performance.now();
location.hash = hash;
await until(() => main.dataset.ready === view, view);
await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
return performance.now() - t0;
"""

FLOOR = """
const [paths] = args;
const t0 = performance.now();
await Promise.all(paths.map((p) => fetch(p, {credentials: 'same-origin', cache: 'no-store'}).then((r) => r.json())));
return performance.now() - t0;
"""

SLIDER = """
const [steps] = args;
const slider = document.getElementById('topo-at');
const canvas = document.getElementById('topo-graph');
const out = [];
const timings = [];
for (const step of steps) {
  const before = canvas.dataset.at;
  const t0 = performance.now();
  slider.value = String(step);
  slider.dispatchEvent(new Event('input', {bubbles: true}));
  await new Promise((r) => { const w = () => canvas.dataset.at !== before ? r() : requestAnimationFrame(w); w(); });
  await new Promise((r) => requestAnimationFrame(r));
  out.push(performance.now() - t0);
  timings.push(canvas.dataset.timing);
}
return {times: out, timings};
"""

BOOKED = """
const [revision, limit] = args;
const canvas = document.getElementById('topo-graph');
const end = performance.now() + limit;
await new Promise((r, no) => { const w = () => Number(canvas.dataset.revision || 0) >= revision ? r()
  : performance.now() > end ? no(new Error(`revision ${revision} not drawn`)) : requestAnimationFrame(w); w(); });
await new Promise((r) => requestAnimationFrame(r));
return 1;
"""

SCROLL = """
const [seconds, axis] = args;
const target = document.querySelector('#res-timeline .vis-center') || document.querySelector('#res-timeline');
const stamps = [];
const t0 = performance.now();
await new Promise((resolve) => {
  const frame = (now) => {
    stamps.push(now);
    const d = ((stamps.length % 120) < 60 ? 1 : -1) * 60;
    target.dispatchEvent(new WheelEvent('wheel', {deltaY: axis === 'y' ? d : 0, deltaX: axis === 'x' ? d : 0,
      shiftKey: axis === 'x', bubbles: true, cancelable: true}));
    if (now - t0 < seconds * 1000) requestAnimationFrame(frame); else resolve();
  };
  requestAnimationFrame(frame);
});
const gaps = stamps.slice(1).map((t, i) => t - stamps[i]);
return {frames: stamps.length, seconds: (stamps[stamps.length - 1] - stamps[0]) / 1000,
        slow: gaps.filter((g) => g > 25).length, worst: Math.max(...gaps)};
"""

LONG_TASKS = """
const [seconds] = args;
const tasks = [];
const observer = new PerformanceObserver((list) => { for (const e of list.getEntries()) tasks.push(e.duration); });
observer.observe({type: 'longtask'});
// The observer is checked first: a task of 80 ms made on purpose must be seen, or nothing measured counts.
await new Promise((r) => setTimeout(() => {
  const end = performance.now() + 80;
  while (performance.now() < end);
  r();
}, 0));
await new Promise((r) => setTimeout(r, 200));
const seen = tasks.length > 0 && Math.max(...tasks) >= 75;
tasks.length = 0;
const rev0 = Number(document.getElementById('status').dataset.revision || 0);
await new Promise((r) => setTimeout(r, seconds * 1000));
observer.disconnect();
const rev1 = Number(document.getElementById('status').dataset.revision || 0);
return {count: tasks.length, worst: !seen ? null : tasks.length ? Math.max(...tasks) : 0, revisions: rev1 - rev0,
        observer_works: seen};
"""


class Load(threading.Thread):
    """~``rate`` events/s: bulk claims of 100 new keys every 100/rate s in one pool (each a ``created`` event)."""

    runs = 0

    def __init__(self, url: str, token: str, rate: int) -> None:
        super().__init__(daemon=True)
        Load.runs += 1
        self.prefix = f"run{Load.runs}"
        self.client = httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=30)
        self.rate = rate
        self.stop = threading.Event()
        self.made = 0
        self.n = 0

    def run(self) -> None:
        period = 100 / self.rate
        nxt = time.monotonic()
        while not self.stop.is_set():
            keys = [f"{self.prefix}-{self.n}-{i}" for i in range(100)]
            self.n += 1
            r = self.client.post("/v1/pools/bench-load/claims:bulk", json={"claims": [{"key": k} for k in keys]})
            if r.status_code in (200, 201):
                self.made += sum(1 for c in r.json()["claims"] if c.get("created"))
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: k=8, 10,000 reservations, 2 runs")
    ap.add_argument("--k", type=int, default=None, help="fat tree arity (default 16; 8 with --quick)")
    ap.add_argument("--reservations", type=int, default=None, help="booked (default 100,000; 10,000 --quick)")
    ap.add_argument("--runs", type=int, default=None, help="rounds (medians; default 5, 2 with --quick)")
    ap.add_argument("--rate", type=int, default=1000, help="events per second for the live test")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--quiet-wait", type=float, default=60.0)
    ap.add_argument("--dir", default=None, help="parent of the temp data dir")
    args = ap.parse_args()
    k = args.k or (8 if args.quick else 16)
    n_res = args.reservations or (10_000 if args.quick else 100_000)
    runs = args.runs or (2 if args.quick else 5)
    workdir = Path(tempfile.mkdtemp(prefix="tenure-console-", dir=args.dir))
    report = Report("console", benchkit.machine(workdir, quiet_wait=args.quiet_wait),
                    {**vars(args), "k": k, "reservations": n_res, "runs": runs})
    benchkit.print_machine(report.machine)
    con = benchkit.console()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    server = driver = None
    try:
        doc, hosts = fat_tree(k, 10 * 10**9, 40 * 10**9)
        topo = Topology.parse(doc)
        con.print(f"fat tree k={k}: {len(topo.nodes):,} nodes, {len(topo.links):,} links; booking {n_res:,}")
        store = Store(workdir / "lib.db", now)
        store.rt.run(store.rt.topology.set_topology_op(topo))
        t0 = time.perf_counter()
        ids, refused = store.submit_all(gen_requests(random.Random(args.seed), hosts, n_res, int(now.timestamp())))
        con.print(f"  {len(ids):,} admitted, {sum(refused.values()):,} refused in {time.perf_counter() - t0:.0f} s")
        store.close()
        data = workdir / "server"
        data.mkdir()
        src, dst = sqlite3.connect(workdir / "lib.db"), sqlite3.connect(data / "tenure.db")
        src.backup(dst)
        dst.close()
        src.close()
        server = Server(data, "warning", None)
        server.call("POST", "/v1/pools", {"name": "bench-load", "ranges": [[1, 10**9]]})
        driver = browser(workdir / "profile")
        code_url = server.call("POST", "/v1/ui/codes")[1]["url"]
        driver.get(code_url)
        run_async(driver, "const end = performance.now() + 90000; await new Promise((r, no) => { const w = () =>"
                          " document.getElementById('main').dataset.ready === 'overview' ? r() : performance.now()"
                          " > end ? no(new Error('no overview after sign-in')) : setTimeout(w, 50); w(); });"
                          " return 1;")
        con.print("signed in; measuring")

        ready, ready_floor, slider, slider_floor, scroll_y, scroll_x = [], [], [], [], [], []
        booked: list[float] = []
        pairs = random.Random(args.seed + 1)
        steps_per_run = 20
        for r in range(runs):
            ready.append(run_async(driver, READY, "topology", "#/topology"))
            ready_floor.append(run_async(driver, FLOOR, ["/v1/topology", "/v1/links/usage"]))
            positions = [random.Random(r * 100 + i).randrange(1, 672) for i in range(steps_per_run)]
            moved = run_async(driver, SLIDER, positions)
            slider += moved["times"]
            if r == 0:
                con.print(f"  where a slider step's time goes (ms): {moved['timings'][:5]}")
            at = datetime.fromtimestamp(now.timestamp() + 86400, UTC).isoformat().replace("+00:00", "Z")
            slider_floor.append(run_async(driver, FLOOR, [f"/v1/links/usage?at={at}"]))
            for _ in range(5):
                src, dst = pairs.sample(hosts, 2)
                t0 = time.perf_counter()
                status, body = server.call("POST", "/v1/reservations", {"kind": "bandwidth", "src": src, "dst": dst,
                                                                        "rate": "1M", "end": "+1h"})
                if status != 201:  # (a full path: another pair next time)
                    continue
                run_async(driver, BOOKED, body["revision"], 10_000)
                booked.append((time.perf_counter() - t0) * 1000)
            run_async(driver, READY, "reservations", "#/reservations")
            scroll_y.append(run_async(driver, SCROLL, 3, "y"))
            scroll_x.append(run_async(driver, SCROLL, 3, "x"))
            con.print(f"  run {r + 1}: topology ready {ready[-1]:.0f} ms (floor {ready_floor[-1]:.0f}); slider "
                      f"median {median(slider[-steps_per_run:]):.0f} ms (floor {slider_floor[-1]:.0f}); booking "
                      f"recolour median {median(booked[-5:]):.0f} ms; timeline "
                      f"{scroll_y[-1]['frames'] / scroll_y[-1]['seconds']:.0f} / "
                      f"{scroll_x[-1]['frames'] / scroll_x[-1]['seconds']:.0f} frames/s")
        items = int(driver.execute_script("return Number(document.getElementById('res-timeline').dataset.items)"))

        live = {}
        for view in ("overview", "events"):
            run_async(driver, READY, view, f"#/{view}")
            load = Load(server.url, server.token, args.rate)
            load.start()
            time.sleep(2)  # the load reaches its rate
            t = time.monotonic()
            made0 = load.made
            measured = run_async(driver, LONG_TASKS, 10)
            rate = (load.made - made0) / (time.monotonic() - t)
            load.stop.set()
            load.join()
            measured["events_per_s"] = rate
            if measured["worst"] is None:  # the observer saw not even the task made on purpose: not measured
                measured["worst"] = float("nan")
            live[view] = measured
            con.print(f"  live, {view}: {rate:,.0f} events/s made; {measured['count']} long tasks, the longest "
                      f"{measured['worst']:.0f} ms; the page followed {measured['revisions']:,} revisions")

        fps = lambda xs: median([x["frames"] / x["seconds"] for x in xs])  # noqa: E731
        result = {
            "topology_ready_ms": {"median": median(ready), "runs": ready, "floor_median": median(ready_floor)},
            "slider_ms": {"median": median(slider), "p95": sorted(slider)[int(0.95 * len(slider)) - 1],
                          "floor_median": median(slider_floor)},
            "booking_recolour_ms": {"median": median(booked), "max": max(booked), "n": len(booked)},
            "timeline": {"items": items, "fps_vertical": fps(scroll_y), "fps_sideways": fps(scroll_x),
                         "slow_frames_vertical": median([x["slow"] for x in scroll_y]),
                         "slow_frames_sideways": median([x["slow"] for x in scroll_x]),
                         "worst_frame_ms": max(x["worst"] for x in scroll_y + scroll_x)},
            "live": live,
        }
        report.results.append(result)
        report.goals += [
            Goal("topology interactive after navigation, median", median(ready), 2000, "ms", False,
                 f"floor (its two GETs alone) {fmt(median(ready_floor))} ms"),
            Goal("time slider recolours every link, median", median(slider), 100, "ms", False,
                 f"p95 {fmt(result['slider_ms']['p95'])} ms; floor (the GET alone) {fmt(median(slider_floor))} ms"),
            Goal("a booking recolours its links in the open Topology view, median", median(booked), 1000, "ms",
                 False, f"worst {fmt(max(booked))} ms of {len(booked)}; 150 ms of it is the view's debounce"),
            Goal(f"timeline scrolls {items:,} items, vertically", fps(scroll_y), 60, "frames/s", True),
            Goal(f"timeline scrolls {items:,} items, sideways", fps(scroll_x), 60, "frames/s", True),
            Goal(f"idle Overview at {args.rate:,} events/s: longest task", live["overview"]["worst"], 50, "ms", False,
                 f"{live['overview']['count']} long tasks in 10 s"),
            Goal(f"idle Events view at {args.rate:,} events/s: longest task", live["events"]["worst"], 50, "ms", False,
                 f"{live['events']['count']} long tasks in 10 s"),
        ]
    finally:
        if driver is not None:
            driver.quit()
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    benchkit.finish(report)


if __name__ == "__main__":
    os.environ.setdefault("SE_OFFLINE", "true")
    main()
    sys.exit(0)
