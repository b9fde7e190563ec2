"""The vocabulary of request fields: each rule the OpenAPI document states, with the error code it answers.

A field's type carries its rule (bounds, pattern, enum: pydantic checks them and the document shows them)
and, through :func:`coded`, the code of the domain rule it states: a value that breaks the rule is refused
with that code (``invalid_name``, ``invalid_rate``, ...) and a message saying what the rule is, as the
domain's own validator would refuse it. A value of the wrong JSON type, a missing member or an unknown one
is the request's shape, not a rule of the field: ``invalid_request`` (:mod:`tenure.api.errors`).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StrictInt, StrictStr, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError

from tenure.domain.names import MAX_KEY_LENGTH, MAX_NAME_LENGTH
from tenure.domain.reservation import MAX_LABELS

#: The codes :func:`coded` gives: a validation error with one of these types is the domain's refusal.
CODES: set[str] = set()

# Errors about the shape of the request rather than a field's rule: they stay invalid_request.
_SHAPE = {"missing", "extra_forbidden", "json_invalid", "union_tag_invalid", "union_tag_not_found",
          "model_type", "model_attributes_type", "dataclass_type", "none_required"}


def _shape(error: dict[str, Any]) -> bool:
    if error["type"] == "literal_error":  # the enums are of strings: another JSON type is the wrong type
        return not isinstance(error.get("input"), str)
    return error["type"] in _SHAPE or error["type"].endswith("_type")


def _given(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 48 else text[:45] + "..."


def rule(error: dict[str, Any], hint: str | None = None) -> str:
    """What a failed constraint asks for, in words (``must be at most 63, not 64``)."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "string_pattern_mismatch":
        said = f"must be {hint}" if hint else f"must match {ctx.get('pattern')}"
    elif kind == "string_too_short":
        n = ctx.get("min_length", 1)
        said = "must not be empty" if n == 1 else f"must be at least {n} characters"
    elif kind == "string_too_long":
        said = f"must be at most {ctx.get('max_length')} characters"
    elif kind == "string_unicode":
        said = "must be valid Unicode (no lone surrogates)"
    elif kind in ("too_short", "too_long"):
        n = ctx.get("min_length" if kind == "too_short" else "max_length")
        whole, part = ("an object", "entr") if ctx.get("field_type") == "Dictionary" else ("a list", "item")
        plural = ("y" if n == 1 else "ies") if part == "entr" else ("" if n == 1 else "s")
        said = f"must be {whole} of at {'least' if kind == 'too_short' else 'most'} {n} {part}{plural}"
    elif kind == "greater_than_equal":
        said = f"must be at least {ctx.get('ge')}"
    elif kind == "greater_than":
        said = f"must be more than {ctx.get('gt')}"
    elif kind == "less_than_equal":
        said = f"must be at most {ctx.get('le')}"
    elif kind == "less_than":
        said = f"must be less than {ctx.get('lt')}"
    elif kind == "multiple_of":
        said = f"must be a multiple of {ctx.get('multiple_of')}"
    elif kind == "literal_error":
        said = f"must be one of {ctx.get('expected')}"
    elif kind in CODES:  # an inner coded type's own words
        return str(error["msg"])
    else:
        said = str(error["msg"])
    if hint and kind != "string_pattern_mismatch" and kind not in ("string_unicode", "literal_error"):
        said = f"{said} ({hint})"
    if kind == "string_unicode":
        return said
    return f"{said}, not {_given(error.get('input'))}"


def coded(code: str, hint: str | None = None, **by_error: str) -> Any:
    """Refuse a value that breaks its type's rule with ``code`` (and the rule in words; ``hint`` names a
    pattern or a union's forms); ``by_error``: another code for one kind of failure (``greater_than=...``).
    Errors of nested values (a list's items, a dict's keys) keep their own."""
    CODES.add(code)
    CODES.update(by_error.values())

    def check(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            errors = exc.errors()
            # The value's own rule: not an item's or a key's (their types say), and not a union's other
            # forms that the value is not of (an int given for an int-or-string rate fails the string form).
            own = [e for e in errors if not _shape(e) and all(_tag(p) for p in e["loc"])]
            if not own:
                raise
            raise PydanticCustomError(by_error.get(own[0]["type"], code), "{message}",
                                      {"message": rule(own[0], hint)}) from None

    return WrapValidator(check)


def _tag(part: Any) -> bool:
    """A location part naming one form of a union (``constrained-int``, ``function-before[...]``)."""
    return isinstance(part, str) and part != "[key]"


def _whole(v: object) -> object:
    return int(v) if isinstance(v, float) and v.is_integer() else v


# An integer, as JSON Schema means it: 5.0 is 5 (JSON does not tell them apart); "5" and true are not.
Int = Annotated[StrictInt, BeforeValidator(_whole)]


def int_in(ge: int | None = None, le: int | None = None, lt: int | None = None) -> Any:
    """Int within bounds (the bounds inside the validator, so that the document shows them)."""
    return Annotated[StrictInt, Field(ge=ge, le=le, lt=lt), BeforeValidator(_whole)]


# The rules of domain/names.py as the document states them. A name's letters and digits are those of any
# script: Unicode's L and N categories, which are what str.isalnum() takes (validate_name).
NAME_PATTERN = r"^[\p{L}\p{N}_.:-]+$"
NAME_HINT = "letters and digits (of any script) and - _ . :"
NAME_RULE = Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN,
                  description=f"1 to {MAX_NAME_LENGTH} {NAME_HINT}")
Name = Annotated[StrictStr, NAME_RULE, coded("invalid_name", NAME_HINT)]
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL, so no store takes it


def text(code: str, max_length: int, min_length: int = 0) -> Any:
    """Free text of at most ``max_length`` characters, without NUL (domain/names.py validate_text)."""
    return Annotated[StrictStr, Field(min_length=min_length, max_length=max_length, pattern=NO_NUL),
                     coded(code, "text without the NUL character")]


Key = text("invalid_key", MAX_KEY_LENGTH, min_length=1)
# Labels of reservations and instances (domain/reservation.py validate_labels): names to short text.
Labels = Annotated[dict[Name, text("invalid_labels", 256)], Field(max_length=MAX_LABELS), coded("invalid_labels")]


# JSON Schema for request models whose members depend on each other (api/reservations.py, api/console.py).
def present(name: str) -> dict[str, Any]:
    """JSON Schema: the member is given, and not null (the server takes null as absent)."""
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


def absent(name: str) -> dict[str, Any]:
    return {"properties": {name: {"type": "null"}}}


def merge(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"properties": {}}
    for p in parts:
        out["properties"].update(p.get("properties", {}))
        out.setdefault("required", []).extend(p.get("required", []))
    return out
