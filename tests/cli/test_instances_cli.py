"""``tenure instance``: create (with parameters, labels, dependencies), list, show, modify, delete; errors."""

from __future__ import annotations

from tests.cli.conftest import Cli


def test_instance_commands_end_to_end(cli: Cli) -> None:
    net = cli.json("instance", "create", "net", "--type", "memory", "--host", "h1", "-p", "value=7",
                   "--label", "tier=net")
    assert (net["state"], net["parameters"], net["labels"]) == ("pending", {"value": "7"}, {"tier": "net"})
    vm = cli.json("instance", "create", "vm", "--type", "memory", "--host", "h1", "--depends-on", "net",
                  "-p", "value=${instance:net.outputs.v}")
    assert vm["depends_on"] == ["net"] and vm["reason"] == "waiting for dependency 'net' (pending)"

    out = cli.ok("instance", "list").stdout
    assert "net" in out and "vm" in out and "waiting" in out  # the reason is shown (folded in the column)
    assert [i["name"] for i in cli.json("instance", "list", "--host", "h1")["instances"]] == ["net", "vm"]
    assert cli.json("instance", "list", "--host", "h2")["instances"] == []
    shown = cli.ok("instance", "show", "vm").stdout
    assert "value=${instance:net.outputs.v}" in shown and "depends on" in shown

    modified = cli.json("instance", "modify", "net", "-p", "value=8")
    assert modified["generation"] == 2 and modified["parameters"] == {"value": "8"}

    cli.fails("instance", "delete", "net", code="instance_in_use")
    assert "vm: deleted" in cli.ok("instance", "delete", "vm").stdout  # never sent to an agent: gone at once
    assert "net: deleted" in cli.ok("instance", "delete", "net").stdout
    assert cli.ok("instance", "list").stdout.strip() == "no instances"


def test_instance_errors_are_one_line(cli: Cli) -> None:
    cli.fails("instance", "create", "a", "--type", "nosuch", "--host", "h1", code="unknown_type")
    cli.fails("instance", "create", "a", "--type", "memory", "--host", "h1", "--depends-on", "ghost",
              code="unknown_dependency")
    cli.fails("instance", "show", "ghost", code="instance_not_found")
    result = cli("instance", "create", "a", "--type", "memory", "--host", "h1", "-p", "novalue")
    assert result.exit_code == 2 and "NAME=VALUE" in result.stderr
