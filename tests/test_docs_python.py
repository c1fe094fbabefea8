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


#: What the line before a ```python fence says of it: run on arm64 KVM (tests/test_docs_kvm.py),
#: or quoted from a file of the checkout, whose text it must still be.
_RUNS = "<!-- runs on arm64 KVM with SPE -->"
_QUOTED = re.compile(r"<!-- quoted from (?P<path>\S+) -->")
_PYTHON = re.compile(r"^(?P<mark>[^\n]*)\n```python\n(?P<code>.*?)^```$", re.M | re.S)


def _python_blocks() -> list[tuple[str, int, str, str]]:
    return [
        (
            page.name,
            page.read_text()[: m.start("code")].count("\n") + 1,
            m.group("mark").strip(),
            m.group("code"),
        )
        for page in PAGES
        for m in _PYTHON.finditer(page.read_text())
    ]


PYTHON_BLOCKS = _python_blocks()


@pytest.mark.parametrize(
    ("page", "line", "mark", "code"), PYTHON_BLOCKS, ids=[f"{p}:{n}" for p, n, _, _ in PYTHON_BLOCKS]
)
def test_a_python_block_is_run_or_quoted_as_it_stands(page: str, line: int, mark: str, code: str) -> None:
    """A ```python block is either an example run on arm64 KVM (tests/test_docs_kvm.py) or a
    quote, marked with its file, every line of which stands in that file as written."""
    if mark == _RUNS:
        return
    quoted = _QUOTED.fullmatch(mark)
    assert quoted, f"{page}:{line}: mark the block {_RUNS!r} or '<!-- quoted from PATH -->'"
    source = (ROOT / quoted.group("path")).read_text()
    lines = {ln.strip().rstrip(",") for ln in source.splitlines()}  # an item of a list, quoted alone
    missing = [ln for ln in code.splitlines() if ln.strip() and ln.strip().rstrip(",") not in lines]
    assert missing == [], f"{page}:{line}: no longer in {quoted.group('path')}: {missing}"
