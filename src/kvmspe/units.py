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

import re

__all__ = ["ACCEPTED", "U64_MAX", "UNITS", "format_size", "parse_size", "parse_uint"]

U64_MAX = (1 << 64) - 1

#: Multiplier of each unit letter (binary).
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

#: What the parser accepts, for error messages and help texts.
ACCEPTED = "accepted: 4096, 0x1000, 4K, 4KiB, 2M, 1G, 1T (binary units: K = 1024)"

_DECIMAL = re.compile(r"([0-9]+)\s*([A-Za-z]*)")
_HEX = re.compile(r"0[xX]([0-9A-Fa-f]+)")
_SUFFIX = re.compile(r"([KMGTkmgt])(?:[iI]?[bB])?|[bB]?")
# More decimal digits than 2**64 - 1 has: too large, whatever they are (and
# int() refuses very long digit strings with a message of its own).
_U64_DIGITS = len(str(U64_MAX))


def _show(text: str) -> str:
    """``text`` quoted for a message, shortened so the message stays one short line."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _unit(suffix: str, text: str) -> int:
    m = _SUFFIX.fullmatch(suffix)
    if m is None:
        raise ValueError(f"invalid size {_show(text)}: unknown unit {_show(suffix)}; {ACCEPTED}")
    return UNITS[(m.group(1) or "").upper()]


def _too_large(text: str) -> ValueError:
    return ValueError(f"invalid size {_show(text)}: larger than 2**64 - 1 (a u64); {ACCEPTED}")


def parse_size(text: str) -> int:
    """The number of bytes ``text`` names, 0..2**64-1.

    Raises :class:`ValueError` (and nothing else) for any other string.
    """
    if not isinstance(text, str):
        raise ValueError(f"invalid size {text!r}: not a string; {ACCEPTED}")
    s = text.strip()
    if not s:
        raise ValueError(f"invalid size {_show(text)}: empty; {ACCEPTED}")
    if s[0] in "+-":
        what = "negative sizes are not accepted" if s[0] == "-" else "a sign is not accepted"
        raise ValueError(f"invalid size {_show(text)}: {what}; {ACCEPTED}")
    hexm = _HEX.fullmatch(s)
    if hexm is not None:
        value = int(hexm.group(1), 16)
    else:
        decm = _DECIMAL.fullmatch(s)
        if decm is None:
            if re.fullmatch(r"[0-9]*[.,][0-9]*\s*[A-Za-z]*", s) and any(c.isdigit() for c in s):
                why = "fractions are not accepted (sizes are exact)"
            elif s[:2].lower() == "0x":
                why = "a hexadecimal size takes only hex digits and no unit"
            else:
                why = "not a size"
            raise ValueError(f"invalid size {_show(text)}: {why}; {ACCEPTED}")
        unit = _unit(decm.group(2), text)
        if len(decm.group(1).lstrip("0")) > _U64_DIGITS:
            raise _too_large(text)
        value = int(decm.group(1)) * unit
    if value > U64_MAX:
        raise _too_large(text)
    return value


def parse_uint(text: str, *, what: str = "value", maximum: int = U64_MAX) -> int:
    """A plain unsigned integer, decimal or ``0x`` hex, 0..``maximum`` (no units).

    For register values, field values and counts. Raises :class:`ValueError`.
    """
    if not isinstance(text, str):
        raise ValueError(f"invalid {what} {text!r}: not a string")
    s = text.strip()
    m = re.fullmatch(r"0[xX]([0-9A-Fa-f]+)|([0-9]+)", s)
    if m is None:
        if s[:1] == "-":
            why = "negative values are not accepted"
        else:
            why = "not an unsigned integer"
        raise ValueError(f"invalid {what} {_show(text)}: {why}; accepted: decimal or 0x hex, 0..{maximum:#x}")
    digits = m.group(2)
    if digits is not None and len(digits.lstrip("0")) > _U64_DIGITS:
        value = U64_MAX + 1
    else:
        value = int(m.group(1), 16) if digits is None else int(digits)
    if value > maximum:
        raise ValueError(f"invalid {what} {_show(text)}: larger than {maximum:#x}; accepted: 0..{maximum:#x}")
    return value


def format_size(nbytes: int) -> str:
    """``nbytes`` in the largest binary unit that divides it exactly: ``4 MiB``, ``4097 B``.

    The result is exact, so :func:`parse_size` reads it back to the same number.
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"size {nbytes!r} is not a non-negative integer")
    for letter in "TGMK":
        unit = UNITS[letter]
        if nbytes and nbytes % unit == 0:
            return f"{nbytes // unit} {letter}iB"
    return f"{nbytes} B"
