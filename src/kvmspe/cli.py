"""The kvmspe command line: every capability of the package from a shell.

Each subcommand prints a human answer by default and a JSON document with
``--json`` (keys documented in ``docs/cli.md``). Exit status: 0 success, 1
when the answer is "no" (a size without encoding, a host that cannot run SPE
guests, a configuration the kernel refuses), 2 for bad usage or input, with a
one-line message on stderr and never a traceback.

Start-up is kept lean: this module imports only the standard library pieces
it needs to parse arguments; each command imports the layers it uses (the
codec commands never load the model, the planner or the real backend).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import __version__
from .errors import KvmError, KvmspeError, NotRepresentableError
from .units import ACCEPTED, U64_MAX, format_size, parse_size, parse_uint

__all__ = ["main", "build_parser"]

Doc = dict[str, Any]

#: The default SPE interrupt: PPI 21, the INTID kvmtool and QEMU give the PMU's neighbour.
DEFAULT_IRQ = 21


class UsageError(KvmspeError, ValueError):
    """Bad input found after argument parsing (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``kvmspe: error: ...`` plus a hint."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A token like "-4K" is a (bad) value, not an unknown option: let the
        # value parser say "negative sizes are not accepted".
        self._negative_number_matcher = re.compile(r"^-[0-9.]")

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        self.exit(2, f"kvmspe: error: {text} (see '{self.prog} --help')\n")


# --- argument types: ValueError becomes a one-line argparse error ---------------------


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _uint(what: str, maximum: int = U64_MAX, minimum: int = 0) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = parse_uint(text, what=what, maximum=maximum)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: accepted: {minimum}..{maximum}")
        return value

    parse.__name__ = what
    return parse


# --- output ------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, doc: Doc, lines: Sequence[str], code: int = 0) -> int:
    """Print ``doc`` as JSON with --json, else the human ``lines``; return ``code``."""
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for line in lines:
            print(line)
    return code


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _sz(n: int | None) -> str:
    """A size for people: ``4 MiB (0x400000)``."""
    if n is None:
        return "none"
    return f"{format_size(n)} ({n:#x})"


def _table(rows: Sequence[tuple[str, str]], indent: str = "") -> list[str]:
    width = max((len(k) for k, _ in rows), default=0)
    return [f"{indent}{k:<{width}}  {v}".rstrip() for k, v in rows]


# --- codec commands ------------------------------------------------------------------------


def _field_doc(field: int) -> Doc:
    return {"field": field, "e": field >> 9, "m": field & 0x1FF}


def cmd_encode(args: argparse.Namespace) -> int:
    from . import maxbuf

    size: int = args.size
    try:
        field = maxbuf.encode(size)
    except NotRepresentableError as exc:
        doc: Doc = {"size": size, "representable": False, "below": exc.below, "above": exc.above}
        lines = [
            f"{_sz(size)} has no exact MaxBuffSize encoding",
            f"  nearest below: {_sz(exc.below)}",
            f"  nearest above: {_sz(exc.above)}",
        ]
        return _emit(args, doc, lines, 1)
    doc = {"size": size, "representable": True, **_field_doc(field), "pmbidr_bits": field << 32}
    lines = _table(
        [
            ("size", _sz(size) + ("  (0 = no limit)" if size == 0 else "")),
            ("MaxBuffSize", f"{field:#06x}  (E={field >> 9}, M={field & 0x1FF})"),
            ("PMBIDR_EL1", f"{field << 32:#018x}  (bits [47:32])"),
        ]
    )
    return _emit(args, doc, lines)


def _decode_pmbidr(args: argparse.Namespace, value: int) -> int:
    from . import maxbuf
    from .registers import PMBIDR_EL1

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
        "MaxBuffSize": f"{_sz(size)}" + (", no limit" if size == 0 else ""),
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
    lines = [f"PMBIDR_EL1 = {value:#018x}", *_table(rows, "  ")]
    return _emit(args, doc, lines)


def cmd_decode(args: argparse.Namespace) -> int:
    from . import maxbuf

    if (args.field is None) == (args.pmbidr is None):
        raise UsageError("give either a MaxBuffSize FIELD or --pmbidr VALUE (exactly one)")
    if args.pmbidr is not None:
        return _decode_pmbidr(args, args.pmbidr)
    field: int = args.field
    size = maxbuf.decode(field)
    doc: Doc = {**_field_doc(field), "size": size, "no_limit": size == 0}
    lines = _table(
        [
            ("MaxBuffSize", f"{field:#06x}  (E={field >> 9}, M={field & 0x1FF})"),
            ("size", _sz(size) + ("  (no limit)" if size == 0 else "")),
        ]
    )
    return _emit(args, doc, lines)


def cmd_round(args: argparse.Namespace) -> int:
    from . import maxbuf

    size: int = args.size
    page: int = args.page_size
    if page not in maxbuf.PAGE_SIZES:
        sizes = ", ".join(format_size(p).replace(" ", "") for p in maxbuf.PAGE_SIZES)
        raise UsageError(f"--page-size {page} is not an arm64 page size; accepted: {sizes}")
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
    rows = [("size", _sz(size)), ("page size", format_size(page))]
    if want_down:
        rows.append(("down", _sz(down) + ("  (0 means no limit!)" if down == 0 and size else "")))
    if want_up:
        rows.append(("up", _sz(up) if up is not None else "none: above the largest size, 1023 << 42"))
    lines = _table(rows)
    return _emit(args, doc, lines, 1 if want_up and up is None else 0)


def cmd_sizes(args: argparse.Namespace) -> int:
    from . import maxbuf

    lo: int = args.lo
    hi: int | None = args.hi
    if hi is not None and hi < lo:
        raise UsageError(f"--to {_sz(hi)} is below --from {_sz(lo)}")
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
    return _emit(args, doc, lines, 0 if total else 1)


# --- explain --------------------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    import errno as errno_mod
    import os

    from . import abi

    topic: str = args.topic.strip()
    key = topic.upper()
    meanings: list[Doc] = []
    by_name = {n: info for info in abi.ATTRS.values() for n in info.names}
    group_names = {name: g for groups in abi.GROUP_NAMES.values() for g, name in groups.items()}

    code: int | None = None
    if re.fullmatch(r"[0-9]+", topic):
        code = int(topic)
    elif key in errno_mod.__dict__ and key.startswith("E") and isinstance(errno_mod.__dict__[key], int):
        code = errno_mod.__dict__[key]

    if code is not None:
        name = errno_mod.errorcode.get(code)
        if name is None:
            raise UsageError(f"{topic} is not an errno this system knows; try a name such as EDOM")
        for attribute, calls in abi.ERRNO_TABLE.items():
            for call, table in calls.items():
                if code in table:
                    meanings.append(
                        {"attribute": attribute, "call": call, "errno": code, "name": name,
                         "meaning": table[code]}
                    )
        doc: Doc = {"query": topic, "kind": "errno", "errno": code, "name": name,
                    "strerror": os.strerror(code), "meanings": meanings}
        lines = [f"{name} (errno {code}, \"{os.strerror(code)}\")"]
        lines += [f"  {m['attribute']} {m['call']}: {m['meaning']}" for m in meanings]
        if not meanings:
            lines.append("  no SPE attribute call or KVM_RUN answers this errno")
        return _emit(args, doc, lines, 0 if meanings else 1)

    infos: list[tuple[str, dict[str, dict[int, str]]]] = []
    extra: Doc = {}
    if key in by_name:
        info = by_name[key]
        infos = [(info.name, info.errnos)]
        extra = {"group": info.group, "attr": info.attr, "names": list(info.names),
                 "value_type": "__u64" if info.value is abi.U64 else "int"}
        header = (f"{info.name} (group {info.group}, attribute {info.attr}, value {extra['value_type']}"
                  f" at kvm_device_attr.addr)")
        if len(info.names) > 1:
            header += f"; also spelled {', '.join(info.names[1:])}"
    elif key in abi.ERRNO_TABLE:
        infos = [(key, abi.ERRNO_TABLE[key])]
        header = key
    elif key == "KVM_ARM_VCPU_SPE_CTRL":
        infos = [(info.name, info.errnos) for info in abi.ATTRS.values()]
        extra = {"group": group_names[key]}
        header = f"{key} (VCPU device attribute group {group_names[key]})"
    else:
        names = ", ".join(sorted({*by_name, *abi.ERRNO_TABLE, "KVM_ARM_VCPU_SPE_CTRL"}))
        raise UsageError(f"unknown errno or name {topic!r}; accepted: an errno (EDOM, 33) or one of {names}")
    lines = [header]
    for attribute, calls in infos:
        for call, table in calls.items():
            for c, meaning in sorted(table.items()):
                n = errno_mod.errorcode.get(c, str(c))
                meanings.append({"attribute": attribute, "call": call, "errno": c, "name": n,
                                 "meaning": meaning})
                prefix = f"{attribute} {call}" if len(infos) > 1 else call
                lines.append(f"  {prefix:<5} {n:<7} {meaning}")
    doc = {"query": topic, "kind": "name", **extra, "meanings": meanings}
    return _emit(args, doc, lines)


# --- the parser -------------------------------------------------------------------------------

_SIZE_HELP = "a size in bytes: " + ACCEPTED.removeprefix("accepted: ")

_EPILOGS = {
    "encode": """examples:
  kvmspe encode 4M          MaxBuffSize field of 4 MiB
  kvmspe encode 0x401000    not representable: exit 1, nearest sizes shown
  kvmspe encode 2M --json""",
    "decode": """examples:
  kvmspe decode 0x400               the size a MaxBuffSize field value stands for
  kvmspe decode --pmbidr 0x40000000005
  kvmspe decode 0x3fff --json""",
    "round": """examples:
  kvmspe round 5M                   nearest representable sizes below and above
  kvmspe round 3000001 --up --page-size 64K
  kvmspe round 1T --down --json""",
    "sizes": """examples:
  kvmspe sizes --from 2M --to 4M    representable sizes in a range
  kvmspe sizes --from 1G --limit 5
  kvmspe sizes --to 64K --json""",
    "explain": """examples:
  kvmspe explain EDOM
  kvmspe explain 33
  kvmspe explain KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE
  kvmspe explain KVM_RUN --json""",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``kvmspe`` argument parser with every subcommand."""
    fmt = argparse.RawDescriptionHelpFormatter
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="print a JSON document (keys in docs/cli.md)")

    parser = _Parser(
        prog="kvmspe",
        description="Configure and check the KVM arm64 SPE max buffer size, from a shell.",
        epilog="Sizes accept 4096, 0x1000, 4K, 4KiB, 2M, 1G, 1T (binary units: K = 1024).\n"
        "Exit status: 0 success, 1 the answer is no, 2 bad usage or input.\n"
        "Start with: kvmspe configure --vcpus 4 --max-buffer-size 4M",
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"kvmspe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_, description=help_,
                           epilog=_EPILOGS.get(name), formatter_class=fmt)
        p.set_defaults(func=func)
        return p

    p = add("encode", cmd_encode, "the PMBIDR_EL1.MaxBuffSize field value of a size (exit 1: no encoding)")
    p.add_argument("size", metavar="SIZE", type=_size, help=_SIZE_HELP)

    p = add("decode", cmd_decode, "the size a MaxBuffSize field stands for, or a whole PMBIDR_EL1")
    p.add_argument("field", metavar="FIELD", nargs="?", type=_uint("MaxBuffSize field", 0x3FFF),
                   help="a MaxBuffSize field value, 0..0x3fff")
    p.add_argument("--pmbidr", metavar="VALUE", type=_uint("PMBIDR_EL1 value"),
                   help="decode a whole PMBIDR_EL1 value instead")

    p = add("round", cmd_round, "the nearest representable, page-aligned max buffer sizes")
    p.add_argument("size", metavar="SIZE", type=_size, help=_SIZE_HELP)
    way = p.add_mutually_exclusive_group()
    way.add_argument("--up", dest="direction", action="store_const", const="up", help="round up only")
    way.add_argument("--down", dest="direction", action="store_const", const="down", help="round down only")
    p.set_defaults(direction="both")
    p.add_argument("--page-size", metavar="SIZE", type=_size, default=4096,
                   help="host page size: 4K, 16K or 64K (default 4K)")

    p = add("sizes", cmd_sizes, "list the representable max buffer sizes in a range")
    p.add_argument("--from", dest="lo", metavar="SIZE", type=_size, default=0, help="smallest (default 0)")
    p.add_argument("--to", dest="hi", metavar="SIZE", type=_size, default=None,
                   help="largest (default: 1023 << 42, the largest representable)")
    p.add_argument("--limit", metavar="N", type=_uint("limit"), default=32,
                   help="list at most N (default 32; 0 for all)")

    p = add("explain", cmd_explain, "what an errno means for each SPE attribute and call")
    p.add_argument("topic", metavar="ERRNO|NAME",
                   help="an errno name or number (EDOM, 33), an attribute name, or KVM_RUN")

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 yes, 1 no, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except BrokenPipeError:
        # The reader went away (``kvmspe sizes --limit 0 | head``): not an error of ours.
        sys.stderr.close()
        return 0
    except KvmError as exc:
        # The kernel (or its model) refused: the answer is "no".
        print(f"kvmspe: {exc.ioctl or 'ioctl'}: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except (KvmspeError, ValueError, OSError) as exc:
        print(f"kvmspe: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kvmspe: interrupted", file=sys.stderr)
        return 130
