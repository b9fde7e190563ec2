"""From a driver's name to a driver: the one place that knows every class of driver.

:mod:`.base` is the interface the driver classes build on; this module sits
above them all, so that nothing in the package imports upwards and adding a
class of driver is one import and one entry here.
"""

from __future__ import annotations

from pathlib import Path

from tenure.domain.driverspec import DriverSpec, parse_spec
from tenure.domain.errors import InvalidInput
from tenure.drivers.ansible import AnsibleDriver
from tenure.drivers.base import Driver
from tenure.drivers.classes import ExecDriver, LsbDriver, OcfDriver
from tenure.drivers.pydriver import PythonDriver
from tenure.drivers.spec import DriverRoots


# Python packages of drivers that Tenure renamed: a name stored before (an agent's resources, an operator's
# types file) still finds its driver.
RENAMED_PACKAGES = {"tenure.drivers.handlers": "tenure.drivers.bundled"}


def renamed(spec: DriverSpec) -> DriverSpec:
    """``spec`` with the current name of a renamed package of Tenure's python drivers (else ``spec``)."""
    if spec.cls != "python" or spec.provider is None:
        return spec
    for old, new in RENAMED_PACKAGES.items():
        if spec.provider == old or spec.provider.startswith(old + "."):
            return DriverSpec("python", spec.name, new + spec.provider[len(old):])
    return spec


def make_driver(spec: str | DriverSpec, roots: DriverRoots, *, rsctmp: Path) -> Driver:
    """The driver for ``spec``; ``InvalidInput(code="invalid_driver")`` for a bad spec or a disallowed module.

    ``rsctmp`` is the agents' state directory (``HA_RSCTMP``); it is created with
    mode 0755 when first needed.
    """
    if isinstance(spec, str):
        spec = parse_spec(spec)
    elif not isinstance(spec, DriverSpec):
        raise InvalidInput(f"invalid driver {spec!r}", code="invalid_driver", driver=str(spec))
    spec = renamed(spec)
    if spec.cls == "ocf":
        return OcfDriver(spec, roots=roots, rsctmp=rsctmp)
    if spec.cls == "lsb":
        return LsbDriver(spec, roots=roots, rsctmp=rsctmp)
    if spec.cls == "exec":
        return ExecDriver(spec, roots=roots, rsctmp=rsctmp)
    if spec.cls == "ansible":
        return AnsibleDriver(spec, roots=roots)
    assert spec.provider is not None
    if not roots.python_allowed(spec.provider):
        raise InvalidInput(
            f"invalid driver {spec.text!r}: python drivers must live in "
            f"{', '.join(roots.python_packages) or '(no package is configured)'}",
            code="invalid_driver", driver=spec.text)
    return PythonDriver(spec, roots=roots)
