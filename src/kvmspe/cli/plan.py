"""``kvmspe plan``: the planner's answer (:mod:`kvmspe.planner`) as a table, JSON or
metrics, and with ``--plot`` its figure (:mod:`kvmspe.cli.plot`)."""

from __future__ import annotations

from ..units import format_size
from .output import families, metrics, output, table, textfile_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from ..planner import Plan, PlanHost
    from .args import Doc

__all__ = ["cmd_plan"]

#: Rows of a table: key, value.
Rows = list[tuple[str, str]]


def cmd_plan(args: argparse.Namespace) -> int:
    from .. import planner
    from . import plot

    figure_class = None
    families(args, lambda: None)  # the output options, checked before any work
    textfile_dir(args.textfile)
    if args.plot is not None:
        plot.check_target(args.plot)
        figure_class = plot.figure_class()
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
    rows = _host_rows(host, plan) + _vm_rows(args, host, plan) + _pinned_rows(plan)
    rows += _memlock_rows(plan) + _paste_rows(plan, paste)
    lines = table(rows)
    lines += [f"warning: {w}" for w in plan.warnings]
    if figure_class is not None:
        plot.draw(figure_class, args.plot, plan)
        lines.append(f"plot written to {args.plot}")
    metric_families = families(args, lambda: metrics().plan_families(plan))
    return output(args, "plan", doc, lines, metric_families, 0)


def _plan_host(args: argparse.Namespace) -> PlanHost:
    from .. import planner

    if args.profile is not None:
        return planner.PlanHost.from_profile(args.profile)
    if args.fixture is not None:
        return planner.PlanHost.from_fixture(args.fixture)
    return planner.PlanHost.configured()


def _cpus(cpus: Sequence[int]) -> str:
    from ..affinity import describe_cpus

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


def _wrapped(key: str, text: str, width: int = 92) -> Rows:
    """``text`` as table rows of at most ``width`` characters, the key on the first."""
    import textwrap

    return [(key if i == 0 else "", part) for i, part in enumerate(textwrap.wrap(text, width))]


def _host_rows(host: PlanHost, plan: Plan) -> Rows:
    """The host planned for: its page size and SPUs, the chosen one marked."""
    rows = [("host", f"{host.source}: {format_size(host.page_size)} pages")]
    for s in host.spus:
        limit = f"limit {format_size(s.max_buffer_size)}" if s.max_buffer_size else "no limit"
        chosen = "  (chosen)" if s.id == plan.spu else ""
        rows.append((f"  SPU {s.id}", f"{_cpus(s.cpus)}, {limit}{chosen}"))
    if not host.spus:
        rows.append(("  SPE units", "none"))
    return rows


def _vm_rows(args: argparse.Namespace, host: PlanHost, plan: Plan) -> Rows:
    """The VM: VCPUs, pages, granule and levels, where its VCPUs run, the limit and the size to set."""
    page = format_size(plan.page_size)
    if plan.page_size != host.page_size:
        page += f" (--page-size; the host has {format_size(host.page_size)})"
    on = "" if plan.spu is None else f" on SPU {plan.spu}"
    rows = [
        (
            "VM",
            f"{plan.vcpus} VCPU{'s' if plan.vcpus != 1 else ''}{on}; host pages {page}; guest granule"
            f" {format_size(plan.granule)}, {plan.levels} levels ({plan.va_bits}-bit VA)",
        )
    ]
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
    return rows


def _pinned_rows(plan: Plan) -> Rows:
    """The cases as a table: per VM, per VCPU, data, tables, amplification, one more VCPU;
    then why each case pins what it does."""
    from .. import planner

    head = ("per VM", "per VCPU", "data", "tables", "amplification", "one more VCPU")
    cells: dict[str, tuple[str, ...]] = {}
    for case in planner.PINNING_CASES:
        c = plan.pinned.get(case)
        if c is None:
            continue
        more = "none fits" if c.one_more_vcpu is None else "+" + format_size(c.one_more_vcpu)
        cells[case] = (
            format_size(c.per_vm),
            format_size(c.per_vcpu),
            format_size(c.data),
            format_size(c.tables),
            f"x{c.amplification:.4f}",
            more,
        )
    if not cells:
        rows = [("pinned", "unbounded (max buffer size 0 = no limit): bounded only by guest RAM")]
    else:
        widths = [max(len(head[i]), *(len(v[i]) for v in cells.values())) for i in range(len(head))]

        def line(values: Sequence[str]) -> str:
            return "  ".join(f"{v:>{w}}" for v, w in zip(values, widths, strict=True))

        rows = [("pinned", line(head))]
        for case, values in cells.items():
            mark = "  <- RLIMIT_MEMLOCK" if case == plan.case else ""
            rows.append((f"  {case}", line(values) + mark))
    for case, figures in plan.pinned.items():
        rows += _wrapped(f"why, {case}", figures.why)
    return rows


def _memlock_rows(plan: Plan) -> Rows:
    """The RLIMIT_MEMLOCK the VM needs, and what it is the sum of."""
    if plan.memlock_limit is None:
        return [("RLIMIT_MEMLOCK", "unlimited (nothing bounds what the guest pins)")]
    parts = [f"{format_size(plan.locked_already)} locked already"]
    if plan.held_at_set:
        parts.append(f"{format_size(plan.held_at_set)} held from the set")
    parts.append(f"{format_size(plan.pinned[plan.case].per_vm)} pinned in the {plan.case} case")
    return [("RLIMIT_MEMLOCK", f"{format_size(plan.memlock_limit)} = {' + '.join(parts)}")]


def _paste_rows(plan: Plan, paste: Doc) -> Rows:
    """The limit as each tool takes it, ready to paste, or why a tool cannot take it."""
    from .. import planner

    if plan.memlock_limit is None:
        missing = {"libvirt": "no finite <hard_limit>: the limit is unbounded"}
    else:
        missing = {
            "ulimit": f"none: bash's ulimit -l takes at most {planner.ULIMIT_KIB_MAX} KiB",
            "libvirt": f"none: libvirt reads {planner.LIBVIRT_UNLIMITED_KIB} KiB and more as unlimited",
            "pam_limits_soft": f"none: pam_limits takes at most {planner.ULIMIT_KIB_MAX} KiB",
            "docker": f"none: docker and podman take at most {planner.CONTAINER_ULIMIT_MAX} bytes",
        }
    rows: Rows = []
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
    return rows
