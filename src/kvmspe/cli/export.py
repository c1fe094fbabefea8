"""``kvmspe vectors`` and ``kvmspe export``: the test vectors (:mod:`kvmspe.export.vectors`)
and the generated C and Rust (:mod:`kvmspe.export`), written or printed."""

from __future__ import annotations

from .args import UsageError
from .output import emit, write

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from .args import Doc

__all__ = ["cmd_export", "cmd_vectors"]


def cmd_vectors(args: argparse.Namespace) -> int:
    from ..export import vectors

    if not args.out.strip():
        raise UsageError("--out needs a directory, e.g. --out vectors/ (an empty name is refused)")
    paths = vectors.write(args.out)
    doc: Doc = {"out": args.out, "files": [str(p) for p in paths]}
    return emit(args, doc, [f"wrote {p}" for p in paths])


def cmd_export(args: argparse.Namespace) -> int:
    from .. import export

    text = export.render(args.lang)
    if args.json:
        return emit(args, {"lang": args.lang, "text": text}, [])
    return write(text)
