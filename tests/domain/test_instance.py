"""Instances as pure rules: references, substitution, dependency cycles (against networkx), validation."""

from __future__ import annotations

import networkx as nx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenure.domain.errors import InvalidInput
from tenure.domain.instance import (
    Ref,
    dependencies_of,
    find_cycle,
    references,
    substitute,
    validate_outputs,
    validate_parameters,
)

NAMES = st.sampled_from(["a", "b", "c", "d", "e", "f", "g"])


@given(st.dictionaries(NAMES, st.lists(NAMES, max_size=4), max_size=7))
def test_find_cycle_agrees_with_networkx(graph: dict[str, list[str]]) -> None:
    g = nx.DiGraph()
    g.add_nodes_from(graph)
    g.add_edges_from((a, b) for a, deps in graph.items() for b in deps if b in graph)
    cycle = find_cycle(graph)
    assert (cycle is None) == nx.is_directed_acyclic_graph(g)
    if cycle is not None:
        assert cycle[0] == cycle[-1] and len(cycle) >= 2
        assert all(g.has_edge(a, b) for a, b in zip(cycle, cycle[1:], strict=False))


def test_a_long_chain_is_no_cycle_and_needs_no_recursion() -> None:
    chain = {f"n{i}": [f"n{i + 1}"] for i in range(50_000)}
    assert find_cycle(chain) is None
    chain["n49999"] = ["n0"]
    assert len(find_cycle(chain)) == 50_001


def test_references_parse_and_the_double_dollar_is_a_literal() -> None:
    v = "x=${claim:vlans:net-blue} y=${instance:net.a.outputs.vlan} z=$${claim:not:ref}"
    assert references(v) == [Ref("claim", "vlans", "net-blue"), Ref("instance", "net.a", "vlan")]
    out = substitute(v, lambda r: {"claim": "101", "instance": "7"}[r.kind])
    assert out == "x=101 y=7 z=${claim:not:ref}"
    assert dependencies_of(["b", "net.a"], {"p": v}) == ("b", "net.a")


@pytest.mark.parametrize("bad", ["${claim:vlans}", "${claim::k}", "${instance:a}", "${instance:a.outputs.}",
                                 "${instance:a.outputs.x-y}", "${other:a}", "${}", "${claim:a/b:k}"])
def test_malformed_references_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        references(bad)
    assert exc.value.code == "invalid_reference"


@given(st.text(alphabet="ab${}:.x", max_size=30))
def test_substitution_without_references_only_unescapes(text: str) -> None:
    try:
        refs = references(text)
    except InvalidInput:
        return
    if not refs:
        assert substitute(text, lambda r: "!") == text.replace("$${", "${")


def test_parameters_and_outputs_validation() -> None:
    assert validate_parameters({"a": "1", "b": 2}) == {"a": "1", "b": "2"}
    for bad in ({"a": True}, {"a": 1.0}, {"1a": "x"}, {"a": "x" * 5000}, {"a": "\x00"}, ["a"],
                {f"p{i}": "1" for i in range(65)}):
        with pytest.raises(InvalidInput):
            validate_parameters(bad)
    assert validate_outputs({"vlan": 101}) == {"vlan": "101"}
    with pytest.raises(InvalidInput):
        validate_outputs({"a.b": "1"})
