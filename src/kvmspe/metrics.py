"""What kvmspe exports to Prometheus: the metric families of ``status``, ``probe`` and ``plan``.

Names start with ``kvmspe_`` and are in base units (bytes, counts), as
Prometheus' naming conventions ask. Per-process metrics carry the labels
``pid`` and ``command`` (the process's name, ``/proc/PID/comm``); an
unlimited RLIMIT_MEMLOCK is ``+Inf``, and so is the headroom under it.
:mod:`kvmspe.prometheus` writes the families as text.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .host.discovery import HostInfo
from .prometheus import MetricFamily
from .status import StatusReport

if TYPE_CHECKING:
    from .planner import Plan

__all__ = [
    "PLAN_METRICS",
    "PROBE_METRICS",
    "STATUS_METRICS",
    "plan_families",
    "probe_families",
    "status_families",
]

#: The per-process metrics of ``status``, with their help texts.
STATUS_METRICS = {
    "kvmspe_vms": "KVM VMs the process holds (its fds on anon_inode:kvm-vm)",
    "kvmspe_vcpus": "KVM VCPUs the process holds (its fds on anon_inode:kvm-vcpu:N)",
    "kvmspe_locked_memory_bytes": "Memory the process has locked (VmLck), which KVM's SPE pins count in",
    "kvmspe_memlock_soft_limit_bytes": "The process's soft RLIMIT_MEMLOCK, the one the kernel checks",
    "kvmspe_memlock_hard_limit_bytes": "The process's hard RLIMIT_MEMLOCK",
    "kvmspe_memlock_headroom_bytes": "Soft RLIMIT_MEMLOCK minus VmLck: what a buffer enable may still pin",
    "kvmspe_memlock_threshold_bytes": "The headroom below which kvmspe status warns (--warn-below)",
    "kvmspe_memlock_past_threshold": "1 when the headroom is below the threshold, else 0",
}
#: The host-wide metrics of ``status``.
_SCAN_METRICS = {
    "kvmspe_processes_scanned": "Processes kvmspe status looked at",
    "kvmspe_processes_uninspectable": "Processes whose fds the caller may not read (not known to hold KVM)",
}
#: The metrics of ``probe``.
PROBE_METRICS = {
    "kvmspe_host_page_size_bytes": "The host's page size",
    "kvmspe_kvm_usable": "1 when /dev/kvm answers with the KVM API version kvmspe speaks, else 0",
    "kvmspe_kvm_spe_supported": "1 when KVM accepts every KVM_ARM_VCPU_SPE_CTRL attribute, else 0",
    "kvmspe_spe_units": "SPE units (arm_spe_N perf PMUs) in sysfs",
    "kvmspe_spe_unit_cpus": "CPUs of the SPE unit (its cpumask)",
    "kvmspe_spe_unit_max_buffer_size_bytes": "The SPE unit's caps/max_buff_size, where the driver has it"
    " (0: no limit)",
}


#: The metrics of ``plan``: what the planner says a VM of these VCPUs on this SPU needs.
PLAN_METRICS = {
    "kvmspe_plan_max_buffer_size_bytes": "The max buffer size the plan sets (0: no limit)",
    "kvmspe_plan_pinned_bytes": "Host memory the VM's SPE buffers pin, per pinning case (+Inf: no limit)",
    "kvmspe_plan_memlock_limit_bytes": "The RLIMIT_MEMLOCK the plan gives the VMM (+Inf: unlimited)",
}


def _limit(value: int | None) -> float:
    return math.inf if value is None else value


def status_families(rep: StatusReport) -> list[MetricFamily]:
    """The families of ``status --prometheus`` for ``rep``; every family is present,
    with one sample per process where it applies."""
    fams = {name: MetricFamily(name, text) for name, text in {**_SCAN_METRICS, **STATUS_METRICS}.items()}
    fams["kvmspe_processes_scanned"].add(rep.scan.scanned)
    fams["kvmspe_processes_uninspectable"].add(len(rep.scan.uninspectable))
    for s in rep.processes:
        p, m = s.process, s.process.memlock
        labels = (("pid", str(p.pid)), ("command", p.command))
        fams["kvmspe_vms"].add(p.fds.vms, labels)
        fams["kvmspe_vcpus"].add(p.fds.vcpus, labels)
        if m is None:
            continue
        fams["kvmspe_locked_memory_bytes"].add(m.vm_lck, labels)
        fams["kvmspe_memlock_soft_limit_bytes"].add(_limit(m.soft), labels)
        fams["kvmspe_memlock_hard_limit_bytes"].add(_limit(m.hard), labels)
        fams["kvmspe_memlock_headroom_bytes"].add(_limit(s.headroom), labels)
        if s.threshold_bytes is not None:
            fams["kvmspe_memlock_threshold_bytes"].add(s.threshold_bytes, labels)
        fams["kvmspe_memlock_past_threshold"].add(int(s.past_threshold), labels)
    return list(fams.values())


def probe_families(info: HostInfo) -> list[MetricFamily]:
    """The families of ``probe --prometheus`` for what :func:`~kvmspe.host.discovery.discover` found."""
    fams = {name: MetricFamily(name, text) for name, text in PROBE_METRICS.items()}
    fams["kvmspe_host_page_size_bytes"].add(info.page_size)
    fams["kvmspe_kvm_usable"].add(int(info.kvm_usable))
    fams["kvmspe_kvm_spe_supported"].add(int(info.kvm_usable and info.spe_supported))
    fams["kvmspe_spe_units"].add(len(info.spe_instances))
    for inst in info.spe_instances:
        labels = (("unit", inst.name), ("type", "" if inst.type is None else str(inst.type)))
        fams["kvmspe_spe_unit_cpus"].add(len(inst.cpus), labels)
        if inst.max_buff_size is not None:
            fams["kvmspe_spe_unit_max_buffer_size_bytes"].add(inst.max_buff_size, labels)
    return list(fams.values())


def plan_families(plan: Plan) -> list[MetricFamily]:
    """The families of ``plan --prometheus``: labels ``vcpus`` and ``spu`` (empty without a
    host), and ``case`` for the pinned memory of each pinning case."""
    from .planner import PINNING_CASES

    fams = {name: MetricFamily(name, text) for name, text in PLAN_METRICS.items()}
    labels = (("vcpus", str(plan.vcpus)), ("spu", "" if plan.spu is None else str(plan.spu)))
    fams["kvmspe_plan_max_buffer_size_bytes"].add(plan.size, labels)
    for case in PINNING_CASES:
        figures = plan.pinned.get(case)
        pinned = None if figures is None else figures.per_vm
        fams["kvmspe_plan_pinned_bytes"].add(_limit(pinned), (*labels, ("case", case)))
    fams["kvmspe_plan_memlock_limit_bytes"].add(_limit(plan.memlock_limit), (*labels, ("case", plan.case)))
    return list(fams.values())
