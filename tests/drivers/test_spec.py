"""Driver specs: the grammar that keeps client-supplied names inside the configured roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenure.domain.driverspec import DriverSpec, parse_spec
from tenure.domain.errors import InvalidInput
from tenure.drivers.classes import ExecDriver, LsbDriver, OcfDriver
from tenure.drivers.pydriver import PythonDriver
from tenure.drivers.registry import make_driver
from tenure.drivers.spec import DriverRoots, inside


@pytest.mark.parametrize(("text", "spec"), [
    ("ocf:heartbeat:Dummy", DriverSpec("ocf", "Dummy", "heartbeat")),
    ("ocf:pacemaker:Stateful", DriverSpec("ocf", "Stateful", "pacemaker")),
    ("ocf:my-provider:agent.v2+x", DriverSpec("ocf", "agent.v2+x", "my-provider")),
    ("lsb:ssh", DriverSpec("lsb", "ssh")),
    ("lsb:hwclock.sh", DriverSpec("lsb", "hwclock.sh")),
    ("exec:mydrv", DriverSpec("exec", "mydrv")),
    ("exec:_x", DriverSpec("exec", "_x")),
    ("ansible:vlan.yml", DriverSpec("ansible", "vlan.yml")),
    ("ansible:vlan.v2.yaml", DriverSpec("ansible", "vlan.v2.yaml")),
    ("python:pkg.mod:Class", DriverSpec("python", "Class", "pkg.mod")),
    ("python:tenure.drivers.bundled.example:Memory",
     DriverSpec("python", "Memory", "tenure.drivers.bundled.example")),
])
def test_good_specs_parse_and_round_trip(text: str, spec: DriverSpec) -> None:
    assert parse_spec(text) == spec
    assert spec.text == text
    assert str(spec) == text


@pytest.mark.parametrize("text", [
    "",
    "ocf",
    "ocf:",
    "ocf:heartbeat",
    "ocf::Dummy",
    "ocf:heartbeat:",
    "ocf:heartbeat:Dummy:extra",
    "ocf:heartbeat:..",
    "ocf:..:Dummy",
    "ocf:.:Dummy",
    "ocf:heartbeat:.hidden",
    "ocf:heart/beat:Dummy",
    "ocf:heartbeat:../../../bin/sh",
    "lsb:..",
    "lsb:.",
    "lsb:../ssh",
    "lsb:/etc/passwd",
    "lsb:a/b",
    "lsb:a:b",
    "lsb:-rf",
    "lsb:ssh ",
    " lsb:ssh",
    "lsb:ss h",
    "lsb:ss\0h",
    "exec:" + "x" * 129,
    "exec:é",
    "python:pkg.mod",
    "python:pkg..mod:Class",
    "python:.pkg:Class",
    "python:pkg-mod:Class",
    "python:pkg/mod:Class",
    "python:pkg.mod:1Class",
    "python:pkg.mod:Cla.ss",
    "python:pkg.mod:Class:x",
    "ansible:vlan",
    "ansible:../vlan.yml",
    "ansible:dir/vlan.yml",
    "ansible:p:vlan.yml",
])
def test_bad_specs_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_spec(text)
    assert err.value.code == "invalid_driver"
    assert err.value.details["driver"] == text
    assert "ocf:PROVIDER:TYPE" in err.value.message  # names the accepted forms


@pytest.mark.parametrize("text", ["systemd:ssh", "OCF:heartbeat:Dummy", "stonith:x"])
def test_unknown_class_lists_the_classes(text: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_spec(text)
    assert err.value.code == "invalid_driver"
    assert "ocf, lsb, exec, python" in err.value.message


def test_name_of_128_characters_is_the_limit() -> None:
    assert parse_spec("exec:" + "x" * 128).name == "x" * 128


def test_specs_validate_themselves_on_construction() -> None:
    with pytest.raises(InvalidInput):
        DriverSpec("ocf", "Dummy")  # no provider
    with pytest.raises(InvalidInput):
        DriverSpec("lsb", "ssh", "provider")
    with pytest.raises(InvalidInput):
        DriverSpec("exec", "..")
    with pytest.raises(InvalidInput):
        DriverSpec("nope", "x")


def test_user_for_prefers_the_exact_spec() -> None:
    roots = DriverRoots(run_as={"exec": "nobody", "exec:special": "daemon"})
    assert roots.user_for(parse_spec("exec:special")) == "daemon"
    assert roots.user_for(parse_spec("exec:other")) == "nobody"
    assert roots.user_for(parse_spec("lsb:ssh")) is None


def test_inside_refuses_escapes(tmp_path: Path) -> None:
    assert inside(tmp_path, "resource.d", "p", "t") == tmp_path / "resource.d" / "p" / "t"
    for parts in [("..",), ("a", "..", ".."), ("/etc",), ("",)]:
        with pytest.raises(InvalidInput):
            inside(tmp_path, *parts)


def test_make_driver_picks_the_class(tmp_path: Path) -> None:
    roots = DriverRoots()
    assert isinstance(make_driver("ocf:heartbeat:Dummy", roots, rsctmp=tmp_path), OcfDriver)
    assert isinstance(make_driver("lsb:ssh", roots, rsctmp=tmp_path), LsbDriver)
    assert isinstance(make_driver(DriverSpec("exec", "x"), roots, rsctmp=tmp_path), ExecDriver)
    assert isinstance(make_driver("python:tenure.drivers.bundled.example:Memory", roots, rsctmp=tmp_path),
                      PythonDriver)
    assert isinstance(make_driver("python:tenure.drivers.bundled:Anything", roots, rsctmp=tmp_path), PythonDriver)


@pytest.mark.parametrize("text", [
    "python:os:system",
    "python:tenure.drivers.base:Driver",
    "python:tenure.drivers.bundledx:Memory",  # a prefix of the name is not the package
    "python:tenure:Anything",
])
def test_make_driver_refuses_modules_outside_the_allowed_packages(text: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        make_driver(text, DriverRoots(), rsctmp=tmp_path)
    assert err.value.code == "invalid_driver"
    assert "tenure.drivers.bundled" in err.value.message


def test_make_driver_refuses_a_bad_spec(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        make_driver("ocf:heartbeat:..", DriverRoots(), rsctmp=tmp_path)
    assert err.value.code == "invalid_driver"


def test_a_python_driver_named_by_the_old_package_name_still_loads(tmp_path: Path) -> None:
    """Agents stored their resources' drivers as python:tenure.drivers.handlers...: after the rename they run."""
    driver = make_driver("python:tenure.drivers.handlers.example:Memory", DriverRoots(), rsctmp=tmp_path)
    assert isinstance(driver, PythonDriver) and driver.spec.provider == "tenure.drivers.bundled.example"
