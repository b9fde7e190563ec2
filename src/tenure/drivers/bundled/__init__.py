"""Python drivers shipped with Tenure, named ``python:tenure.drivers.bundled.<module>:<Class>``.

This package is an entry of ``DriverRoots.python_packages`` by default (with
:mod:`tenure.drivers.tc`): a python driver spec may only name a module in an
allowed package, because importing a module runs its code. See
:mod:`tenure.drivers.pydriver` for how a handler class is written. Its old name,
``tenure.drivers.handlers``, still finds it (:data:`tenure.drivers.registry.RENAMED_PACKAGES`).
"""
