"""The web console's files (docs/console.md): ``static/`` is served at ``/ui/`` by :mod:`tenure.api.ui`.

No Python here: HTML, CSS and ES modules the browser loads as they are, and the vendored libraries under
``static/vendor/`` (re-vendored by ``scripts/vendor-ui`` from ``ui/package-lock.json``).
"""
