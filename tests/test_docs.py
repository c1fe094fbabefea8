"""The docs name every rule and every assumption the code implements."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kvmspe.assumptions import Assumptions
from kvmspe.rules import RULES

ROOT = Path(__file__).resolve().parent.parent
RULES_DOC = (ROOT / "docs" / "rules.md").read_text()


def _all_checks() -> set[str]:
    names = {c.name for c in RULES.group} | {c.name for c in RULES.run}
    for table in (RULES.set, RULES.get):
        for checks in table.values():
            names |= {c.name for c in checks}
    return names


def test_every_check_is_documented() -> None:
    missing = sorted(n for n in _all_checks() if f"`{n}`" not in RULES_DOC)
    assert not missing, f"checks not described in docs/rules.md: {missing}"


def test_every_assumption_is_documented() -> None:
    fields = [f.name for f in dataclasses.fields(Assumptions)]
    missing = [n for n in fields if n not in RULES_DOC]
    assert not missing, f"assumptions not described in docs/rules.md: {missing}"


def test_every_check_names_a_known_source() -> None:
    sources = {"seed", "series", "arch", "uapi", "assumed"}
    checks = list(RULES.group) + list(RULES.run)
    for table in (RULES.set, RULES.get):
        for tup in table.values():
            checks += list(tup)
    bad = [(c.name, c.source) for c in checks if c.source not in sources]
    assert not bad
