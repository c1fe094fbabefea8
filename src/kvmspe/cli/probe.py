"""``kvmspe probe`` and ``kvmspe status``: this host's verdict (:mod:`kvmspe.host.verdict`),
and each running VMM's headroom (:mod:`kvmspe.status`), for people, in JSON or as metrics."""

from __future__ import annotations

from ..units import format_limit, format_size
from .output import families, metrics, output, sz, table, textfile_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from ..host.discovery import HostInfo

__all__ = ["cmd_probe", "cmd_status"]


def cmd_probe(args: argparse.Namespace) -> int:
    from .. import abi
    from ..host import discovery
    from ..host.verdict import verdict

    abi.ASSUMED.check()  # a bad KVMSPE_* number is bad input (exit 2), found before probing
    families(args, lambda: None)  # the output options, checked before any work
    textfile_dir(args.textfile)

    if args.fixture is not None:
        roots = discovery.fixture_roots(args.fixture)
        info = discovery.discover(sysfs_root=roots["sysfs_root"], procfs_root=roots["procfs_root"])
    else:
        info = discovery.discover()
    answer = verdict(info)
    lines = table(_probe_rows(info))
    if answer.can_run_spe_guests:
        lines.append("answer: this host can run SPE guests (kvmspe configure uses the real kernel)")
    else:
        lines.append("answer: this host cannot run SPE guests; kvmspe configure models one instead")
    metric_families = families(args, lambda: metrics().probe_families(info))
    return output(args, "probe", answer.to_dict(), lines, metric_families, answer.exit_status)


def _probe_rows(info: HostInfo) -> list[tuple[str, str]]:
    """What discovery found, a row each: the host, KVM, SPE, each SPE unit, the limits."""
    from ..affinity import describe_cpus

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
    for inst in info.spe_instances:
        limit = inst.max_buff_size
        if inst.cpus:
            cpus = describe_cpus(inst.cpus)
        else:
            why = next((p for p in inst.problems if p.startswith("cpumask")), "cpumask empty")
            cpus = f"CPUs not known ({why})"
        shown = "not exposed" if limit is None else sz(limit)
        rows.append((inst.name, f"perf type {inst.type}, {cpus}, max_buff_size {shown}"))
    if not info.spe_instances:
        rows.append(("SPE units", f"none: {info.spe_instances_reason}"))
    memlock = f"soft {format_limit(info.memlock_soft)}, hard {format_limit(info.memlock_hard)}"
    rows.append(("RLIMIT_MEMLOCK", memlock if info.memlock_reason is None else info.memlock_reason))
    rows.append(("VmLck", sz(info.vm_lck) if info.vm_lck is not None else str(info.vm_lck_reason)))
    return rows


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
    from .. import status
    from ..host import kvmprocs

    families(args, lambda: None)  # the output options, checked before any work
    textfile_dir(args.textfile)
    threshold = status.DEFAULT_THRESHOLD if args.warn_below is None else args.warn_below
    rep = status.report(kvmprocs.scan(args.pid), threshold)
    code = 1 if rep.past_threshold else 0
    metric_families = families(args, lambda: metrics().status_families(rep))
    return output(args, "status", rep.to_dict(), _status_lines(rep), metric_families, code)
