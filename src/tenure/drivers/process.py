"""Running one agent process: exit-driven completion, capped output, and a timeout that kills the group.

This is the fork/exec half of the executor, and it carries the lessons of
Pacemaker's:

- The child gets its own session and process group, ``/dev/null`` as stdin, no
  other inherited descriptors and exactly the environment it is given. The
  group is what a timeout kills, so helpers the agent started die with it.
- Completion is the *exit* of the process, not EOF on its pipes. An agent whose
  ``start`` leaves a daemon behind that still holds stdout open is normal; waiting
  for EOF would hang the operation for the daemon's lifetime. The exit is seen
  through a pidfd (readable once the process has exited; Linux 5.3+, with a
  thread blocked in ``waitpid`` as the fallback). After the exit, whatever the
  pipes already hold is read at once, without waiting, and our ends are closed.
  A daemon that later writes to the inherited stdout gets EPIPE, as under
  Pacemaker: daemons should redirect their output.
- Output is capped per stream; a chatty child keeps being read (and discarded)
  so it never blocks on a full pipe.
- On timeout the whole group gets SIGTERM, then SIGKILL ``grace`` seconds later
  (the old lrmd's behaviour; Pacemaker kills at once with ``grace=0``). Once the
  main process is gone after a timeout, members of its group still alive are
  killed and waited for, so a timed-out operation leaves nothing behind. A normal
  exit leaves the group alone: a ``start`` may legitimately leave a daemon.
- Cancelling the awaiting task kills the group with SIGKILL and re-raises.

Why not ``asyncio``'s subprocess support: in Python 3.11 ``Process.wait()``
returns only once the pipes close, and ``loop.subprocess_exec`` connects the
pipes over several loop iterations after the fork, during which a cancellation
closes only the pipes connected so far and then waits for EOF on the others -
forever, if the agent has a child holding them - having killed the main
process but not its group. Spawning with :class:`subprocess.Popen` (the same
fork/exec asyncio does, synchronously) and watching descriptors with
``loop.add_reader`` leaves no such window: from the fork to the arming of every
watcher nothing awaits.

Time comes from a :class:`~tenure.clock.LoopClock`, so tests move it by hand.
Waiting for processes that are not our children to die uses pidfds as well: an
event to await rather than a condition to poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import pwd
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tenure.clock import LoopClock, Timer
from tenure.domain.errors import InvalidInput

log = logging.getLogger(__name__)

# Reads (of 64 KiB) taken from each pipe after the exit: enough for any pipe buffer (at most 1 MiB on Linux),
# bounded so that a daemon writing without pause cannot keep us here.
DRAIN_CHUNKS = 32
# How long (clock seconds) to wait for SIGKILLed processes to disappear before logging and moving on.
REAP_WAIT = 5.0


@dataclass(frozen=True)
class ProcessResult:
    returncode: int | None  # exit status, or None when killed by a signal / not started
    signal: int | None  # the signal that ended it, if any
    timed_out: bool
    not_found: bool  # the executable does not exist (ENOENT)
    not_executable: bool  # EACCES / EPERM / ENOEXEC
    stdout: bytes  # capped at output_cap bytes
    stderr: bytes  # capped at output_cap bytes
    truncated: bool  # some output was discarded
    pid: int | None


def _failed(*, not_found: bool = False, not_executable: bool = False) -> ProcessResult:
    return ProcessResult(returncode=None, signal=None, timed_out=False, not_found=not_found,
                         not_executable=not_executable, stdout=b"", stderr=b"", truncated=False, pid=None)


class _Pipe:
    """Our read end of one output pipe: read whenever readable, kept up to ``cap`` bytes, the rest discarded."""

    CHUNK = 64 * 1024
    PER_WAKEUP = 4  # chunks read per readiness callback, so one chatty child cannot hog the loop

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, cap: int) -> None:
        self.loop = loop
        self.fd = fd
        self.cap = cap
        self.data = bytearray()
        self.truncated = False
        self.open = True
        os.set_blocking(fd, False)
        loop.add_reader(fd, self.read)

    def read(self, chunks: int = PER_WAKEUP) -> None:
        """Read what is there now (at most ``chunks`` reads); close at EOF."""
        for _ in range(chunks):
            if not self.open:
                return
            try:
                chunk = os.read(self.fd, self.CHUNK)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.close()
                return
            room = self.cap - len(self.data)
            if room > 0:
                self.data += chunk[:room]
            if len(chunk) > max(room, 0):
                self.truncated = True

    def close(self) -> None:
        if self.open:
            self.open = False
            self.loop.remove_reader(self.fd)
            os.close(self.fd)


class _ExitWatch:
    """Resolves ``exited`` (and reaps the child) when the process exits, whoever awaits it or not."""

    def __init__(self, loop: asyncio.AbstractEventLoop, proc: subprocess.Popen[bytes]) -> None:
        self.loop = loop
        self.proc = proc
        self.exited: asyncio.Future[int] = loop.create_future()
        try:
            self.pidfd: int | None = os.pidfd_open(proc.pid)
        except OSError:
            self.pidfd = None
        if self.pidfd is not None:
            loop.add_reader(self.pidfd, self._on_pidfd)
        else:  # no pidfds: a thread blocks in waitpid for us
            threading.Thread(target=self._wait_in_thread, name=f"tenure-wait-{proc.pid}", daemon=True).start()

    def _on_pidfd(self) -> None:
        assert self.pidfd is not None
        self.loop.remove_reader(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = None
        self._resolve(self.proc.wait())  # it has exited: this reaps it without blocking

    def _wait_in_thread(self) -> None:
        rc = self.proc.wait()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(self._resolve, rc)

    def _resolve(self, rc: int) -> None:
        if not self.exited.done():
            self.exited.set_result(rc)


# --- the process table -------------------------------------------------------------------------


def _group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes whose process group is ``pgid``, from /proc."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry.name))
    return members


def group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is in process group ``pgid``.

    ``os.killpg(pgid, 0)`` is not enough: zombies (e.g. orphans reparented to a
    PID 1 that does not reap) still count for it.
    """
    return bool(_group_members(pgid))


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; a group that is gone (or not ours to signal) is left alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def wait_group_gone(pgid: int, *, clock: LoopClock, timeout: float = REAP_WAIT) -> bool:
    """Wait until no live process is in group ``pgid``, at most ``timeout`` clock seconds; True if gone.

    Waits on pidfds of the members, so nothing is polled. Only on a kernel
    without ``pidfd_open`` does it fall back to re-reading /proc every 10 ms of
    real time, for at most 5 s.
    """
    loop = asyncio.get_running_loop()
    deadline = clock.now() + timeout
    fallback_rounds = 0
    while members := _group_members(pgid):
        if clock.now() >= deadline:
            return False
        woken: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)

        fds: list[int] = []
        no_pidfd = False
        try:
            for pid in members:
                try:
                    fd = os.pidfd_open(pid)
                except ProcessLookupError:
                    continue  # died since the scan
                except OSError as exc:
                    if exc.errno not in (errno.ENOSYS, errno.EPERM):
                        raise
                    no_pidfd = True
                    break
                fds.append(fd)
                loop.add_reader(fd, wake)  # readable once that process has exited
            if no_pidfd:
                if fallback_rounds >= 500:
                    return False
                fallback_rounds += 1
                await asyncio.sleep(0.01)  # nothing to wait on: re-check shortly (bounded above)
            elif fds:
                timer = clock.call_at(deadline, wake)
                try:
                    await woken
                finally:
                    timer.cancel()
        finally:
            for fd in fds:
                loop.remove_reader(fd)
                os.close(fd)
    return True


async def kill_group(pgid: int, *, clock: LoopClock, timeout: float = REAP_WAIT) -> bool:
    """SIGKILL every live member of group ``pgid`` and wait (at most ``timeout``) until none is left."""
    deadline = clock.now() + timeout
    while group_alive(pgid):
        signal_group(pgid, signal.SIGKILL)
        # Re-send on each round: a member may have forked between the scan and the kill.
        if not await wait_group_gone(pgid, clock=clock, timeout=max(0.0, deadline - clock.now())):
            log.warning("process group survived SIGKILL", extra={"pgid": pgid})
            return False
    return True


# --- users -------------------------------------------------------------------------------------


def _user_kwargs(user: str | None) -> dict[str, Any]:
    """Popen arguments that run the child as ``user`` with its groups; {} for None or the current user."""
    if user is None:
        return {}
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise InvalidInput(f"cannot run as {user!r}: no such user", code="invalid_run_as", user=user) from None
    if pw.pw_uid == os.geteuid():
        return {}  # already that user; setgroups() would need privileges we may not have
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": os.getgrouplist(user, pw.pw_gid)}


# --- running -----------------------------------------------------------------------------------


async def run_process(argv: Sequence[str], *, env: Mapping[str, str], timeout: float, grace: float,
                      clock: LoopClock, user: str | None = None, cwd: str = "/", output_cap: int = 64 * 1024,
                      on_spawn: Callable[[int], None] | None = None) -> ProcessResult:
    """Run ``argv`` to its exit, or kill its group ``timeout`` (+ ``grace``) clock seconds after this call.

    A missing or non-executable program is a result (``not_found`` /
    ``not_executable``), not an exception; an unknown ``user`` raises
    ``InvalidInput(code="invalid_run_as")`` before anything is spawned. Other
    spawn failures (e.g. out of descriptors) raise their ``OSError``.
    """
    if not argv:
        raise ValueError("argv is empty")
    user_kwargs = _user_kwargs(user)
    loop = asyncio.get_running_loop()
    timed_out = False
    timers: list[Timer] = []
    watch: _ExitWatch | None = None

    def exited() -> bool:
        return watch is None or watch.exited.done()

    def kill_hard(pgid: int) -> None:
        if exited():
            return
        signal_group(pgid, signal.SIGKILL)
        # Re-check later and say so if the process will not die (e.g. stuck in uninterruptible I/O).
        timers.append(clock.call_at(clock.now() + REAP_WAIT, lambda: exited() or log.warning(
            "process survived SIGKILL", extra={"pid": pgid, "argv0": argv[0]})))

    def on_timeout(pgid: int) -> None:
        nonlocal timed_out
        if exited():
            return
        timed_out = True
        signal_group(pgid, signal.SIGTERM)
        timers.append(clock.call_at(clock.now() + grace, lambda: kill_hard(pgid)))

    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w, env=dict(env), cwd=cwd,
            close_fds=True, start_new_session=True, **user_kwargs)
    except BaseException as exc:
        os.close(out_r)
        os.close(err_r)
        if isinstance(exc, FileNotFoundError) and exc.filename in (None, argv[0]):
            return _failed(not_found=True)
        # (A FileNotFoundError naming the working directory is not the agent's fault: it propagates.)
        if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno == errno.ENOEXEC):
            return _failed(not_executable=True)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)

    # From here to the first await nothing yields: every watcher is armed before anyone can move the clock.
    pid = pgid = proc.pid  # start_new_session: the child leads its own session and process group
    cap = max(0, output_cap)
    pipes: list[_Pipe] = []
    fds = [out_r, err_r]
    try:
        while fds:
            pipes.append(_Pipe(loop, fds[0], cap))
            fds.pop(0)
        watch = _ExitWatch(loop, proc)
        if math.isfinite(timeout):
            timers.append(clock.call_at(clock.now() + timeout, lambda: on_timeout(pgid)))
        if on_spawn is not None:
            on_spawn(pid)
        rc = await watch.exited
        for p in pipes:  # what the pipes already hold, without waiting for an EOF a daemon may never give
            p.read(DRAIN_CHUNKS)
        if timed_out:
            await kill_group(pgid, clock=clock)
    except BaseException:
        # Cancelled (or on_spawn failed): leave nothing running behind us. The exit watch stays armed and
        # reaps the child once it is gone (failing that, subprocess reaps it later).
        signal_group(pgid, signal.SIGKILL)
        raise
    finally:
        for t in timers:
            t.cancel()
        for p in pipes:
            p.close()
        for fd in fds:  # only if setting up a pipe failed
            os.close(fd)

    sig = -rc if rc < 0 else None
    return ProcessResult(
        returncode=None if sig is not None else rc,
        signal=sig,
        timed_out=timed_out,
        not_found=False,
        not_executable=False,
        stdout=bytes(pipes[0].data),
        stderr=bytes(pipes[1].data),
        truncated=pipes[0].truncated or pipes[1].truncated,
        pid=pid,
    )
