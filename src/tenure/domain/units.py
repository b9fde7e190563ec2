"""Rates, shares and instants as users write them, turned into exact integers.

Reservations are arithmetic on integers only: a rate is whole bit/s, an
instant is whole microseconds since the Unix epoch (UTC). Floats never enter
the ledger, so ``1.5G`` booked twice is exactly ``3G`` and a window ending at
the instant another starts never overlaps it (DESIGN.md invariant 5).

Rates take numbers (bit/s) or strings with an SI suffix (``100M``, ``1.5G``,
``10Gbps``, ``2.5 Gbit/s``). Shares take ``0.1`` or ``"10%"`` and are kept as
exact fractions. Instants take ISO 8601 with a zone (``Z`` or an offset; a
time without a zone is refused rather than guessed), Unix seconds, ``now``, or
``now`` plus a duration (``+30m``, ``+1h30m``, ``+2d``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation, localcontext
from fractions import Fraction

from tenure.domain.errors import InvalidInput

MAX_RATE = 10**15  # 1 Pbit/s: more than any link carries; larger numbers are typos
_SI = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKMGTP]?)(?:bps|bit/s|b/s|b)?\s*$")
_DURATION_RE = re.compile(r"(\d{1,12})([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
US = 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_rate(value: object, *, what: str = "rate", allow_zero: bool = False) -> int:
    """Whole bit/s from a number or a string like ``100M``; refuses zero (unless allowed), negatives, absurd rates."""
    if isinstance(value, bool):
        raise InvalidInput(f"{what} must be a number of bit/s or a string like '100M', not a boolean",
                           code="invalid_rate")
    if isinstance(value, int):
        n = Decimal(value)
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidInput(f"{what} must be a finite number", code="invalid_rate")
        n = Decimal(repr(value))
    elif isinstance(value, str):
        m = _RATE_RE.match(value)
        if not m:
            raise InvalidInput(f"{what} {value!r} is not a rate; use bit/s or a suffix: '100M', '1.5G', '10Gbps'",
                               code="invalid_rate")
        try:
            mantissa = Decimal(m.group(1))
            with localcontext() as ctx:  # exact: the default 28 digits would round a long mantissa to a whole rate
                ctx.prec = len(m.group(1)) + 20
                n = mantissa * _SI[m.group(2)]
        except InvalidOperation:  # pragma: no cover - the regex admits only plain decimals
            raise InvalidInput(f"{what} {value!r} is not a rate", code="invalid_rate") from None
    else:
        raise InvalidInput(f"{what} must be a number of bit/s or a string like '100M'", code="invalid_rate")
    if n < 0:
        raise InvalidInput(f"{what} must not be negative", code="invalid_rate")
    if n == 0 and not allow_zero:
        raise InvalidInput(f"{what} must be more than 0 bit/s", code="invalid_rate")
    if n != n.to_integral_value():
        raise InvalidInput(f"{what} {value!r} is not a whole number of bit/s", code="invalid_rate")
    if n > MAX_RATE:
        raise InvalidInput(f"{what} {value!r} is over the limit of 1P bit/s", code="invalid_rate")
    return int(n)


def format_rate(bps: int) -> str:
    """``1500000000`` → ``1.5G``: the shortest exact SI spelling."""
    for suffix in ("P", "T", "G", "M", "K"):
        scale = _SI[suffix]
        if bps >= scale:
            q = Fraction(bps, scale)
            if q.denominator in (1, 2, 4, 5, 8, 10, 20, 25, 50, 100, 1000):
                return f"{_plain(Decimal(q.numerator) / Decimal(q.denominator))}{suffix}"
    return str(bps)


def parse_share(value: object, *, what: str) -> Fraction:
    """A share of capacity in [0, 1): ``0.1`` or ``"10%"``, kept exact."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInput(f"{what} must be a number in [0, 1) or a percentage like '10%'", code="invalid_share")
    try:
        if isinstance(value, str):
            text = value.strip()
            share = Fraction(Decimal(text[:-1])) / 100 if text.endswith("%") else Fraction(Decimal(text))
        else:
            share = Fraction(Decimal(repr(value)) if isinstance(value, float) else Decimal(value))
    except (InvalidOperation, ValueError, OverflowError):
        raise InvalidInput(f"{what} {value!r} is not a number or a percentage", code="invalid_share") from None
    if not 0 <= share < 1:
        raise InvalidInput(f"{what} must be at least 0 and less than 1 (100%), got {value!r}", code="invalid_share")
    return share


def share_text(share: Fraction) -> str:
    """A share as an exact percentage: shares come from decimals, so their expansion terminates."""
    return _plain(_exact(share * 100)) + "%"


def _exact(q: Fraction) -> Decimal:
    d, twos, fives = q.denominator, 0, 0
    while d % 2 == 0:
        d, twos = d // 2, twos + 1
    while d % 5 == 0:
        d, fives = d // 5, fives + 1
    if d != 1:  # not a terminating decimal (never made by parse_share): 28 significant digits
        return Decimal(q.numerator) / Decimal(q.denominator)
    places = max(twos, fives)
    return Decimal(f"{q.numerator * 10**places // q.denominator}E-{places}")  # from a string: exact


def _plain(d: Decimal) -> str:
    """A decimal without exponent or trailing fractional zeros: 100, 1.5, 12.25 (never "1" for 100)."""
    text = f"{d:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def to_us(dt: datetime) -> int:
    """Microseconds since the epoch, exactly (no float on the way)."""
    delta = dt - EPOCH
    return (delta.days * 86400 + delta.seconds) * US + delta.microseconds


# The instants every answer can print (ISO 8601 has years 1 to 9999), with a day to spare for time zones.
FIRST_INSTANT = to_us(datetime(1, 1, 2, tzinfo=UTC))
LAST_INSTANT = to_us(datetime(9999, 12, 30, tzinfo=UTC))


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def iso(us: int) -> str:
    """An instant as ISO 8601 UTC with a ``Z`` (microseconds only when there are any)."""
    dt = from_us(us)
    # The year by hand: strftime's %Y does not pad years before 1000 to four digits (glibc), and ISO 8601 must.
    text = f"{dt.year:04d}" + dt.strftime("-%m-%dT%H:%M:%S") + (f".{dt.microsecond:06d}" if dt.microsecond else "")
    return text + "Z"


def parse_duration(text: str) -> int:
    """``30m``, ``1h30m``, ``2d`` → seconds."""
    t = text.strip()
    pos, total = 0, 0
    for m in _DURATION_RE.finditer(t):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(t) or not t:
        raise InvalidInput(f"{text!r} is not a duration; use e.g. 30m, 1h30m, 2d", code="invalid_time")
    return total


def parse_instant(value: object, *, now: int, what: str = "time") -> int:
    """An instant in µs since the epoch from ISO 8601 (with a zone), Unix seconds, ``now`` or ``+30m``."""
    return _in_range(_parse_instant(value, now=now, what=what), value, what)


def _in_range(us: int, value: object, what: str) -> int:
    # Every instant must be printable as ISO 8601 (years 1 to 9999) in answers and error messages.
    if not FIRST_INSTANT <= us <= LAST_INSTANT:
        raise InvalidInput(f"{what} {value!r} is outside the years 1 to 9999", code="invalid_time")
    return us


def _parse_instant(value: object, *, now: int, what: str) -> int:
    if isinstance(value, bool):
        raise InvalidInput(f"{what} must be ISO 8601, Unix seconds, 'now' or '+30m'", code="invalid_time")
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")) or abs(value) > 10**12:
            raise InvalidInput(f"{what} {value!r} is not a Unix time in seconds", code="invalid_time")
        return int(Decimal(repr(value) if isinstance(value, float) else value) * US)
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be ISO 8601, Unix seconds, 'now' or '+30m'", code="invalid_time")
    text = value.strip()
    if text == "now":
        return now
    if text.startswith("+"):
        seconds = parse_duration(text[1:])
        if seconds > 10**11:
            raise InvalidInput(f"{what} {value!r} is too far ahead", code="invalid_time")
        return now + seconds * US
    try:
        dt = datetime.fromisoformat(text.replace("z", "Z"))
        if dt.tzinfo is None:
            raise InvalidInput(f"{what} {value!r} has no time zone; add Z for UTC or an offset like +01:00",
                               code="invalid_time")
        return to_us(dt.astimezone(UTC))
    except (ValueError, OverflowError):  # not ISO 8601, or a zone offset that leaves years 1..9999
        raise InvalidInput(f"{what} {value!r} is not ISO 8601 (e.g. 2026-12-01T10:00:00Z), 'now' or '+30m'",
                           code="invalid_time") from None
