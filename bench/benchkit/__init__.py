"""Shared helpers of the benchmarks in bench/ (not a benchmark itself).

Each bench/NAME.py script measures several modes side by side in one process
run, repeats them (rounds interleaved, so drift hits every mode alike), and
reports medians next to a limit or baseline measured in the same run. Scripts
report and never gate: they exit 0 whether or not a goal is met.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"  # git-ignored

if str(REPO) not in sys.path:  # tests.support.postgres for --postgres
    sys.path.insert(0, str(REPO))


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def paired_median(xs: Sequence[float], base: Sequence[float]) -> float:
    """The median over rounds of ``xs[i] - base[i]``: a mode against the limit measured in the same round."""
    return median([x - b for x, b in zip(xs, base, strict=True)])


def rss_bytes() -> int:
    """Resident set size of this process now (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def fsync_rate(directory: str | Path, seconds: float = 2.0) -> float:
    """Durable 4 KiB appends per second (write + fdatasync) in ``directory``: the disk's commit limit."""
    fd, path = tempfile.mkstemp(prefix="fsync-", dir=directory)
    try:
        n, block = 0, b"x" * 4096
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            os.write(fd, block)
            os.fdatasync(fd)
            n += 1
        return n / elapsed
    finally:
        os.close(fd)
        os.unlink(path)


def _proc_stat_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(parts[:8]) - idle) / tick, sum(parts[:8]) / tick


def _own_cpu() -> float:
    """CPU seconds of this process and its waited-for children (servers, wrk, helpers)."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def machine_busy(seconds: float = 1.0) -> float:
    """Share of the machine's CPU (0..1) busy over ``seconds``, whoever uses it."""
    b0, t0 = _proc_stat_busy()
    time.sleep(seconds)
    b1, t1 = _proc_stat_busy()
    return (b1 - b0) / max(t1 - t0, 1e-9)


def wait_quiet(max_wait: float, threshold: float = 0.15) -> dict[str, float]:
    """Wait (at most ``max_wait`` s) until other work uses under ``threshold`` of the machine."""
    start = time.monotonic()
    busy = machine_busy()
    while busy > threshold and time.monotonic() - start < max_wait:
        busy = machine_busy()
    return {"busy_before": round(busy, 3), "waited_s": round(time.monotonic() - start - 1, 1)}


class LoadMeter:
    """How much of the machine other processes used while a bench ran (they skew its numbers)."""

    def __init__(self) -> None:
        self.busy0, self.total0 = _proc_stat_busy()
        self.own0 = _own_cpu()

    def others_share(self) -> float:
        busy1, total1 = _proc_stat_busy()
        others = (busy1 - self.busy0) - (_own_cpu() - self.own0)
        return max(0.0, others / max(total1 - self.total0, 1e-9))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _git_commit() -> str:
    """The commit measured, with "+dirty" when src/ differs from it (benchmarks measure the working tree)."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(data_dir: str | Path | None = None, *, measure_fsync: bool = True,
            quiet_wait: float = 60.0) -> dict[str, Any]:
    quiet = wait_quiet(quiet_wait)
    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(_mem_total() / 2**30, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "kernel": platform.release(),
    }
    info["commit"] = _git_commit()
    if measure_fsync:
        info["fsync_per_s"] = round(fsync_rate(data_dir or tempfile.gettempdir()))
    info["machine_busy_before"] = quiet["busy_before"]
    return info


@dataclass
class Goal:
    """One goal of the issue: a measured number against a target, met or not."""

    name: str
    value: float
    target: float
    unit: str
    higher_is_better: bool = True
    detail: str = ""

    @property
    def met(self) -> bool:
        if self.value != self.value:  # NaN: not measured
            return False
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def as_dict(self) -> dict[str, Any]:
        return {
            "goal": self.name,
            "value": round(self.value, 4),
            "target": self.target,
            "unit": self.unit,
            "op": ">=" if self.higher_is_better else "<=",
            "met": self.met,
            "detail": self.detail,
        }


@dataclass
class Report:
    bench: str
    machine: dict[str, Any]
    config: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    load: LoadMeter = field(default_factory=LoadMeter)
    others_share: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "machine": self.machine,
            "config": self.config,
            "results": self.results,
            "goals": [g.as_dict() for g in self.goals],
            "all_met": all(g.met for g in self.goals),
            "other_processes_cpu_share": self.others_share,
            "notes": self.notes,
        }

    def save(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS / f"{self.bench}-{stamp}.json"
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        return path


def console() -> Any:
    from rich.console import Console

    import shutil as _sh

    return Console(highlight=False, width=max(_sh.get_terminal_size((140, 40)).columns, 140))


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*[str(x) for x in r])
    console().print(table)


def print_goals(goals: Sequence[Goal]) -> None:
    from rich.table import Table

    if not goals:  # a comparison without goals of its own (bench/watch_etcd.py)
        return
    table = Table(title="Goals", title_justify="left")
    for c in ("goal", "measured", "target", "verdict", "detail"):
        table.add_column(c)
    for g in goals:
        op = ">=" if g.higher_is_better else "<="
        verdict = "[green]met[/]" if g.met else "[red]NOT MET[/]"
        table.add_row(g.name, f"{fmt(g.value)} {g.unit}", f"{op} {fmt(g.target)} {g.unit}", verdict, g.detail)
    console().print(table)


def print_machine(m: dict[str, Any]) -> None:
    parts = [f"{k}={v}" for k, v in m.items()]
    console().print("[dim]machine: " + "  ".join(parts) + "[/]")


def finish(report: Report) -> None:
    """Print the goals, save the JSON, and end with the one-line JSON summary."""
    report.others_share = round(report.load.others_share(), 3)
    if report.others_share > 0.05:
        report.notes.append(f"other processes used {report.others_share:.0%} of the machine's CPU during this "
                            f"run: numbers are skewed (lower) by that much contention")
    print_goals(report.goals)
    for n in report.notes:
        console().print(f"[dim]note: {n}[/]")
    path = report.save()
    console().print(f"[dim]saved {path.relative_to(REPO)}[/]")
    sys.stdout.flush()
    print(json.dumps(report.as_dict(), separators=(",", ":")), flush=True)


def fmt(x: float) -> str:
    if x != x:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:,.1f}"
    return f"{x:,.2f}"
