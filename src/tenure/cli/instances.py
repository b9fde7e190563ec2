"""``tenure instance create|list|show|modify|delete``: desired-state instances on hosts, and their observed state.

Parameters are ``-p NAME=VALUE`` (repeatable); a value may reference a claim or
another instance's output (``${claim:vlans:net-blue}``,
``${instance:net-blue.outputs.vlan}``; quote it from the shell).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tenure.cli.common import JsonOption, fields, run, say, table, when

app = typer.Typer(help="Desired-state instances: create, list, show, modify, delete.", no_args_is_help=True)

ParamOpt = Annotated[list[str] | None, typer.Option("--param", "-p", metavar="NAME=VALUE",
                                                    help="A parameter (repeatable).")]
LabelOpt = Annotated[list[str] | None, typer.Option("--label", metavar="K=V", help="A label (repeatable).")]
DependsOpt = Annotated[list[str] | None, typer.Option("--depends-on", metavar="NAME",
                                                      help="An instance that must be active first (repeatable).")]


def _pairs(items: list[str] | None, option: str) -> dict[str, str] | None:
    if items is None:
        return None
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint=option)
        out[k] = v
    return out


def _state(i: dict[str, Any]) -> str:
    state = i["state"]
    return f"{state} ({i['reason']})" if i.get("reason") else state


def _show(i: dict[str, Any]) -> None:
    fields([
        ("id", i["id"]), ("name", i["name"]), ("project", i.get("project")), ("type", i["type"]),
        ("host", i["host"]), ("desired", i["desired"]), ("state", i["state"]), ("reason", i.get("reason")),
        ("generation", f"{i['generation']} (sent {i['dispatched']}, observed {i['observed']})"),
        ("parameters", ", ".join(f"{k}={v}" for k, v in i["parameters"].items()) or None),
        ("resolved", ", ".join(f"{k}={v}" for k, v in (i.get("resolved") or {}).items()) or None),
        ("outputs", ", ".join(f"{k}={v}" for k, v in i["outputs"].items()) or None),
        ("depends on", ", ".join(i["depends_on"]) or None),
        ("labels", ", ".join(f"{k}={v}" for k, v in i["labels"].items()) or None),
        ("owner", i.get("owner")), ("deadline", when(i.get("deadline"))), ("updated", when(i["updated_at"])),
    ])


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Unique in the project; other instances refer to it by this name.")],
    type_: Annotated[str, typer.Option("--type", help="The resource type (see GET /v1/types).")],
    host: Annotated[str, typer.Option(help="The host whose agent makes it real.")],
    param: ParamOpt = None,
    label: LabelOpt = None,
    depends_on: DependsOpt = None,
    project: Annotated[str | None, typer.Option(help="The project (admins only; members use their own).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Create an instance; it is sent to the host's agent once its dependencies are active."""
    params, labels = _pairs(param, "--param"), _pairs(label, "--label")
    run(ctx, lambda c: c.create_instance(name, type_, host, parameters=params, labels=labels,
                                         depends_on=depends_on, project=project), _show, as_json=as_json)


@app.command("list")
def list_(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Only this host's.")] = None,
    state: Annotated[str | None, typer.Option(help="Only in this state.")] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Only of this type.")] = None,
    project: Annotated[str | None, typer.Option(help="Only this project's.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List instances: name, type, host, state (with its reason), generation."""

    def show(answer: dict[str, Any]) -> None:
        found = answer["instances"]
        if not found:
            say("no instances")
            return
        table(("name", "type", "host", "state", "gen", "id"),
              ((i["name"], i["type"], i["host"], _state(i), i["generation"], i["id"]) for i in found))

    run(ctx, lambda c: c.instances(host=host, state=state, type=type_, project=project), show, as_json=as_json)


@app.command("show")
def show(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="Id, or name in your project.")],
         as_json: JsonOption = False) -> None:
    """One instance: desired and observed state, parameters as given and as resolved, outputs."""
    run(ctx, lambda c: c.instance(ref), _show, as_json=as_json)


@app.command("modify")
def modify(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="Id, or name in your project.")],
           param: ParamOpt = None, label: LabelOpt = None, depends_on: DependsOpt = None,
           as_json: JsonOption = False) -> None:
    """Replace parameters, labels or dependencies; the agent runs its driver's modify."""
    params, labels = _pairs(param, "--param"), _pairs(label, "--label")
    if params is None and labels is None and depends_on is None:
        raise typer.BadParameter("give --param, --label or --depends-on")
    run(ctx, lambda c: c.modify_instance(ref, parameters=params, labels=labels, depends_on=depends_on), _show,
        as_json=as_json)


@app.command("delete")
def delete(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="Id, or name in your project.")],
           force: Annotated[bool, typer.Option(help="Forget it without the agent's confirmation (admins).")]
           = False, as_json: JsonOption = False) -> None:
    """Delete: the agent runs its driver's delete, then the instance is gone."""
    run(ctx, lambda c: c.delete_instance(ref, force=force), lambda i: say(f"{i['name']}: {i['state']}"),
        as_json=as_json)
