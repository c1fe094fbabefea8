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
import stat
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from .. import abi
from ..arch import maxbuf
from ..errors import InvalidArgumentError, KvmError
from ..kvm import Kvm, SpeFeature, normalise_arch
from ..units import parse_uint
from ..validation import check_int
from . import memlock

__all__ = [
    "FIXTURE_HOST",
    "MAX_SNAPSHOT_BYTES",
    "SNAPSHOT_REFUSED",
    "HostInfo",
    "SpeGroupProbe",
    "probe_spe_group",
    "SpeInstance",
    "discover",
    "fixture_roots",
    "format_cpulist",
    "page_size",
    "parse_cpulist",
    "read_spe_instances",
    "read_vm_lck",
]

#: The shipped snapshot: a big.LITTLE arm64 host with arm_spe_0 and arm_spe_1.
FIXTURE_HOST = "arm64-big-little"
_FIXTURES = Path(__file__).parent.parent / "fixtures"
_EVENT_SOURCES = Path("bus", "event_source", "devices")
_SPE_PREFIX = "arm_spe_"
_SPE_ATTR_NAMES = {attr: info.name for (group, attr), info in abi.ATTRS.items()}

#: The most bytes read from one sysfs or procfs file. A sysfs attribute is at
#: most one page (64 KiB with the largest arm64 pages); /proc/PID/status is
#: a few KiB. Anything larger is not the file it claims to be.
MAX_FILE_BYTES = 64 << 10
#: The most entries looked at in one directory (caps/, format/, the PMU list).
MAX_DIR_ENTRIES = 4096
#: The budget of all SPE instances together: the bytes read, each file counted
#: as at least 64 bytes (so at most 65536 files are opened), plus 8 bytes for
#: each CPU their cpumasks list (a small file may list 8192 CPUs). A real host
#: needs a few KiB: its SPE units share out its CPUs, at most 8192 of them.
#: Past it the snapshot is refused whole, in one line.
MAX_SNAPSHOT_BYTES = 4 << 20
_MIN_FILE_COST = 64
_CPU_COST = 8
#: How ``spe_instances_reason`` starts when the snapshot was refused for its size.
SNAPSHOT_REFUSED = "not read, not a real host: "


class _OverBudget(Exception):
    """The snapshot went past :data:`MAX_SNAPSHOT_BYTES` (not an OSError: no
    single file is at fault, and the reading stops)."""


class _Budget:
    """What is left of :data:`MAX_SNAPSHOT_BYTES` while one snapshot is read."""

    def __init__(self, nbytes: int = MAX_SNAPSHOT_BYTES) -> None:
        self.left = nbytes

    def take(self, nbytes: int) -> None:
        self.left -= max(nbytes, _MIN_FILE_COST)
        if self.left < 0:
            raise _OverBudget

    def take_cpus(self, count: int) -> None:
        self.left -= count * _CPU_COST
        if self.left < 0:
            raise _OverBudget


#: CPU numbers are below this: CONFIG_NR_CPUS is at most 8192 on every
#: architecture Linux builds for (x86 MAXSMP, powerpc; arm64 allows 4096).
MAX_CPUS = 8192


def _show(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


class FixtureRoots(TypedDict):
    """The keyword arguments of :func:`discover` that point it at a snapshot."""

    sysfs_root: str
    procfs_root: str


def fixture_roots(name: str = FIXTURE_HOST) -> FixtureRoots:
    """``sysfs_root`` and ``procfs_root`` of a snapshot, for :func:`discover`.

    ``name`` is a shipped snapshot (:data:`FIXTURE_HOST`) or the path of a
    directory laid out the same way (it has ``sys/`` and ``proc/``; a path is
    anything with a ``/`` in it). Raises ValueError for anything else.
    """
    shipped = sorted(p.name for p in _FIXTURES.iterdir() if p.is_dir())
    accepted = f"accepted: a shipped snapshot ({', '.join(shipped)}) or a directory path with sys/ and proc/"
    if not isinstance(name, str) or not name.strip() or "\0" in name:
        raise InvalidArgumentError(f"bad fixture {name!r}; {accepted}")
    if "/" in name or name in (".", ".."):
        base = Path(name)
        if not base.is_dir():
            raise InvalidArgumentError(f"fixture {_show(name)} is not a directory; {accepted}")
        missing = [sub for sub in ("sys", "proc") if not (base / sub).is_dir()]
        if missing:
            raise InvalidArgumentError(
                f"fixture {_show(name)} has no {' or '.join(missing)}/ directory; {accepted}"
            )
    elif name in shipped:
        base = _FIXTURES / name
    else:
        raise InvalidArgumentError(f"no fixture host {_show(name)}; {accepted}")
    return {"sysfs_root": str(base / "sys"), "procfs_root": str(base / "proc")}


def parse_cpulist(text: str) -> list[int]:
    """A kernel CPU list (``"0-3,8"``, as in sysfs ``cpumask``/``cpus``) as sorted CPU numbers.

    CPU numbers are ASCII decimal below :data:`MAX_CPUS`; anything else
    raises ValueError (before any list is built, so a range like
    ``0-400000000`` costs nothing).
    """
    if not isinstance(text, str):
        raise InvalidArgumentError(f"bad CPU list {text!r}: not a string")
    cpus: set[int] = set()
    shown = _show(text.strip())
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        lo, hi = lo.strip(), hi.strip()
        numbers = (lo, hi) if sep else (lo,)
        if not all(n.isascii() and n.isdigit() and len(n) <= 5 for n in numbers):
            raise InvalidArgumentError(
                f"bad CPU list {shown}: expected ranges like '0-3,8' of CPUs 0..{MAX_CPUS - 1}"
            )
        first = int(lo)
        last = int(hi) if sep else first
        if last < first:
            raise InvalidArgumentError(
                f"bad CPU range {_show(part)} in {shown}: expected low-high, low <= high"
            )
        if last >= MAX_CPUS:
            raise InvalidArgumentError(
                f"bad CPU list {shown}: CPU {last} is beyond {MAX_CPUS - 1}, the most Linux has"
            )
        cpus.update(range(first, last + 1))
    return sorted(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """CPU numbers as a kernel CPU list, the inverse of :func:`parse_cpulist`:
    ``[0, 1, 2, 3, 8]`` gives ``"0-3,8"`` (what ``taskset -c`` and systemd's
    ``CPUAffinity=`` accept); no CPU gives ``""``."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


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


def _read(path: Path, budget: _Budget | None = None) -> str:
    """The text of a regular file of at most :data:`MAX_FILE_BYTES`, stripped.

    Opened without blocking and checked before reading: a FIFO, a device
    (a link to ``/dev/zero``), a directory or an oversized file raises
    OSError with a reason, rather than hang or fill memory.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"not a regular file ({_KINDS.get(stat.S_IFMT(mode), 'special file')})")
        data = b""
        while len(data) <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if budget is not None:
        budget.take(len(data))
    if len(data) > MAX_FILE_BYTES:
        raise OSError(f"larger than {MAX_FILE_BYTES} bytes: not a sysfs or procfs file")
    return data.decode("ascii", errors="replace").strip()


_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _check_root(name: str, root: object) -> None:
    if not isinstance(root, (str, os.PathLike)) or not str(root) or "\0" in str(root):
        raise InvalidArgumentError(f"{name} must be a directory path, got {root!r}")


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _entries(path: Path) -> list[Path]:
    """The first :data:`MAX_DIR_ENTRIES` entries of ``path``, sorted; OSError if more."""
    found: list[Path] = []
    with os.scandir(path) as it:
        for entry in it:
            if len(found) == MAX_DIR_ENTRIES:
                raise OSError(f"more than {MAX_DIR_ENTRIES} entries")
            found.append(path / entry.name)
    return sorted(found)


def _read_dir(path: Path, sub: str, problems: list[str], budget: _Budget) -> list[tuple[str, str]]:
    """(name, contents) of each file in ``path/sub``; failures go to ``problems``."""
    try:
        entries = _entries(path / sub)
    except OSError as exc:
        problems.append(f"{sub}/: {_why(exc)}")
        return []
    found = []
    for entry in entries:
        try:
            found.append((entry.name, _read(entry, budget)))
        except OSError as exc:
            problems.append(f"{sub}/{entry.name}: {_why(exc)}")
    return found


def _read_instance(path: Path, budget: _Budget) -> SpeInstance:
    inst = SpeInstance(path.name)
    try:
        inst.type = parse_uint(_read(path / "type", budget), what="perf PMU type", maximum=(1 << 31) - 1)
    except OSError as exc:
        inst.problems.append(f"type: {_why(exc)}")
    except ValueError as exc:
        inst.problems.append(f"type: {exc}")
    try:
        inst.cpumask = _read(path / "cpumask", budget)
        inst.cpus = parse_cpulist(inst.cpumask)
        budget.take_cpus(len(inst.cpus))
    except OSError as exc:
        inst.problems.append(f"cpumask: {_why(exc)}")
    except ValueError as exc:
        inst.problems.append(f"cpumask: {exc}")
    for name, text in _read_dir(path, "format", inst.problems, budget):
        inst.formats[name] = text
    for name, text in _read_dir(path, "caps", inst.problems, budget):
        try:
            value = parse_uint(text, what=f"caps/{name}")
        except ValueError:
            inst.problems.append(f"caps/{name}: {_show(text)} is not an unsigned integer")
            continue
        if name == "max_buff_size" and not maxbuf.is_representable(value):
            # The SPU's limit is a decoded PMBIDR_EL1.MaxBuffSize: any other number is not one.
            inst.problems.append(f"caps/max_buff_size: {value:#x} is not a MaxBuffSize size; ignored")
            continue
        inst.caps[name] = value
    return inst


def read_spe_instances(sysfs_root: str = "/sys") -> tuple[list[SpeInstance], str | None]:
    """The ``arm_spe_N`` PMUs under ``sysfs_root``, and why there are none if so."""
    _check_root("sysfs_root", sysfs_root)
    devices = Path(sysfs_root) / _EVENT_SOURCES
    try:
        names = sorted(p.name for p in _entries(devices) if p.name.startswith(_SPE_PREFIX))
    except OSError as exc:
        return [], f"cannot list {devices}: {_why(exc)}"
    if not names:
        return [], f"no {_SPE_PREFIX}N PMU in {devices}: the host kernel's SPE driver found no SPE unit"
    names.sort(key=lambda n: (len(n), n))
    budget = _Budget()
    try:
        return [_read_instance(devices / n, budget) for n in names], None
    except _OverBudget:
        return [], (
            f"{SNAPSHOT_REFUSED}the {len(names)} {_SPE_PREFIX}N PMUs in {devices} exceed the snapshot"
            f" budget of {MAX_SNAPSHOT_BYTES >> 20} MiB (bytes read, and 8 per CPU their cpumasks list)"
        )


def read_vm_lck(procfs_root: str = "/proc", pid: int | None = None) -> tuple[int | None, str | None]:
    """``VmLck`` of ``/proc/PID/status`` (``self`` by default) in bytes, or why not."""
    _check_root("procfs_root", procfs_root)
    if pid is not None:
        check_int("pid", pid, 1, (1 << 31) - 1)
    status = Path(procfs_root) / ("self" if pid is None else str(pid)) / "status"
    try:
        lines = _read(status).splitlines()
    except OSError as exc:
        return None, f"cannot read {status}: {_why(exc)}"
    try:
        vm_lck = memlock.parse_vm_lck("\n".join(lines))
    except ValueError as exc:
        return None, f"{status}: {exc}"
    if vm_lck is None:
        return None, f"{status} has no VmLck line (a kernel thread, or not Linux procfs)"
    return vm_lck, None


def _read_memlock(pid: int | None) -> tuple[int | None, int | None, str | None]:
    try:
        soft, hard = memlock.read_rlimit(pid)
    except OSError as exc:
        return None, None, f"cannot read RLIMIT_MEMLOCK of pid {pid}: {_why(exc)}"
    return soft, hard, None


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


@dataclass(frozen=True)
class SpeGroupProbe:
    """What KVM itself says about SPE: the SPE VCPU feature (arm64 only, else
    None) and, on a VCPU of a throwaway VM created with that feature where
    there is one, KVM_HAS_DEVICE_ATTR for each KVM_ARM_VCPU_SPE_CTRL attribute."""

    feature: SpeFeature | None
    attrs: dict[str, bool]

    @property
    def with_feature(self) -> bool:
        """Whether the VCPU asked had the SPE feature (always, off arm64: there is none)."""
        return self.feature is None or self.feature.bit is not None


def probe_spe_group(kvm: Kvm) -> SpeGroupProbe:
    """The SPE feature bit (arm64), then HAS for each SPE attribute on a fresh VM.

    Raises :class:`~kvmspe.errors.KvmError` when the kernel refuses a step.
    """
    return _has_spe_attrs(kvm, kvm.spe_feature() if kvm.arch == "aarch64" else None)


def _has_spe_attrs(kvm: Kvm, feature: SpeFeature | None) -> SpeGroupProbe:
    spe = feature is not None and feature.bit is not None
    attrs: dict[str, bool] = {}
    with kvm.create_vm() as vm:
        vcpu = vm.create_vcpu(spe=spe)
        for attr, name in sorted(_SPE_ATTR_NAMES.items()):
            attrs[name] = vcpu.has_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, attr)
    return SpeGroupProbe(feature, attrs)


def _probe_spe_group(kvm: Kvm, info: HostInfo) -> None:
    """Fill ``info`` from :func:`probe_spe_group`, with the reasons people read."""
    feature: SpeFeature | None = None
    try:
        if kvm.arch == "aarch64":
            feature = kvm.spe_feature()
            info.spe_feature_bit, info.spe_feature_reason = feature.bit, feature.reason
            if feature.bit is None and feature.tried:
                info.spe_feature_reason = f"none found; what the kernel answered: {feature.answers}"
        probe = _has_spe_attrs(kvm, feature)
    except KvmError as exc:
        info.spe_reason = f"could not probe the SPE group: {exc}"
        return
    info.spe_attrs.update(probe.attrs)
    spe = kvm.arch == "aarch64" and probe.with_feature
    known = [n for n, ok in info.spe_attrs.items() if ok]
    everything = len(known) == len(info.spe_attrs)
    info.spe_supported = (spe or kvm.arch != "aarch64") and everything
    if info.spe_supported and kvm.arch != "aarch64":
        # No x86 kernel has SPE: only a stand-in answers here, such as kvmspe's
        # shim, where every VCPU counts as created with the SPE feature.
        info.spe_reason = (
            f"KVM_HAS_DEVICE_ATTR accepts every KVM_ARM_VCPU_SPE_CTRL attribute on {kvm.arch}, which"
            " has no SPE: a stand-in (kvmspe's shim) answers for the SPE group"
        )
    elif info.spe_supported:
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
        assert feature is not None
        info.spe_reason = f"SPE not supported on this host: {feature.reason}"
    elif not known:
        info.spe_reason = (
            "SPE not supported on this host: with the SPE VCPU feature, KVM_HAS_DEVICE_ATTR"
            " answers ENXIO for every KVM_ARM_VCPU_SPE_CTRL attribute"
        )
    else:
        missing = [n for n, ok in info.spe_attrs.items() if not ok]
        info.spe_reason = f"partial SPE support: KVM does not know {', '.join(missing)}"


def page_size() -> int:
    """This system's page size in bytes (``sysconf(_SC_PAGE_SIZE)``)."""
    return os.sysconf("SC_PAGE_SIZE")


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
        page_size=page_size(),
        dev_kvm=dev_kvm,
        pid=pid,
    )
    _probe_kvm(info)
    info.spe_instances, info.spe_instances_reason = read_spe_instances(sysfs_root)
    info.memlock_soft, info.memlock_hard, info.memlock_reason = _read_memlock(pid)
    info.vm_lck, info.vm_lck_reason = read_vm_lck(procfs_root, pid)
    return info
