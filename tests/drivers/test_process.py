"""run_process with real processes: exit-driven completion, capped output, group kills, no leftovers.

Time never passes by itself here: timeouts run on a FakeClock, advanced only
after the child has said (through a FIFO) that it is ready to be signalled.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import select
import signal
import sys
from pathlib import Path

import pytest

from tenure.clock import FakeClock, RealClock
from tenure.domain.errors import InvalidInput
from tenure.drivers.process import group_alive, kill_group, run_process, wait_group_gone
from tests.drivers.support import BIN, PATH_ENV, Ready

PY = sys.executable


def py(code: str) -> list[str]:
    return [PY, "-c", code]


async def gone(pgid: int) -> None:
    """Wait (on pidfds, not by polling) until group ``pgid`` has no live process; real time, bounded."""
    assert await wait_group_gone(pgid, clock=RealClock(), timeout=30), f"group {pgid} is still alive"


def test_exit_code_and_output() -> None:
    clock = FakeClock()
    res = asyncio.run(run_process(
        py("import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"),
        env={}, timeout=10, grace=1, clock=clock))
    assert (res.returncode, res.signal, res.timed_out) == (3, None, False)
    assert (res.stdout, res.stderr, res.truncated) == (b"out\n", b"err\n", False)
    assert not res.not_found and not res.not_executable and res.pid is not None
    assert clock.pending == 0  # the timeout timer was cancelled


def test_environment_is_exactly_what_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENURE_TOKEN", "secret")
    res = asyncio.run(run_process(["/usr/bin/env"], env={"A": "1", "B": "two words"}, timeout=10, grace=1,
                                  clock=FakeClock()))
    assert res.stdout == b"A=1\nB=two words\n"


def test_child_is_isolated() -> None:
    """Own session and group, stdin at EOF, cwd /, and an inheritable descriptor of ours is not passed on."""
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        code = ("import os, sys\n"
                "pid = os.getpid()\n"
                "print(os.getsid(0) == pid, os.getpgid(0) == pid, repr(sys.stdin.read()), os.getcwd())\n"
                f"try:\n    os.fstat({w}); print('leaked')\nexcept OSError:\n    print('closed')\n")
        res = asyncio.run(run_process(py(code), env={}, timeout=10, grace=1, clock=FakeClock()))
    finally:
        os.close(r)
        os.close(w)
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().split() == ["True", "True", "''", "/", "closed"]


def test_output_is_capped_and_the_child_is_not_blocked() -> None:
    code = "import sys; sys.stdout.buffer.write(b'x' * (1 << 20)); sys.stderr.buffer.write(b'y' * (1 << 20))"
    res = asyncio.run(run_process(py(code), env={}, timeout=10, grace=1, clock=FakeClock(), output_cap=1000))
    assert res.returncode == 0
    assert (res.stdout, res.stderr, res.truncated) == (b"x" * 1000, b"y" * 1000, True)
    res = asyncio.run(run_process(py(code), env={}, timeout=10, grace=1, clock=FakeClock()))
    assert (len(res.stdout), len(res.stderr), res.truncated) == (64 * 1024, 64 * 1024, True)


def test_output_up_to_the_cap_is_complete() -> None:
    code = "import sys; sys.stdout.buffer.write(b'z' * 1000)"
    res = asyncio.run(run_process(py(code), env={}, timeout=10, grace=1, clock=FakeClock(), output_cap=1000))
    assert (res.stdout, res.truncated) == (b"z" * 1000, False)


def test_completion_is_the_exit_even_when_a_daemon_holds_the_pipes(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        res = await run_process([str(BIN / "daemonize"), "start"], env={**PATH_ENV, "HA_RSCTMP": str(tmp_path)},
                                timeout=10, grace=1, clock=clock)
        assert res.pid is not None
        try:
            assert (res.returncode, res.timed_out) == (0, False)
            daemon = int((tmp_path / "daemonize-default.pid").read_text())
            assert res.stdout == f"daemon {daemon}\n".encode()
            # A normal exit leaves the group alone: the daemon is still there.
            assert group_alive(res.pid)
            os.kill(daemon, 0)
            assert clock.pending == 0
        finally:
            assert await kill_group(res.pid, clock=RealClock(), timeout=30)
        assert not group_alive(res.pid)

    asyncio.run(main())


def test_timeout_sends_sigterm_to_the_group(ready: Ready) -> None:
    async def main() -> None:
        clock = FakeClock()
        env = {**PATH_ENV, "OCF_RESKEY_ready": str(ready.path)}
        task = asyncio.create_task(run_process([str(BIN / "sleeper"), "monitor"], env=env, timeout=20, grace=5,
                                               clock=clock))
        pid = await ready.pid(unless=task)
        assert group_alive(pid)
        clock.advance(20)
        res = await task
        assert res.pid == pid
        assert (res.timed_out, res.signal, res.returncode) == (True, signal.SIGTERM, None)
        assert res.stderr == f"started {pid}\n".encode()
        assert not group_alive(pid)  # the shell's sleep went with it
        assert clock.pending == 0  # the SIGKILL timer was not needed and is cancelled

    asyncio.run(main())


def test_timeout_escalates_to_sigkill_after_the_grace_period(ready: Ready) -> None:
    async def main() -> None:
        clock = FakeClock()
        env = {**PATH_ENV, "OCF_RESKEY_ready": str(ready.path), "OCF_RESKEY_ignore_term": "1"}
        task = asyncio.create_task(run_process([str(BIN / "sleeper"), "start"], env=env, timeout=20, grace=5,
                                               clock=clock))
        pid = await ready.pid(unless=task)
        clock.advance(20)  # SIGTERM, which it ignores (an ignored signal is discarded when sent)
        assert group_alive(pid)
        assert clock.pending == 1  # the SIGKILL, due after the grace period
        clock.advance(4.9)
        assert not task.done() and group_alive(pid)
        clock.advance(0.1)
        res = await task
        assert (res.timed_out, res.signal, res.returncode) == (True, signal.SIGKILL, None)
        assert not group_alive(pid)

    asyncio.run(main())


def test_after_a_timeout_no_member_of_the_group_survives(ready: Ready) -> None:
    """The main process dies of the SIGTERM, a helper it forked ignores it: the helper is killed too."""
    code = (
        "import os, signal, time\n"
        "if os.fork() == 0:\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"    with open({str(ready.path)!r}, 'w') as f:\n"
        "        f.write(f'started {os.getpid()}\\n')\n"
        "time.sleep(3600)\n"
    )

    async def main() -> None:
        clock = FakeClock()
        pids: list[int] = []
        task = asyncio.create_task(run_process(py(code), env={}, timeout=20, grace=5, clock=clock,
                                               on_spawn=pids.append))
        helper = await ready.pid(unless=task)
        assert helper != pids[0]
        clock.advance(20)  # only the timeout: the grace period never passes
        res = await task
        assert (res.timed_out, res.signal) == (True, signal.SIGTERM)
        assert not group_alive(pids[0])

    asyncio.run(main())


def test_the_timeout_is_armed_before_the_first_await() -> None:
    """The spawn and every watcher are set up before run_process first yields, so a caller may move the
    clock as soon as the task has run once, without waiting for anything else."""
    async def main() -> None:
        clock = FakeClock()
        task = asyncio.create_task(run_process(py("import time; time.sleep(3600)"), env={}, timeout=20, grace=5,
                                               clock=clock))
        await asyncio.sleep(0)  # one loop iteration, so the task has taken its first step (not a wait for time)
        assert not task.done() and clock.pending == 1
        clock.advance(20)
        res = await task
        assert (res.timed_out, res.signal) == (True, signal.SIGTERM)
        assert not group_alive(res.pid)

    asyncio.run(main())


def test_on_spawn_gets_the_pid_which_leads_its_group(ready: Ready) -> None:
    async def main() -> None:
        clock = FakeClock()
        pids: list[int] = []
        env = {**PATH_ENV, "OCF_RESKEY_ready": str(ready.path)}
        task = asyncio.create_task(run_process([str(BIN / "sleeper"), "stop"], env=env, timeout=1, grace=0,
                                               clock=clock, on_spawn=pids.append))
        pid = await ready.pid(unless=task)
        assert pids == [pid] and os.getpgid(pid) == pid
        clock.advance(1)
        res = await task
        assert res.timed_out and not group_alive(pid)

    asyncio.run(main())


def test_cancellation_kills_the_group(ready: Ready) -> None:
    async def main() -> None:
        clock = FakeClock()
        env = {**PATH_ENV, "OCF_RESKEY_ready": str(ready.path)}
        task = asyncio.create_task(run_process([str(BIN / "sleeper"), "start"], env=env, timeout=20, grace=5,
                                               clock=clock))
        pid = await ready.pid(unless=task)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await gone(pid)
        assert clock.pending == 0

    asyncio.run(main())


def test_missing_program_is_not_found(tmp_path: Path) -> None:
    res = asyncio.run(run_process([str(tmp_path / "missing")], env={}, timeout=1, grace=1, clock=FakeClock()))
    assert (res.not_found, res.not_executable, res.returncode, res.pid) == (True, False, None, None)


@pytest.mark.parametrize(("content", "mode"), [
    (b"#!/bin/sh\nexit 0\n", 0o644),  # no execute bit (refused even for root)
    (b"\x7fELF garbage that is not a program", 0o755),  # ENOEXEC
])
def test_non_executable_program(tmp_path: Path, content: bytes, mode: int) -> None:
    prog = tmp_path / "prog"
    prog.write_bytes(content)
    prog.chmod(mode)
    res = asyncio.run(run_process([str(prog)], env={}, timeout=1, grace=1, clock=FakeClock()))
    assert (res.not_found, res.not_executable, res.returncode) == (False, True, None)


def test_a_directory_is_not_executable(tmp_path: Path) -> None:
    res = asyncio.run(run_process([str(tmp_path)], env={}, timeout=1, grace=1, clock=FakeClock()))
    assert res.not_executable


def test_a_missing_working_directory_is_not_a_missing_program(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        asyncio.run(run_process(["/usr/bin/true"], env={}, timeout=1, grace=1, clock=FakeClock(),
                                cwd=str(tmp_path / "nowhere")))


def test_unknown_user_is_refused_before_spawning() -> None:
    spawned: list[int] = []
    with pytest.raises(InvalidInput) as err:
        asyncio.run(run_process(["/usr/bin/true"], env={}, timeout=1, grace=1, clock=FakeClock(),
                                user="no-such-user-here", on_spawn=spawned.append))
    assert err.value.code == "invalid_run_as"
    assert spawned == []


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_run_as_another_user() -> None:
    nobody = pwd.getpwnam("nobody")
    res_g = asyncio.run(run_process(["/usr/bin/id", "-g"], env={}, timeout=10, grace=1, clock=FakeClock(),
                                    user="nobody"))
    res_u = asyncio.run(run_process(["/usr/bin/id", "-u"], env={}, timeout=10, grace=1, clock=FakeClock(),
                                    user="nobody"))
    assert (res_u.returncode, res_g.returncode) == (0, 0), (res_u.stderr, res_g.stderr)
    assert int(res_u.stdout) == nobody.pw_uid
    assert int(res_g.stdout) == nobody.pw_gid


def test_running_as_oneself_needs_no_privileges() -> None:
    me = pwd.getpwuid(os.geteuid()).pw_name
    res = asyncio.run(run_process(["/usr/bin/id", "-u"], env={}, timeout=10, grace=1, clock=FakeClock(), user=me))
    assert int(res.stdout) == os.geteuid()


def test_group_alive_ignores_zombies() -> None:
    """A child that has exited but not been reaped is a zombie: killpg still sees it, group_alive does not."""
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        os._exit(0)
    try:
        # Until the child is reaped, its exit is observable through its pidfd: wait on that, not on time.
        fd = os.pidfd_open(pid)
        try:
            assert select.select([fd], [], [], 30)[0] == [fd]
        finally:
            os.close(fd)
        os.killpg(pid, 0)  # the zombie still counts for killpg
        assert not group_alive(pid)
    finally:
        os.waitpid(pid, 0)
