"""Units: rates as whole bit/s, shares as exact fractions, instants as whole µs since the epoch.

Everything a user writes is turned into an exact integer (or an exact
``Fraction``) here, before it reaches a ledger, so the checks are about
exactness as much as about syntax: ``1.5G`` is 1 500 000 000 and not a float
near it, ``0.1`` as a share is one tenth and not the binary number nearest to
it, and an instant is microseconds with nothing rounded away. The round trips
(``format_rate``/``parse_rate``, ``share_text``/``parse_share``,
``iso``/``parse_instant``) are property tests; everything refused must be an
:class:`InvalidInput` with the field's code (``invalid_rate``,
``invalid_share``, ``invalid_time``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenure.domain.errors import InvalidInput
from tenure.domain.units import (
    FIRST_INSTANT,
    LAST_INSTANT,
    MAX_RATE,
    US,
    format_rate,
    from_us,
    iso,
    parse_duration,
    parse_instant,
    parse_rate,
    parse_share,
    share_text,
    to_us,
)

NOW = to_us(datetime(2026, 12, 1, 12, 0, tzinfo=UTC))


def refused(fn, *args, code: str, **kwargs) -> InvalidInput:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value.to_dict()
    return info.value


# -- rates ---------------------------------------------------------------------


def test_rate_suffixes_are_decimal_and_exact() -> None:
    assert parse_rate("100M") == 100_000_000
    assert parse_rate("1.5G") == 1_500_000_000
    assert parse_rate("1k") == parse_rate("1K") == 1_000
    assert parse_rate("2T") == 2 * 10**12
    assert parse_rate("1P") == MAX_RATE == 10**15
    assert parse_rate("0.5k") == 500
    assert parse_rate("1.5G") * 2 == parse_rate("3G")  # no float anywhere
    assert parse_rate("0.001G") == parse_rate("1M")
    assert all(type(parse_rate(v)) is int for v in ("1.5G", 1_000, 1e9))


@pytest.mark.parametrize(
    ("text", "bps"),
    [("10Gbps", 10 * 10**9), ("2.5 Gbit/s", 2_500_000_000), ("100Mb/s", 100 * 10**6), ("5 Mb", 5 * 10**6),
     (" 7 ", 7), ("1200", 1200), ("40 G", 40 * 10**9)],
)
def test_rate_spellings_with_units_and_spaces(text: str, bps: int) -> None:
    assert parse_rate(text) == bps


def test_rate_numbers_are_bits_per_second() -> None:
    assert parse_rate(1_000) == 1_000
    assert parse_rate(1e9) == 10**9
    assert parse_rate(1.0) == 1


@pytest.mark.parametrize("value", ["1.2345k", 2.5, "0.5", "1.0000001M", 0.1])
def test_rate_that_is_not_a_whole_number_of_bits_is_refused(value: object) -> None:
    err = refused(parse_rate, value, code="invalid_rate")
    assert "whole number" in err.message


def test_zero_rate_is_refused_unless_allowed() -> None:
    for zero in (0, "0", "0M", 0.0):
        refused(parse_rate, zero, code="invalid_rate")
        assert parse_rate(zero, allow_zero=True) == 0


@pytest.mark.parametrize("value", [-1, -0.5, "-1M", "-0"])
def test_negative_rate_is_refused(value: object) -> None:
    refused(parse_rate, value, code="invalid_rate")


@pytest.mark.parametrize("value", [MAX_RATE + 1, "1.001P", "2P", 1e16, "1000.001T"])
def test_rate_over_one_petabit_is_refused(value: object) -> None:
    refused(parse_rate, value, code="invalid_rate")


def test_rate_of_exactly_one_petabit_is_accepted() -> None:
    assert parse_rate(MAX_RATE) == parse_rate("1000T") == parse_rate(1e15) == MAX_RATE


@pytest.mark.parametrize(
    "value",
    [True, False, None, [], {}, "1e3", "1g", "M", "", "1.5.5G", "1M b", "1 000", "1,5G", "ten",
     float("nan"), float("inf"), float("-inf")],
)
def test_rate_refuses_what_is_not_a_rate(value: object) -> None:
    refused(parse_rate, value, code="invalid_rate")


def test_rate_refusal_names_the_field() -> None:
    err = refused(parse_rate, "fast", what="capacity_ab", code="invalid_rate")
    assert err.message.startswith("capacity_ab 'fast'")


@pytest.mark.xfail(
    strict=True,
    reason="bug: parse_rate multiplies by the SI scale in Decimal's default 28-digit context, so a rate with "
    "more significant digits is rounded to a whole number instead of being refused as not whole",
)
def test_rate_with_more_digits_than_decimal_precision_is_still_checked_exactly() -> None:
    refused(parse_rate, "0.1000000000000000000000000000001k", code="invalid_rate")  # 100.000...0001 bit/s


def test_format_rate_uses_the_largest_suffix_that_stays_exact() -> None:
    assert format_rate(1_500_000_000) == "1.5G"
    assert format_rate(100_000_000) == "100M"
    assert format_rate(12_500_000_000) == "12.5G"
    assert format_rate(10**15) == "1P"
    assert format_rate(2 * 10**12) == "2T"
    assert format_rate(1_000) == "1K"
    assert format_rate(1_250) == "1.25K"
    assert format_rate(1_001_000) == "1.001M"
    assert format_rate(1_234_000) == "1234K"  # 1.234M would need a thousandth of a thousandth
    assert format_rate(999) == "999"
    assert format_rate(1_234) == "1234"
    assert format_rate(0) == "0"


RATE_SPELLING = re.compile(r"^(0|[1-9]\d*)(\.\d{0,2}[1-9])?[KMGTP]?$")
RATES = st.one_of(
    st.integers(min_value=1, max_value=MAX_RATE),
    st.builds(lambda m, e: min(m * 10**e, MAX_RATE), st.integers(1, 99_999), st.integers(0, 13)),  # round ones
)


@settings(max_examples=200, deadline=None)
@given(RATES)
def test_format_rate_round_trips_through_parse_rate(bps: int) -> None:
    text = format_rate(bps)
    assert RATE_SPELLING.match(text), text  # plain decimal: no exponent, no trailing zeros, at most 3 places
    assert parse_rate(text) == bps


@settings(max_examples=200, deadline=None)
@given(
    whole=st.integers(min_value=0, max_value=999),
    places=st.text(alphabet="0123456789", max_size=3),
    suffix=st.sampled_from(["", "k", "K", "M", "G", "T"]),
    unit=st.sampled_from(["", "bps", "bit/s", "b/s", "b"]),
)
def test_rate_strings_are_exactly_their_decimal_value(whole: int, places: str, suffix: str, unit: str) -> None:
    number = f"{whole}.{places}" if places else str(whole)
    exact = Decimal(number) * {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[suffix]
    text = f"{number}{suffix}{unit}"
    if exact == 0 or exact != exact.to_integral_value():
        refused(parse_rate, text, code="invalid_rate")
        return
    assert parse_rate(text) == int(exact)
    assert parse_rate(format_rate(int(exact))) == int(exact)


# -- shares --------------------------------------------------------------------


def test_share_accepts_fractions_and_percentages_exactly() -> None:
    assert parse_share(0.1, what="headroom") == Fraction(1, 10)  # one tenth, not the float nearest to it
    assert parse_share("0.1", what="headroom") == Fraction(1, 10)
    assert parse_share("10%", what="headroom") == Fraction(1, 10)
    assert parse_share("12.5%", what="headroom") == Fraction(1, 8)
    assert parse_share(" 10 % ", what="headroom") == Fraction(1, 10)
    assert parse_share("1e-3", what="headroom") == Fraction(1, 1000)
    assert parse_share(0, what="headroom") == parse_share("0%", what="headroom") == 0
    assert parse_share("99.99%", what="headroom") == Fraction(9999, 10000)
    assert isinstance(parse_share(0.1, what="headroom"), Fraction)


@pytest.mark.parametrize("value", [1, 1.0, "1", "100%", 1.5, "150%", "100.0%"])
def test_share_of_one_or_more_is_refused(value: object) -> None:
    err = refused(parse_share, value, what="headroom", code="invalid_share")
    assert "less than 1" in err.message


@pytest.mark.parametrize("value", [-0.1, "-1%", "-0.5"])
def test_negative_share_is_refused(value: object) -> None:
    refused(parse_share, value, what="headroom", code="invalid_share")


@pytest.mark.parametrize("value", [True, None, [], "abc", "nan", "inf", "%", "", "10%%", float("nan"), float("inf")])
def test_share_refuses_what_is_not_a_number(value: object) -> None:
    err = refused(parse_share, value, what="alarm", code="invalid_share")
    assert err.message.startswith("alarm")


def test_share_text_is_an_exact_percentage() -> None:
    assert share_text(Fraction(1, 8)) == "12.5%"
    assert share_text(Fraction(1, 10)) == "10%"
    assert share_text(Fraction(0)) == "0%"
    assert share_text(Fraction(1, 1000)) == "0.1%"
    assert share_text(Fraction(1)) == "100%"
    assert share_text(Fraction(1, 10**12)) == "0.0000000001%"


DECIMAL_SHARES = st.integers(min_value=0, max_value=12).flatmap(
    lambda k: st.builds(lambda n: Fraction(n, 10**k), st.integers(min_value=0, max_value=10**k - 1))
    if k else st.just(Fraction(0))
)


@settings(max_examples=200, deadline=None)
@given(DECIMAL_SHARES)
def test_share_text_round_trips_exactly(share: Fraction) -> None:
    text = share_text(share)
    assert text.endswith("%") and "e" not in text.lower()
    assert parse_share(text, what="share") == share
    decimal = Decimal(share.numerator) / Decimal(share.denominator)  # exact: the denominator is 10**k
    assert parse_share(str(decimal), what="share") == share
    assert parse_share(f"{decimal * 100}%", what="share") == share


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0, max_value=1, exclude_max=True))
def test_a_float_share_is_the_decimal_it_prints_as(value: float) -> None:
    assert parse_share(value, what="share") == Fraction(Decimal(repr(value)))


# -- instants ------------------------------------------------------------------


def test_instant_with_zone_is_microseconds_since_the_epoch() -> None:
    assert parse_instant("1970-01-01T00:00:00Z", now=NOW) == 0
    assert parse_instant("2026-12-01T12:00:00Z", now=0) == NOW
    assert parse_instant("2026-12-01T13:00:00+01:00", now=0) == NOW
    assert parse_instant("2026-12-01T07:00:00-05:00", now=0) == NOW
    assert parse_instant("2026-12-01t12:00:00z", now=0) == NOW
    assert parse_instant("1970-01-01T00:00:00.000001Z", now=NOW) == 1
    assert parse_instant("1969-12-31T23:59:59.999999Z", now=NOW) == -1


def test_instant_without_zone_is_refused() -> None:
    for text in ("2026-12-01T12:00:00", "2026-12-01", "2026-12-01 12:00"):
        err = refused(parse_instant, text, now=NOW, code="invalid_time")
        assert "time zone" in err.message


def test_now_and_relative_instants_come_from_the_given_now() -> None:
    assert parse_instant("now", now=NOW) == NOW
    assert parse_instant(" now ", now=NOW) == NOW
    assert parse_instant("+30m", now=NOW) == NOW + 30 * 60 * US
    assert parse_instant("+1h30m", now=NOW) == NOW + 90 * 60 * US
    assert parse_instant("+2d", now=NOW) == NOW + 2 * 86400 * US
    assert parse_instant("+0s", now=NOW) == NOW


def test_unix_seconds_are_exact() -> None:
    assert parse_instant(0, now=NOW) == 0
    assert parse_instant(1.5, now=NOW) == 1_500_000
    assert parse_instant(0.1, now=NOW) == 100_000  # not 100000.00000000001 rounded
    assert parse_instant(-1, now=NOW) == -US
    assert parse_instant(1_796_126_400, now=0) == NOW


@pytest.mark.parametrize(
    "value",
    [True, None, [], {}, "yesterday", "2026-13-01T00:00:00Z", "2026-12-01T10:00:00+25:00", "+", "+30x", "+30",
     "+-5m", "now+30m", "", float("nan"), float("inf"), 10**12 + 1, -(10**12) - 1],
)
def test_instant_refuses_what_is_not_a_time(value: object) -> None:
    refused(parse_instant, value, now=NOW, code="invalid_time")


def test_instant_too_far_ahead_is_refused() -> None:
    err = refused(parse_instant, f"+{10**11 + 1}s", now=NOW, code="invalid_time")
    assert "too far ahead" in err.message


def test_instants_outside_years_1_to_9999_are_refused() -> None:
    assert parse_instant("0001-01-02T00:00:00Z", now=NOW) == FIRST_INSTANT
    assert parse_instant("9999-12-30T00:00:00Z", now=NOW) == LAST_INSTANT
    for text in ("0001-01-01T00:00:00Z", "9999-12-31T00:00:00Z", "0001-01-01T00:30:00+01:00",
                 "9999-12-31T23:00:00-05:00"):
        refused(parse_instant, text, now=NOW, code="invalid_time")
    refused(parse_instant, "+2d", now=LAST_INSTANT - US, code="invalid_time")
    refused(parse_instant, -62_135_596_800, now=NOW, code="invalid_time")  # 0001-01-01T00:00:00Z


def test_instant_refusal_names_the_field() -> None:
    err = refused(parse_instant, "soon", now=NOW, what="start", code="invalid_time")
    assert err.message.startswith("start 'soon'")


def test_iso_prints_utc_with_z_and_microseconds_only_when_present() -> None:
    assert iso(0) == "1970-01-01T00:00:00Z"
    assert iso(1) == "1970-01-01T00:00:00.000001Z"
    assert iso(-1) == "1969-12-31T23:59:59.999999Z"
    assert iso(NOW) == "2026-12-01T12:00:00Z"
    assert iso(NOW + 500_000) == "2026-12-01T12:00:00.500000Z"
    assert iso(LAST_INSTANT) == "9999-12-30T00:00:00Z"


@pytest.mark.xfail(
    strict=True,
    reason="bug: iso() formats the year with strftime('%Y'), which glibc does not pad to four digits, so an "
    "accepted instant before the year 1000 prints as '1-01-02T00:00:00Z' (not ISO 8601, refused when read back)",
)
def test_iso_of_the_first_years_is_four_digit_iso_8601() -> None:
    assert iso(FIRST_INSTANT) == "0001-01-02T00:00:00Z"
    assert parse_instant(iso(FIRST_INSTANT), now=NOW) == FIRST_INSTANT


YEAR_1000 = to_us(datetime(1000, 1, 1, tzinfo=UTC))


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(min_value=YEAR_1000, max_value=LAST_INSTANT),
                 st.integers(min_value=-(10**13), max_value=10**13)))
def test_iso_round_trips_through_parse_instant(us: int) -> None:
    text = iso(us)
    assert text.endswith("Z")
    assert parse_instant(text, now=0) == us


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=FIRST_INSTANT, max_value=LAST_INSTANT))
def test_to_us_and_from_us_are_inverse(us: int) -> None:
    dt = from_us(us)
    assert dt.tzinfo is not None
    assert to_us(dt) == us


@settings(max_examples=200, deadline=None)
@given(
    dt=st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.just(UTC)),
    offset=st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1),
)
def test_any_zone_offset_names_the_same_instant(dt: datetime, offset: int) -> None:
    local = dt.astimezone(timezone(timedelta(minutes=offset)))
    assert parse_instant(local.isoformat(), now=0) == parse_instant(dt.isoformat(), now=0) == to_us(dt)


# -- durations -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("30m", 1800), ("1h30m", 5400), ("2d", 172800), ("1w", 604800), (" 2d ", 172800),
     ("1w2d3h4m5s", 604800 + 2 * 86400 + 3 * 3600 + 4 * 60 + 5), ("0s", 0)],
)
def test_duration_units(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", " ", "30", "m", "1h 30m", "-5m", "1.5h", "1H", "30x", "h1", "1h30"])
def test_duration_refuses_what_is_not_a_duration(text: str) -> None:
    err = refused(parse_duration, text, code="invalid_time")
    assert "not a duration" in err.message


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=10**4), st.sampled_from("smhdw")), min_size=1,
                max_size=5))
def test_duration_is_the_sum_of_its_parts(parts: list[tuple[int, str]]) -> None:
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse_duration(text) == sum(n * unit[u] for n, u in parts)
    assert parse_instant(f"+{text}", now=NOW) == NOW + parse_duration(text) * US
