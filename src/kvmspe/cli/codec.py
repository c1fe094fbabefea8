"""The codec commands: ``encode``, ``decode``, ``round`` and ``sizes``, the answers of
:mod:`kvmspe.arch.maxbuf` and :mod:`kvmspe.arch.registers` for people and in JSON.

``encode SIZE`` and ``decode FIELD`` run on the fast path (:func:`kvmspe.cli._codec_args`):
at module level no more than the package's light modules are imported.
"""

from __future__ import annotations

from ..errors import NotRepresentableError
from ..units import format_size
from .args import UsageError
from .output import emit, sz, table

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from .args import Args, Doc

__all__ = ["cmd_decode", "cmd_encode", "cmd_round", "cmd_sizes"]


def _field_doc(field: int) -> Doc:
    return {"field": field, "e": field >> 9, "m": field & 0x1FF}


def cmd_encode(args: Args) -> int:
    from ..arch import maxbuf

    size: int = args.size
    try:
        field = maxbuf.encode(size)
    except NotRepresentableError as exc:
        doc: Doc = {"size": size, "representable": False, "below": exc.below, "above": exc.above}
        lines = [
            f"{sz(size)} has no exact MaxBuffSize encoding",
            f"  nearest below: {sz(exc.below)}",
            f"  nearest above: {sz(exc.above)}",
        ]
        return emit(args, doc, lines, 1)
    doc = {"size": size, "representable": True, **_field_doc(field), "pmbidr_bits": field << 32}
    lines = table(
        [
            ("size", sz(size) + ("  (0 = no limit)" if size == 0 else "")),
            ("MaxBuffSize", f"{field:#06x}  (E={field >> 9}, M={field & 0x1FF})"),
            ("PMBIDR_EL1", f"{field << 32:#018x}  (bits [47:32])"),
        ]
    )
    return emit(args, doc, lines)


def _decode_pmbidr(args: Args, value: int) -> int:
    from ..arch import maxbuf
    from ..arch.registers import PMBIDR_EL1

    fields = PMBIDR_EL1.decode(value)
    raw_field = PMBIDR_EL1.get(value, "MaxBuffSize")
    size = maxbuf.decode(raw_field)
    align = 1 << PMBIDR_EL1.get(value, "ALIGN")
    notes = {
        "ALIGN": f"buffer alignment {format_size(align)}",
        "P": "buffer owned by a higher exception level (Linux will not use this unit)"
        if fields["P"]
        else "buffer usable at this exception level",
        "F": "translations manage access flag and dirty state" if fields["F"] else "",
        "EA": "external abort handling",
        "MaxBuffSize": f"{sz(size)}" + (", no limit" if size == 0 else ""),
    }
    doc: Doc = {
        "register": "PMBIDR_EL1",
        "value": value,
        "fields": fields,
        "align_bytes": align,
        "max_buffer_size": size,
    }
    shown = {**fields, "MaxBuffSize": f"{raw_field:#06x}"}
    rows = [(name, f"{shown[name]!s:<13} {notes.get(name, '')}") for name in PMBIDR_EL1.field_names]
    lines = [f"PMBIDR_EL1 = {value:#018x}", *table(rows, "  ")]
    return emit(args, doc, lines)


def cmd_decode(args: Args) -> int:
    from ..arch import maxbuf

    if (args.field is None) == (args.pmbidr is None):
        raise UsageError("give either a MaxBuffSize FIELD or --pmbidr VALUE (exactly one)")
    if args.pmbidr is not None:
        return _decode_pmbidr(args, args.pmbidr)
    field: int = args.field
    size = maxbuf.decode(field)
    doc: Doc = {**_field_doc(field), "size": size, "no_limit": size == 0}
    lines = table(
        [
            ("MaxBuffSize", f"{field:#06x}  (E={field >> 9}, M={field & 0x1FF})"),
            ("size", sz(size) + ("  (no limit)" if size == 0 else "")),
        ]
    )
    return emit(args, doc, lines)


def cmd_round(args: argparse.Namespace) -> int:
    from ..arch import maxbuf

    size: int = args.size
    page: int = args.page_size
    maxbuf.check_page_size(page, "--page-size")
    want_down = args.direction in ("down", "both")
    want_up = args.direction in ("up", "both")
    down = maxbuf.round_down(size, page) if want_down else None
    up: int | None = None
    if want_up:
        try:
            up = maxbuf.round_up(size, page)
        except NotRepresentableError:
            up = None
    doc: Doc = {
        "size": size,
        "page_size": page,
        "representable": maxbuf.is_representable(size) and size % page == 0,
        "down": down,
        "up": up,
    }
    rows = [("size", sz(size)), ("page size", format_size(page))]
    if want_down:
        rows.append(("down", sz(down) + ("  (0 means no limit!)" if down == 0 and size else "")))
    if want_up:
        rows.append(("up", sz(up) if up is not None else "none: above the largest size, 1023 << 42"))
    lines = table(rows)
    return emit(args, doc, lines, 1 if want_up and up is None else 0)


def cmd_sizes(args: argparse.Namespace) -> int:
    from ..arch import maxbuf

    lo: int = args.lo
    hi: int | None = args.hi
    if hi is not None and hi < lo:
        raise UsageError(f"--to {sz(hi)} is below --from {sz(lo)}")
    shown: list[int] = []
    total = 0
    for s in maxbuf.sizes(lo, hi):
        if args.limit == 0 or len(shown) < args.limit:
            shown.append(s)
        total += 1
    doc: Doc = {
        "from": lo,
        "to": hi,
        "count": total,
        "truncated": len(shown) < total,
        "sizes": [{"size": s, "field": maxbuf.encode(s)} for s in shown],
    }
    hw = max((len(hex(s)) for s in shown), default=0)
    uw = max((len(format_size(s)) for s in shown), default=0)
    lines = [f"{s:>#{hw}x}  {format_size(s):>{uw}}  field {maxbuf.encode(s):#06x}" for s in shown]
    if len(shown) < total:
        lines.append(f"... {total - len(shown)} more of {total} (--limit 0 lists all)")
    if not total:
        lines.append("no representable size in that range")
    return emit(args, doc, lines, 0 if total else 1)
