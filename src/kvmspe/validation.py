"""Checking integer arguments: one rule, one message shape, used by every module.

Library functions take plain ``int`` values for sizes, counts, indices and
kernel numbers. :func:`check_int` accepts exactly that: an ``int`` (not a
``bool``, which is an ``int`` subclass by accident of history; not a
``float``, ``Decimal`` or ``str``, which would be silently truncated or
misread) inside an inclusive range. Anything else raises
:class:`~kvmspe.errors.InvalidArgumentError`, a ``ValueError`` whose one-line
message names the argument, the value and what is accepted.
"""

from __future__ import annotations

from .errors import InvalidArgumentError

# typing.TYPE_CHECKING without importing typing: this module is on the codec's fast path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeGuard

__all__ = ["U32_MAX", "U64_MAX", "check_int", "describe_range", "is_int"]

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1


def is_int(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an ``int`` and not a ``bool`` (an ``int`` subclass by accident of history).

    For checks whose error is not :func:`check_int`'s (a kernel errno, a register error).
    """
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe_range(lo: int | None, hi: int | None) -> str:
    """``"0..4095"``, ``">= 1"`` or ``"any"``: the accepted range, as messages say it."""
    if lo is not None and hi is not None:
        if hi > 1 << 20:
            return f"{lo}..{hi:#x}" if lo < 1 << 20 else f"{lo:#x}..{hi:#x}"
        return f"{lo}..{hi}"
    if lo is not None:
        return f">= {lo}"
    if hi is not None:
        return f"<= {hi}"
    return "any"


def check_int(name: str, value: object, lo: int | None = 0, hi: int | None = None) -> int:
    """``value`` when it is an ``int`` (not ``bool``) with ``lo <= value <= hi``.

    ``None`` for a bound means unbounded on that side. Raises
    :class:`InvalidArgumentError` otherwise, and never anything else.
    """
    if type(value) is not int:
        if not is_int(value):
            raise InvalidArgumentError(
                f"{name} must be an integer {describe_range(lo, hi)}, got {_show(value)}"
                f" ({type(value).__name__}); accepted: int only, not bool, float or str"
            )
        value = int(value)  # an int subclass (e.g. IntEnum): its plain value
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise InvalidArgumentError(
            f"{name} {_show(value)} is out of range; accepted: {describe_range(lo, hi)}"
        )
    return value
