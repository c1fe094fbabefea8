"""Size parsing and formatting: every accepted form, every refusal, and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvmspe.units import U64_MAX, format_size, parse_size, parse_uint


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        ("0x1000", 4096),
        ("0X1000", 4096),
        ("4K", 4096),
        ("4k", 4096),
        ("4KiB", 4096),
        ("4kib", 4096),
        ("4KB", 4096),
        ("4096B", 4096),
        ("2M", 2 << 20),
        ("1G", 1 << 30),
        ("1T", 1 << 40),
        ("4 MiB", 4 << 20),
        ("0", 0),
        ("0x1B", 0x1B),
        (str(U64_MAX), U64_MAX),
        ("0xffffffffffffffff", U64_MAX),
        ("16777215T", 16777215 << 40),
    ],
)
def test_accepted_forms(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("-4096", "negative"),
        ("-4K", "negative"),
        ("+4K", "sign"),
        ("18446744073709551616", "larger than 2**64 - 1"),
        ("0x10000000000000000", "larger than 2**64 - 1"),
        ("16777216T", "larger than 2**64 - 1"),
        ("9" * 5000, "larger than 2**64 - 1"),
        ("1.5M", "fractions"),
        ("0.5", "fractions"),
        ("4X", "unknown unit 'X'"),
        ("4P", "unknown unit 'P'"),
        ("4iB", "unknown unit"),
        ("4KK", "unknown unit"),
        ("0x10K", "hexadecimal"),
        ("lots", "not a size"),
        ("", "empty"),
        ("   ", "empty"),
    ],
)
def test_refused_with_reason_and_accepted_forms(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(text)
    message = str(info.value)
    assert reason in message
    assert "accepted: 4096, 0x1000, 4K" in message
    assert "\n" not in message
    assert len(message) < 200


def test_format_size_picks_the_largest_exact_unit() -> None:
    assert format_size(0) == "0 B"
    assert format_size(4097) == "4097 B"
    assert format_size(4096) == "4 KiB"
    assert format_size(4 << 20) == "4 MiB"
    assert format_size((4 << 20) + 8192) == "4104 KiB"
    assert format_size(1023 << 42) == "4092 TiB"
    with pytest.raises(ValueError):
        format_size(-1)


def test_parse_uint() -> None:
    assert parse_uint("0x3fff", maximum=0x3FFF) == 0x3FFF
    assert parse_uint("17") == 17
    for bad in ("0x4000", "-1", "4K", "", "1" * 30):
        with pytest.raises(ValueError, match="accepted"):
            parse_uint(bad, maximum=0x3FFF)


@given(st.text())
def test_random_strings_raise_only_value_error(text: str) -> None:
    try:
        value = parse_size(text)
    except ValueError as exc:
        assert "\n" not in str(exc)
        return
    assert 0 <= value <= U64_MAX
    assert parse_size(format_size(value)) == value


@given(st.from_regex(r"\A\s*(0x[0-9a-fA-F]{1,17}|[0-9]{1,21}\s*([KMGTkmgt]([iI]?[bB])?|[bB])?)\s*\Z"))
def test_well_formed_strings_round_trip(text: str) -> None:
    try:
        value = parse_size(text)
    except ValueError as exc:
        assert "larger than 2**64 - 1" in str(exc)
        return
    assert parse_size(format_size(value)) == value


@given(st.integers(min_value=0, max_value=U64_MAX))
def test_every_u64_round_trips(value: int) -> None:
    assert parse_size(format_size(value)) == value
    assert parse_size(str(value)) == value
    assert parse_size(hex(value)) == value
