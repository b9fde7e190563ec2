"""``tenure topology load|show``: the network reservations are admitted on.

``load`` replaces the whole topology from a file. A ``.yaml``/``.yml`` file is
sent as it is, as YAML, for the server to parse; anything else is read as JSON
(or, when it is not JSON and the name does not say ``.json``, as YAML) and sent
as JSON. Either way the server validates the document whole and re-checks every
live reservation against it; ``load`` reports that re-check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from tenure.cli.common import JsonOption, fail, run, say, table, warn
from tenure.client import TenureClient
from tenure.domain.units import format_rate

app = typer.Typer(help="The network topology: nodes and links with their capacities.", no_args_is_help=True)

YAML_SUFFIXES = (".yaml", ".yml")


@app.command("load")
def load(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                         help="Topology file: YAML (.yaml, .yml) or JSON.")],
    as_json: JsonOption = False,
) -> None:
    """Replace the topology with FILE's; every live reservation is re-checked on it."""
    text = file.read_text(encoding="utf-8")
    if file.suffix.lower() in YAML_SUFFIXES:
        def call(c: TenureClient) -> dict[str, Any]:
            return c.put_topology_yaml(text)
    else:
        doc = _parse(text, json_only=file.suffix.lower() == ".json")

        def call(c: TenureClient) -> dict[str, Any]:
            return c.put_topology(doc)

    run(ctx, call, _loaded, as_json=as_json)


@app.command("show")
def show(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show the topology: its nodes and its links with their capacity each way."""
    run(ctx, lambda c: c.topology(), _show, as_json=as_json)


def _parse(text: str, *, json_only: bool) -> Any:
    """The document in ``text``: JSON, else (unless ``json_only``) YAML; ``malformed_topology`` if neither."""
    try:
        return json.loads(text)
    except ValueError as exc:
        if json_only:
            fail("malformed_topology", f"the topology is not valid JSON: {exc}")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        fail("malformed_topology", f"the topology is neither JSON nor YAML: {str(exc).splitlines()[0]}")


def _loaded(r: dict[str, Any]) -> None:
    check = r.get("recheck", {})
    rerouted, degraded, restored = check.get("rerouted", []), check.get("degraded", []), check.get("restored", [])
    say(f"loaded topology: {len(r['nodes'])} nodes, {len(r['links'])} links (revision {r['revision']})")
    line = f"reservations re-checked: {check.get('kept', 0)} kept, {len(rerouted)} rerouted, {len(degraded)} degraded"
    say(line + (f", {len(restored)} restored" if restored else ""))
    for rid in rerouted:
        say(f"  rerouted: {rid}")
    for rid in restored:
        say(f"  restored: {rid}")
    for rid in degraded:
        warn(f"  degraded (no path fits; holds nothing): {rid}")


def _labels(labels: dict[str, str] | None) -> str | None:
    return ", ".join(f"{k}={v}" for k, v in labels.items()) if labels else None


def _show(topo: dict[str, Any]) -> None:
    nodes, links = topo["nodes"], topo["links"]
    if not nodes:
        say("no topology loaded")
        return
    table(("node", "kind", "labels"), ((n["id"], n["kind"], _labels(n.get("labels"))) for n in nodes),
          title=f"{len(nodes)} nodes")
    if links:
        table(("link", "a", "b", "a→b", "b→a", "headroom", "alarm"),
              ((lk["id"], lk["a"], lk["b"], format_rate(lk.get("capacity", lk.get("capacity_ab", 0))),
                format_rate(lk.get("capacity", lk.get("capacity_ba", 0))), lk.get("headroom"), lk.get("alarm"))
               for lk in links), title=f"{len(links)} links")
    extra = [f"{k} {topo[k]}" for k in ("headroom", "alarm") if topo.get(k)]
    say(f"revision {topo['revision']}" + (f"; default {', '.join(extra)}" if extra else ""))
