"""Python drivers shipped with Tenure, named ``python:tenure.drivers.bundled.<module>:<Class>``.

This package is the default (and only) entry of ``DriverRoots.python_packages``:
a python driver spec may only name a module in an allowed package, because
importing a module runs its code. See :mod:`tenure.drivers.pydriver` for how a
handler class is written.
"""
