"""Every subcommand, every option, adversarial values: exit 0, 1 or 2, never a traceback.

The options are read from the parser itself, so an option added later is
attacked too. Each example runs ``kvmspe.cli.main(argv)`` in this process
(stdout and stderr captured) from a fresh temporary directory, so commands
that write files (``vectors --out``, ``plan --plot``) write there. Values
come from a pool of known troublemakers (``--``, NUL bytes, unicode digits,
huge numbers, empty strings, signs, fractions, commas) mixed with valid
values, so both the refusals and the paths behind them are exercised.

What must hold for every command line:

* the exit status is 0, 1 or 2 (argparse's own exits included);
* no traceback, and stderr has at most one line;
* exit 2 comes with exactly one ``kvmspe: error: ...`` line and nothing on stdout;
* the message never tells a command-line user to pass a library-only argument.

``STATS`` counts the examples run and what they ended in; the figures are
printed at the end of the run (``-s``) and checked to be non-trivial.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmspe import cli
from kvmspe.host import profiles

#: Tally of the runs of this module, by command and by exit status.
STATS: Counter[str] = Counter()

NASTY = [
    "--",
    "-",
    "",
    " ",
    "\t",
    "\x00",
    "4\x00",
    "4K\x00",
    "a\x00b",
    "-1",
    "-0",
    "+1",
    "-4K",
    "0",
    "1",
    "2",
    "4",
    "16",
    "31",
    "512",
    "513",
    "65536",
    "4K",
    "16K",
    "64K",
    "2M",
    "4M",
    "1G",
    "1T",
    "1023T",
    "4096",
    "0x1000",
    "0x",
    "0x-1",
    "0xg",
    "4,096",
    "1.5M",
    ".5K",
    "1e3",
    "4 K",
    "4KiB",
    "4kb",
    "4KB ",
    " 4M",
    "٤٠٩٦",
    "１２",
    "४",
    "²",
    "18446744073709551615",
    "18446744073709551616",
    "9" * 30,
    "9" * 5000,
    "0x" + "f" * 16,
    "0x" + "f" * 17,
    "0" * 100 + "1",
    "nan",
    "inf",
    "None",
    "True",
    "model",
    "kvm",
    "auto",
    "default-4k",
    "limited-spu",
    "arm64-big-little",
    "EDOM",
    "33",
    "KVM_RUN",
    "KVM_ARM_VCPU_SPE_CTRL",
    "\u202e",
    "a\nb",
    "😀",
    "\udcff",
    "a/\udcff",
    "%s",
    "{}",
    "x" * 300,
    "out",
    "out/sub",
    "vectors",
    "plot.png",
]

#: The worst of them, drawn as often as all the others together.
HOT = ["--", "", "\x00", "-1", "٤", "9" * 30, "0x" + "f" * 17, "4,096", " "]

#: Words a message may not use: arguments only the library has.
LIBRARY_ONLY = ("hard=True", "levels/va_bits", "va_bits", "locked_already", "max_buffer_size=", "nbytes")

STORE_TRUE = (argparse._StoreTrueAction, argparse._StoreConstAction)  # noqa: SLF001


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return dict(action.choices)
    raise AssertionError("kvmspe has no subcommands")


SUBPARSERS = _subparsers()


def _safe_path(value: str) -> bool:
    """Relative and inside the example's directory: never write outside it."""
    parts = value.replace("\\", "/").split("/")
    return not value.startswith("/") and ".." not in parts and "~" not in value


#: Values a user would type: most command lines built from these get past the parser.
VALID = [
    "0",
    "1",
    "2",
    "4",
    "16",
    "21",
    "22",
    "31",
    "512",
    "4K",
    "16K",
    "64K",
    "2M",
    "4M",
    "5M",
    "8M",
    "1G",
    "0x1000",
    "0x400",
    "3",
    "5",
    "EDOM",
    "ENOMEM",
    "KVM_RUN",
    "arm64-big-little",
    "out",
    "d/e",
]


def _values(action: argparse.Action, valid: bool = False) -> st.SearchStrategy[str]:
    pool: list[str]
    if valid:
        pool = VALID + [str(c) for c in action.choices or ()]
        if action.dest == "profile":
            pool += list(profiles.PROFILES)
        return st.sampled_from(pool)
    pool = list(NASTY)
    if action.choices:
        pool += [str(c) for c in action.choices]
    if action.dest == "profile":
        pool += list(profiles.PROFILES)
    text = st.text(max_size=12)
    numbers = st.integers(-(2**70), 2**70).map(lambda n: str(n) if n % 3 else hex(n) if n >= 0 else str(n))
    values = st.one_of(st.sampled_from(HOT), st.sampled_from(pool), text, numbers)
    if action.dest in ("out", "plot", "fixture"):
        values = values.filter(_safe_path)
    return values


@st.composite
def command_lines(draw: st.DrawFn, valid: bool = False) -> list[str]:
    name = draw(st.sampled_from(sorted(SUBPARSERS)))
    sub = SUBPARSERS[name]
    argv = [name]
    for action in sub._actions:  # noqa: SLF001
        if isinstance(action, argparse._HelpAction):  # noqa: SLF001
            continue
        if not action.option_strings:  # a positional operand
            if action.nargs == "?" and draw(st.booleans()):
                continue
            argv.append(draw(_values(action, valid)))
            continue
        required = action.required and draw(st.integers(0, 9)) > 0
        if not required and draw(st.booleans()):
            continue
        option = draw(st.sampled_from(action.option_strings))
        if isinstance(action, STORE_TRUE) or action.nargs == 0:
            argv.append(option if draw(st.integers(0, 5)) else f"{option}={draw(_values(action, valid))}")
            continue
        if action.nargs == "?" and draw(st.booleans()):
            argv.append(option)
            continue
        value = draw(_values(action, valid))
        argv += [f"{option}={value}"] if draw(st.booleans()) else [option, value]
    if not valid and draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(1, len(argv))), draw(st.sampled_from(NASTY)))
    return argv


@contextlib.contextmanager
def _in_fresh_directory() -> Iterator[None]:
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="kvmspe-robust-") as tmp:
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(old)


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with _in_fresh_directory(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: Any = cli.main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def check(argv: list[str]) -> None:
    code, out, err = run(argv)
    STATS["runs"] += 1
    STATS[f"exit {code}"] += 1
    STATS[f"{argv[0]} runs"] += 1
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err and "Traceback" not in out, (argv, err)
    lines = err.splitlines()
    assert len(lines) <= 1, (argv, err)
    if code == 2 and not any(a in ("-h", "--help", "--version") for a in argv):
        assert len(lines) == 1 and lines[0].startswith("kvmspe: error: "), (argv, err)
        assert out == "", (argv, out)
    for word in LIBRARY_ONLY:
        assert word not in err, (argv, err)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command_lines())
def test_every_command_line_ends_in_0_1_or_2_without_traceback(argv: list[str]) -> None:
    check(argv)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command_lines(valid=True))
def test_plausible_command_lines_end_in_0_1_or_2_without_traceback(argv: list[str]) -> None:
    """Values a user would type (some still wrong for their option): the paths behind the parser."""
    check(argv)


@pytest.mark.parametrize("name", sorted(SUBPARSERS))
@pytest.mark.parametrize("value", ["--", "", "\x00", "٤", "9" * 5000, "18446744073709551616", "-1"])
def test_each_option_with_each_nasty_value(name: str, value: str) -> None:
    """Not left to chance: every option of every command once with each classic troublemaker."""
    sub = SUBPARSERS[name]
    for action in sub._actions:  # noqa: SLF001
        if isinstance(action, argparse._HelpAction) or (  # noqa: SLF001
            action.dest in ("out", "plot", "fixture") and not _safe_path(value)
        ):
            continue
        required = [a for a in sub._actions if a.required and a.option_strings and a is not action]  # noqa: SLF001
        base = [name] + [x for a in required for x in (a.option_strings[0], "1")]
        if not action.option_strings:
            check([*base, value])
        elif isinstance(action, STORE_TRUE) or action.nargs == 0:
            check([*base, f"{action.option_strings[0]}={value}"])
        else:
            check([*base, f"{action.option_strings[0]}={value}"])
            check([*base, action.option_strings[0], value])


def test_report_figures() -> None:
    """Print what this module ran (visible with -s); a fuzzer that ran nothing proves nothing."""
    print(f"\nrobust CLI: {dict(sorted(STATS.items()))}")
    if STATS["runs"]:  # the module's other tests ran first (file order)
        assert STATS["exit 0"] + STATS["exit 1"] > 0, "no example got past the parser"
        assert STATS["exit 2"] > 0, "no example was refused"
