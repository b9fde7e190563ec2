"""The ``tenure`` command line: thin over the HTTP client; human output as Rich tables, ``--json`` for scripts."""
