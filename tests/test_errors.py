"""The exception tree is closed: every exception class kvmspe defines is a KvmspeError.

A caller catches ``kvmspe.KvmspeError`` and gets everything kvmspe raises on
purpose; a bad argument is also a ``ValueError`` (or an ``OSError`` for a
kernel's answer), so code that catches the built-in kind still works. Classes
whose name starts with ``_`` are control flow inside kvmspe (the CLI's
unwritable answer, a model's early return) and never reach a caller.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable

import pytest

import kvmspe
from kvmspe.errors import InvalidArgumentError, KvmspeError
from kvmspe.host.discovery import parse_cpulist
from kvmspe.host.profiles import model_host
from kvmspe.model.kernel import Spu
from kvmspe.status import parse_threshold
from kvmspe.units import format_size, parse_size, parse_uint

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(kvmspe.__path__, "kvmspe.") if m.name != "kvmspe.__main__"
)


def _exceptions() -> list[tuple[str, type[BaseException]]]:
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == name
                and not attr.startswith("_")
            ):
                found.append((f"{name}.{attr}", obj))
    return found


EXCEPTIONS = _exceptions()


def test_the_package_defines_exceptions_to_check() -> None:
    names = {n for n, _ in EXCEPTIONS}
    assert "kvmspe.abi.assumed.AssumedNumberError" in names
    assert "kvmspe.shim.script.ScriptError" in names


@pytest.mark.parametrize(("name", "cls"), EXCEPTIONS, ids=[n for n, _ in EXCEPTIONS])
def test_every_public_exception_is_a_kvmspe_error(name: str, cls: type[BaseException]) -> None:
    assert issubclass(cls, KvmspeError), f"{name} is not a KvmspeError: {cls.__mro__}"


@pytest.mark.parametrize(("name", "cls"), EXCEPTIONS, ids=[n for n, _ in EXCEPTIONS])
def test_every_public_exception_says_what_it_is(name: str, cls: type[BaseException]) -> None:
    assert (cls.__doc__ or "").strip(), f"{name} has no docstring"


BAD_ARGUMENTS = {
    "a size with an unknown unit": lambda: parse_size("4Q"),
    "a number that is not one": lambda: parse_uint("x", what="number"),
    "a negative size to print": lambda: format_size(-1),
    "a threshold above 100%": lambda: parse_threshold("150%"),
    "a CPU range backwards": lambda: parse_cpulist("3-1"),
    "an unknown host profile": lambda: model_host("no-such-host"),
    "an SPU id that is negative": lambda: Spu(-1, cpus=[0]),
}


@pytest.mark.parametrize("call", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_a_bad_argument_is_an_invalid_argument_error_and_a_value_error(call: Callable[[], object]) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        call()
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)
