"""The kvmspe command line: every capability of the package from a shell.

Each subcommand prints a human answer by default and a JSON document with
``--json`` (keys documented in the CLI reference, ``docs/cli.md`` of the
source tree). Exit status: 0 success, 1
when the answer is "no" (a size without encoding, a host that cannot run SPE
guests, a configuration the kernel refuses), 2 for bad usage or input, with a
one-line message on stderr and never a traceback.

The command line parses and renders; what it shows is computed by the
library. One module per concern: :mod:`.parser` (every command's options),
:mod:`.args` (argument types), :mod:`.output` (stdout, stderr, files written
whole), and the commands by group: :mod:`.codec` (encode, decode, round,
sizes), :mod:`.explain`, :mod:`.probe` (probe, status), :mod:`.plan` and
:mod:`.plot`, :mod:`.configure`, :mod:`.guest`, :mod:`.conformance`,
:mod:`.export` (export, vectors) and :mod:`.shim`.

Start-up is kept lean: each command imports the layers it uses (the codec
commands never load the model, the planner or the real backend), and the
codec commands' simple forms (``encode SIZE``, ``decode FIELD``, each with or
without ``--json``) are recognised before argparse is even imported (see
:func:`_codec_args`). At module level this package imports no more than
``sys`` and the package's light modules: argparse, re and typing cost more
than the codec work itself.
"""

from __future__ import annotations

import sys

from ..errors import KvmError, KvmspeError
from ..units import parse_size
from .args import DEFAULT_IRQ, Namespace, UsageError, parse_field
from .codec import cmd_decode, cmd_encode
from .output import _Unwritten, one_line, say, unwritten

# typing.TYPE_CHECKING without importing typing; mypy treats any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from .args import Args

__all__ = ["DEFAULT_IRQ", "UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``kvmspe`` argument parser with every subcommand (:func:`kvmspe.cli.parser.build_parser`)."""
    from .parser import build_parser as build

    return build()


def _codec_args(argv: Sequence[str]) -> Namespace | None:
    """What argparse would make of ``encode SIZE`` or ``decode FIELD`` (``--json`` before or
    after the operand), without building the parser; None for any other command line.

    The operands are parsed by the parsers argparse is given; when one refuses
    its operand, this answers None too, so argparse handles every error and
    ``--help``, with its messages and exit status.
    """
    if len(argv) == 2:
        command, operand, json = argv[0], argv[1], False
    elif len(argv) == 3 and "--json" in argv[1:]:
        command, operand, json = argv[0], argv[2 if argv[1] == "--json" else 1], True
    else:
        return None
    if operand[:1] == "-":  # an option, "--", or a negative number: argparse's to judge
        return None
    try:
        if command == "encode":
            return Namespace(command=command, json=json, size=parse_size(operand), func=cmd_encode)
        if command == "decode":
            return Namespace(
                command=command, json=json, field=parse_field(operand), pmbidr=None, func=cmd_decode
            )
    except ValueError:
        return None
    return None


def _interrupted() -> int:
    """After SIGINT (KeyboardInterrupt): one line on stderr, exit status 130.

    A second SIGINT while the line is printed is ignored, so it cannot turn
    the clean exit into a traceback.
    """
    import signal

    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: no handler to change
        previous = None
    try:
        say("kvmspe: interrupted")
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 yes, 1 no, 2 bad input, 130 SIGINT).

    Run as the program (``argv`` None), a SIGINT arriving once the answer is
    given is ignored, so it cannot turn the exit into a traceback.
    """
    try:
        code = _main(sys.argv[1:] if argv is None else argv)
    except _Unwritten as exc:
        code = unwritten(exc)
    except KeyboardInterrupt:
        code = _interrupted()
    except RuntimeError as exc:
        # Python 3.11 wraps an exception raised while a class is being created
        # (dataclass fields' ``__set_name__``) in a RuntimeError: a SIGINT that
        # lands while a lazily imported module defines its classes arrives so.
        if not _from_interrupt(exc):
            raise
        code = _interrupted()
    if argv is None:
        _ignore_sigint()
    return code


def _from_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` was caused, directly or down its chain, by a KeyboardInterrupt."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _ignore_sigint() -> None:
    # The C module under ``signal``: the Python one imports enum, which would
    # cost the codec commands more than their own work.
    c_signal = __import__("_signal")
    try:
        c_signal.signal(c_signal.SIGINT, c_signal.SIG_IGN)
    except (ValueError, KeyboardInterrupt):  # not the main thread; or it came first
        pass


def _main(argv: Sequence[str]) -> int:
    args: Args | None = _codec_args(argv)
    if args is None:
        args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except KvmError as exc:
        # The kernel (or its model) refused: the answer is "no".
        say(f"kvmspe: {exc.ioctl or 'ioctl'}: {one_line(str(exc))}")
        return 1
    except (KvmspeError, ValueError, OSError) as exc:
        say(f"kvmspe: error: {one_line(str(exc)) or type(exc).__name__}")
        return 2
