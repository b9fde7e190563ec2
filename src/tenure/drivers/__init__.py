"""Drivers: how the local resource manager runs one operation of one agent.

The LRM (``tenure.lrm``) decides what runs when; this package knows how to run
it, for five classes of agent, behind one interface (:class:`Driver`):

- ``ocf:PROVIDER:TYPE`` - OCF 1.1 resource agents, e.g. ``ocf:heartbeat:Dummy``;
- ``lsb:NAME`` - LSB init scripts;
- ``exec:NAME`` - any executable in the configured directories, run like an OCF agent;
- ``python:module:Class`` - a handler class from an allowed package;
- ``ansible:PLAYBOOK`` - a playbook run through ansible-runner on localhost.

A driver's name is a :class:`~tenure.domain.driverspec.DriverSpec`. Modules:
:mod:`.spec` (where drivers come from), :mod:`.ocf` (the OCF contract as pure
functions), :mod:`.process` (running a process safely), :mod:`.base` (the
interface), :mod:`.classes`, :mod:`.pydriver`, :mod:`.ansible` and :mod:`.tc`
(the drivers), :mod:`.registry` (a name to its driver: ``make_driver``).
"""

from tenure.domain.driverspec import CLASSES, DriverSpec, parse_spec
from tenure.drivers.base import ACTION_NAME, EXEC_STATUSES, Driver, RunOutcome, RunRequest
from tenure.drivers.classes import ExecDriver, LsbDriver, OcfDriver
from tenure.drivers.ocf import (
    ActionSpec,
    InvalidMetaData,
    MetaData,
    ParamSpec,
    check_against_meta,
    check_params,
    parse_meta_data,
)
from tenure.drivers.process import ProcessResult, group_alive, run_process
from tenure.drivers.pydriver import HandlerContext, PythonDriver
from tenure.drivers.registry import make_driver
from tenure.drivers.spec import DriverRoots

__all__ = [
    "ACTION_NAME",
    "CLASSES",
    "EXEC_STATUSES",
    "ActionSpec",
    "Driver",
    "DriverRoots",
    "DriverSpec",
    "ExecDriver",
    "HandlerContext",
    "InvalidMetaData",
    "LsbDriver",
    "MetaData",
    "OcfDriver",
    "ParamSpec",
    "ProcessResult",
    "PythonDriver",
    "RunOutcome",
    "RunRequest",
    "check_against_meta",
    "check_params",
    "group_alive",
    "make_driver",
    "parse_meta_data",
    "parse_spec",
    "run_process",
]
