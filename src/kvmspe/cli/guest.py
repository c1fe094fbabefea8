"""``kvmspe guest``: the guest's side of SPE. Its firmware's description, a device-tree
node (:mod:`kvmspe.firmware.devicetree`) or the MADT GICC field
(:mod:`kvmspe.firmware.acpi`), and in the guest the perf AUX buffer its SPE
units accept (:mod:`kvmspe.perfaux`)."""

from __future__ import annotations

from ..units import format_size
from .args import DEFAULT_IRQ, UsageError
from .output import emit, sz, write

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from ..perfaux import AuxFit
    from .args import Doc

__all__ = ["cmd_guest"]


def _given(*options: tuple[str, object]) -> list[str]:
    """The names of the ``(name, value)`` options given (not None)."""
    return [opt for opt, value in options if value is not None]


def cmd_guest(args: argparse.Namespace) -> int:
    perf_only = _given(
        ("--max-buffer-size", args.max_buffer_size),
        ("--fixture", args.fixture),
        ("--page-size", args.page_size),
    )
    if args.perf:
        shaping = _given(
            ("--gic", args.gic),
            ("--node-name", args.node_name),
            ("--label", args.label),
            ("--vcpus", args.vcpus),
            ("--irq", args.irq),
        )
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
        return _guest_acpi(args)
    return _guest_dt(args)


def _guest_acpi(args: argparse.Namespace) -> int:
    """``guest --acpi``: the MADT GICC "SPE overflow interrupt" of every VCPU."""
    from ..firmware import acpi

    shaping = _given(("--gic", args.gic), ("--node-name", args.node_name), ("--label", args.label))
    if shaping:
        raise UsageError(
            f"{', '.join(shaping)}: only for the device-tree node (--dt); --acpi takes --irq and --vcpus"
        )
    fields = acpi.gicc_spe_fields(args.irq, args.vcpus)
    first = fields[0]
    hex_bytes = " ".join(f"{b:02x}" for b in first.to_bytes())
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
    return emit(args, acpi.madt_document(args.irq, args.vcpus), lines)


def _guest_dt(args: argparse.Namespace) -> int:
    """``guest --dt``: the SPE node, in DTS (or with it, in JSON)."""
    from ..firmware import devicetree

    node = devicetree.spe_node(
        args.irq,
        gic=args.gic or "v3",
        vcpus=args.vcpus,
        name=devicetree.DEFAULT_NODE_NAME if args.node_name is None else args.node_name,
        label=args.label,
    )
    dts = node.to_dts()
    doc: Doc = {
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
        return emit(args, doc, [])
    return write(dts)


def _perf_host(args: argparse.Namespace) -> tuple[str, int, str]:
    """The sysfs to read, the guest's page size, and where that size comes from."""
    from ..arch import maxbuf
    from ..host import discovery

    if args.fixture is not None:
        sysfs = discovery.fixture_roots(args.fixture)["sysfs_root"]
        page, page_why = 4096, "assumed: a snapshot does not record it; --page-size to change"
    else:
        sysfs = "/sys"
        page, page_why = discovery.page_size(), "this system's"
    if args.page_size is not None:
        page, page_why = args.page_size, "--page-size"
    maxbuf.check_page_size(page, "--page-size")
    given = args.max_buffer_size
    if given is not None and not maxbuf.is_representable(given):
        raise UsageError(
            f"--max-buffer-size {sz(given)} is not a MaxBuffSize size, so no VM advertises it;"
            " accepted: a size 'kvmspe sizes' lists, e.g. the 'max buffer size' of the host's 'kvmspe plan'"
        )
    return sysfs, page, page_why


def _guest_perf(args: argparse.Namespace) -> int:
    """``guest --perf``: per SPE unit of this guest (or a snapshot of one), the largest AUX
    buffer perf may map, the command line, what happens above it, and why."""
    from .. import perfaux
    from ..host import discovery

    sysfs, page, page_why = _perf_host(args)
    instances, why_none = discovery.read_spe_instances(sysfs)
    if not instances:
        doc0: Doc = {"page_size": page, "page_size_source": page_why, "units": [], "reason": why_none}
        line = (
            f"no SPE unit here, so perf cannot profile with SPE: {why_none}"
            " (is the SPE node in the guest's device tree or ACPI tables? 'kvmspe guest --dt' prints one)"
        )
        return emit(args, doc0, [line.replace("the host kernel's SPE driver", "the SPE driver")], 1)
    fits, ignored = perfaux.fit_units(instances, page, args.max_buffer_size)
    notes = ignored + list(perfaux.NOTES)
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
        lines += _unit_lines(f, page)
    lines += [f"note: {n}" for n in notes]
    code = 0 if all(f.no_limit or f.pages is not None for f in fits) else 1
    return emit(args, doc, lines, code)


def _unit_lines(f: AuxFit, page: int) -> list[str]:
    """One SPE unit's lines: its cap, the largest ``-m,PAGES``, the command, what is refused."""
    from .. import perfaux

    if f.no_limit:
        return [
            f"{f.unit}: max buffer size 0 ({f.source}): no limit; perf's default AUX buffer and any"
            " -m the guest's memory allows",
            f"  {f.command}",
        ]
    lines = [f"{f.unit}: max buffer size {sz(f.max_buff_size)}, from {f.source}"]
    if f.pages is None:
        return lines + [
            f"  no AUX buffer fits: perf needs at least {perfaux.MIN_AUX_PAGES} pages"
            f" ({format_size(perfaux.MIN_AUX_PAGES * page)}), above the cap",
            f"  perf record -e {f.unit}// -m,{perfaux.MIN_AUX_PAGES} fails: {perfaux.MMAP_ERROR}",
        ]
    assert f.aux_bytes is not None
    refused = f"-m,{f.refused_pages} ({format_size(f.refused_pages * page)})"
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
    return lines
