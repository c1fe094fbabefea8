"""The command line's argument types, defaults and usage error: what argparse and the
codec commands' fast path parse operands with, so both answer alike.

Imported on the fast path: no more than the package's light modules at module level.
"""

from __future__ import annotations

from ..errors import KvmspeError
from ..units import ACCEPTED, U64_MAX, parse_size, parse_uint

# typing.TYPE_CHECKING without importing typing; mypy treats any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any, TypeAlias

    #: A command's JSON document.
    Doc: TypeAlias = dict[str, Any]

__all__ = [
    "DEFAULT_IRQ",
    "SIZE_HELP",
    "Namespace",
    "UsageError",
    "argtype",
    "argtype_or_none",
    "argtype_threshold",
    "argtype_user",
    "parse_field",
    "parse_plan_size",
    "size",
    "uint",
    "uint_parser",
]

#: The default SPE interrupt: PPI 21, the INTID kvmtool and QEMU give the PMU's neighbour.
DEFAULT_IRQ = 21

SIZE_HELP = "a size in bytes: " + ACCEPTED.removeprefix("accepted: ")


class UsageError(KvmspeError, ValueError):
    """Bad input found after argument parsing (exit 2)."""


class Namespace:
    """A namespace with the attributes argparse would set: what the codec
    commands' fast path (:func:`kvmspe.cli._codec_args`) hands to a command function."""

    def __init__(self, **attrs: object) -> None:
        self.__dict__.update(attrs)

    if TYPE_CHECKING:
        # As on argparse.Namespace: any attribute, untyped.
        def __getattr__(self, name: str) -> Any: ...


if TYPE_CHECKING:
    #: What a command function gets: argparse's namespace, or the fast path's.
    Args: TypeAlias = argparse.Namespace | Namespace


def uint_parser(what: str, maximum: int = U64_MAX, minimum: int = 0) -> Callable[[str], int]:
    """A parser of unsigned integers ``minimum..maximum`` named ``what``; raises ValueError."""

    def parse(text: str) -> int:
        return parse_uint(text, what=what, maximum=maximum, minimum=minimum)

    parse.__name__ = what
    return parse


def argtype(parse: Callable[[str], int]) -> Callable[[str], int]:
    """``parse`` as an argparse type: its ValueError becomes a one-line argparse error."""

    def convert(text: str) -> int:
        try:
            return parse(text)
        except ValueError as exc:
            import argparse

            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def argtype_or_none(parse: Callable[[str], int | None]) -> Callable[[str], int | None]:
    """As :func:`argtype`, for a parser that may answer None."""

    def convert(text: str) -> int | None:
        try:
            return parse(text)
        except ValueError as exc:
            import argparse

            raise argparse.ArgumentTypeError(str(exc).replace(ACCEPTED, ACCEPTED + "; or max")) from None

    convert.__name__ = parse.__name__
    return convert


def uint(what: str, maximum: int = U64_MAX, minimum: int = 0) -> Callable[[str], int]:
    """An argparse type of unsigned integers ``minimum..maximum`` named ``what``."""
    return argtype(uint_parser(what, maximum, minimum))


#: A size operand, for argparse.
size = argtype(parse_size)
#: The decode command's FIELD operand, for argparse and for the fast path alike.
parse_field = uint_parser("MaxBuffSize field", 0x3FFF)


def parse_plan_size(text: str) -> int | None:
    """A max buffer size for ``plan``: a size, or ``max`` for the SPU's own limit (None)."""
    if text.strip().lower() == "max":
        return None
    return parse_size(text)


def argtype_user(text: str) -> str:
    """``plan --user``: a user or @group for limits.conf, as an argparse type."""
    from .. import planner

    try:
        return planner.check_limits_user(text)
    except ValueError as exc:
        import argparse

        raise argparse.ArgumentTypeError(str(exc)) from None


def argtype_threshold(text: str) -> Any:
    """``status --warn-below``: a size or a percentage, as an argparse type."""
    from .. import status

    try:
        return status.parse_threshold(text)
    except ValueError as exc:
        import argparse

        raise argparse.ArgumentTypeError(str(exc)) from None
