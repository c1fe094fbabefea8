"""The Python examples of the docs run as written: every ```pycon block of README.md and
docs/*.md is a doctest, run here, with its shown results and errors compared."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```pycon\n(.*?)^```$", re.M | re.S)


def _blocks() -> list[tuple[str, int, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in _BLOCK.finditer(text):
            found.append((page.name, text[: m.start()].count("\n") + 1, m.group(1)))
    return found


BLOCKS = _blocks()


def test_the_readme_has_python_examples_to_run() -> None:
    assert any(page == "README.md" for page, _, _ in BLOCKS)


@pytest.mark.parametrize(("page", "line", "source"), BLOCKS, ids=[f"{p}:{n}" for p, n, _ in BLOCKS])
def test_a_python_example_runs_as_shown(page: str, line: int, source: str) -> None:
    test = doctest.DocTestParser().get_doctest(source, {}, f"{page}:{line}", page, line)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    out: list[str] = []
    runner.run(test, out=out.append)
    assert runner.failures == 0, "".join(out)
