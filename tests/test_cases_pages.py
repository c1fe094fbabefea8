"""A case that names no page size means what it says on every host page size a real
kernel may have: run on the model with 4, 16 and 64 KiB pages, it passes on each."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kvmspe.arch import maxbuf
from kvmspe.conformance import runner
from kvmspe.conformance.cases import CASES
from kvmspe.model.rules import RULES

ANY_PAGE = [c for c in CASES if c.setup.page_size is None and c.setup.spus]


@pytest.mark.parametrize("page", maxbuf.PAGE_SIZES)
def test_cases_without_a_page_size_pass_on_every_page_size(page: int) -> None:
    assert ANY_PAGE
    moved = [replace(c, setup=replace(c.setup, page_size=page)) for c in ANY_PAGE]
    failed = [(r.case, r.expected, r.got) for r in runner._run_model(moved, RULES) if r.status != "passed"]
    assert not failed, f"on {page // 1024} KiB pages these cases need a page size in their setup: {failed}"
