"""``tenure resource ...``: the host agent's local resource manager (``tenure agent``).

Resources are instances of a driver (``ocf:heartbeat:Dummy``, ``lsb:ssh``,
``exec:NAME``, ``python:module:Class``) that the agent starts, stops and
monitors, one operation at a time per instance. The agent answers a submitted
operation at once; ``start``, ``stop``, ``op`` and a ``monitor`` probe then wait
for its result (a long poll of 30 s at a time, for as long as the operation's
own timeout lets it run) and exit 1 when it failed. ``--no-wait`` prints the
queued operation's id instead.

Where the agent is: the root ``--url``/``--token`` (or ``TENURE_URL``/``TENURE_TOKEN``)
when given, else the files ``tenure agent`` writes into its data dir (``server.json``
with ``unix:PATH``, and ``admin.token``). The data dir is resolved as ``tenure agent``
resolves its own: ``--agent-dir`` (``TENURE_AGENT_DIR``), else the root ``--data-dir``,
else ``~/.local/share/tenure/agent``, so both find the same files with the same
flags and environment.

Durations (``--interval``, ``--timeout``) are seconds, or a number with a unit:
``500ms``, ``10s``, ``1.5``, ``2m``, ``1h``.

``events`` follows the agent's ``resource`` and ``operation`` events like ``tenure
watch`` (the client's watch resumes across lost connections); a monitor that found
its instance not as expected is a red ``monitor_failed`` line.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from tenure.cli.common import JsonOption, err, fields, run, say, session, table, warn
from tenure.cli.watch import _json_line, follow
from tenure.cli.watch import _line as _note_line
from tenure.client import TenureAPIError, TenureClient, TenureClientError, TenureConnectionError, Watch, WatchEvent
from tenure.config import default_data_dir, local_admin_token, local_server_url

app = typer.Typer(help="The host agent's resources: add, start, stop, monitor, inspect (see `tenure agent`).",
                  no_args_is_help=True)

POLL = 30.0  # seconds per long poll while waiting for a result (the server allows at most 60)
HISTORY_LIMIT = 1000  # the most the agent hands out

Name = Annotated[str, typer.Argument(metavar="NAME", help="The resource's name (or id).")]
TimeoutOpt = Annotated[str | None, typer.Option("--timeout", metavar="DURATION",
                                                help="Kill the operation after this long (10s, 2m, 500ms); "
                                                     "default: the driver's meta-data, else the agent's.")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Print the queued operation's id; do not wait for "
                                                           "its result.")]
ExpectOpt = Annotated[int, typer.Option("--expect", min=0, max=255, metavar="RC",
                                        help="The exit code that counts as success for a monitor (0: running; "
                                             "7: checks it stays stopped).")]

PAST = {"start": "started", "stop": "stopped", "monitor": "probed", "reload": "reloaded", "promote": "promoted",
        "demote": "demoted", "validate-all": "validated", "migrate_to": "migrated", "migrate_from": "migrated"}


@app.callback()
def _group(
    ctx: typer.Context,
    agent_dir: Annotated[Path | None, typer.Option(envvar="TENURE_AGENT_DIR", show_envvar=True,
                                                   help="The agent's data dir (server.json, admin.token); "
                                                        "default: ~/.local/share/tenure/agent.")] = None,
    agent_url: Annotated[str | None, typer.Option(envvar="TENURE_AGENT_URL", show_envvar=True,
                                                  help="The agent's URL (unix:PATH or http://HOST:PORT); "
                                                       "default: from the agent's data dir.")] = None,
    agent_token: Annotated[str | None, typer.Option(envvar="TENURE_AGENT_TOKEN", show_envvar=True,
                                                    help="An admin token of the agent; default: its "
                                                         "admin.token.")] = None,
) -> None:
    """The host agent's resources: add, start, stop, monitor, inspect (see `tenure agent`).

    The agent is found through its own settings, never the server's: TENURE_URL and TENURE_TOKEN name the
    server (a root --url/--token given on the command line still wins).
    """
    s = session(ctx)
    explicit_url = s.url if s.url and s.url != os.environ.get("TENURE_URL") else None
    explicit_token = s.token if s.token and s.token != os.environ.get("TENURE_TOKEN") else None
    where = agent_dir or default_data_dir() / "agent"
    s.data_dir = where
    s.url = agent_url or explicit_url or local_server_url(where) or f"unix:{where / 'agent.sock'}"
    s.token = agent_token or explicit_token or local_admin_token(where) or ""


# ------------------------------------------------------------------ parsing

_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*")
_UNIT = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None, *, option: str) -> float | None:
    """``10s``, ``1.5``, ``2m``, ``500ms``, ``1h`` as seconds; anything else is a usage error (exit 2)."""
    if text is None:
        return None
    m = _DURATION.fullmatch(text)
    if m is None:
        raise typer.BadParameter(f"{text!r} is not a duration like 10s, 1.5, 2m or 500ms", param_hint=option)
    value = float(m.group(1)) * _UNIT[m.group(2)]
    return int(value) if value == int(value) else value  # 10, not 10.0, in the request


def _pairs(items: list[str] | None, option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        out[key] = value
    return out


# ---------------------------------------------------------------- rendering


def span(seconds: float | None) -> str:
    """``500ms``, ``10s``, ``2m``, ``1h``, ``1.5s``: the short way back."""
    if not seconds:
        return "0"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds == int(seconds):
        n = int(seconds)
        if n % 3600 == 0:
            return f"{n // 3600}h"
        if n % 60 == 0:
            return f"{n // 60}m"
        return f"{n}s"
    return f"{seconds:g}s"


def label(action: str, interval: float | None) -> str:
    """``start``, ``monitor`` (a probe) or ``monitor/10s`` (recurring)."""
    return f"{action}/{span(interval)}" if interval else action


def moment(iso: str | None) -> str | None:
    """A UTC instant to the second, as the agent sent it (``2024-05-01T10:00:00.123Z``)."""
    if not iso:
        return None
    return iso.replace("T", " ")[:19] + "Z"


def rc_text(r: dict[str, Any]) -> str:
    """``rc 0 success``; ``no rc`` when it never ran."""
    return "no rc" if r.get("rc") is None else f"rc {r['rc']} {r.get('rc_name') or 'unknown'}"


def _seconds(ms: int | None) -> str:
    return f"{(ms or 0) / 1000:.2f} s"


def _failure(name: str, r: dict[str, Any]) -> str:
    """``start db1 failed: status timeout, rc 1 generic_error: killed after 20 s``."""
    reason = f": {r['exit_reason']}" if r.get("exit_reason") else ""
    return f"{label(r['action'], r.get('interval'))} {name} failed: status {r['status']}, {rc_text(r)}{reason}"


# --------------------------------------------------------- submit and wait


class _NotFound(TenureClientError):
    code = "operation_not_found"


def _succeeded(r: dict[str, Any]) -> bool:
    return not r["failed"] and r["status"] != "cancelled"


def submit_waiting(c: TenureClient, ref: str, action: str, *, timeout: float | None, expect: int) -> dict[str, Any]:
    """Submit ``action``, answered with its result if that comes within POLL seconds: one request, not two.

    An agent older than ``?wait=`` refuses the parameter before anything is queued: then without it."""
    try:
        return c.submit(ref, action, timeout=timeout, expect=expect, wait=POLL)
    except TenureAPIError as exc:
        if exc.status == 400 and exc.code == "invalid_request" and "query parameter 'wait'" in exc.message:
            return c.submit(ref, action, timeout=timeout, expect=expect)
        raise


def _wait(c: TenureClient, ref: str, op: dict[str, Any]) -> dict[str, Any]:
    """Long-poll until the operation has a result (its timeout on the agent bounds the wait)."""
    try:
        while op.get("result") is None:
            op = c.operation(ref, op["id"], wait=POLL)
    except KeyboardInterrupt:
        warn(f"interrupted: operation {op['id']} ({op['action']}) goes on on the agent; see "
             f"`tenure resource status {ref}`")
        raise typer.Exit(130) from None
    return op


def _one_shot(ctx: typer.Context, name: str, action: str, *, timeout: str | None, no_wait: bool, as_json: bool,
              expect: int = 0, show_output: bool = False) -> None:
    """Submit ``action`` once; unless ``no_wait``, wait for its result, print it, and exit 1 if it failed."""
    seconds = parse_duration(timeout, option="--timeout")
    finished: list[dict[str, Any]] = []

    def call(c: TenureClient) -> dict[str, Any]:
        if no_wait:
            return c.submit(name, action, timeout=seconds, expect=expect)
        try:
            op = submit_waiting(c, name, action, timeout=seconds, expect=expect)
        except KeyboardInterrupt:
            warn(f"interrupted: {action} may have been queued and goes on on the agent; see "
                 f"`tenure resource status {name}`")
            raise typer.Exit(130) from None
        except TenureConnectionError:
            warn(f"the connection failed: if the agent had received it, {action} is queued and goes on there; see "
                 f"`tenure resource status {name}`")
            raise
        op = _wait(c, name, op)
        finished.append(op)
        return op

    def show(op: dict[str, Any]) -> None:
        if no_wait:
            say(f"queued {op['action']} {name}: operation {op['id']}")
            return
        r = op["result"]
        if r["status"] == "cancelled":
            warn(f"{op['action']} {name} was cancelled: {r.get('exit_reason') or 'before it ran'}")
        elif r["failed"]:
            err.print(Text(_failure(name, r), style="red"), soft_wrap=True)
        else:
            verb = PAST.get(op["action"], f"ran {op['action']} on")
            say(f"{verb} {name} ({rc_text(r)}, {_seconds(r.get('run_ms'))})")
        if show_output and r.get("stdout"):
            text = r["stdout"]
            sys.stdout.write(text if text.endswith("\n") else text + "\n")

    run(ctx, call, show, as_json=as_json)
    if finished and not _succeeded(finished[0]["result"]):
        raise typer.Exit(1)


# ------------------------------------------------------------------ commands


@app.command()
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A name for the instance (letters, digits, _ . : @ -).")],
    driver: Annotated[str, typer.Argument(help="ocf:PROVIDER:TYPE, lsb:NAME, exec:NAME or python:module:Class.")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", metavar="KEY=VALUE",
                                                    help="A parameter of the driver (repeatable).")] = None,
    label_: Annotated[list[str] | None, typer.Option("--label", "-l", metavar="KEY=VALUE",
                                                     help="A label (repeatable).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Register an instance of DRIVER; the agent checks the parameters and runs nothing."""
    params, labels = _pairs(param, "--param"), _pairs(label_, "--label")
    run(ctx, lambda c: c.add_resource(name, driver, params=params, labels=labels),
        lambda r: say(f"added {r['name']} ({r['driver']}), id {r['id']}, state {r['state']}"), as_json=as_json)


@app.command()
def start(ctx: typer.Context, name: Name, timeout: TimeoutOpt = None, no_wait: NoWaitOpt = False,
          as_json: JsonOption = False) -> None:
    """Start NAME and wait for the result (exit 1 if the start failed)."""
    _one_shot(ctx, name, "start", timeout=timeout, no_wait=no_wait, as_json=as_json)


@app.command()
def stop(ctx: typer.Context, name: Name, timeout: TimeoutOpt = None, no_wait: NoWaitOpt = False,
         as_json: JsonOption = False) -> None:
    """Stop NAME (its recurring monitors are cancelled first) and wait for the result."""
    _one_shot(ctx, name, "stop", timeout=timeout, no_wait=no_wait, as_json=as_json)


@app.command()
def monitor(
    ctx: typer.Context,
    name: Name,
    interval: Annotated[str | None, typer.Option("--interval", metavar="DURATION",
                                                 help="Monitor every DURATION (from the end of each run); "
                                                      "default: probe once and print the result.")] = None,
    timeout: TimeoutOpt = None,
    always: Annotated[bool, typer.Option("--always", help="Record every run of a recurring monitor, not only "
                                                         "changes.")] = False,
    expect: ExpectOpt = 0,
    cancel: Annotated[bool, typer.Option("--cancel", help="Cancel the recurring monitor of --interval (without "
                                                         "--interval: all of NAME's).")] = False,
    no_wait: NoWaitOpt = False,
    as_json: JsonOption = False,
) -> None:
    """Probe NAME once, register a recurring monitor (--interval), or cancel one (--cancel)."""
    every = parse_duration(interval, option="--interval") or 0
    if cancel:
        run(ctx, lambda c: _cancel_monitors(c, name, every or None), lambda r: _cancelled(name, r), as_json=as_json)
        return
    if not every:
        _one_shot(ctx, name, "monitor", timeout=timeout, no_wait=no_wait, as_json=as_json, expect=expect)
        return
    seconds = parse_duration(timeout, option="--timeout")
    run(ctx, lambda c: c.submit(name, "monitor", interval=every, timeout=seconds,
                                report="always" if always else "change", expect=expect),
        lambda op: _registered(name, op), as_json=as_json)


def _same_interval(a: float, b: float) -> bool:
    return round(a * 1000) == round(b * 1000)  # the agent keys recurring operations by milliseconds


def _cancel_monitors(c: TenureClient, name: str, every: float | None) -> dict[str, Any]:
    live = [o for o in c.operations(name)["items"]
            if o["recurring"] and o["action"] == "monitor" and o["state"] == "recurring"
            and (every is None or _same_interval(o["interval"], every))]
    if every is not None and not live:
        raise _NotFound(f"{name} has no recurring monitor every {span(every)}")
    return {"items": [c.cancel_operation(name, o["id"]) for o in live]}


def _cancelled(name: str, answer: dict[str, Any]) -> None:
    if not answer["items"]:
        say(f"{name} has no recurring monitor")
    for op in answer["items"]:
        say(f"cancelled {label(op['action'], op['interval'])} of {name} (operation {op['id']})")


def _registered(name: str, op: dict[str, Any]) -> None:
    what = label(op["action"], op["interval"])
    if op.get("merged"):
        say(f"{what} of {name} merged into existing operation {op['id']}")
    else:
        say(f"{what} of {name} registered: operation {op['id']}")


@app.command("op")
def op_(
    ctx: typer.Context,
    name: Name,
    action: Annotated[str, typer.Argument(help="An action the driver declares: reload, validate-all, meta-data, "
                                               "or its own.")],
    timeout: TimeoutOpt = None,
    no_wait: NoWaitOpt = False,
    as_json: JsonOption = False,
) -> None:
    """Run ACTION on NAME once and wait for the result; the agent's output (stdout) follows the result line."""
    _one_shot(ctx, name, action, timeout=timeout, no_wait=no_wait, as_json=as_json, show_output=True)


@app.command()
def status(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(metavar="[NAME]", help="One resource in detail; default: all, "
                                                                      "in a table.")] = None,
    as_json: JsonOption = False,
) -> None:
    """The resources and their state, or one of them with its last results."""
    if name is None:
        run(ctx, lambda c: c.resources(), _overview, as_json=as_json)
    else:
        run(ctx, lambda c: c.resource(name), _detail, as_json=as_json)


@app.command()
def history(
    ctx: typer.Context,
    name: Name,
    limit: Annotated[int, typer.Option(min=1, max=HISTORY_LIMIT, help="At most this many, newest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """NAME's recorded operations, newest first (recurring runs: the changes only, unless --always)."""
    run(ctx, lambda c: c.resource_history(name, limit=limit), _history, as_json=as_json)


@app.command()
def remove(
    ctx: typer.Context,
    name: Name,
    force: Annotated[bool, typer.Option("--force", help="Even if it runs (nothing is stopped).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Forget NAME: its recurring monitors and queued operations are cancelled; it must be stopped first."""
    run(ctx, lambda c: c.remove_resource(name, force=force), lambda r: say(f"removed {r['name']}"),
        as_json=as_json)


@app.command()
def drivers(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The drivers installed under the agent's roots."""
    run(ctx, lambda c: c.drivers(), _drivers, as_json=as_json)


@app.command("meta-data")
def meta_data(
    ctx: typer.Context,
    driver: Annotated[str, typer.Argument(help="ocf:PROVIDER:TYPE, lsb:NAME, exec:NAME or python:module:Class.")],
    as_json: JsonOption = False,
) -> None:
    """What DRIVER declares: its parameters (* required) and its actions with their default timeouts."""
    run(ctx, lambda c: c.driver_meta_data(driver), _meta_data, as_json=as_json)


@app.command()
def events(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(metavar="[NAME]", help="Only this resource's events.")] = None,
    since: Annotated[int | None, typer.Option(min=0, metavar="REV",
                                              help="Replay the events after this revision first.")] = None,
    initial: Annotated[bool, typer.Option("--initial", help="Print the current resources first (revision '-'), "
                                                            "then follow.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Print the agent's resource and operation events as they happen, one per line, until Ctrl-C."""
    if since is not None and initial:
        raise typer.BadParameter("--since and --initial exclude each other", param_hint="--since")
    show = _json_line if as_json else _event_line

    def start(client: TenureClient) -> Watch:
        ids = client.resource(name)["id"] if name is not None else None
        return client.watch(["resource", "operation"], ids=ids, since=since, initial=initial)

    follow(ctx, start, show, gone_hint="watch with --initial instead")


# ---------------------------------------------------------------- rendering


def _last_failure(r: dict[str, Any]) -> str | None:
    failed = [x for x in r.get("last", {}).values() if x.get("failed")]
    if not failed:
        return None
    x = max(failed, key=lambda x: x.get("finished_at") or "")
    what = x.get("rc_name") if x["status"] == "done" else x["status"]
    return f"{label(x['action'], x.get('interval'))} {what} {moment(x.get('finished_at'))}"


def _recurring(r: dict[str, Any]) -> str | None:
    return ", ".join(label(o["action"], o["interval"]) for o in r.get("recurring", [])
                     if o.get("state") == "recurring") or None


def _running(r: dict[str, Any]) -> str | None:
    op = r.get("running")
    return label(op["action"], op.get("interval")) if op else None


def _overview(answer: dict[str, Any]) -> None:
    items = answer["items"]
    if not items:
        say("no resources")
        return
    table(("name", "driver", "state", "running", "queued", "recurring", "last failure"),
          ((r["name"], r["driver"], r["state"], _running(r), len(r.get("queued", [])), _recurring(r),
            _last_failure(r)) for r in items))


def _kv(d: dict[str, str] | None) -> str | None:
    return ", ".join(f"{k}={v}" for k, v in (d or {}).items()) or None


def _detail(r: dict[str, Any]) -> None:
    fields([
        ("resource", r["name"]), ("id", r["id"]), ("driver", r["driver"]), ("state", r["state"]),
        ("since", moment(r.get("state_at"))), ("params", _kv(r.get("params"))), ("labels", _kv(r.get("labels"))),
        ("created", moment(r.get("created_at"))), ("running", _running(r)),
        ("queued", ", ".join(label(o["action"], o.get("interval")) for o in r.get("queued", [])) or None),
        ("recurring", _recurring(r)),
    ])
    last = r.get("last", {})
    if last:
        table(("operation", "status", "rc", "rc name", "exit reason", "finished", "run ms"),
              ((label(x["action"], x.get("interval")), x["status"], x.get("rc"), x.get("rc_name"),
                x.get("exit_reason"), moment(x.get("finished_at")), x.get("run_ms")) for x in last.values()),
              title="last results")


def _history(answer: dict[str, Any]) -> None:
    items = answer["items"]
    if not items:
        say("no recorded operations")
        return
    rows = []
    for op in items:
        x = op.get("result") or {}
        rows.append((moment(x.get("finished_at")), label(op["action"], op.get("interval")),
                     x.get("status", op.get("state")), x.get("rc_name"), x.get("exit_reason"), x.get("run_ms")))
    table(("finished", "operation", "status", "rc name", "exit reason", "run ms"), rows)


def _drivers(answer: dict[str, Any]) -> None:
    items = answer["items"]
    if not items:
        say("no drivers found")
        return
    table(("driver", "class", "dir"), ((d["driver"], d["class"], d.get("dir")) for d in items))


def _meta_data(answer: dict[str, Any]) -> None:
    meta = answer.get("meta_data")
    if meta is None:
        say(f"{answer['driver']} declares no meta-data")
        return
    fields([("driver", answer["driver"]), ("name", meta["name"]), ("version", meta.get("version")),
            ("description", meta.get("shortdesc"))])
    table(("parameter", "required", "unique", "type", "default", "description"),
          ((p["name"] + (" *" if p["required"] else ""), "yes" if p["required"] else None,
            "yes" if p["unique"] else None, p.get("type"), p.get("default"), p.get("shortdesc"))
           for p in meta["parameters"]), title="parameters (* required)")
    table(("action", "timeout", "interval", "depth"),
          ((a["name"], span(a["timeout"]) if a.get("timeout") else None,
            span(a["interval"]) if a.get("interval") else None, a.get("depth")) for a in meta["actions"]),
          title="actions")


def describe_event(e: WatchEvent) -> str:
    """``12 updated resource db1 state=running``, ``13 updated operation db1 start rc 0 success 23 ms``,
    ``14 monitor_failed resource db1 monitor/1s rc 7 not_running: No process state file found``."""
    rev = "-" if e.revision is None else str(e.revision)
    obj: dict[str, Any] = e.object or {}
    if e.kind == "operation":
        name = obj.get("resource") or e.id or "?"
        parts = [rev, e.type, "operation", name, label(obj.get("action", "?"), obj.get("interval"))]
        x = obj.get("result")
        if x is None or obj.get("state") == "cancelled":
            parts.append(obj.get("state") or "?")
        else:
            parts += [rc_text(x), f"{x.get('run_ms', 0)} ms"]
            if x["status"] != "done":
                parts.append(x["status"])
            if x.get("failed"):
                parts.append("failed" + (f": {x['exit_reason']}" if x.get("exit_reason") else ""))
        return " ".join(parts)
    name = obj.get("name") or e.id or "?"
    if e.type == "monitor_failed":
        x = obj.get("result") or {}
        what = rc_text(x) if x.get("status") == "done" else f"status {x.get('status')}, {rc_text(x)}"
        reason = f": {x['exit_reason']}" if x.get("exit_reason") else ""
        return f"{rev} monitor_failed resource {name} {label('monitor', x.get('interval'))} {what}{reason}"
    parts = [rev, e.type, e.kind or "?", name]
    if e.type == "created":
        parts.append(f"driver={obj.get('driver')}")
    if e.type != "deleted" and obj.get("state"):
        parts.append(f"state={obj['state']}")
    return " ".join(parts)


def _event_line(e: WatchEvent) -> None:
    if e.type in ("bookmark", "resync"):
        _note_line(e)  # the notes of `tenure watch`, to stderr
    elif e.type == "monitor_failed":
        typer.secho(describe_event(e), fg="red", bold=True)
    else:
        typer.echo(describe_event(e))
