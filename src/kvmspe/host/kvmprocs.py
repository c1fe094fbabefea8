"""The processes of this host that hold KVM objects, found from their open file descriptors.

KVM gives each object it hands to userspace an anonymous inode whose name
the fd's link in ``/proc/PID/fd`` shows: ``anon_inode:kvm-vm`` for a VM,
``anon_inode:kvm-vcpu:N`` for VCPU N (``virt/kvm/kvm_main.c`` names them so),
and ``anon_inode:kvm-*`` for the devices of a VM (a vGIC, for instance). A
VMM also keeps ``/dev/kvm`` open. :func:`scan` reads every process's fd
links (or those of the processes asked for), counts each kind per process,
and reads the memory a process has locked and its ``RLIMIT_MEMLOCK`` with
:func:`kvmspe.host.memlock.status`, the one reader of those files.

A process whose fds the caller may not read (another user's, or a
non-dumpable one, without CAP_SYS_PTRACE) cannot be told apart from one
without KVM: it is returned in :attr:`KvmScan.uninspectable` with the
reason, never dropped. Kernel threads, which have no memory map and so no
fds of KVM, are left out (their ``status`` has no ``VmLck`` line). A
process that exits while it is read is left out too: it holds nothing
any more.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KvmspeError
from ..validation import check_int
from . import memlock
from .discovery import read_vm_lck

__all__ = [
    "KVM_OTHER_PREFIX",
    "KVM_VCPU_PREFIX",
    "KVM_VM_LINK",
    "KvmFds",
    "KvmProcess",
    "KvmScan",
    "Uninspectable",
    "classify_link",
    "scan",
]

#: The link target of a VM fd (KVM_CREATE_VM's anonymous inode).
KVM_VM_LINK = "anon_inode:kvm-vm"
#: The link target of a VCPU fd starts so, followed by the VCPU id.
KVM_VCPU_PREFIX = "anon_inode:kvm-vcpu:"
#: Every other KVM object (devices made with KVM_CREATE_DEVICE, ...) starts so.
KVM_OTHER_PREFIX = "anon_inode:kvm-"
#: The most bytes of ``/proc/PID/comm`` read: the kernel's TASK_COMM_LEN is 16, newline included.
_COMM_BYTES = 64


def classify_link(target: str, dev_kvm: str = "/dev/kvm") -> str | None:
    """What an fd link target is: ``"vm"``, ``"vcpu"``, ``"dev_kvm"``, ``"other"``
    (another KVM object), or None (not KVM's)."""
    if target == KVM_VM_LINK:
        return "vm"
    if target.startswith(KVM_VCPU_PREFIX):
        return "vcpu"
    if target.startswith(KVM_OTHER_PREFIX):
        return "other"
    if target == dev_kvm:
        return "dev_kvm"
    return None


@dataclass(frozen=True)
class KvmFds:
    """How many fds of each kind of KVM object one process holds."""

    vms: int = 0
    vcpus: int = 0
    dev_kvm: int = 0
    other: int = 0

    @property
    def any(self) -> bool:
        """Whether the process holds any KVM fd at all."""
        return bool(self.vms or self.vcpus or self.dev_kvm or self.other)


@dataclass(frozen=True)
class KvmProcess:
    """A process holding KVM fds, with its locked memory and RLIMIT_MEMLOCK.

    ``memlock`` is None when those could not be read, and ``problem`` says why.
    """

    pid: int
    command: str
    fds: KvmFds
    memlock: memlock.MemlockStatus | None
    problem: str | None = None


@dataclass(frozen=True)
class Uninspectable:
    """A process whose fds (``/proc/PID/fd``) the caller may not read: ``reason`` is the
    error (``Permission denied``); ``command`` is its name when readable."""

    pid: int
    command: str | None
    reason: str


@dataclass
class KvmScan:
    """What :func:`scan` found: processes with KVM fds (by pid), those it could not
    look into, how many processes it looked at, and which of the pids asked for hold none."""

    processes: list[KvmProcess] = field(default_factory=list)
    uninspectable: list[Uninspectable] = field(default_factory=list)
    scanned: int = 0
    #: The pids asked for by name that hold no KVM fd.
    without_kvm: list[int] = field(default_factory=list)


class _Gone(Exception):
    """The process exited while it was read."""


def _command(base: Path) -> str | None:
    """The process's name (``/proc/PID/comm``), undecodable bytes as ``\\xNN``; None if unreadable."""
    try:
        with open(base / "comm", "rb") as f:
            raw = f.read(_COMM_BYTES)
    except OSError:
        return None
    return raw.removesuffix(b"\n").decode("utf-8", errors="backslashreplace")


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _fds(base: Path, dev_kvm: str) -> KvmFds:
    """Count the KVM fds of the process at ``base``; PermissionError/OSError when its
    fds cannot be read, :class:`_Gone` when it exited."""
    counts = {"vm": 0, "vcpu": 0, "dev_kvm": 0, "other": 0}
    fd_dir = base / "fd"
    try:
        names = os.listdir(fd_dir)
    except FileNotFoundError:
        raise _Gone from None
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
        except FileNotFoundError:
            continue  # closed while we looked
        kind = classify_link(target, dev_kvm)
        if kind is not None:
            counts[kind] += 1
    return KvmFds(counts["vm"], counts["vcpu"], counts["dev_kvm"], counts["other"])


def _pids(procfs_root: Path) -> list[int]:
    return sorted(int(n) for n in os.listdir(procfs_root) if n.isascii() and n.isdigit())


def scan(
    pids: Iterable[int] | None = None, *, procfs_root: str = "/proc", dev_kvm: str = "/dev/kvm"
) -> KvmScan:
    """Every process (or each of ``pids``) holding KVM fds, with VmLck and RLIMIT_MEMLOCK.

    Read-only. A given pid that does not exist raises ProcessLookupError;
    a bad pid InvalidArgumentError; ``procfs_root`` that cannot be listed, OSError.
    Everything else that cannot be read is reported in the result.
    """
    root = Path(procfs_root)
    if pids is None:
        wanted = _pids(root)
        explicit = False
    else:
        wanted = sorted({check_int("pid", p, 1, (1 << 31) - 1) for p in pids})
        explicit = True
        for pid in wanted:
            if not (root / str(pid)).is_dir():
                raise ProcessLookupError(
                    f"no process {pid} (nothing at {root / str(pid)}); accepted: the pid of a running process"
                )
    result = KvmScan()
    for pid in wanted:
        base = root / str(pid)
        try:
            found = _process(pid, base, dev_kvm, procfs_root, explicit)
        except _Gone:
            continue
        result.scanned += 1
        if isinstance(found, Uninspectable):
            result.uninspectable.append(found)
        elif found is not None:
            result.processes.append(found)
        elif explicit:
            result.without_kvm.append(pid)
    return result


def _process(
    pid: int, base: Path, dev_kvm: str, procfs_root: str, explicit: bool
) -> KvmProcess | Uninspectable | None:
    try:
        fds = _fds(base, dev_kvm)
    except OSError as exc:
        vm_lck, _ = read_vm_lck(procfs_root, pid)
        if vm_lck is None and not explicit:
            if not os.path.isdir(base):
                raise _Gone from None
            return None  # a kernel thread: no memory map, so no KVM fd
        return Uninspectable(pid, _command(base), _why(exc))
    if not fds.any:
        return None
    command = _command(base)
    if command is None:
        if not os.path.isdir(base):
            raise _Gone
        command = "?"
    try:
        status = memlock.status(pid, procfs_root=procfs_root)
    except ProcessLookupError:
        raise _Gone from None
    except (OSError, KvmspeError) as exc:
        return KvmProcess(pid, command, fds, None, f"cannot read its RLIMIT_MEMLOCK and VmLck: {exc}")
    return KvmProcess(pid, command, fds, status)
