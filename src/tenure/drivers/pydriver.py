"""Python drivers: ``python:package.module:Class``, a handler class whose methods are the actions.

For resources managed through an API rather than a program (a switch, a cloud
account), forking a process per operation buys nothing; a handler class is
simpler to write and test. The rules:

- Only modules equal to or inside ``DriverRoots.python_packages`` are imported
  (the spec comes from clients; importing arbitrary modules would run arbitrary
  code). The class is instantiated once per driver object, with no arguments.
- Action ``foo-bar`` calls ``foo_bar(params: dict[str, str], ctx: HandlerContext)``,
  which returns ``None`` (0), an OCF code, ``(code, exit_reason)``, a dict of
  outputs (code 0), or ``(code, exit_reason, outputs)``. Actions are the public
  methods other than ``meta_data``, listed with ``_`` shown as ``-``.
  ``meta_data()``, if present, returns OCF meta-data XML; the ``meta-data``
  action returns that XML on stdout, as an OCF agent would.
- Handler-style names (as in FABRIC's aggregate-manager handlers): a class may
  implement ``create``, ``modify``, ``delete`` and ``probe`` instead of
  ``start``, ``reload``, ``stop`` and ``monitor``. When the action is one of the
  latter and the class has no method of that name, its alias is called; such a
  class lists the OCF names among its actions (as well as the aliases themselves,
  which are public methods like any other).
- Outputs (``RunOutcome.outputs``): ``ctx.set_output(key, value)`` during the call
  (values converted with ``str()``), then the returned dict, if any, on top (the
  last value of a key wins). Names are ``[A-Za-z_][A-Za-z0-9_]{0,63}``, values
  strings (or ints, converted) of at most 4096 characters, at most 64 of them;
  anything else makes the outcome an error (``rc=1``). Outputs are kept only when
  the call returns; a timeout or an exception has none.
- Each call runs in its own daemon thread. On timeout the outcome is reported at
  once (``status="timeout"``) and ``ctx.cancelled`` is set, but **a Python thread
  cannot be killed**: a handler that ignores ``ctx.cancelled`` keeps running in
  the background until it returns, and its late result is discarded. Handlers
  that block must wait on ``ctx.cancelled`` (or use their own timeouts). A
  dedicated daemon thread, rather than ``asyncio.to_thread``'s shared pool, is
  used so that such a handler can neither starve the pool nor hold up the event
  loop's shutdown. ``RunRequest.grace`` does not apply.
- An exception is an error outcome (``rc=1``): ``"ExcType: message"`` as the exit
  reason, the tail of the traceback as stderr.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import math
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tenure.clock import LoopClock
from tenure.domain.driverspec import DriverSpec
from tenure.drivers.base import ACTION_NAME, Driver, RunOutcome, RunRequest, check_action, fmt_seconds, with_outputs
from tenure.drivers.ocf import (
    EXIT_REASON_MAX,
    InvalidMetaData,
    MetaData,
    check_against_meta,
    check_params,
    normalize_rc,
    parse_meta_data,
)
from tenure.drivers.spec import DriverRoots

META_DATA_TIMEOUT = 5.0
TRACEBACK_TAIL = 8 * 1024  # characters of traceback kept in stderr
# OCF action -> the handler-style method called when the class has no method named after the action
ALIASES = {"start": "create", "reload": "modify", "stop": "delete", "monitor": "probe"}


@dataclass
class HandlerContext:
    """What a handler method gets besides its parameters."""

    instance: str
    instance_id: str
    interval: float
    timeout: float
    cancelled: threading.Event = field(default_factory=threading.Event)
    _lines: list[str] = field(default_factory=list, repr=False)
    _outputs: dict[Any, str] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def log(self, msg: str) -> None:
        """Add a line to the operation's stdout."""
        with self._lock:
            self._lines.append(str(msg))

    def set_output(self, key: str, value: object) -> None:
        """Set output ``key`` of the operation to ``str(value)`` (a later call for the same key wins).

        The names and sizes are checked when the call returns (see the module docstring).
        """
        text = str(value)
        with self._lock:
            self._outputs.pop(key, None)
            self._outputs[key] = text

    @property
    def outputs(self) -> dict[Any, str]:
        """The outputs set so far (a copy)."""
        with self._lock:
            return dict(self._outputs)

    @property
    def output(self) -> str:
        with self._lock:
            return "".join(line + "\n" for line in self._lines)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:EXIT_REASON_MAX]


async def _call_in_thread(fn: Callable[..., Any], *args: Any, clock: LoopClock, timeout: float,
                          cancelled: threading.Event | None = None) -> tuple[str, Any]:
    """Run ``fn(*args)`` in a new daemon thread: ("ok", value), ("exc", (exc, traceback)) or ("timeout", None).

    On timeout or cancellation of the awaiting task, ``cancelled`` is set and the
    thread is left to finish on its own (threads cannot be killed).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[str, Any]] = loop.create_future()

    def deliver(kind: str, value: Any) -> None:
        if not done.done():
            done.set_result((kind, value))

    context = contextvars.copy_context()

    def work() -> None:
        try:
            result: tuple[str, Any] = ("ok", context.run(fn, *args))
        except BaseException as exc:  # the handler's failure is an outcome, whatever it is
            result = ("exc", (exc, traceback.format_exc()))
        try:
            loop.call_soon_threadsafe(deliver, *result)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting for this result any more

    threading.Thread(target=work, name=f"tenure-handler-{getattr(fn, '__qualname__', fn)}", daemon=True).start()
    timer = clock.call_at(clock.now() + timeout, lambda: deliver("timeout", None)) if math.isfinite(timeout) else None
    try:
        kind, value = await done
    except BaseException:
        if cancelled is not None:
            cancelled.set()
        raise
    finally:
        if timer is not None:
            timer.cancel()
    if kind == "timeout" and cancelled is not None:
        cancelled.set()
    return kind, value


class PythonDriver(Driver):
    """A handler class from an allowed package (see the module docstring)."""

    def __init__(self, spec: DriverSpec, *, roots: DriverRoots) -> None:
        super().__init__(spec)
        self.roots = roots
        self._handler: Any = None

    @property
    def module(self) -> str:
        assert self.spec.provider is not None
        return self.spec.provider

    def _load(self) -> tuple[Any, RunOutcome | None]:
        """(handler, None), or (None, the outcome explaining why there is none). Failures are retried next time."""
        if self._handler is not None:
            return self._handler, None
        if not self.roots.python_allowed(self.module):
            return None, RunOutcome(rc=5, status="not_installed", stdout="", stderr="",
                                    exit_reason=f"{self.module} is not in an allowed python package")
        try:
            mod = importlib.import_module(self.module)
        except ModuleNotFoundError as exc:
            return None, RunOutcome(rc=5, status="not_installed", stdout="", stderr="",
                                    exit_reason=f"{self.spec.text} is not installed: {exc}"[:EXIT_REASON_MAX])
        except Exception as exc:
            return None, RunOutcome(rc=1, status="error", stdout="", stderr=traceback.format_exc()[-TRACEBACK_TAIL:],
                                    exit_reason=f"importing {self.module} failed: {_error_text(exc)}"[:EXIT_REASON_MAX])
        cls = getattr(mod, self.spec.name, None)
        if not isinstance(cls, type):
            return None, RunOutcome(rc=5, status="not_installed", stdout="", stderr="",
                                    exit_reason=f"{self.spec.text} is not installed: {self.module} has no class "
                                                f"{self.spec.name}")
        try:
            self._handler = cls()
        except Exception as exc:
            return None, RunOutcome(rc=1, status="error", stdout="", stderr=traceback.format_exc()[-TRACEBACK_TAIL:],
                                    exit_reason=f"{self.spec.name}() failed: {_error_text(exc)}"[:EXIT_REASON_MAX])
        return self._handler, None

    def installed(self) -> bool:
        return self._load()[1] is None

    def actions(self, meta: MetaData | None) -> frozenset[str] | None:
        """The handler's public methods (``_`` shown as ``-``), ``meta_data`` excepted; None if it cannot load."""
        handler, _ = self._load()
        if handler is None:
            return None
        names = set()
        cls = type(handler)
        for attr in dir(cls):
            # Looked up on the class, so listing actions never runs a property's code.
            if attr.startswith("_") or attr == "meta_data" or not callable(getattr(cls, attr, None)):
                continue
            action = attr.replace("_", "-")
            if ACTION_NAME.fullmatch(action):
                names.add(action)
        names.update(action for action, alias in ALIASES.items() if alias in names)
        return frozenset(names)

    def validate_params(self, meta: MetaData | None, params: Mapping[str, str]) -> None:
        check_params(params)
        if meta is not None:
            check_against_meta(meta, params)

    async def _meta_xml(self, handler: Any, clock: LoopClock) -> str | None:
        fn = getattr(handler, "meta_data", None)
        if not callable(fn):
            return None
        kind, value = await _call_in_thread(fn, clock=clock, timeout=META_DATA_TIMEOUT)
        if kind == "timeout":
            raise InvalidMetaData(f"{self.spec.text}: meta_data() timed out after {fmt_seconds(META_DATA_TIMEOUT)}")
        if kind == "exc":
            raise InvalidMetaData(f"{self.spec.text}: meta_data() raised {_error_text(value[0])}")
        return value if isinstance(value, str) else None

    async def meta_data(self, clock: LoopClock) -> MetaData | None:
        """``meta_data()`` parsed (cached); None if the class has none or cannot load; ``InvalidMetaData`` if bad."""
        if self._meta is not None:
            return self._meta
        handler, _ = self._load()
        if handler is None:
            return None
        xml = await self._meta_xml(handler, clock)
        if xml is None:
            return None
        self._meta = parse_meta_data(xml)
        return self._meta

    async def run(self, req: RunRequest, clock: LoopClock,
                  on_spawn: Callable[[int], None] | None = None) -> RunOutcome:
        """Call the handler method for ``req.action``; ``on_spawn`` is not called (there is no process)."""
        check_action(req.action)
        check_params(req.params)
        handler, failed = self._load()
        if failed is not None:
            return failed
        method_name = req.action.replace("-", "_")
        if method_name == "meta_data":
            try:
                xml = await self._meta_xml(handler, clock)
            except InvalidMetaData as exc:
                return RunOutcome(rc=1, status="error", exit_reason=str(exc)[:EXIT_REASON_MAX], stdout="", stderr="")
            if xml is None:
                return RunOutcome(rc=3, status="not_supported", stdout="", stderr="",
                                  exit_reason=f"{self.spec.text} has no meta-data")
            return RunOutcome(rc=0, status="done", exit_reason=None, stdout=xml, stderr="")
        method = getattr(handler, method_name, None)
        if not callable(method) and req.action in ALIASES:
            method_name = ALIASES[req.action]
            method = getattr(handler, method_name, None)
        if not callable(method):
            return RunOutcome(rc=3, status="not_supported", stdout="", stderr="",
                              exit_reason=f"{self.spec.text} does not support {req.action!r}")

        ctx = HandlerContext(instance=req.instance, instance_id=req.instance_id, interval=req.interval,
                             timeout=req.timeout)
        kind, value = await _call_in_thread(method, dict(req.params), ctx, clock=clock, timeout=req.timeout,
                                            cancelled=ctx.cancelled)
        if kind == "timeout":
            return RunOutcome(rc=1, status="timeout", exit_reason=f"timed out after {fmt_seconds(req.timeout)}",
                              stdout=ctx.output, stderr="")
        if kind == "exc":
            exc, tb = value
            return RunOutcome(rc=1, status="error", exit_reason=_error_text(exc), stdout=ctx.output,
                              stderr=tb[-TRACEBACK_TAIL:])
        return self._interpret(method_name, value, ctx)

    def _interpret(self, method_name: str, value: Any, ctx: HandlerContext) -> RunOutcome:
        """Turn a handler's return value (and the outputs it set) into an outcome."""
        reason: str | None = None
        returned: Mapping[Any, Any] = {}
        if value is None:
            rc = 0
        elif isinstance(value, int) and not isinstance(value, bool):
            rc = value
        elif isinstance(value, dict):
            rc, returned = 0, value
        elif (isinstance(value, tuple) and len(value) in (2, 3) and isinstance(value[0], int)
              and not isinstance(value[0], bool) and (value[1] is None or isinstance(value[1], str))
              and (len(value) == 2 or isinstance(value[2], dict))):
            rc, reason = value[0], (value[1] or None)
            if len(value) == 3:
                returned = value[2]
        else:
            return RunOutcome(rc=1, status="error", stdout=ctx.output, stderr="",
                              exit_reason=f"{self.spec.name}.{method_name} returned {type(value).__name__}; "
                                          f"expected None, an int, a dict, (int, str) or (int, str, dict)")
        outputs = ctx.outputs
        for key, val in returned.items():
            outputs.pop(key, None)
            outputs[key] = val
        outcome = RunOutcome(rc=normalize_rc(rc), status="done", stdout=ctx.output, stderr="",
                             exit_reason=reason[:EXIT_REASON_MAX] if reason else None)
        return with_outputs(outcome, outputs)
