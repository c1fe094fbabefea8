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

from . import __version__
from .errors import KvmError, KvmspeError, NotRepresentableError
from .units import ACCEPTED, U64_MAX, format_limit, format_size, format_size_hex, parse_size, parse_uint

# typing.TYPE_CHECKING without importing typing; mypy treats any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn, TypeAlias

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

        print(json.dumps(doc, indent=2))
    else:
        for line in lines:
            print(line)
    return code


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
            "value_type": "__u64" if info.value is abi.U64 else "int",
        }
        header = (
            f"{info.name} (group {info.group}, attribute {info.attr}, value {extra['value_type']}"
            f" at kvm_device_attr.addr)"
        )
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
    return _emit(args, doc, lines, 0 if can else 1)


# --- plan -------------------------------------------------------------------------------------


def _plot_module() -> Any:
    """matplotlib.pyplot, or a one-line error naming the optional extra."""
    import importlib

    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed: pip install 'kvmspe[plot]'"
        ) from None
    return plt


def _draw_plot(plt: Any, path: str, args: argparse.Namespace, chosen: int) -> None:
    """Pinned memory (per VM, each case) against the max buffer size, the chosen size marked."""
    from . import planner

    sweep = planner.sweep(
        args.vcpus,
        page_size=args.page_size,
        granule=args.granule,
        levels=args.levels,
        locked_already=args.locked,
        up_to=max(chosen * 4, 64 << 20),
    )
    xs = sweep.sizes
    curves = {case: [b / (1 << 20) for b in sweep.per_vm[case]] for case in planner.PINNING_CASES}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    mib = [x / (1 << 20) for x in xs]
    for case in planner.PINNING_CASES:
        ax.plot(mib, curves[case], marker="o", label=case)
    if chosen:
        ax.axvline(chosen / (1 << 20), linestyle="--", color="grey", label="chosen size")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("max buffer size (MiB)")
    ax.set_ylabel("pinned host memory per VM (MiB)")
    ax.set_title(f"SPE buffers pinned by {args.vcpus} VCPUs, {format_size(args.page_size)} host pages")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def cmd_plan(args: argparse.Namespace) -> int:
    from . import planner

    if args.plot is not None and not args.plot.strip():
        raise UsageError("--plot needs a file name, e.g. --plot pinned.png")
    plt = _plot_module() if args.plot else None
    plan = planner.plan(
        args.vcpus,
        args.max_buffer_size,
        page_size=args.page_size,
        spu_limit=args.spu_limit,
        granule=args.granule,
        levels=args.levels,
        locked_already=args.locked,
    )
    doc: Doc = plan.to_dict()
    doc["plot"] = args.plot
    rows = [
        (
            "VM",
            f"{plan.vcpus} VCPUs; host pages {format_size(plan.page_size)}; guest granule"
            f" {format_size(plan.granule)}, {plan.levels} levels ({plan.va_bits}-bit VA)",
        ),
        ("SPU limit", "none" if not plan.spu_limit else _sz(plan.spu_limit)),
        ("max buffer size", _sz(plan.size) + ("  (0 = no limit)" if plan.size == 0 else "")),
        (
            "set",
            f"KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE={plan.size:#x}"
            f"  (PMBIDR_EL1.MaxBuffSize {plan.max_buff_size_field:#06x})",
        ),
    ]
    for case in planner.PINNING_CASES:
        c = plan.pinned[case]
        if c["per_vm"] is None:
            rows.append((f"pinned, {case}", "unbounded (no limit): bounded only by guest RAM"))
        else:
            rows.append((f"pinned, {case}", f"{_sz(c['per_vm'])} per VM, {_sz(c['per_vcpu'])} per VCPU"))
    if plan.memlock_limit is None:
        rows.append(("RLIMIT_MEMLOCK", "unlimited (nothing bounds what the guest pins)"))
    else:
        rows.append(
            (
                "RLIMIT_MEMLOCK",
                f"at least {_sz(plan.memlock_limit)} (locked already"
                f" {format_size(plan.locked_already)} + worst case)",
            )
        )
    lines = _table(rows)
    lines += [f"warning: {w}" for w in plan.warnings]
    if plt is not None:
        _draw_plot(plt, args.plot, args, plan.size)
        lines.append(f"plot written to {args.plot}")
    return _emit(args, doc, lines)


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

    if args.enable_buffer is not None and args.backend == "kvm":
        raise UsageError("--enable-buffer simulates the guest, which only the model can: use --backend model")
    choice = vmm.choose_backend(
        args.backend, profile=args.profile, memlock_limit=args.memlock, locked=args.locked
    )
    r = vmm.bring_up(
        choice,
        vcpus=args.vcpus,
        irq=args.irq,
        spu=args.spu,
        max_buffer_size=args.max_buffer_size,
        raise_memlock=args.raise_memlock,
        enable_buffer=args.enable_buffer,
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
    if error:
        lines.append(f"stopped: {error}")
    else:
        lines.append("done: SPE is configured on every VCPU")
    return _emit(args, doc, lines, 0 if r.ok else 1)


# --- conformance and vectors ---------------------------------------------------------------------


def cmd_conformance(args: argparse.Namespace) -> int:
    from .conformance import runner as conformance

    report = conformance.run(args.backend)
    return _emit(args, report.to_dict(), report.render().splitlines(), 0 if report.ok else 1)


def cmd_vectors(args: argparse.Namespace) -> int:
    from .conformance import vectors

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
    sys.stdout.write(text)
    return 0


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
  kvmspe probe --fixture arm64-big-little --json""",
    "plan": """examples:
  kvmspe plan --vcpus 4 --max-buffer-size 4M
  kvmspe plan --vcpus 8 --max-buffer-size 5000000 --page-size 64K --granule 64K
  kvmspe plan --vcpus 4 --spu-limit 4M --locked 1G --json
  kvmspe plan --vcpus 4 --max-buffer-size 4M --plot pinned.png""",
    "configure": """examples:
  kvmspe configure --vcpus 4 --max-buffer-size 4M
  kvmspe configure --vcpus 4 --max-buffer-size 4M --enable-buffer --memlock 8M --raise-memlock
  kvmspe configure --profile limited-spu --max-buffer-size 8M       refused: ERANGE, exit 1
  kvmspe configure --profile big-little --vcpus 4 --spu 11          VCPUs on CPUs 4-7
  kvmspe configure --profile big-little --vcpus 8 --spu 11          refused: SPU 11 has 4 CPUs, exit 1
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
    "explain": """examples:
  kvmspe explain EDOM
  kvmspe explain 33
  kvmspe explain KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE
  kvmspe explain KVM_RUN --json""",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``kvmspe`` argument parser with every subcommand."""
    import argparse
    import re

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

    p = add("plan", cmd_plan, "the max buffer size to set and the RLIMIT_MEMLOCK a VM needs")
    p.add_argument(
        "--vcpus",
        metavar="N",
        type=_uint("VCPU count", 1 << 16, 1),
        required=True,
        help="number of VCPUs with SPE",
    )
    p.add_argument(
        "--max-buffer-size",
        metavar="SIZE",
        type=_size,
        default=None,
        help="wanted max buffer size (default: the SPU's limit); rounded down safely",
    )
    p.add_argument(
        "--page-size", metavar="SIZE", type=_size, default=4096, help="host page size (default 4K)"
    )
    p.add_argument(
        "--spu-limit",
        metavar="SIZE",
        type=_size,
        default=0,
        help="the SPU's own MaxBuffSize limit (default 0: none)",
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
        default=1,
        help="number of VCPUs (default 1)",
    )
    p.add_argument(
        "--irq",
        metavar="INTID",
        type=_uint("IRQ", (1 << 31) - 1),
        default=DEFAULT_IRQ,
        help=f"the SPE interrupt, a PPI 16..31 (default {DEFAULT_IRQ})",
    )
    p.add_argument(
        "--spu",
        metavar="ID",
        type=_uint("SPU id", (1 << 31) - 1),
        default=None,
        help="the SPE unit: its perf PMU type (default: the host's first)",
    )
    p.add_argument(
        "--max-buffer-size",
        metavar="SIZE",
        type=_size,
        default=4 << 20,
        help="KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE (default 4M)",
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
        default=0,
        help="memory the modelled VMM has locked already (default 0)",
    )
    p.add_argument(
        "--raise-memlock",
        action="store_true",
        help="raise RLIMIT_MEMLOCK as the planner says, and by the excess of any KVM_EXIT_RLIMIT",
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

    p = add("vectors", cmd_vectors, "write the codec and scenario test vectors (JSON) into a directory")
    p.add_argument("--out", metavar="DIR", required=True, help="directory to write (created if missing)")

    from .export import LANGS

    p = add("export", cmd_export, "print a C header, a Rust module or a C conformance program")
    p.add_argument(
        "--lang", choices=tuple(LANGS), required=True, help="; ".join(f"{k}: {v}" for k, v in LANGS.items())
    )

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
        print("kvmspe: interrupted", file=sys.stderr)
    except (OSError, ValueError):
        pass
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
    except KeyboardInterrupt:
        code = _interrupted()
    if argv is None:
        _ignore_sigint()
    return code


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
    except BrokenPipeError:
        # The reader went away (``kvmspe sizes --limit 0 | head``): not an error of ours.
        sys.stderr.close()
        return 0
    except KvmError as exc:
        # The kernel (or its model) refused: the answer is "no".
        print(f"kvmspe: {exc.ioctl or 'ioctl'}: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except (KvmspeError, ValueError, OSError) as exc:
        print(f"kvmspe: error: {_one_line(str(exc)) or type(exc).__name__}", file=sys.stderr)
        return 2
