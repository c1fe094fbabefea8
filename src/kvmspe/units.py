"""Byte sizes as people type them, and back: ``4096``, ``0x1000``, ``4K``, ``4KiB``.

Units are binary (K = 1024, M = 1024**2, G = 1024**3, T = 1024**4), case
insensitive, with an optional ``iB`` or ``B`` after the letter (``4k``,
``4KB``, ``4KiB`` are all 4096); a plain number may end in ``B``. A
hexadecimal number (``0x...``) takes no unit, since ``B`` is a hex digit.
Anything else (a sign, a fraction, an unknown unit, a value past 2**64 - 1)
is refused with a :class:`ValueError` whose one-line message says what was
wrong and what is accepted. Nothing is rounded: SPE buffer sizes must be
exact, so ``1.5M`` is refused rather than guessed.
"""

from __future__ import annotations

from .errors import InvalidArgumentError
from .validation import U64_MAX, is_int

__all__ = [
    "ACCEPTED",
    "U64_MAX",
    "UNITS",
    "format_limit",
    "format_size",
    "format_size_hex",
    "parse_size",
    "parse_uint",
]


#: Multiplier of each unit letter (binary).
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

#: What the parser accepts, for error messages and help texts.
ACCEPTED = "accepted: 4096, 0x1000, 4K, 4KiB, 2M, 1G, 1T (binary units: K = 1024)"

# The grammar is scanned with str methods rather than regular expressions:
# the command line parses a size at every start, and importing ``re`` would
# cost more than the rest of the codec path. Digits and letters are ASCII
# only; spaces are whatever str.isspace() calls a space (as str.strip() does).
_DIGITS = "0123456789"
_HEX_DIGITS = "0123456789abcdefABCDEF"
_UNIT_LETTERS = "KMGTkmgt"
# More decimal digits than 2**64 - 1 has: too large, whatever they are (and
# int() refuses very long digit strings with a message of its own).
_U64_DIGITS = len(str(U64_MAX))


def _hex_digits(s: str) -> str | None:
    """The digits of ``s`` when it is ``0x`` or ``0X`` and one or more hex digits, else None."""
    digits = s[2:]
    if s[:2] in ("0x", "0X") and digits and not digits.lstrip(_HEX_DIGITS):
        return digits
    return None


def _letters(s: str) -> bool:
    """Whether ``s`` is empty or ASCII letters only."""
    return not s or (s.isascii() and s.isalpha())


def _decimal(s: str) -> tuple[str, str] | None:
    """``(digits, unit)`` when ``s`` is digits, optional spaces, optional letters, else None."""
    rest = s.lstrip(_DIGITS)
    digits = s[: len(s) - len(rest)]
    unit = rest.lstrip()
    if digits and _letters(unit):
        return digits, unit
    return None


def _fraction(s: str) -> bool:
    """Whether ``s`` looks like a size with a fraction: ``1.5M``, ``0,5``, ``.5 K``."""
    rest = s.lstrip(_DIGITS)
    if rest[:1] not in (".", ","):
        return False
    return _letters(rest[1:].lstrip(_DIGITS).lstrip()) and any(c.isdigit() for c in s)


def _int(digits: str) -> int:
    """The value of decimal ``digits``; leading zeros do not count towards int()'s digit limit."""
    return int(digits.lstrip("0") or "0")


def _show(text: str) -> str:
    """``text`` quoted for a message, shortened so the message stays one short line."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _unit(suffix: str, text: str) -> int:
    """Multiplier of a unit: empty or ``B``, else K, M, G or T with an optional ``B`` or ``iB``."""
    if suffix in ("", "b", "B"):
        return 1
    letter, tail = suffix[:1], suffix[1:]
    if letter in _UNIT_LETTERS and tail in ("", "b", "B", "ib", "iB", "Ib", "IB"):
        return UNITS[letter.upper()]
    raise InvalidArgumentError(f"invalid size {_show(text)}: unknown unit {_show(suffix)}; {ACCEPTED}")


def _too_large(text: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"invalid size {_show(text)}: larger than 2**64 - 1 (a u64); {ACCEPTED}")


def parse_size(text: str) -> int:
    """The number of bytes ``text`` names, 0..2**64-1.

    Raises :class:`ValueError` (and nothing else) for any other string.
    """
    if not isinstance(text, str):
        raise InvalidArgumentError(f"invalid size {text!r}: not a string; {ACCEPTED}")
    s = text.strip()
    if not s:
        raise InvalidArgumentError(f"invalid size {_show(text)}: empty; {ACCEPTED}")
    if s[0] in "+-":
        what = "negative sizes are not accepted" if s[0] == "-" else "a sign is not accepted"
        raise InvalidArgumentError(f"invalid size {_show(text)}: {what}; {ACCEPTED}")
    hex_digits = _hex_digits(s)
    if hex_digits is not None:
        value = int(hex_digits, 16)
    else:
        dec = _decimal(s)
        if dec is None:
            if _fraction(s) and "," in s:
                why = "commas are not accepted (no digit grouping or decimal comma: sizes are exact)"
            elif _fraction(s):
                why = "fractions are not accepted (sizes are exact)"
            elif s[:2].lower() == "0x":
                why = "a hexadecimal size takes only hex digits and no unit"
            else:
                why = "not a size"
            raise InvalidArgumentError(f"invalid size {_show(text)}: {why}; {ACCEPTED}")
        digits, suffix = dec
        unit = _unit(suffix, text)
        if len(digits.lstrip("0")) > _U64_DIGITS:
            raise _too_large(text)
        value = _int(digits) * unit
    if value > U64_MAX:
        raise _too_large(text)
    return value


def _range(minimum: int, maximum: int) -> str:
    """The accepted range as messages show it: decimal when small, else hex."""
    if maximum <= 4096:
        return f"{minimum}..{maximum}"
    return f"{minimum}..{maximum:#x}"


def parse_uint(text: str, *, what: str = "value", maximum: int = U64_MAX, minimum: int = 0) -> int:
    """A plain unsigned integer, decimal or ``0x`` hex, ``minimum..maximum`` (no units).

    For register values, field values and counts. Raises :class:`ValueError`
    whose message always states the same accepted range.
    """
    accepted = f"accepted: decimal or 0x hex, {_range(minimum, maximum)}"
    if not isinstance(text, str):
        raise InvalidArgumentError(f"invalid {what} {text!r}: not a string; {accepted}")
    s = text.strip()
    hex_digits = _hex_digits(s)
    decimal = s.isascii() and s.isdigit()
    if hex_digits is None and not decimal:
        if s[:1] == "-":
            why = "negative values are not accepted"
        else:
            why = "not an unsigned integer"
        raise InvalidArgumentError(f"invalid {what} {_show(text)}: {why}; {accepted}")
    if hex_digits is not None:
        value = int(hex_digits, 16)
    elif len(s.lstrip("0")) > _U64_DIGITS:
        value = U64_MAX + 1
    else:
        value = _int(s)
    if value > maximum:
        top = _range(minimum, maximum).partition("..")[2]
        raise InvalidArgumentError(f"invalid {what} {_show(text)}: larger than {top}; {accepted}")
    if value < minimum:
        raise InvalidArgumentError(f"invalid {what} {_show(text)}: smaller than {minimum}; {accepted}")
    return value


def format_size(nbytes: int) -> str:
    """``nbytes`` in the largest binary unit that divides it exactly: ``4 MiB``, ``4097 B``.

    The result is exact, so :func:`parse_size` reads it back to the same number.
    """
    if not is_int(nbytes) or nbytes < 0:
        raise InvalidArgumentError(f"size {nbytes!r} is not a non-negative integer")
    for letter in "TGMK":
        unit = UNITS[letter]
        if nbytes and nbytes % unit == 0:
            return f"{nbytes // unit} {letter}iB"
    return f"{nbytes} B"


def format_size_hex(n: int | None) -> str:
    """A size for people with its exact value: ``4 MiB (0x400000)``; None is ``none``."""
    if n is None:
        return "none"
    return f"{format_size(n)} ({n:#x})"


def format_limit(n: int | None) -> str:
    """A limit such as RLIMIT_MEMLOCK: None (no limit) is ``unlimited``."""
    return "unlimited" if n is None else format_size_hex(n)
