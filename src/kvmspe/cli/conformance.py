"""``kvmspe conformance``: the conformance suite's report (:mod:`kvmspe.conformance.runner`)."""

from __future__ import annotations

from .output import emit

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

__all__ = ["cmd_conformance"]


def cmd_conformance(args: argparse.Namespace) -> int:
    from ..conformance import runner as conformance

    report = conformance.run(args.backend, scripted_guest=not args.no_scripted_guest)
    return emit(args, report.to_dict(), report.render().splitlines(), 0 if report.ok else 1)
