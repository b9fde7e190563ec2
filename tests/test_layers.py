"""The layers of the package, judged by import-linter against the contracts in pyproject.toml.

Domain is pure; cli > agent > api > lrm > drivers | watch > services > store | client | instance_types >
domain | clock | config | logs | gcpolicy, imports pointing down only; no import cycle among the modules of
any package (docs/architecture.md draws the picture).
"""

from __future__ import annotations

from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_hold(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0, \
        "an import breaks a contract of pyproject.toml's [tool.importlinter]: see the report above"
