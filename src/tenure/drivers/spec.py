"""Where drivers come from: :class:`DriverRoots` (the configured directories and packages, and run-as users).

A driver's name (:class:`~tenure.domain.driverspec.DriverSpec`) is well formed
by construction; this module turns one into a place on disk or a module to
import, and never one outside the configured roots.

Path containment. The joined path ``<root>/<...>/<name>`` cannot leave the root
lexically, because no component may be ``..`` or contain ``/``
(:func:`inside` re-checks this as a second line of defence). Symlinks *inside*
a root are followed, for the directory and the executable alike: only the
administrator can place them, and real installations rely on them (packagers of
resource-agents link ``resource.d/redhat`` to ``/usr/share/cluster``; Debian links
the ``.ocf-*`` helper files to ``../../lib/heartbeat``). Refusing them would add no
protection against someone who can already write into the root.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tenure.domain.driverspec import DriverSpec
from tenure.domain.errors import InvalidInput


def inside(root: Path, *parts: str) -> Path:
    """``root/parts...``, refusing (``invalid_driver``) a result that leaves ``root`` lexically."""
    joined = Path(os.path.normpath(root.joinpath(*parts)))
    base = Path(os.path.normpath(root))
    if joined == base or base not in joined.parents:
        raise InvalidInput(f"driver path {joined} is outside {base}", code="invalid_driver", driver="/".join(parts))
    return joined


@dataclass(frozen=True)
class DriverRoots:
    """Where drivers are found, and as whom they run."""

    ocf_root: Path = Path("/usr/lib/ocf")
    lsb_root: Path = Path("/etc/init.d")
    exec_dirs: tuple[Path, ...] = ()
    # ansible:PLAYBOOK is the first <dir>/PLAYBOOK that is a file
    playbook_dirs: tuple[Path, ...] = ()
    python_packages: tuple[str, ...] = ("tenure.drivers.bundled", "tenure.drivers.tc")
    # spec text (e.g. "exec:foo") or class ("exec") -> user name
    run_as: Mapping[str, str] = field(default_factory=dict)

    def user_for(self, spec: DriverSpec) -> str | None:
        """The user to run ``spec`` as: an entry for the exact spec text wins over one for its class."""
        if spec.text in self.run_as:
            return self.run_as[spec.text]
        return self.run_as.get(spec.cls)

    def python_allowed(self, module: str) -> bool:
        """Whether ``module`` is one of :attr:`python_packages` or inside one of them."""
        return any(module == pkg or module.startswith(pkg + ".") for pkg in self.python_packages)
