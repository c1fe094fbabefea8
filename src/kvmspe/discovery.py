"""Host discovery: what this machine offers for KVM and SPE, found by probing.

:func:`discover` reports the architecture, kernel release, whether
``/dev/kvm`` exists and can be used, the KVM API version, whether KVM
supports SPE, the host page size, the SPE instances in sysfs
(``/sys/bus/event_source/devices/arm_spe_N``), RLIMIT_MEMLOCK and ``VmLck``.

Capabilities are probed, never inferred from version numbers: SPE support
is asked of KVM itself. On arm64 the SPE VCPU feature bit is given by the
user or probed (:meth:`kvmspe.kvm.Kvm.spe_feature`: a throwaway VM per
candidate bit, and the bit counts only if the SPE group then answers);
then a fresh VM gets a VCPU with that feature and KVM_HAS_DEVICE_ATTR is
asked for each attribute of the SPE group (ENXIO means not supported).
Every probe uses a VM of its own (KVM never frees a VCPU id).
KVM_CHECK_EXTENSION(KVM_CAP_ARM_SPE) is asked only when the user gives the
capability's number (the series does not publish it); it decides nothing.
Every failure to read or probe something becomes a stated reason in the
result, never an exception.

The sysfs and procfs roots can be moved, for tests: a sysfs/procfs snapshot
of a big.LITTLE arm64 host with two SPE instances ships with the package
(:func:`fixture_roots`).
"""

from __future__ import annotations

import os
import resource
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import abi
from .errors import KvmError
from .kvm import Kvm, normalise_arch

__all__ = [
    "FIXTURE_HOST",
    "HostInfo",
    "SpeInstance",
    "discover",
    "fixture_roots",
    "parse_cpulist",
    "read_spe_instances",
    "read_vm_lck",
]

#: The shipped snapshot: a big.LITTLE arm64 host with arm_spe_0 and arm_spe_1.
FIXTURE_HOST = "arm64-big-little"
_FIXTURES = Path(__file__).parent / "fixtures"
_EVENT_SOURCES = Path("bus", "event_source", "devices")
_SPE_PREFIX = "arm_spe_"
_SPE_ATTR_NAMES = {attr: info.name for (group, attr), info in abi.ATTRS.items()}


def fixture_roots(name: str = FIXTURE_HOST) -> dict[str, str]:
    """``sysfs_root`` and ``procfs_root`` of a shipped snapshot, for :func:`discover`."""
    base = _FIXTURES / name
    if not base.is_dir():
        known = ", ".join(sorted(p.name for p in _FIXTURES.iterdir() if p.is_dir()))
        raise ValueError(f"no fixture host {name!r}; shipped: {known}")
    return {"sysfs_root": str(base / "sys"), "procfs_root": str(base / "proc")}


def parse_cpulist(text: str) -> list[int]:
    """A kernel CPU list (``"0-3,8"``, as in sysfs ``cpumask``/``cpus``) as sorted CPU numbers."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first = int(lo, 10)
            last = int(hi, 10) if sep else first
        except ValueError:
            raise ValueError(f"bad CPU list {text.strip()!r}: expected ranges like '0-3,8'") from None
        if first < 0 or last < first:
            raise ValueError(f"bad CPU range {part!r} in {text.strip()!r}: expected low-high, low <= high")
        cpus.update(range(first, last + 1))
    return sorted(cpus)


@dataclass
class SpeInstance:
    """One ``arm_spe_N`` perf PMU as sysfs shows it.

    ``type`` is the perf PMU type, the number KVM_ARM_VCPU_SPE_SPU is assumed
    to take. ``caps`` holds each ``caps/*`` file as an int, including
    ``max_buff_size`` where the driver provides it. ``problems`` lists what
    could not be read, and why.
    """

    name: str
    type: int | None = None
    cpumask: str = ""
    cpus: list[int] = field(default_factory=list)
    caps: dict[str, int] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def max_buff_size(self) -> int | None:
        """``caps/max_buff_size`` when the driver exposes it, else None."""
        return self.caps.get("max_buff_size")


@dataclass
class HostInfo:
    """What :func:`discover` found. ``None`` values come with a ``*_reason``.

    ``memlock_soft``/``memlock_hard`` are bytes, ``None`` for unlimited (or
    unknown, then ``memlock_reason`` says why). ``vm_lck`` is bytes.
    """

    machine: str
    arch: str
    kernel_release: str
    page_size: int
    dev_kvm: str
    kvm_present: bool = False
    kvm_usable: bool = False
    kvm_reason: str | None = None
    api_version: int | None = None
    cap_arm_spe: int | None = None
    cap_arm_spe_reason: str | None = None
    spe_feature_bit: int | None = None
    spe_feature_reason: str | None = None
    spe_attrs: dict[str, bool] = field(default_factory=dict)
    spe_supported: bool = False
    spe_reason: str = ""
    spe_instances: list[SpeInstance] = field(default_factory=list)
    spe_instances_reason: str | None = None
    memlock_soft: int | None = None
    memlock_hard: int | None = None
    memlock_reason: str | None = None
    vm_lck: int | None = None
    vm_lck_reason: str | None = None
    pid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data with stable keys (field order), ready for JSON."""
        return asdict(self)


def _read(path: Path) -> str:
    return path.read_text(encoding="ascii", errors="replace").strip()


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _read_dir(path: Path, sub: str, problems: list[str]) -> list[tuple[str, str]]:
    """(name, contents) of each file in ``path/sub``; failures go to ``problems``."""
    try:
        entries = sorted((path / sub).iterdir())
    except OSError as exc:
        problems.append(f"{sub}/: {_why(exc)}")
        return []
    found = []
    for entry in entries:
        try:
            found.append((entry.name, _read(entry)))
        except OSError as exc:
            problems.append(f"{sub}/{entry.name}: {_why(exc)}")
    return found


def _read_instance(path: Path) -> SpeInstance:
    inst = SpeInstance(path.name)
    try:
        inst.type = int(_read(path / "type"), 0)
    except OSError as exc:
        inst.problems.append(f"type: {_why(exc)}")
    except ValueError:
        inst.problems.append("type: not an integer")
    try:
        inst.cpumask = _read(path / "cpumask")
        inst.cpus = parse_cpulist(inst.cpumask)
    except OSError as exc:
        inst.problems.append(f"cpumask: {_why(exc)}")
    except ValueError as exc:
        inst.problems.append(f"cpumask: {exc}")
    for name, text in _read_dir(path, "format", inst.problems):
        inst.formats[name] = text
    for name, text in _read_dir(path, "caps", inst.problems):
        try:
            inst.caps[name] = int(text, 0)
        except ValueError:
            inst.problems.append(f"caps/{name}: {text!r} is not an integer")
    return inst


def read_spe_instances(sysfs_root: str = "/sys") -> tuple[list[SpeInstance], str | None]:
    """The ``arm_spe_N`` PMUs under ``sysfs_root``, and why there are none if so."""
    devices = Path(sysfs_root) / _EVENT_SOURCES
    try:
        names = sorted(p.name for p in devices.iterdir() if p.name.startswith(_SPE_PREFIX))
    except OSError as exc:
        return [], f"cannot list {devices}: {_why(exc)}"
    if not names:
        return [], f"no {_SPE_PREFIX}N PMU in {devices}: the host kernel's SPE driver found no SPE unit"
    names.sort(key=lambda n: (len(n), n))
    return [_read_instance(devices / n) for n in names], None


def read_vm_lck(procfs_root: str = "/proc", pid: int | None = None) -> tuple[int | None, str | None]:
    """``VmLck`` of ``/proc/PID/status`` (``self`` by default) in bytes, or why not."""
    status = Path(procfs_root) / ("self" if pid is None else str(pid)) / "status"
    try:
        lines = status.read_text(encoding="ascii", errors="replace").splitlines()
    except OSError as exc:
        return None, f"cannot read {status}: {_why(exc)}"
    for line in lines:
        key, _, rest = line.partition(":")
        if key != "VmLck":
            continue
        fields = rest.split()
        if len(fields) == 2 and fields[1] == "kB" and fields[0].isdigit():
            return int(fields[0]) * 1024, None
        return None, f"{status}: cannot parse VmLck line {line!r}"
    return None, f"{status} has no VmLck line (a kernel thread, or not Linux procfs)"


def _read_memlock(pid: int | None) -> tuple[int | None, int | None, str | None]:
    try:
        if pid is None:
            soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        else:
            soft, hard = resource.prlimit(pid, resource.RLIMIT_MEMLOCK)
    except OSError as exc:
        return None, None, f"cannot read RLIMIT_MEMLOCK of pid {pid}: {_why(exc)}"

    def limit(v: int) -> int | None:
        return None if v == resource.RLIM_INFINITY else v

    return limit(soft), limit(hard), None


def _probe_kvm(info: HostInfo) -> None:
    """Open /dev/kvm, ask its version, and ask KVM itself whether it supports SPE."""
    info.kvm_present = os.path.exists(info.dev_kvm)
    try:
        kvm = Kvm(info.dev_kvm)
    except KvmError as exc:
        info.kvm_reason = str(exc.strerror)
        info.spe_reason = f"not probed: {info.kvm_reason}"
        return
    with kvm:
        try:
            info.api_version = kvm.api_version()
        except KvmError as exc:
            info.kvm_reason = f"{info.dev_kvm} does not answer KVM_GET_API_VERSION: {exc}"
            info.spe_reason = f"not probed: {info.kvm_reason}"
            return
        if info.api_version != abi.KVM_API_VERSION:
            info.kvm_reason = f"KVM API version {info.api_version}, kvmspe speaks {abi.KVM_API_VERSION}"
            info.spe_reason = f"not probed: {info.kvm_reason}"
            return
        info.kvm_usable = True
        cap = abi.ASSUMED.cap_arm_spe
        if kvm.arch != "aarch64":
            info.cap_arm_spe_reason = f"not probed: KVM_CAP_ARM_SPE is arm64 only, this is {kvm.arch}"
        elif cap is None:
            info.cap_arm_spe_reason = (
                "not asked: the series does not publish KVM_CAP_ARM_SPE's number"
                " (give it with KVMSPE_CAP_ARM_SPE); the SPE group is probed instead"
            )
        else:
            try:
                info.cap_arm_spe = kvm.check_extension(cap)
            except KvmError as exc:
                info.cap_arm_spe_reason = f"KVM_CHECK_EXTENSION({cap}) failed: {exc}"
            else:
                info.cap_arm_spe_reason = (
                    f"KVM_CHECK_EXTENSION({cap}) answered {info.cap_arm_spe}"
                    f" ({cap} given by {abi.ASSUMED.source('cap_arm_spe')})"
                )
        _probe_spe_group(kvm, info)


def _probe_spe_group(kvm: Kvm, info: HostInfo) -> None:
    """The SPE feature bit (arm64), then HAS for each SPE attribute on a fresh VM."""
    spe = kvm.arch == "aarch64"
    try:
        if spe:
            feature = kvm.spe_feature()
            info.spe_feature_bit, info.spe_feature_reason = feature.bit, feature.reason
            if feature.bit is None and feature.tried:
                info.spe_feature_reason = f"none found; what the kernel answered: {feature.answers}"
            spe = feature.bit is not None
        with kvm.create_vm() as vm:
            vcpu = vm.create_vcpu(spe=spe)
            for attr, name in sorted(_SPE_ATTR_NAMES.items()):
                info.spe_attrs[name] = vcpu.has_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, attr)
    except KvmError as exc:
        info.spe_reason = f"could not probe the SPE group: {exc}"
        return
    known = [n for n, ok in info.spe_attrs.items() if ok]
    info.spe_supported = spe and len(known) == len(info.spe_attrs)
    if info.spe_supported:
        info.spe_reason = (
            f"KVM_HAS_DEVICE_ATTR accepts every KVM_ARM_VCPU_SPE_CTRL attribute"
            f" (SPE VCPU feature {info.spe_feature_reason})"
        )
    elif kvm.arch != "aarch64":
        info.spe_reason = (
            "SPE not supported on this host: SPE is an arm64 feature (this host is"
            f" {kvm.arch}); KVM_HAS_DEVICE_ATTR answers ENXIO for the KVM_ARM_VCPU_SPE_CTRL group"
            if not known
            else f"SPE not supported on this host: SPE is an arm64 feature (this host is {kvm.arch})"
        )
    elif not spe:
        info.spe_reason = f"SPE not supported on this host: {feature.reason}"
    elif not known:
        info.spe_reason = (
            "SPE not supported on this host: with the SPE VCPU feature, KVM_HAS_DEVICE_ATTR"
            " answers ENXIO for every KVM_ARM_VCPU_SPE_CTRL attribute"
        )
    else:
        missing = [n for n, ok in info.spe_attrs.items() if not ok]
        info.spe_reason = f"partial SPE support: KVM does not know {', '.join(missing)}"


def discover(
    *,
    sysfs_root: str = "/sys",
    procfs_root: str = "/proc",
    dev_kvm: str = "/dev/kvm",
    pid: int | None = None,
) -> HostInfo:
    """Probe this host (``pid``: whose VmLck and RLIMIT_MEMLOCK; default this process).

    Never raises for something it cannot read or probe: the matching
    ``*_reason`` field says why.
    """
    uname = os.uname()
    info = HostInfo(
        machine=uname.machine,
        arch=normalise_arch(uname.machine),
        kernel_release=uname.release,
        page_size=os.sysconf("SC_PAGE_SIZE"),
        dev_kvm=dev_kvm,
        pid=pid,
    )
    _probe_kvm(info)
    info.spe_instances, info.spe_instances_reason = read_spe_instances(sysfs_root)
    info.memlock_soft, info.memlock_hard, info.memlock_reason = _read_memlock(pid)
    info.vm_lck, info.vm_lck_reason = read_vm_lck(procfs_root, pid)
    return info
