"""Functions stay short enough to read whole: none in the package over 60 lines, no
command of the CLI over 50, docstrings included. The parser's declarations
(``kvmspe.cli.parser``: one ``add_argument`` after another, no logic) are the
one exception, named here."""

from __future__ import annotations

import ast
from pathlib import Path

import kvmspe

PACKAGE = Path(kvmspe.__file__).resolve().parent
LONGEST = 60
LONGEST_COMMAND = 50
#: Declarations only: each line is one option of one command.
DECLARATIONS = PACKAGE / "cli" / "parser.py"


def _lengths() -> list[tuple[str, str, int]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                rel = str(path.relative_to(PACKAGE))
                found.append((rel, node.name, node.end_lineno - node.lineno + 1))
    return found


LENGTHS = _lengths()


def test_the_walk_sees_the_package() -> None:
    assert any(name == "main" and path == "cli/__init__.py" for path, name, _ in LENGTHS)


def test_no_function_is_over_60_lines_but_the_parsers_declarations() -> None:
    parser = str(DECLARATIONS.relative_to(PACKAGE))
    long = [f"{p}:{n} {length}" for p, n, length in LENGTHS if length > LONGEST and p != parser]
    assert long == []


def test_no_cli_command_is_over_50_lines() -> None:
    long = [
        f"{p}:{n} {length}"
        for p, n, length in LENGTHS
        if p.startswith("cli/") and n.startswith("cmd_") and length > LONGEST_COMMAND
    ]
    assert long == []
