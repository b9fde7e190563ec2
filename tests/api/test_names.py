"""Names over HTTP are the domain's names: letters and digits of any script, and - _ . :

The request schemas state the rule as ``^[\\p{L}\\p{N}_.:-]+$`` (pydantic checks it with its own Unicode
tables); the domain's validate_name takes ``str.isalnum()``. The two agree on every character the server's
Python knows; a character only a newer Unicode assigns may pass the schema and is then refused by the domain,
with the same code. Objects with such names, which the API always accepted, stay reachable.
"""

from __future__ import annotations

import sys
import unicodedata
from urllib.parse import quote

from pydantic import TypeAdapter, ValidationError

from tenure.api.fields import Name
from tenure.domain.errors import InvalidInput
from tenure.domain.names import validate_name
from tests.conftest import Api


def _schema_takes(adapter: TypeAdapter, c: str) -> bool:
    try:
        adapter.validate_python(c)
        return True
    except ValidationError:
        return False


def _domain_takes(c: str) -> bool:
    try:
        validate_name(c)
        return True
    except InvalidInput:
        return False


def test_the_schemas_names_are_the_domains() -> None:
    adapter = TypeAdapter(Name)
    differ = [c for c in map(chr, range(sys.maxunicode + 1))
              if not 0xD800 <= ord(c) < 0xE000 and _schema_takes(adapter, c) != _domain_takes(c)]
    # Only characters this Python's Unicode does not assign (a newer Unicode made them letters or digits).
    assert all(unicodedata.category(c) == "Cn" for c in differ), [hex(ord(c)) for c in differ[:20]]


def test_unicode_names_are_served(api: Api) -> None:
    assert api.post("/v1/pools", json={"name": "réseau-東京", "ranges": [[1, 10]], "projects": ["blå"]}).status_code == 201
    pool = quote("réseau-東京")
    assert api.get(f"/v1/pools/{pool}").json()["name"] == "réseau-東京"
    claim = api.post(f"/v1/pools/{pool}/claims", json={"key": "k", "project": "blå", "host": "hôte-١"})
    assert claim.status_code == 201, claim.text
    assert claim.json()["project"] == "blå"
    assert api.request("PUT", "/v1/limits/blå", json={"share": "10%"}).status_code == 200
    bad = api.post("/v1/pools", json={"name": "a b", "ranges": [[1, 2]]})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_name"
