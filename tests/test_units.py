"""Size parsing and formatting: every accepted form, every refusal, and round trips."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
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


def test_leading_zeros_do_not_count_as_digits() -> None:
    # int() refuses more than 4300 digits; zeros in front add nothing to the value.
    assert parse_size("0" * 5000 + "1K") == 1024
    assert parse_uint("0" * 5000 + "7") == 7
    with pytest.raises(ValueError, match="larger than 2"):
        parse_size("0" * 5000 + "1" * 21)


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


# --- the grammar as regular expressions: an oracle for the hand-written scanner ---------

_ORACLE_HEX = r"0[xX]([0-9A-Fa-f]+)"
_ORACLE_DECIMAL = r"([0-9]+)\s*([A-Za-z]*)"
_ORACLE_UNIT = r"([KMGTkmgt])(?:[iI]?[bB])?|[bB]?"
_ORACLE_FRACTION = r"[0-9]*[.,][0-9]*\s*[A-Za-z]*"


def _oracle_size(text: str) -> int | str:
    """What parse_size must answer for ``text``: the value, or the reason it gives."""
    s = text.strip()
    if not s:
        return "empty"
    if s[0] in "+-":
        return "negative sizes are not accepted" if s[0] == "-" else "a sign is not accepted"
    hexm = re.fullmatch(_ORACLE_HEX, s)
    if hexm:
        value = int(hexm.group(1), 16)
    else:
        decm = re.fullmatch(_ORACLE_DECIMAL, s)
        if decm is None:
            if re.fullmatch(_ORACLE_FRACTION, s) and any(c.isdigit() for c in s):
                if "," in s:
                    return "commas are not accepted"
                return "fractions are not accepted (sizes are exact)"
            if s[:2].lower() == "0x":
                return "a hexadecimal size takes only hex digits and no unit"
            return "not a size"
        unit = re.fullmatch(_ORACLE_UNIT, decm.group(2))
        if unit is None:
            return "unknown unit"
        shift = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[(unit.group(1) or "").upper()]
        value = int(decm.group(1).lstrip("0") or "0") << shift
    return value if value <= U64_MAX else "larger than 2**64 - 1"


# Strings made of pieces from every edge of the grammar: digits, hex prefixes and
# letters, unit letters and tails, separators, signs, ASCII and non-ASCII spaces,
# a non-ASCII digit and letter, and runs of digits long enough to overflow a u64.
_PIECES = [
    "0",
    "1",
    "9",
    "00",
    "0x",
    "0X",
    "x",
    "a",
    "F",
    "K",
    "k",
    "M",
    "g",
    "T",
    "i",
    "I",
    "B",
    "b",
    "iB",
    "P",
    ".",
    ",",
    "+",
    "-",
    " ",
    "\t",
    "\u00a0",
    "\u2003",
    "\u0661",
    "\u00e9",
    "18446744073709551615",
    "99999999999999999999",
]
_EDGY = st.lists(st.sampled_from(_PIECES), max_size=6).map("".join)


@settings(max_examples=400)
@given(_EDGY)
def test_parse_size_follows_the_grammar(text: str) -> None:
    expected = _oracle_size(text)
    try:
        value = parse_size(text)
    except ValueError as exc:
        assert isinstance(expected, str), (text, str(exc))
        assert expected in str(exc)
        return
    assert value == expected


@settings(max_examples=300)
@given(_EDGY)
def test_parse_uint_follows_the_grammar(text: str) -> None:
    m = re.fullmatch(r"0[xX]([0-9A-Fa-f]+)|([0-9]+)", text.strip())
    try:
        value = parse_uint(text)
    except ValueError as exc:
        if m is None:
            assert "negative" in str(exc) or "not an unsigned integer" in str(exc)
        else:
            assert "larger than" in str(exc)
        return
    assert m is not None
    assert value == (int(m.group(1), 16) if m.group(2) is None else int(m.group(2)))
