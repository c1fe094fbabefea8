"""The docs name every rule and every assumption the code implements."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from kvmspe.assumptions import Assumptions
from kvmspe.model.rules import RULES

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
    sources = {"seed", "series", "measured", "arch", "uapi", "assumed"}
    checks = list(RULES.group) + list(RULES.run)
    for table in (RULES.set, RULES.get):
        for tup in table.values():
            checks += list(tup)
    bad = [(c.name, c.source) for c in checks if c.source not in sources]
    assert not bad


def test_the_docs_cite_sources_by_name() -> None:
    """Sources are named (the reference patch, v6 patch N, RFC v5, Linux 7.2),
    never by the section of a document the repository does not hold."""
    assert "FACTS" not in RULES_DOC
    for name in ("reference patch", "RFC v5", "patch 15", "measured on Linux 7.2"):
        assert name in RULES_DOC, name


def test_every_rule_row_names_a_source_class() -> None:
    """Each row of a check table ends with its source class and what would change it."""
    rows = [
        line
        for line in RULES_DOC.splitlines()
        if line.startswith("| ") and len(line.split("|")) == 8 and "`" in line.split("|")[2]
    ]
    assert rows
    classes = ("seed", "series", "measured", "uapi", "arch", "assumed")
    bad = [r for r in rows if not any(c in r.split("|")[-3] for c in classes)]
    assert not bad, bad


def test_no_citation_of_a_document_outside_the_repository() -> None:
    """Sources are cited by name (the patch, the series, the uapi header), never by
    section of a notes file that is not in the repository."""
    root = Path(__file__).resolve().parent.parent
    texts = [*root.joinpath("src").rglob("*.py"), *root.joinpath("docs").rglob("*.md"), root / "README.md"]
    texts += root.joinpath("src", "kvmspe", "fixtures").rglob("*.json")
    cited = [str(p.relative_to(root)) for p in texts if "FACTS section" in p.read_text(encoding="utf-8")]
    assert not cited


def test_help_points_to_no_file_that_pip_does_not_install() -> None:
    from kvmspe.cli import build_parser

    parser = build_parser()
    helps = [parser.format_help()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps += [sub.format_help() for sub in action.choices.values()]
    assert all("docs/" not in text for text in helps)
