"""Names and free text: the rules every name that reaches a store or a URL must keep.

Names (pools, projects, hosts, nodes, links, types) are short, printable and
slash-free, because they appear in URLs; claim keys are any Unicode text of
bounded length; free text (descriptions, versions) is bounded. All of them
must be storable by every backend alike: no NUL (PostgreSQL's text cannot hold
it) and no lone surrogates (not UTF-8). Each validator returns its input, or
raises :class:`~tenure.domain.errors.InvalidInput` saying what is wrong.
"""

from __future__ import annotations

from tenure.domain.errors import InvalidInput

MAX_KEY_LENGTH = 256
MAX_NAME_LENGTH = 128


def validate_key(key: object) -> str:
    """A claim key: 1..256 Unicode characters that any store can hold."""
    if not isinstance(key, str):
        raise InvalidInput("key must be a string", code="invalid_key")
    if not key:
        raise InvalidInput("key must not be empty", code="invalid_key")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(
            f"key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}", code="invalid_key"
        )
    if "\x00" in key:
        # PostgreSQL text cannot hold NUL; refuse it everywhere so both stores agree.
        raise InvalidInput("key must not contain the NUL character", code="invalid_key")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("key must be valid Unicode (no lone surrogates)", code="invalid_key") from None
    return key


def validate_text(text: object, *, what: str, max_length: int = 1024, code: str = "invalid_text") -> str:
    """Free text (descriptions): bounded, and storable by every backend (no NUL, no lone surrogates)."""
    if not isinstance(text, str) or len(text) > max_length:
        raise InvalidInput(f"{what} must be a string of at most {max_length} characters", code=code)
    if "\x00" in text:
        raise InvalidInput(f"{what} must not contain the NUL character", code=code)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} must be valid Unicode (no lone surrogates)", code=code) from None
    return text


def validate_name(name: object, *, what: str = "pool name") -> str:
    """Names of pools and projects: short, printable, no slash (they appear in URLs)."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{what} must be a non-empty string", code="invalid_name")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"{what} is longer than {MAX_NAME_LENGTH} characters", code="invalid_name")
    if not all(c.isalnum() or c in "-_.:" for c in name):
        raise InvalidInput(
            f"{what} {name!r} may contain only letters, digits and - _ . :", code="invalid_name"
        )
    return name
