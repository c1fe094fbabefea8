"""The exports' template files, and the one way they are filled.

The C and Rust text of every export lives in ``templates/`` (package data): the
C header (``kvmspe.h``), the Rust module (``kvmspe.rs``), the self-test
harnesses (``selftest.c``, ``kselftest.c``) and the case code they share
(``cases_head.c``, ``cases_run.c``). What is generated from kvmspe's data goes
where a template has a placeholder line: a line that is only ``@NAME@``, NAME
in capitals. :func:`fill` replaces each such line by the lines given for it,
and refuses a template whose placeholders are not exactly the ones given, so
a renamed placeholder fails at generation, not in the compiler.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources

__all__ = ["fill", "text"]

_PLACEHOLDER = re.compile(r"@[A-Z][A-Z0-9_]*@")


def text(name: str) -> str:
    """The text of ``templates/NAME``, shipped with the package."""
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


def fill(name: str, parts: Mapping[str, str | list[str]]) -> str:
    """``templates/NAME`` with each placeholder line replaced by ``parts[line]``:
    lines, or text without a trailing newline (no lines, or an empty text, leave
    no line).

    ValueError when the template lacks a placeholder of ``parts`` or has one
    that ``parts`` does not give.
    """
    out: list[str] = []
    unused = set(parts)
    for line in text(name).splitlines():
        if not _PLACEHOLDER.fullmatch(line):
            out.append(line)
            continue
        if line not in parts:
            raise ValueError(f"template {name}: nothing given for its line {line}")
        unused.discard(line)
        part = parts[line]
        out.extend(part.splitlines() if isinstance(part, str) else part)
    if unused:
        raise ValueError(f"template {name} lacks the lines {', '.join(sorted(unused))}")
    return "\n".join(out) + "\n"
