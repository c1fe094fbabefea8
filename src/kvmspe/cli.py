"""The kvmspe command line (placeholder until the full CLI lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["encode"] and len(args) == 2:
        from . import maxbuf

        print(f"{maxbuf.encode(int(args[1], 0)):#x}")
        return 0
    print("usage: kvmspe encode SIZE", file=sys.stderr)
    return 2
