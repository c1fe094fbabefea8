"""The kvmspe command line: every capability of the package from a shell.

Each subcommand prints a human answer by default and a JSON document with
``--json`` (keys documented in the CLI reference, ``docs/cli.md`` of the
source tree). Exit status: 0 success, 1
when the answer is "no" (a size without encoding, a host that cannot run SPE
guests, a configuration the kernel refuses), 2 for bad usage or input, with a
one-line message on stderr and never a traceback.

Start-up is kept lean: each command imports the layers it uses (the codec
commands never load the model, the planner or the real backend), and the
codec commands' simple forms (``encode SIZE``, ``decode FIELD``, each with or
without ``--json``) are recognised before argparse is even imported (see
:func:`_codec_args`). At module level this file imports no more than ``sys``
and the package's light modules: argparse, re and typing cost more than the
codec work itself.
"""

from __future__ import annotations

import sys
from errno import EBADF as _EBADF
from errno import EPIPE as _EPIPE

from . import __version__
from .errors import KvmError, KvmspeError, NotRepresentableError
from .units import ACCEPTED, U64_MAX, format_limit, format_size, format_size_hex, parse_size, parse_uint

# typing.TYPE_CHECKING without importing typing; mypy treats any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn, TextIO, TypeAlias

    #: A command's JSON document.
    Doc: TypeAlias = dict[str, Any]

__all__ = ["main", "build_parser"]

#: The default SPE interrupt: PPI 21, the INTID kvmtool and QEMU give the PMU's neighbour.
DEFAULT_IRQ = 21


class UsageError(KvmspeError, ValueError):
    """Bad input found after argument parsing (exit 2)."""


class _Args:
    """A namespace with the attributes argparse would set: what the codec
    commands' fast path (:func:`_codec_args`) hands to a command function."""

    def __init__(self, **attrs: object) -> None:
        self.__dict__.update(attrs)

    if TYPE_CHECKING:
        # As on argparse.Namespace: any attribute, untyped.
        def __getattr__(self, name: str) -> Any: ...


if TYPE_CHECKING:
    #: What a command function gets: argparse's namespace, or the fast path's.
    Args: TypeAlias = argparse.Namespace | _Args


# --- argument types ------------------------------------------------------------------------


def _uint_parser(what: str, maximum: int = U64_MAX, minimum: int = 0) -> Callable[[str], int]:
    """A parser of unsigned integers ``minimum..maximum`` named ``what``; raises ValueError."""

    def parse(text: str) -> int:
        return parse_uint(text, what=what, maximum=maximum, minimum=minimum)

    parse.__name__ = what
    return parse


def _argtype(parse: Callable[[str], int]) -> Callable[[str], int]:
    """``parse`` as an argparse type: its ValueError becomes a one-line argparse error."""

    def convert(text: str) -> int:
        try:
            return parse(text)
        except ValueError as exc:
            import argparse

            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def _argtype_or_none(parse: Callable[[str], int | None]) -> Callable[[str], int | None]:
    """As :func:`_argtype`, for a parser that may answer None."""

    def convert(text: str) -> int | None:
        try:
            return parse(text)
        except ValueError as exc:
            import argparse

            raise argparse.ArgumentTypeError(str(exc).replace(ACCEPTED, ACCEPTED + "; or max")) from None

    convert.__name__ = parse.__name__
    return convert


def _uint(what: str, maximum: int = U64_MAX, minimum: int = 0) -> Callable[[str], int]:
    return _argtype(_uint_parser(what, maximum, minimum))


_size = _argtype(parse_size)
#: The decode command's FIELD operand, for argparse and for the fast path alike.
_parse_field = _uint_parser("MaxBuffSize field", 0x3FFF)


# --- output ------------------------------------------------------------------------------


def _emit(args: Args, doc: Doc, lines: Sequence[str], code: int = 0) -> int:
    """Print ``doc`` as JSON with --json, else the human ``lines``; return ``code``."""
    if args.json:
        import json  # only when asked: the human path starts faster without it

        return _write(json.dumps(doc, indent=2) + "\n", code)
    return _write("".join(line + "\n" for line in lines), code)


class _Unwritten(Exception):
    """The answer, whose exit status is ``code``, could not be written to stdout
    (``errno``: EPIPE when the reader has gone). Handled by :func:`main` only."""

    def __init__(self, code: int, errno: int):
        super().__init__(code, errno)
        self.code = code
        self.errno = errno


def _write(text: str, code: int = 0) -> int:
    """Write ``text`` on stdout and flush it now, so that a failure is seen here,
    not at interpreter exit; return ``code``. Raises :class:`_Unwritten`."""
    stream = sys.stdout
    try:
        if stream is None:  # Python started with descriptor 1 closed
            raise OSError(_EBADF, "standard output is closed")
        stream.write(text)
        stream.flush()
    except (OSError, ValueError) as exc:  # ValueError: the stream object was closed
        raise _Unwritten(code, getattr(exc, "errno", None) or _EBADF) from None
    return code


def _say(line: str) -> None:
    """One line on stderr, if it can still take one; never an error of its own."""
    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        _discard(stream)


def _discard(stream: TextIO | None) -> None:
    """Point the process's own stdout or stderr that failed at /dev/null, so the
    text still buffered in it cannot fail again, or be reported, at exit."""
    own = stream is not None and (stream is sys.__stdout__ or stream is sys.__stderr__)
    if stream is None or not own:
        return
    import os

    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):
        return
    try:
        os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)


def _unwritten(exc: _Unwritten) -> int:
    """The exit status when the answer could not be written.

    A reader that went away (EPIPE, as in ``kvmspe sizes --limit 0 | head -1``)
    chose to stop reading: nothing is said and the answer's own status stands.
    Any other failure (stdout closed, a full device, an I/O error) means the
    answer was lost: one line on stderr and exit status 2, whatever the answer was.
    """
    _discard(sys.stdout)
    if exc.errno == _EPIPE:
        return exc.code
    import os

    why = "it is closed" if exc.errno == _EBADF else os.strerror(exc.errno)
    _say(f"kvmspe: error: cannot write the answer to standard output: {why}")
    return 2


def _one_line(text: str) -> str:
    return " ".join(text.split())


_sz = format_size_hex


def _table(rows: Sequence[tuple[str, str]], indent: str = "") -> list[str]:
    width = max((len(k) for k, _ in rows), default=0)
    return [f"{indent}{k:<{width}}  {v}".rstrip() for k, v in rows]


# --- codec commands ------------------------------------------------------------------------


def _field_doc(field: int) -> Doc:
    return {"field": field, "e": field >> 9, "m": field & 0x1FF}


def cmd_encode(args: Args) -> int:
    from .arch import maxbuf

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


def _decode_pmbidr(args: Args, value: int) -> int:
    from .arch import maxbuf
    from .arch.registers import PMBIDR_EL1

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


def cmd_decode(args: Args) -> int:
    from .arch import maxbuf

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
    from .arch import maxbuf

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
    rows = [("size", _sz(size)), ("page size", format_size(page))]
    if want_down:
        rows.append(("down", _sz(down) + ("  (0 means no limit!)" if down == 0 and size else "")))
    if want_up:
        rows.append(("up", _sz(up) if up is not None else "none: above the largest size, 1023 << 42"))
    lines = _table(rows)
    return _emit(args, doc, lines, 1 if want_up and up is None else 0)


def cmd_sizes(args: argparse.Namespace) -> int:
    from .arch import maxbuf

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
    import re

    from . import abi

    topic: str = args.topic.strip()
    key = topic.upper()
    meanings: list[Doc] = []
    by_name = {n: info for info in abi.ATTRS.values() for n in info.names}
    group_names = {name: g for groups in abi.GROUP_NAMES.values() for g, name in groups.items()}

    code: int | None = None
    if re.fullmatch(r"[0-9]{1,9}", topic):
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
                        {
                            "attribute": attribute,
                            "call": call,
                            "errno": code,
                            "name": name,
                            "meaning": table[code],
                        }
                    )
        doc: Doc = {
            "query": topic,
            "kind": "errno",
            "errno": code,
            "name": name,
            "strerror": os.strerror(code),
            "meanings": meanings,
        }
        lines = [f'{name} (errno {code}, "{os.strerror(code)}")']
        lines += [f"  {m['attribute']} {m['call']}: {m['meaning']}" for m in meanings]
        if not meanings:
            lines.append("  no SPE attribute call or KVM_RUN answers this errno")
        return _emit(args, doc, lines, 0 if meanings else 1)

    infos: list[tuple[str, dict[str, dict[int, str]]]] = []
    extra: Doc = {}
    if key in by_name:
        info = by_name[key]
        infos = [(info.name, info.errnos)]
        extra = {
            "group": info.group,
            "attr": info.attr,
            "names": list(info.names),
            "value_type": "none" if info.value is None else "__u64" if info.value is abi.U64 else "int",
        }
        where = (
            "takes no value (addr 0, not read)"
            if info.value is None
            else f"value {extra['value_type']} at kvm_device_attr.addr"
        )
        header = f"{info.name} (group {info.group}, attribute {info.attr}, {where})"
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
                meanings.append(
                    {"attribute": attribute, "call": call, "errno": c, "name": n, "meaning": meaning}
                )
                prefix = f"{attribute} {call}" if len(infos) > 1 else call
                lines.append(f"  {prefix:<5} {n:<7} {meaning}")
    doc = {"query": topic, "kind": "name", **extra, "meanings": meanings}
    return _emit(args, doc, lines)


# --- probe ------------------------------------------------------------------------------------


_limit = format_limit


def cmd_probe(args: argparse.Namespace) -> int:
    from . import abi
    from .affinity import describe_cpus
    from .host import discovery

    abi.ASSUMED.check()  # a bad KVMSPE_* number is bad input (exit 2), found before probing
    _families(args, lambda: None)  # the output options, checked before any work
    _textfile_dir(args.textfile)

    if args.fixture is not None:
        roots = discovery.fixture_roots(args.fixture)
        info = discovery.discover(sysfs_root=roots["sysfs_root"], procfs_root=roots["procfs_root"])
    else:
        info = discovery.discover()
    can = info.kvm_usable and info.spe_supported
    if can:
        reason = info.spe_reason
    elif not info.kvm_usable:
        reason = info.kvm_reason or "KVM is not usable"
    else:
        reason = info.spe_reason
    doc: Doc = {"can_run_spe_guests": can, "reason": reason, "host": info.to_dict()}
    kvm = f"usable, API version {info.api_version}" if info.kvm_usable else f"not usable: {info.kvm_reason}"
    rows = [
        ("host", f"{info.arch}, Linux {info.kernel_release}, page size {format_size(info.page_size)}"),
        (info.dev_kvm, kvm),
        ("SPE in KVM", ("yes: " if info.spe_supported else "no: ") + info.spe_reason),
    ]
    if info.spe_feature_reason:
        rows.append(("SPE VCPU feature", info.spe_feature_reason))
    if info.cap_arm_spe_reason:
        rows.append(("KVM_CAP_ARM_SPE", info.cap_arm_spe_reason))
    for inst, shown in zip(info.spe_instances, doc["host"]["spe_instances"], strict=True):
        shown["cpu_count"] = len(inst.cpus)
    if info.spe_instances:
        for inst in info.spe_instances:
            limit = inst.max_buff_size
            if inst.cpus:
                cpus = describe_cpus(inst.cpus)
            else:
                why = next((p for p in inst.problems if p.startswith("cpumask")), "cpumask empty")
                cpus = f"CPUs not known ({why})"
            rows.append(
                (
                    inst.name,
                    f"perf type {inst.type}, {cpus}, max_buff_size "
                    + ("not exposed" if limit is None else _sz(limit)),
                )
            )
    else:
        rows.append(("SPE units", f"none: {info.spe_instances_reason}"))
    memlock = f"soft {_limit(info.memlock_soft)}, hard {_limit(info.memlock_hard)}"
    rows.append(("RLIMIT_MEMLOCK", memlock if info.memlock_reason is None else info.memlock_reason))
    rows.append(("VmLck", _sz(info.vm_lck) if info.vm_lck is not None else str(info.vm_lck_reason)))
    lines = _table(rows)
    if can:
        lines.append("answer: this host can run SPE guests (kvmspe configure uses the real kernel)")
    else:
        lines.append("answer: this host cannot run SPE guests; kvmspe configure models one instead")
    families = _families(args, lambda: _metrics().probe_families(info))
    return _output(args, "probe", doc, lines, families, 0 if can else 1)


# --- status and Prometheus ---------------------------------------------------------------------

#: The file ``--textfile DIR`` writes, by command: node_exporter's textfile collector reads DIR/*.prom.
TEXTFILES = {"status": "kvmspe.prom", "probe": "kvmspe-probe.prom", "plan": "kvmspe-plan.prom"}


def _textfile_dir(directory: str | None) -> str | None:
    """``directory`` when a textfile may be written in it (checked before any work), else a UsageError."""
    import errno
    import os

    if directory is None:
        return None
    accepted = "accepted: an existing directory, e.g. /var/lib/node_exporter/textfile_collector"
    if not directory.strip() or any(ord(c) < 0x20 or c == "\x7f" for c in directory):
        raise UsageError(f"--textfile {directory!r}: not a directory name; {accepted}")
    if not os.path.isdir(directory):
        raise UsageError(f"--textfile {directory!r} is not a directory; {accepted}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"--textfile {directory!r}: cannot write in it: {os.strerror(errno.EACCES)}")
    return directory


def _write_textfile(directory: str, command: str, text: str) -> str:
    """Write ``text`` as DIR/NAME atomically (a temporary file in DIR, then a rename); its path."""
    import os

    path = os.path.join(directory, TEXTFILES[command])
    data = text.encode("utf-8")
    _write_atomically(
        path,
        lambda f: f.write(data),
        option="--textfile",
        accepted=f"a directory whose {TEXTFILES[command]} is a regular file or absent",
    )
    return path


def _output(args: Args, command: str, doc: Doc, lines: list[str], families: Any, code: int) -> int:
    """As :func:`_emit`, with the exposition text of ``families`` on stdout for ``--prometheus``,
    and written to DIR for ``--textfile DIR`` (whatever stdout shows; the path is reported)."""
    from . import prometheus

    if families is None:
        return _emit(args, doc, lines, code)
    text = prometheus.render(families)
    if args.textfile is not None:
        path = _write_textfile(args.textfile, command, text)
        doc = {**doc, "textfile": path}
        lines = [*lines, f"wrote {path}"]
    if args.prometheus:
        return _write(text, code)
    return _emit(args, doc, lines, code)


def _families(args: Args, make: Callable[[], Any]) -> Any:
    """The metric families when --prometheus or --textfile asks for them, else None."""
    if args.json and args.prometheus:
        raise UsageError("--json and --prometheus both given; accepted: one output format")
    return make() if args.prometheus or args.textfile is not None else None


def _proc(pid: int, command: str | None) -> str:
    return f"{pid} ({command})" if command is not None else str(pid)


def _status_lines(rep: Any) -> list[str]:
    """The human ``status``: one row per process, then who was not inspected, then the answer."""
    n = len(rep.processes)
    lines = [
        f"kvmspe status: {n} process{'es' if n != 1 else ''} with KVM fds of {rep.scan.scanned} looked at;"
        f" a warning when the headroom is below {rep.threshold.describe()}"
    ]
    head = ("PID", "COMMAND", "VMS", "VCPUS", "VmLck", "soft limit", "hard limit", "headroom")
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for st in rep.processes:
        p, m = st.process, st.process.memlock
        if m is None:
            cells = ("?", "?", "?", "?")
        else:
            room = "unlimited" if st.headroom is None else _signed_size(st.headroom)
            if st.headroom_percent is not None:
                room += f" ({st.headroom_percent:.1f}%)"
            cells = (format_size(m.vm_lck), _limit_short(m.soft), _limit_short(m.hard), room)
        rows.append((str(p.pid), p.command, str(p.fds.vms), str(p.fds.vcpus), *cells))
        if st.past_threshold:
            notes.append(
                f"warning: pid {p.pid} ({p.command}): headroom {_signed_size(st.headroom)} is below"
                f" {_threshold_text(rep.threshold, m)}; the next SPE buffer its guests enable may stop"
                " KVM_RUN with KVM_EXIT_RLIMIT"
            )
        if p.problem is not None:
            notes.append(f"pid {p.pid} ({p.command}): {p.problem}")
    if rows:
        widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]
        for r in (head, *rows):
            lines.append("  " + "  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=True)).rstrip())
    lines += notes
    by_reason: dict[str, list[str]] = {}
    for u in rep.scan.uninspectable:
        by_reason.setdefault(u.reason, []).append(_proc(u.pid, u.command))
    for reason, procs in by_reason.items():
        lines.append(f"not inspected, /proc/PID/fd unreadable ({reason}): {', '.join(procs)}")
    for pid in rep.scan.without_kvm:
        lines.append(f"pid {pid}: holds no KVM fd")
    past = rep.past_threshold
    if past:
        pids = ", ".join(str(st.process.pid) for st in past)
        n = len(past)
        lines.append(f"answer: {n} process{'es are' if n != 1 else ' is'} past the threshold (pid {pids})")
    elif rows:
        lines.append("answer: every process inspected has its headroom above the threshold")
    else:
        lines.append("answer: no process inspected holds a KVM fd")
    return lines


def _threshold_text(threshold: Any, m: Any) -> str:
    """The threshold for one process: ``64 KiB``, or ``10% of its 1 MiB soft limit``."""
    if threshold.percent is None:
        return format_size(threshold.nbytes)
    return f"{threshold.percent:g}% of its {format_size(m.soft)} soft limit"


def _signed_size(n: int | None) -> str:
    if n is None:
        return "unlimited"
    return f"-{format_size(-n)}" if n < 0 else format_size(n)


def _limit_short(n: int | None) -> str:
    return "unlimited" if n is None else format_size(n)


def cmd_status(args: argparse.Namespace) -> int:
    from . import status
    from .host import kvmprocs

    _families(args, lambda: None)  # the output options, checked before any work
    _textfile_dir(args.textfile)
    threshold = status.DEFAULT_THRESHOLD if args.warn_below is None else args.warn_below
    rep = status.report(kvmprocs.scan(args.pid), threshold)
    code = 1 if rep.past_threshold else 0
    families = _families(args, lambda: _metrics().status_families(rep))
    return _output(args, "status", rep.to_dict(), _status_lines(rep), families, code)


def _metrics() -> Any:
    from . import metrics

    return metrics


# --- plan -------------------------------------------------------------------------------------

#: The plot's size in pixels, and its resolution: a PNG of exactly this size.
PLOT_PIXELS = (900, 560)
PLOT_DPI = 100
#: Colours of the plot: one per pinning case, the chosen size, the RLIMIT_MEMLOCK line.
#: The chosen size's colour is used by nothing else, so the marker can be found in the PNG.
PLOT_COLOURS = {
    "best": "#1b9e77",
    "typical": "#7570b3",
    "worst": "#d95f02",
    "chosen": "#e7298a",
    "limit": "#444444",
}


def _plot_module() -> Any:
    """matplotlib's Figure class (no pyplot, no global backend), or a one-line error naming the extra."""
    import importlib

    try:
        figure = importlib.import_module("matplotlib.figure")
        importlib.import_module("matplotlib.ticker")
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed: pip install 'kvmspe[plot]'"
        ) from None
    return figure.Figure


def _plot_target(path: str) -> str:
    """``path`` when a PNG may be written there (checked before any work), else a UsageError."""
    import errno
    import os
    import stat

    if not path.strip():
        raise UsageError("--plot needs a file name, e.g. --plot pinned.png")
    if not path.lower().endswith(".png"):
        raise UsageError(f"--plot {path!r}: the plot is a PNG; accepted: a file name ending in .png")
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        # A NUL cannot reach the OS; a newline would split "plot written to ..." in two.
        raise UsageError(
            f"--plot {path!r} holds a control character; accepted: a file name ending in .png without one"
        )
    if os.path.isdir(path):
        raise UsageError(f"--plot {path!r} is a directory; accepted: a file name ending in .png")
    # The target and its directory, before any drawing: the write itself says again if it fails later.
    from . import files

    try:
        target = files.target_of(path)
    except OSError as exc:
        raise UsageError(f"--plot {path!r}: cannot write it: {exc.strerror}") from None
    if os.path.exists(target) and not os.path.isfile(target):
        raise UsageError(f"--plot {path!r} is not a regular file; accepted: a new or regular .png file")
    if os.path.isfile(target) and not os.access(target, os.W_OK):
        raise UsageError(f"--plot {path!r}: cannot write it: {os.strerror(errno.EACCES)}")
    directory = os.path.dirname(target) or "."
    try:
        is_dir = stat.S_ISDIR(os.stat(directory).st_mode)
        reason = "" if is_dir else os.strerror(errno.ENOTDIR)
    except OSError as exc:
        reason = exc.strerror or str(exc)
    if not reason and not os.access(directory, os.W_OK | os.X_OK):
        reason = os.strerror(errno.EACCES)
    if reason:
        raise UsageError(f"--plot {path!r}: cannot write in {directory!r}: {reason}")
    return path


def _write_atomically(
    path: str,
    write: Callable[[Any], None],
    *,
    option: str = "--plot",
    accepted: str = "a new or regular .png file",
) -> None:
    """Write ``path`` whole with :func:`kvmspe.files.replace_whole`: readers, and
    signals, see the old file or the whole new one; a symbolic link is written
    through and stays, an existing file keeps its mode and owner, and a file a
    plain write could not change is refused. ``option`` and ``accepted`` name
    the command-line option in the errors, and what it accepts."""
    import errno
    import os

    from . import files

    try:
        files.replace_whole([(path, write)])
    except OSError as exc:
        why = exc.strerror or os.strerror(exc.errno or 0) or str(exc)
        if exc.errno == errno.EINVAL and exc.filename == path:
            raise UsageError(f"{option} {path!r} is not a regular file; accepted: {accepted}") from None
        if isinstance(exc, FileNotFoundError | NotADirectoryError) or exc.filename not in (None, path):
            directory = os.path.dirname(files.target_of(path)) or "."
            raise UsageError(f"{option} {path!r}: cannot write in {directory!r}: {why}") from None
        raise UsageError(f"{option} {path!r}: cannot write it: {why}") from None


def _binary_ticks(value: float, _pos: object = None) -> str:
    """An axis label for a power-of-two byte count: ``64 KiB``, ``1 GiB``."""
    n = int(value)
    return format_size(n) if n > 0 and n == value else ""


def _distinct_ratios(values: dict[str, float], least: int = 2, most: int = 8) -> dict[str, str]:
    """Each value as ``x1.00``, with more decimals only for values that would otherwise
    read the same as a different one (``x1.0010`` and ``x1.0034``, not both ``x1.00``)."""
    digits = dict.fromkeys(values, least)

    def text(key: str) -> str:
        return f"x{values[key]:.{digits[key]}f}"

    while True:
        clash = {
            a
            for a in values
            for b in values
            if values[a] != values[b] and text(a) == text(b) and digits[a] < most
        }
        if not clash:
            return {key: text(key) for key in values}
        for key in clash:
            digits[key] += 1


#: The plot's notes: characters per line of warning text, its size and colour.
PLOT_NOTE_WIDTH = 125
PLOT_NOTE_FONT = 8
PLOT_NOTE_COLOUR = "#b2182b"


def _plot_notes(plan: Any) -> list[str]:
    """The planner's warnings as the plot shows them, wrapped to fit its width."""
    import textwrap

    lines: list[str] = []
    for w in plan.warnings:
        lines += textwrap.wrap(f"warning: {w}", PLOT_NOTE_WIDTH, subsequent_indent="  ")
    return lines


def _plot_labels(plan: Any) -> dict[str, str]:
    """The legend's label of each case: its amplification at the chosen size, told apart."""
    from . import planner

    if not plan.size:
        return {case: case for case in planner.PINNING_CASES}
    ratios = _distinct_ratios({case: plan.pinned[case]["amplification"] for case in planner.PINNING_CASES})
    return {case: f"{case} ({ratios[case]} at the chosen size)" for case in planner.PINNING_CASES}


def _draw_plot(figure_class: Any, path: str, plan: Any) -> Any:
    """Pinned memory per VM against the max buffer size, one curve per case; the
    chosen size as a vertical line with each case's figure on it, the
    RLIMIT_MEMLOCK the plan gives as a horizontal line, and the planner's
    warnings under the axes. Written atomically; returns the figure."""
    import importlib

    from . import planner

    ticker = importlib.import_module("matplotlib.ticker")
    up_to = max(plan.size * 4, 64 << 20)
    if plan.spu_limit:
        up_to = min(up_to, plan.spu_limit)
    sweep = planner.sweep(
        plan.vcpus, page_size=plan.page_size, granule=plan.granule, levels=plan.levels, up_to=up_to
    )
    if not sweep.sizes:  # only with size 0 (no limit): a chosen size always fits
        raise UsageError(
            f"--plot: not even one {format_size(plan.page_size)} page per VCPU fits {plan.vcpus} VCPUs"
            f" in a {plan.va_bits}-bit guest VA space, so there is no size to draw;"
            " accepted: fewer VCPUs, or more --levels"
        )
    width, height = PLOT_PIXELS
    fig = figure_class(figsize=(width / PLOT_DPI, height / PLOT_DPI), dpi=PLOT_DPI)
    ax = fig.subplots()
    # best and typical nearly coincide: best wide underneath, typical dashed on top.
    styles = {"best": ("-", 4.0), "typical": ("--", 1.5), "worst": ("-", 1.5)}
    labels = _plot_labels(plan)
    for case in planner.PINNING_CASES:
        label = labels[case]
        linestyle, linewidth = styles[case]
        ax.plot(
            sweep.sizes,
            sweep.per_vm[case],
            linestyle=linestyle,
            linewidth=linewidth,
            marker="o",
            markersize=3,
            color=PLOT_COLOURS[case],
            label=label,
        )
    if plan.size:
        ax.axvline(
            plan.size, color=PLOT_COLOURS["chosen"], linewidth=2, label=f"chosen: {format_size(plan.size)}"
        )
        for case in planner.PINNING_CASES:
            ax.plot(
                [plan.size],
                [plan.pinned[case]["per_vm"]],
                marker="D",
                markersize=7,
                color=PLOT_COLOURS["chosen"],
                markeredgecolor=PLOT_COLOURS[case],
            )
    if plan.memlock_limit is not None:
        ax.axhline(
            plan.memlock_limit,
            color=PLOT_COLOURS["limit"],
            linestyle=":",
            linewidth=1.5,
            label=f"RLIMIT_MEMLOCK ({plan.case}): {format_size(plan.memlock_limit)}",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    # Half an octave of room on each side of the sizes drawn, and no more.
    ax.set_xlim(sweep.sizes[0] / 2**0.5, max(sweep.sizes[-1], plan.size) * 2**0.5)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(ticker.FuncFormatter(_binary_ticks))
    ax.grid(True, which="major", color="#dddddd", linewidth=0.6)
    ax.set_xlabel("max buffer size (KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE)")
    ax.set_ylabel("host memory pinned per VM")
    ax.set_title(
        f"SPE buffers of {plan.vcpus} VCPU{'s' if plan.vcpus != 1 else ''}: {format_size(plan.page_size)}"
        f" host pages, {format_size(plan.granule)} guest granule, {plan.levels} levels",
        fontsize=11,
    )
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    notes = _plot_notes(plan)
    if notes:
        # Room under the axes for the notes: a line is about 1.4 times the font size.
        line = 1.4 * PLOT_NOTE_FONT / 72 * PLOT_DPI / height
        bottom = fig.subplotpars.bottom
        fig.subplots_adjust(bottom=bottom + line * len(notes))
        fig.text(
            0.01,
            0.01,
            "\n".join(notes),
            fontsize=PLOT_NOTE_FONT,
            color=PLOT_NOTE_COLOUR,
            ha="left",
            va="bottom",
        )
    _write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=PLOT_DPI))
    return fig


def _parse_plan_size(text: str) -> int | None:
    """A max buffer size for ``plan``: a size, or ``max`` for the SPU's own limit (None)."""
    if text.strip().lower() == "max":
        return None
    return parse_size(text)


def _plan_host(args: argparse.Namespace) -> Any:
    from . import planner

    if args.profile is not None:
        return planner.PlanHost.from_profile(args.profile)
    if args.fixture is not None:
        return planner.PlanHost.from_fixture(args.fixture)
    return planner.PlanHost.configured()


def _cpus(cpus: Sequence[int]) -> str:
    from .affinity import describe_cpus

    return describe_cpus(cpus) if cpus else "CPUs not known"


def _vcpu_cpu_lines(vcpu_cpus: Sequence[Sequence[int]]) -> str:
    """Runs of VCPUs with the same CPUs: ``vcpus 0-3: CPUs 4-7``."""
    runs: list[tuple[int, int, Sequence[int]]] = []
    for i, cpus in enumerate(vcpu_cpus):
        if runs and runs[-1][2] == cpus:
            runs[-1] = (runs[-1][0], i, cpus)
        else:
            runs.append((i, i, cpus))
    return "; ".join(
        (f"vcpu {a}" if a == b else f"vcpus {a}-{b}") + f": {_cpus(cpus)}" for a, b, cpus in runs
    )


def _wrapped(key: str, text: str, width: int = 92) -> list[tuple[str, str]]:
    """``text`` as table rows of at most ``width`` characters, the key on the first."""
    import textwrap

    return [(key if i == 0 else "", part) for i, part in enumerate(textwrap.wrap(text, width))]


def _pinned_rows(plan: Any) -> list[tuple[str, str]]:
    """The cases as a table: per VM, per VCPU, data, tables, amplification, one more VCPU."""
    from . import planner

    head = ("per VM", "per VCPU", "data", "tables", "amplification", "one more VCPU")
    cells: dict[str, tuple[str, ...]] = {}
    for case in planner.PINNING_CASES:
        c = plan.pinned[case]
        if c["per_vm"] is None:
            continue
        more = "none fits" if c["one_more_vcpu"] is None else "+" + format_size(c["one_more_vcpu"])
        cells[case] = (
            format_size(c["per_vm"]),
            format_size(c["per_vcpu"]),
            format_size(c["data"]),
            format_size(c["tables"]),
            f"x{c['amplification']:.4f}",
            more,
        )
    if not cells:
        return [("pinned", "unbounded (max buffer size 0 = no limit): bounded only by guest RAM")]
    widths = [max(len(head[i]), *(len(v[i]) for v in cells.values())) for i in range(len(head))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(f"{v:>{w}}" for v, w in zip(values, widths, strict=True))

    rows = [("pinned", line(head))]
    for case, values in cells.items():
        mark = "  <- RLIMIT_MEMLOCK" if case == plan.case else ""
        rows.append((f"  {case}", line(values) + mark))
    return rows


def cmd_plan(args: argparse.Namespace) -> int:
    from . import planner

    figure_class = None
    _families(args, lambda: None)  # the output options, checked before any work
    _textfile_dir(args.textfile)
    if args.plot is not None:
        _plot_target(args.plot)
        figure_class = _plot_module()
    host = _plan_host(args)
    plan = planner.plan(
        args.vcpus,
        args.max_buffer_size,
        page_size=args.page_size,
        spu_limit=args.spu_limit,
        granule=args.granule,
        levels=args.levels,
        locked_already=args.locked,
        case=args.case,
        host=host,
        spu=args.spu,
    )
    doc: Doc = plan.to_dict()
    doc["paste"] = paste = planner.memlock_settings(plan.memlock_limit, args.user)
    doc["plot"] = args.plot
    rows = [("host", f"{host.source}: {format_size(host.page_size)} pages")]
    for s in host.spus:
        limit = f"limit {format_size(s.max_buffer_size)}" if s.max_buffer_size else "no limit"
        chosen = "  (chosen)" if s.id == plan.spu else ""
        rows.append((f"  SPU {s.id}", f"{_cpus(s.cpus)}, {limit}{chosen}"))
    if not host.spus:
        rows.append(("  SPE units", "none"))
    page = format_size(plan.page_size)
    if plan.page_size != host.page_size:
        page += f" (--page-size; the host has {format_size(host.page_size)})"
    on = "" if plan.spu is None else f" on SPU {plan.spu}"
    rows.append(
        (
            "VM",
            f"{plan.vcpus} VCPU{'s' if plan.vcpus != 1 else ''}{on}; host pages {page}; guest granule"
            f" {format_size(plan.granule)}, {plan.levels} levels ({plan.va_bits}-bit VA)",
        )
    )
    if plan.vcpu_cpus is not None:
        rows.append(("VCPU CPUs", _vcpu_cpu_lines(plan.vcpu_cpus)))
    spu_limit = "none" if not plan.spu_limit else format_size(plan.spu_limit)
    if args.spu_limit is not None:
        spu_limit += " (--spu-limit)"
    rows.append(("SPU limit", spu_limit))
    rows.append(("max buffer size", format_size(plan.size) + ("  (0 = no limit)" if plan.size == 0 else "")))
    rows.append(
        (
            "set",
            f"KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE={plan.size}"
            f"  (PMBIDR_EL1.MaxBuffSize {plan.max_buff_size_field:#06x})",
        )
    )
    rows += _pinned_rows(plan)
    for case in planner.PINNING_CASES:
        if plan.pinned[case]["why"] is not None:
            rows += _wrapped(f"why, {case}", plan.pinned[case]["why"])
    if plan.memlock_limit is None:
        rows.append(("RLIMIT_MEMLOCK", "unlimited (nothing bounds what the guest pins)"))
    else:
        parts = [f"{format_size(plan.locked_already)} locked already"]
        if plan.held_at_set:
            parts.append(f"{format_size(plan.held_at_set)} held from the set")
        parts.append(f"{format_size(plan.pinned[plan.case]['per_vm'])} pinned in the {plan.case} case")
        rows.append(("RLIMIT_MEMLOCK", f"{format_size(plan.memlock_limit)} = {' + '.join(parts)}"))
    if plan.memlock_limit is None:
        missing = {"libvirt": "no finite <hard_limit>: the limit is unbounded"}
    else:
        missing = {
            "ulimit": f"none: bash's ulimit -l takes at most {planner.ULIMIT_KIB_MAX} KiB",
            "libvirt": f"none: libvirt reads {planner.LIBVIRT_UNLIMITED_KIB} KiB and more as unlimited",
            "pam_limits_soft": f"none: pam_limits takes at most {planner.ULIMIT_KIB_MAX} KiB",
            "docker": f"none: docker and podman take at most {planner.CONTAINER_ULIMIT_MAX} bytes",
        }
    for key in ("systemd", "ulimit", "libvirt", "prlimit"):
        value = paste[key]
        rows.append((key, value if value is not None else missing[key]))
    if paste["pam_limits_soft"] is None:
        rows.append(("limits.conf", missing["pam_limits_soft"]))
    else:
        rows += [("limits.conf", paste["pam_limits_soft"]), ("", str(paste["pam_limits_hard"]))]
    rows.append(("docker, podman", paste["docker"] or missing["docker"]))
    rows += _wrapped(
        "note",
        "libvirt's hard_limit caps all of QEMU's memory, not only what it locks: for libvirt,"
        " plan with --locked set to guest RAM plus QEMU's own memory",
    )
    lines = _table(rows)
    lines += [f"warning: {w}" for w in plan.warnings]
    if figure_class is not None:
        _draw_plot(figure_class, args.plot, plan)
        lines.append(f"plot written to {args.plot}")
    families = _families(args, lambda: _metrics().plan_families(plan))
    return _output(args, "plan", doc, lines, families, 0)


# --- configure --------------------------------------------------------------------------------


def _step_lines(steps: Sequence[Doc]) -> list[str]:
    """The steps of ``configure`` for people: one line per step, except that a VCPU's
    successful HAS/SET pairs share a line, and a successful step repeated on
    consecutive VCPUs is shown once for all."""
    rows: list[tuple[list[int], bool, str, str]] = []
    for s in steps:
        step, vcpu, ok, detail = s["step"], s["vcpu"], s["ok"], s["detail"]
        last = rows[-1] if rows else None
        if ok and not detail and step.startswith("has "):
            continue  # shown with its SET; a failing HAS is shown on its own
        if ok and not detail and step.startswith("set "):
            text = step.removeprefix("set ")
            if last and last[0] == [vcpu] and last[1] and last[2].startswith("HAS+SET "):
                rows[-1] = (last[0], True, f"{last[2]}, {text}", "")
            else:
                rows.append(([vcpu], True, f"HAS+SET {text}", ""))
            continue
        rows.append(([] if vcpu is None else [vcpu], ok, step, detail))
    merged: list[tuple[list[int], bool, str, str]] = []
    for row in rows:
        prev = merged[-1] if merged else None
        if (
            prev
            and row[1]
            and prev[1]
            and row[0]
            and prev[0]
            and prev[2:] == row[2:]
            and prev[0][-1] + 1 == row[0][0]
        ):
            prev[0].append(row[0][0])
        else:
            merged.append(row)
    out = []
    for vcpus, ok, step, detail in merged:
        if not vcpus:
            where = ""
        elif len(vcpus) == 1:
            where = f"vcpu {vcpus[0]}: "
        else:
            where = f"vcpus {vcpus[0]}-{vcpus[-1]}: "
        mark = "ok  " if ok else "FAIL"
        out.append(f"  {mark} {where}{step}" + (f"  ({detail})" if detail else ""))
    return out


#: What to do about a configuration step the kernel refused, by its errno.
_HINTS = {
    "EDOM": "'kvmspe round SIZE' gives the nearest sizes KVM accepts",
    "ENOMEM": "raise RLIMIT_MEMLOCK: --raise-memlock, or a larger --memlock on the model",
    "ERANGE": "the SPU limits the size: see 'kvmspe probe'",
}

#: What to do when the bring-up stopped, by :attr:`kvmspe.vmm.BringUpResult.stop`.
_STOP_HINTS = {"rlimit": "pass --raise-memlock to raise the limit and re-enter"}


def cmd_configure(args: argparse.Namespace) -> int:
    from . import vmm

    if args.enable_buffer is not None and args.backend == "kvm" and not vmm._guest_scriptable():
        raise UsageError(
            "--enable-buffer simulates the guest, which only the model can, or the real backend under"
            " kvmspe's shim: use --backend model, or run under 'kvmspe shim run'"
        )
    model_only = [
        opt
        for opt, value in (
            ("--profile", args.profile),
            ("--memlock", args.memlock),
            ("--locked", args.locked),
        )
        if value is not None
    ]
    if model_only and args.backend == "kvm":
        raise UsageError(
            f"{', '.join(model_only)}: only for the model, which the real kernel does not use"
            " (its host is this one, its RLIMIT_MEMLOCK this process's); use --backend model or auto"
        )
    if args.enable_buffer is not None:
        size = args.enable_buffer or args.max_buffer_size
        if size == 0 or size % 4096:
            raise UsageError(f"--enable-buffer {size:#x}: a buffer is a non-zero multiple of 4 KiB")
    choice = vmm.choose_backend(
        args.backend, profile=args.profile, memlock_limit=args.memlock, locked=args.locked or 0
    )
    r = vmm.bring_up(
        choice,
        vcpus=args.vcpus,
        irq=args.irq,
        spu=args.spu,
        max_buffer_size=args.max_buffer_size,
        raise_memlock=args.raise_memlock,
        case=args.case,
        enable_buffer=args.enable_buffer,
        strict_placement=args.strict_placement,
    )
    steps: list[Doc] = []
    for st in r.steps:
        hint = _HINTS.get(st.errno_name or "") if not st.ok else None
        steps.append(
            {
                "step": st.step,
                "vcpu": st.vcpu,
                "ok": st.ok,
                "detail": st.detail + (f"; {hint}" if hint else ""),
            }
        )
    error = r.error
    if error is not None and r.stop is not None:
        error = f"{error}; {_STOP_HINTS[r.stop]}"
    doc: Doc = {
        "ok": r.ok,
        "backend": choice.name,
        "backend_reason": choice.reason,
        "profile": args.profile,
        "vcpus": args.vcpus,
        "irq": args.irq,
        "spu": r.spu,
        "max_buffer_size": args.max_buffer_size,
        "case": args.case,
        "page_size": r.page_size,
        "spu_cpus": list(r.spu_cpus),
        "vcpu_cpus": [list(c) for c in r.vcpu_cpus],
        "vcpu_thread_cpus": None
        if r.vcpu_thread_cpus is None
        else [None if c is None else list(c) for c in r.vcpu_thread_cpus],
        "steps": steps,
        "guest_pmbidr": r.guest_pmbidr,
        "guest_pmbidr_fields": r.guest_pmbidr_fields,
        "guest_max_buffer_size": r.guest_max_buffer_size,
        "pinned_per_vcpu": r.pinned_per_vcpu,
        "locked_bytes": r.locked_bytes,
        "vm_lck": r.vm_lck,
        "memlock_limit": r.memlock_limit,
        "warnings": list(r.warnings),
        "error": error,
    }
    lines = [
        f"kvmspe configure: {args.vcpus} VCPU(s), IRQ {args.irq}, SPU {r.spu},"
        f" max buffer size {_sz(r.max_buffer_size)}",
        *_step_lines(steps),
    ]
    if r.guest_pmbidr is not None:
        f = r.guest_pmbidr_fields
        assert f is not None
        lines.append(
            f"guest PMBIDR_EL1 = {r.guest_pmbidr:#018x}  (MaxBuffSize"
            f" {f['MaxBuffSize']:#06x} = {_sz(r.guest_max_buffer_size)},"
            f" ALIGN {f['ALIGN']}, EA {f['EA']})"
        )
    if r.pinned_per_vcpu is not None:
        per = ", ".join(format_size(p) for p in r.pinned_per_vcpu)
        lines.append(f"pinned per VCPU: {per}")
    if r.locked_bytes is not None:
        lines.append(
            f"locked {_sz(r.locked_bytes)}, VmLck {_sz(r.vm_lck)}, RLIMIT_MEMLOCK {_limit(r.memlock_limit)}"
        )
    elif r.vm_lck is not None:
        lines.append(f"VmLck {_sz(r.vm_lck)}, RLIMIT_MEMLOCK {_limit(r.memlock_limit)}")
    lines += [f"warning: {w}" for w in r.warnings]
    if error:
        lines.append(f"stopped: {error}")
    else:
        lines.append("done: SPE is configured on every VCPU")
    return _emit(args, doc, lines, 0 if r.ok else 1)


# --- conformance and vectors ---------------------------------------------------------------------


def cmd_conformance(args: argparse.Namespace) -> int:
    from .conformance import runner as conformance

    report = conformance.run(args.backend, scripted_guest=not args.no_scripted_guest)
    return _emit(args, report.to_dict(), report.render().splitlines(), 0 if report.ok else 1)


def cmd_vectors(args: argparse.Namespace) -> int:
    from .export import vectors

    if not args.out.strip():
        raise UsageError("--out needs a directory, e.g. --out vectors/ (an empty name is refused)")
    paths = vectors.write(args.out)
    doc: Doc = {"out": args.out, "files": [str(p) for p in paths]}
    return _emit(args, doc, [f"wrote {p}" for p in paths])


def cmd_export(args: argparse.Namespace) -> int:
    from . import export

    text = export.render(args.lang)
    if args.json:
        return _emit(args, {"lang": args.lang, "text": text}, [])
    return _write(text)


# --- the guest's firmware description -----------------------------------------------------------


def _guest_perf(args: argparse.Namespace) -> int:
    """``guest --perf``: per SPE unit of this guest (or a snapshot of one), the largest AUX
    buffer perf may map, the command line, what happens above it, and why."""
    from . import perfaux
    from .host import discovery

    if args.fixture is not None:
        sysfs = discovery.fixture_roots(args.fixture)["sysfs_root"]
        page, page_why = 4096, "assumed: a snapshot does not record it; --page-size to change"
    else:
        sysfs = "/sys"
        page, page_why = discovery.page_size(), "this system's"
    if args.page_size is not None:
        page, page_why = args.page_size, "--page-size"
    from .arch import maxbuf

    maxbuf.check_page_size(page, "--page-size")
    given = args.max_buffer_size
    if given is not None and not maxbuf.is_representable(given):
        raise UsageError(
            f"--max-buffer-size {_sz(given)} is not a MaxBuffSize size, so no VM advertises it;"
            " accepted: a size 'kvmspe sizes' lists, e.g. the 'max buffer size' of the host's 'kvmspe plan'"
        )
    instances, why_none = discovery.read_spe_instances(sysfs)
    if not instances:
        doc0: Doc = {"page_size": page, "page_size_source": page_why, "units": [], "reason": why_none}
        line = (
            f"no SPE unit here, so perf cannot profile with SPE: {why_none}"
            " (is the SPE node in the guest's device tree or ACPI tables? 'kvmspe guest --dt' prints one)"
        )
        return _emit(args, doc0, [line.replace("the host kernel's SPE driver", "the SPE driver")], 1)
    fits, ignored = perfaux.fit_units(instances, page, given)
    notes = list(perfaux.NOTES)
    doc: Doc = {
        "page_size": page,
        "page_size_source": page_why,
        "units": [f.to_dict() for f in fits],
        "mmap_error": perfaux.MMAP_ERROR,
        "perf_default_aux": dict(perfaux.PERF_DEFAULT_AUX),
        "notes": notes,
        "facts": {key: {"rule": rule, "source": source} for key, (rule, source) in perfaux.FACTS.items()},
    }
    lines = [f"page size {format_size(page)} ({page_why})"]
    for f in fits:
        if f.no_limit:
            lines += [
                f"{f.unit}: max buffer size 0 ({f.source}): no limit; perf's default AUX buffer and any"
                " -m the guest's memory allows",
                f"  {f.command}",
            ]
            continue
        lines.append(f"{f.unit}: max buffer size {_sz(f.max_buff_size)}, from {f.source}")
        refused = f"-m,{f.refused_pages} ({format_size(f.refused_pages * page)})"
        if f.pages is None:
            lines += [
                f"  no AUX buffer fits: perf needs at least {perfaux.MIN_AUX_PAGES} pages"
                f" ({format_size(perfaux.MIN_AUX_PAGES * page)}), above the cap",
                f"  perf record -e {f.unit}// -m,{perfaux.MIN_AUX_PAGES} fails: {perfaux.MMAP_ERROR}",
            ]
            continue
        assert f.aux_bytes is not None
        lines.append(
            f"  largest AUX buffer: -m,{f.pages} = {f.pages} pages of {format_size(page)}"
            f" = {format_size(f.aux_bytes)}"
            + ("" if f.aux_bytes == f.max_buff_size else " (the largest power of two of pages under the cap)")
        )
        lines.append(f"  {f.command}")
        lines.append(
            f'  {refused} and more: the driver refuses the AUX buffer and perf says "{perfaux.MMAP_ERROR}"'
        )
        defaults = [
            f"{format_size(size)} {who}: {'fits' if f.default_fits(who) else 'refused'}"
            for who, size in perfaux.PERF_DEFAULT_AUX.items()
        ]
        lines.append(f"  perf's default without -m: {'; '.join(defaults)}")
    lines += [f"note: {n}" for n in ignored + notes]
    doc["notes"] = ignored + notes
    code = 0 if all(f.no_limit or f.pages is not None for f in fits) else 1
    return _emit(args, doc, lines, code)


def cmd_guest(args: argparse.Namespace) -> int:
    from .firmware import acpi, devicetree

    perf_only = [
        opt
        for opt, value in (
            ("--max-buffer-size", args.max_buffer_size),
            ("--fixture", args.fixture),
            ("--page-size", args.page_size),
        )
        if value is not None
    ]
    if args.perf:
        shaping = [
            opt
            for opt, value in (
                ("--gic", args.gic),
                ("--node-name", args.node_name),
                ("--label", args.label),
                ("--vcpus", args.vcpus),
                ("--irq", args.irq),
            )
            if value is not None
        ]
        if shaping:
            raise UsageError(
                f"{', '.join(shaping)}: not for --perf, which takes --max-buffer-size,"
                " --fixture and --page-size"
            )
        return _guest_perf(args)
    if perf_only:
        raise UsageError(f"{', '.join(perf_only)}: only for --perf")
    if args.vcpus is None:
        args.vcpus = 1
    if args.irq is None:
        args.irq = DEFAULT_IRQ

    if args.acpi:
        shaping = [
            opt
            for opt, value in (("--gic", args.gic), ("--node-name", args.node_name), ("--label", args.label))
            if value is not None
        ]
        if shaping:
            raise UsageError(
                f"{', '.join(shaping)}: only for the device-tree node (--dt); --acpi takes --irq and --vcpus"
            )
        fields = acpi.gicc_spe_fields(args.irq, args.vcpus)
        first = fields[0]
        raw = first.to_bytes()
        hex_bytes = " ".join(f"{b:02x}" for b in raw)
        doc: Doc = {
            "description": "acpi",
            "irq": args.irq,
            "vcpus": args.vcpus,
            "table": "APIC",
            "structure": "GICC",
            "structure_type": acpi.ACPI_MADT_TYPE_GENERIC_INTERRUPT,
            "field": acpi.FIELD_NAME,
            "since": acpi.FIELD_SINCE,
            "offset": first.offset,
            "width": first.width,
            "min_gicc_length": acpi.ACPI_MADT_GICC_SPE,
            "gicc_length_with_trbe": acpi.ACPI_MADT_GICC_TRBE,
            "value": first.value,
            "bytes": list(raw),
            "trigger": "level",
            "polarity": "active-high",
            "gicc": [
                {"gicc": f.gicc, "offset": f.offset, "value": f.value, "bytes": list(f.to_bytes())}
                for f in fields
            ],
        }
        lines = [
            f"MADT GICC (subtable type {acpi.ACPI_MADT_TYPE_GENERIC_INTERRUPT}),"
            f' field "{acpi.FIELD_NAME}" ({acpi.FIELD_SINCE} and later)',
            f"offset {first.offset} ({first.offset:#x}), {first.width} bytes; a GICC of length"
            f" >= {acpi.ACPI_MADT_GICC_SPE} holds it"
            f" ({acpi.ACPI_MADT_GICC_TRBE} with ACPI 6.5's TRBE interrupt)",
            f"value {first.value} ({first.value:#06x}): the SPE PPI's GSIV, its INTID (0 means no SPE)",
            f"bytes at offset {first.offset}, little-endian: {hex_bytes}",
            "Linux wants the same value in every GICC and takes it as level-sensitive, active high",
            *(f"GICC {f.gicc}: {f.value}  ({' '.join(f'{b:02x}' for b in f.to_bytes())})" for f in fields),
        ]
        return _emit(args, doc, lines)

    node = devicetree.spe_node(
        args.irq,
        gic=args.gic or "v3",
        vcpus=args.vcpus,
        name=devicetree.DEFAULT_NODE_NAME if args.node_name is None else args.node_name,
        label=args.label,
    )
    dts = node.to_dts()
    doc = {
        "description": "devicetree",
        "irq": node.irq,
        "ppi": node.ppi,
        "gic": node.gic,
        "vcpus": node.vcpus,
        "cpu_mask": node.cpu_mask,
        "trigger": "level-high",
        "node": {"name": node.name, "label": node.label, "properties": node.properties()},
        "dts": dts,
    }
    if args.json:
        return _emit(args, doc, [])
    return _write(dts)


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
    "probe": """examples:
  kvmspe probe                      this host (exit 1 when it cannot run SPE guests)
  kvmspe probe --fixture arm64-big-little --json
  kvmspe probe --prometheus""",
    "plan": """examples:
  kvmspe plan --vcpus 4 --max-buffer-size 4M
  kvmspe plan --vcpus 64 --max-buffer-size 16M --page-size 64K --granule 4K
  kvmspe plan --profile big-little --spu 11 --vcpus 4 --max-buffer-size max
  kvmspe plan --vcpus 4 --locked 1G --case typical --json
  kvmspe plan --vcpus 4 --max-buffer-size 4M --plot pinned.png
  kvmspe plan --vcpus 4 --textfile /var/lib/node_exporter/textfile_collector""",
    "configure": """examples:
  kvmspe configure --vcpus 4 --max-buffer-size 4M
  kvmspe configure --vcpus 4 --max-buffer-size 4M --enable-buffer --memlock 8M --raise-memlock
  kvmspe configure --profile limited-spu --max-buffer-size 8M       refused: ERANGE, exit 1
  kvmspe configure --profile big-little --vcpus 4 --spu 11          VCPUs on CPUs 4-7
  kvmspe configure --profile big-little --vcpus 8 --spu 11          overcommit: SPU 11 has 4 CPUs, a warning
  kvmspe configure --profile big-little --vcpus 8 --spu 11 --strict-placement    refused, exit 1
  kvmspe configure --backend kvm                                    the real kernel only
  kvmspe configure --vcpus 2 --json""",
    "conformance": """examples:
  kvmspe conformance
  kvmspe conformance --backend kvm --json""",
    "vectors": """examples:
  kvmspe vectors --out vectors/""",
    "export": """examples:
  kvmspe export --lang c | gcc -x c -fsyntax-only -Wall -Wextra -Werror -
  kvmspe export --lang rust > src/kvmspe.rs
  kvmspe export --lang c-selftest > kvmspe_selftest.c""",
    "guest": """examples:
  kvmspe guest --dt                 the SPE node for INTID 21 on a GICv3, to paste under /
  kvmspe guest --dt --gic v2 --vcpus 4 --label spe
  kvmspe guest --acpi --vcpus 4     the MADT GICC "SPE overflow interrupt" of each VCPU
  kvmspe guest --dt --irq 22 --json
  kvmspe guest --perf               in the guest: the largest perf -m,PAGES its SPE units accept
  kvmspe guest --perf --max-buffer-size 4M     when the driver has no caps/max_buff_size""",
    "status": """examples:
  kvmspe status                     every process holding KVM VMs (exit 1: one is near its limit)
  kvmspe status --warn-below 64M --json
  kvmspe status --textfile /var/lib/node_exporter/textfile_collector""",
    "explain": """examples:
  kvmspe explain EDOM
  kvmspe explain 33
  kvmspe explain KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE
  kvmspe explain KVM_RUN --json""",
}


# Options that several commands take, declared once so their types and defaults agree.


def _spu_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--spu",
        metavar="ID",
        type=_uint("SPU id", (1 << 31) - 1),
        default=None,
        help="the SPE unit: its perf PMU type (default: the host's first)",
    )


def _irq_option(p: argparse.ArgumentParser, note: str) -> None:
    p.add_argument(
        "--irq",
        metavar="INTID",
        type=_uint("IRQ", (1 << 31) - 1),
        default=DEFAULT_IRQ,
        help=f"the SPE interrupt, a PPI 16..31{note} (default {DEFAULT_IRQ})",
    )


def _case_option(p: argparse.ArgumentParser, what: str, shared_with: str) -> None:
    from . import planner

    p.add_argument(
        "--case",
        choices=planner.PINNING_CASES,
        default=planner.DEFAULT_CASE,
        help=f"{what} (default {planner.DEFAULT_CASE}, as {shared_with})",
    )


def _prometheus_options(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument(
        "--prometheus",
        action="store_true",
        help="print the Prometheus text exposition format instead",
    )
    p.add_argument(
        "--textfile",
        metavar="DIR",
        default=None,
        help=f"also write the exposition text to DIR/{TEXTFILES[command]}, atomically"
        " (for node_exporter's textfile collector)",
    )


def _argtype_user(text: str) -> str:
    from . import planner

    try:
        return planner.check_limits_user(text)
    except ValueError as exc:
        import argparse

        raise argparse.ArgumentTypeError(str(exc)) from None


def _argtype_threshold(text: str) -> Any:
    from . import status

    try:
        return status.parse_threshold(text)
    except ValueError as exc:
        import argparse

        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The ``kvmspe`` argument parser with every subcommand."""
    import argparse
    import re

    from . import planner

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

        def _print_message(self, message: str, file: Any = None) -> None:
            # Help and version go to stdout, checked as every answer is; errors to stderr.
            if not message:
                return
            if file is not None and file is sys.stderr:
                _say(message.rstrip("\n"))
            else:
                _write(message)

        def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
            # argparse drops a "--" given as an option's own value (--to=--) and
            # then hands the option an empty list, or its const, unchecked.
            if action.option_strings and "--" in arg_strings:
                self.error(f"argument {'/'.join(action.option_strings)}: expected a value, not '--'")
            return super()._get_values(action, arg_strings)

    fmt = argparse.RawDescriptionHelpFormatter
    common = _Parser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        help="print a JSON document (its keys: kvmspe's CLI reference, in its source)",
    )

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
        p = sub.add_parser(
            name,
            parents=[common],
            help=help_,
            description=help_,
            epilog=_EPILOGS.get(name),
            formatter_class=fmt,
        )
        p.set_defaults(func=func)
        return p

    p = add("encode", cmd_encode, "the PMBIDR_EL1.MaxBuffSize field value of a size (exit 1: no encoding)")
    p.add_argument("size", metavar="SIZE", type=_size, help=_SIZE_HELP)

    p = add("decode", cmd_decode, "the size a MaxBuffSize field stands for, or a whole PMBIDR_EL1")
    p.add_argument(
        "field",
        metavar="FIELD",
        nargs="?",
        type=_argtype(_parse_field),
        help="a MaxBuffSize field value, 0..0x3fff",
    )
    p.add_argument(
        "--pmbidr",
        metavar="VALUE",
        type=_uint("PMBIDR_EL1 value"),
        help="decode a whole PMBIDR_EL1 value instead",
    )

    p = add("round", cmd_round, "the nearest representable, page-aligned max buffer sizes")
    p.add_argument("size", metavar="SIZE", type=_size, help=_SIZE_HELP)
    way = p.add_mutually_exclusive_group()
    way.add_argument("--up", dest="direction", action="store_const", const="up", help="round up only")
    way.add_argument("--down", dest="direction", action="store_const", const="down", help="round down only")
    p.set_defaults(direction="both")
    p.add_argument(
        "--page-size",
        metavar="SIZE",
        type=_size,
        default=4096,
        help="host page size: 4K, 16K or 64K (default 4K)",
    )

    p = add("sizes", cmd_sizes, "list the representable max buffer sizes in a range")
    p.add_argument("--from", dest="lo", metavar="SIZE", type=_size, default=0, help="smallest (default 0)")
    p.add_argument(
        "--to",
        dest="hi",
        metavar="SIZE",
        type=_size,
        default=None,
        help="largest (default: 1023 << 42, the largest representable)",
    )
    p.add_argument(
        "--limit", metavar="N", type=_uint("limit"), default=32, help="list at most N (default 32; 0 for all)"
    )

    p = add("explain", cmd_explain, "what an errno means for each SPE attribute and call")
    p.add_argument(
        "topic",
        metavar="ERRNO|NAME",
        help="an errno name or number (EDOM, 33), an attribute name, or KVM_RUN",
    )

    p = add("probe", cmd_probe, "what this host can do for SPE guests, and why not (exit 1: it cannot)")
    p.add_argument(
        "--fixture",
        metavar="NAME",
        help="read sysfs and procfs from a shipped snapshot (e.g. arm64-big-little)",
    )
    _prometheus_options(p, "probe")

    p = add(
        "status",
        cmd_status,
        "each process holding KVM VMs: VCPUs, VmLck, RLIMIT_MEMLOCK, headroom (exit 1: one is low)",
    )
    p.add_argument(
        "--pid",
        metavar="PID",
        action="append",
        type=_uint("pid", (1 << 31) - 1, 1),
        default=None,
        help="look at this process only (repeat for more; default: every process)",
    )
    p.add_argument(
        "--warn-below",
        metavar="SIZE|PERCENT",
        type=_argtype_threshold,
        default=None,
        help="warn, and exit 1, when a process's headroom (soft RLIMIT_MEMLOCK minus VmLck) is below"
        " this size or this percentage of its soft limit (default 10%%)",
    )
    _prometheus_options(p, "status")

    p = add("plan", cmd_plan, "the max buffer size to set and the RLIMIT_MEMLOCK a VM needs, ready to paste")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--profile",
        metavar="NAME",
        default=None,
        help="plan for a model host profile (an unknown name lists the known ones;"
        " default: the host configure would use)",
    )
    where.add_argument(
        "--fixture",
        metavar="NAME",
        default=None,
        help="plan for the SPE units of a shipped sysfs snapshot (e.g. arm64-big-little), as probe",
    )
    _spu_option(p)
    p.add_argument(
        "--vcpus",
        metavar="N",
        type=_uint("VCPU count", 1 << 16, 1),
        default=planner.DEFAULT_VCPUS,
        help=f"number of VCPUs with SPE (default {planner.DEFAULT_VCPUS}, as configure)",
    )
    p.add_argument(
        "--max-buffer-size",
        metavar="SIZE|max",
        type=_argtype_or_none(_parse_plan_size),
        default=planner.DEFAULT_MAX_BUFFER_SIZE,
        help=f"wanted max buffer size (default {format_size(planner.DEFAULT_MAX_BUFFER_SIZE)}, as"
        " configure; 'max': the SPU's limit); rounded down safely, clamped to the SPU's limit",
    )
    _case_option(p, "which case RLIMIT_MEMLOCK covers", "configure")
    p.add_argument(
        "--page-size",
        metavar="SIZE",
        type=_size,
        default=None,
        help="host page size: 4K, 16K or 64K (default: the host's)",
    )
    p.add_argument(
        "--spu-limit",
        metavar="SIZE",
        type=_size,
        default=None,
        help="the SPU's own MaxBuffSize limit, 0 for none (default: the chosen SPU's)",
    )
    p.add_argument(
        "--granule",
        metavar="SIZE",
        type=_size,
        default=4096,
        help="the guest's translation granule: 4K, 16K or 64K (default 4K)",
    )
    p.add_argument(
        "--levels",
        metavar="N",
        type=_uint("level count", 5, 1),
        default=None,
        help="stage-1 levels the guest walks, 1..5 (default: those of a 48-bit VA)",
    )
    p.add_argument(
        "--locked",
        metavar="SIZE",
        type=_size,
        default=0,
        help="memory the VMM locks already, e.g. guest RAM (default 0)",
    )
    _prometheus_options(p, "plan")
    p.add_argument(
        "--user",
        metavar="NAME",
        type=_argtype_user,
        default="USER",
        help="the user (or @group) of the limits.conf lines (default: the placeholder USER)",
    )
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        default=None,
        help="draw pinned memory against buffer size (needs kvmspe[plot], i.e. matplotlib)",
    )

    p = add("configure", cmd_configure, "create a VM, configure SPE on every VCPU, run it, report each step")
    p.add_argument(
        "--backend",
        choices=("auto", "model", "kvm"),
        default="auto",
        help="auto (default): the real kernel where it supports SPE, else the model",
    )
    p.add_argument(
        "--profile",
        metavar="NAME",
        default=None,
        help="the model host to use, by profile name (an unknown name lists the known ones;"
        " default: this host if it has SPE units, else default-4k)",
    )
    p.add_argument(
        "--vcpus",
        metavar="N",
        type=_uint("VCPU count", 512, 1),
        default=planner.DEFAULT_VCPUS,
        help=f"number of VCPUs (default {planner.DEFAULT_VCPUS})",
    )
    _irq_option(p, "")
    _spu_option(p)
    p.add_argument(
        "--max-buffer-size",
        metavar="SIZE",
        type=_size,
        default=planner.DEFAULT_MAX_BUFFER_SIZE,
        help=f"KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE (default {format_size(planner.DEFAULT_MAX_BUFFER_SIZE)})",
    )
    p.add_argument(
        "--memlock",
        metavar="SIZE",
        type=_size,
        default=None,
        help="the model's RLIMIT_MEMLOCK (default: this process's soft limit)",
    )
    p.add_argument(
        "--locked",
        metavar="SIZE",
        type=_size,
        default=None,
        help="memory the modelled VMM has locked already (default 0)",
    )
    p.add_argument(
        "--raise-memlock",
        action="store_true",
        help="raise RLIMIT_MEMLOCK as the planner says, and by the excess of any KVM_EXIT_RLIMIT",
    )
    _case_option(p, "the planner's case --raise-memlock raises to", "plan")
    p.add_argument(
        "--strict-placement",
        action="store_true",
        help="give each VCPU a CPU of its SPU of its own: refuse more VCPUs than the SPU has CPUs"
        " (default: allow overcommit, with a warning saying what it costs)",
    )
    p.add_argument(
        "--enable-buffer",
        metavar="SIZE",
        nargs="?",
        type=_size,
        const=0,
        default=None,
        help="the modelled guest enables a buffer on every VCPU (default size: the max)",
    )

    p = add("conformance", cmd_conformance, "run the conformance cases on the model or the real kernel")
    p.add_argument("--backend", choices=("model", "kvm"), default="model", help="default: model")
    p.add_argument(
        "--no-scripted-guest",
        action="store_true",
        help="on the real kernel under kvmspe's shim, skip the cases that need guest code, as the C"
        " self-test does",
    )

    p = add("vectors", cmd_vectors, "write the codec and scenario test vectors (JSON) into a directory")
    p.add_argument("--out", metavar="DIR", required=True, help="directory to write (created if missing)")

    from .export import LANGS

    p = add("export", cmd_export, "print a C header, a Rust module or a C conformance program")
    p.add_argument(
        "--lang", choices=tuple(LANGS), required=True, help="; ".join(f"{k}: {v}" for k, v in LANGS.items())
    )

    p = add(
        "guest",
        cmd_guest,
        "the guest's side of SPE: its firmware's description (a device-tree node, an ACPI field),"
        " and the perf buffer it can use",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--dt", action="store_true", help="the device-tree node (compatible string and PPI)")
    what.add_argument("--acpi", action="store_true", help="the MADT GICC 'SPE overflow interrupt' field")
    what.add_argument(
        "--perf",
        action="store_true",
        help="in the guest: the largest perf AUX buffer (-m,PAGES) its SPE units accept",
    )
    p.add_argument(
        "--irq",
        metavar="INTID",
        type=_uint("IRQ", (1 << 31) - 1),
        default=None,
        help=f"the SPE interrupt, a PPI 16..31, as given to configure (default {DEFAULT_IRQ})",
    )
    p.add_argument(
        "--vcpus",
        metavar="N",
        type=_uint("VCPU count", 512, 1),
        default=None,
        help="number of VCPUs: GICCs for --acpi, the PPI's CPU mask for --gic v2 (at most 8); default 1",
    )
    p.add_argument(
        "--max-buffer-size",
        metavar="SIZE",
        type=_size,
        default=None,
        help="for --perf: the VM's max buffer size where the guest's driver has no caps/max_buff_size"
        " (the host's 'kvmspe plan' gives it)",
    )
    p.add_argument(
        "--fixture",
        metavar="NAME|DIR",
        default=None,
        help="for --perf: read a guest's sysfs from a shipped snapshot (arm64-guest, arm64-guest-capped)"
        " or a directory with sys/ and proc/",
    )
    p.add_argument(
        "--page-size",
        metavar="SIZE",
        type=_size,
        default=None,
        help="for --perf: the guest's page size, 4K, 16K or 64K (default: this system's; 4K for --fixture)",
    )
    p.add_argument(
        "--gic",
        choices=("v3", "v2"),
        default=None,
        help="the guest's GIC, for --dt (default v3, as configure)",
    )
    p.add_argument(
        "--node-name", metavar="NAME", default=None, help="the node's name, for --dt (default spe-pmu)"
    )
    p.add_argument(
        "--label", metavar="LABEL", default=None, help="a label for the node, for --dt (default none)"
    )

    from . import cli_shim

    cli_shim.add_parser(sub, common, fmt, _Parser)
    return parser


def _codec_args(argv: Sequence[str]) -> _Args | None:
    """What argparse would make of ``encode SIZE`` or ``decode FIELD`` (``--json`` before or
    after the operand), without building the parser; None for any other command line.

    The operands are parsed by the parsers argparse is given; when one refuses
    its operand, this answers None too, so argparse handles every error and
    ``--help``, with its messages and exit status.
    """
    if len(argv) == 2:
        command, operand, json = argv[0], argv[1], False
    elif len(argv) == 3 and "--json" in argv[1:]:
        command, operand, json = argv[0], argv[2 if argv[1] == "--json" else 1], True
    else:
        return None
    if operand[:1] == "-":  # an option, "--", or a negative number: argparse's to judge
        return None
    try:
        if command == "encode":
            return _Args(command=command, json=json, size=parse_size(operand), func=cmd_encode)
        if command == "decode":
            return _Args(
                command=command, json=json, field=_parse_field(operand), pmbidr=None, func=cmd_decode
            )
    except ValueError:
        return None
    return None


def _interrupted() -> int:
    """After SIGINT (KeyboardInterrupt): one line on stderr, exit status 130.

    A second SIGINT while the line is printed is ignored, so it cannot turn
    the clean exit into a traceback.
    """
    import signal

    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: no handler to change
        previous = None
    try:
        _say("kvmspe: interrupted")
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 yes, 1 no, 2 bad input, 130 SIGINT).

    Run as the program (``argv`` None), a SIGINT arriving once the answer is
    given is ignored, so it cannot turn the exit into a traceback.
    """
    try:
        code = _main(sys.argv[1:] if argv is None else argv)
    except _Unwritten as exc:
        code = _unwritten(exc)
    except KeyboardInterrupt:
        code = _interrupted()
    except RuntimeError as exc:
        # Python 3.11 wraps an exception raised while a class is being created
        # (dataclass fields' ``__set_name__``) in a RuntimeError: a SIGINT that
        # lands while a lazily imported module defines its classes arrives so.
        if not _from_interrupt(exc):
            raise
        code = _interrupted()
    if argv is None:
        _ignore_sigint()
    return code


def _from_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` was caused, directly or down its chain, by a KeyboardInterrupt."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _ignore_sigint() -> None:
    # The C module under ``signal``: the Python one imports enum, which would
    # cost the codec commands more than their own work.
    c_signal = __import__("_signal")
    try:
        c_signal.signal(c_signal.SIGINT, c_signal.SIG_IGN)
    except (ValueError, KeyboardInterrupt):  # not the main thread; or it came first
        pass


def _main(argv: Sequence[str]) -> int:
    args: Args | None = _codec_args(argv)
    if args is None:
        args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except KvmError as exc:
        # The kernel (or its model) refused: the answer is "no".
        _say(f"kvmspe: {exc.ioctl or 'ioctl'}: {_one_line(str(exc))}")
        return 1
    except (KvmspeError, ValueError, OSError) as exc:
        _say(f"kvmspe: error: {_one_line(str(exc)) or type(exc).__name__}")
        return 2
