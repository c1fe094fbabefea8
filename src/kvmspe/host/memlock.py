"""Read and raise RLIMIT_MEMLOCK of this process or another one.

KVM charges the pinned SPE buffer against the VMM's RLIMIT_MEMLOCK
(the reference patch; v6 series patches 29, 32 and 33), so a VMM raises the limit before running its VCPUs, or
when KVM_RUN exits with KVM_EXIT_RLIMIT. :func:`status` reads the soft and
hard limits and ``VmLck`` (the peak of locked memory) from procfs;
:func:`raise_limit` raises the soft limit, and the hard one when asked and
privileged (CAP_SYS_RESOURCE), with ``resource.prlimit``. It never lowers a
limit: a limit already high enough is left as it is.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import InvalidArgumentError, KvmspeError
from ..validation import check_int

__all__ = [
    "room_above_locked",
    "LIMIT_MAX",
    "MemlockPermissionError",
    "MemlockStatus",
    "parse_vm_lck",
    "raise_limit",
    "read_rlimit",
    "status",
]

_LIMIT_ROW = "Max locked memory"
#: The largest limit :func:`raise_limit` sets: the kernel's rlim_t is a u64
#: (finite up to 2**64-2, RLIM_INFINITY being 2**64-1), but Python's
#: ``resource`` module passes limits as a C long, so 2**63-1 is the most it can set.
LIMIT_MAX = (1 << 63) - 1


class MemlockPermissionError(KvmspeError, PermissionError):
    """The limit cannot be raised without a privilege the caller lacks."""


@dataclass(frozen=True)
class MemlockStatus:
    """RLIMIT_MEMLOCK of one process; ``None`` is RLIM_INFINITY."""

    pid: int
    soft: int | None
    hard: int | None
    vm_lck: int


def _pid(pid: int | None) -> int:
    if pid is None:
        return os.getpid()
    return check_int("pid", pid, 1, (1 << 31) - 1)


def parse_vm_lck(proc_status: str) -> int | None:
    """``VmLck`` in bytes from the text of ``/proc/PID/status``; None when it has no
    VmLck line (a kernel thread, or not Linux procfs). ValueError for a line that
    is not ``VmLck: N kB`` with N a kB count of a u64 (at most 17 digits)."""
    for line in proc_status.splitlines():
        key, _, rest = line.partition(":")
        if key != "VmLck":
            continue
        fields = rest.split()
        number = fields[0] if len(fields) == 2 and fields[1] == "kB" else ""
        if number.isascii() and number.isdigit() and len(number) <= 17:
            return int(number) * 1024
        raise ValueError(f"cannot parse VmLck line {line!r}")
    return None


def read_rlimit(pid: int | None = None) -> tuple[int | None, int | None]:
    """Soft and hard RLIMIT_MEMLOCK of ``pid`` (None: this process) from the kernel
    (getrlimit/prlimit); None is RLIM_INFINITY. OSError when it cannot be read."""
    if pid is None:
        soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    else:
        soft, hard = resource.prlimit(_pid(pid), resource.RLIMIT_MEMLOCK)
    return _from_rlim(soft), _from_rlim(hard)


def _limit_value(text: str) -> int | None:
    return None if text == "unlimited" else int(text)


def status(pid: int | None = None, *, procfs_root: str = "/proc") -> MemlockStatus:
    """Soft and hard RLIMIT_MEMLOCK and VmLck (bytes) of ``pid`` (None: this process),
    read from ``<procfs_root>/<pid>/limits`` and ``.../status``."""
    pid = _pid(pid)
    base = os.path.join(procfs_root, str(pid))
    try:
        # The rows read are ASCII; the process's name in ``status`` may be any bytes.
        with open(os.path.join(base, "limits"), encoding="ascii", errors="replace") as f:
            limits = f.read()
        with open(os.path.join(base, "status"), encoding="ascii", errors="replace") as f:
            proc_status = f.read()
    except FileNotFoundError:
        raise ProcessLookupError(f"no process {pid} (nothing at {base})") from None
    soft = hard = None
    found = False
    for line in limits.splitlines():
        if line.startswith(_LIMIT_ROW):
            fields = line[len(_LIMIT_ROW) :].split()
            soft, hard = _limit_value(fields[0]), _limit_value(fields[1])
            found = True
    if not found:
        raise KvmspeError(f"{base}/limits has no '{_LIMIT_ROW}' row")
    try:
        vm_lck = parse_vm_lck(proc_status) or 0
    except ValueError as exc:
        raise KvmspeError(f"{base}/status: {exc}") from None
    return MemlockStatus(pid, soft, hard, vm_lck)


def _from_rlim(value: int) -> int | None:
    return None if value == resource.RLIM_INFINITY else value


def raise_limit(nbytes: int, pid: int | None = None, *, hard: bool = False) -> MemlockStatus:
    """Make RLIMIT_MEMLOCK of ``pid`` (None: this process) at least ``nbytes``.

    The soft limit is raised to ``nbytes`` when it is lower; a limit at or
    above ``nbytes`` is left alone. When ``nbytes`` is above the hard limit,
    ``hard=True`` raises the hard limit too, which needs CAP_SYS_RESOURCE;
    without it, or without ``hard=True``, :class:`MemlockPermissionError`.
    Returns the new :func:`status`.
    """
    check_int("nbytes", nbytes, 0, LIMIT_MAX)
    if not isinstance(hard, bool):
        raise InvalidArgumentError(f"hard must be True or False, got {hard!r}")
    pid = _pid(pid)
    target = 0 if pid == os.getpid() else pid
    try:
        soft, hard_now = resource.prlimit(target, resource.RLIMIT_MEMLOCK)
    except ProcessLookupError:
        raise ProcessLookupError(f"no process {pid}") from None
    except PermissionError:
        raise MemlockPermissionError(
            f"cannot read RLIMIT_MEMLOCK of process {pid}: it belongs to another user"
            " (needs CAP_SYS_RESOURCE or the same user)"
        ) from None
    soft_v, hard_v = _from_rlim(soft), _from_rlim(hard_now)
    if soft_v is None or soft_v >= nbytes:
        return status(pid)
    new_hard = hard_now
    if hard_v is not None and nbytes > hard_v:
        if not hard:
            raise MemlockPermissionError(
                f"{nbytes} bytes is above the hard RLIMIT_MEMLOCK {hard_v} of process {pid},"
                " which is left as it is: only the soft limit is raised unless the hard one is"
                " asked for too (and raising it needs CAP_SYS_RESOURCE)"
            )
        new_hard = nbytes
    try:
        resource.prlimit(target, resource.RLIMIT_MEMLOCK, (nbytes, new_hard))
    except (PermissionError, ValueError, OverflowError) as exc:
        # Linux answers EPERM; Python reports a failed raise of the hard limit as ValueError.
        raise MemlockPermissionError(
            f"cannot raise RLIMIT_MEMLOCK of process {pid} to {nbytes} bytes: {exc}"
            " (raising a hard limit, or another user's limits, needs CAP_SYS_RESOURCE)"
        ) from None
    return status(pid)


def _as_high_as_allowed(hard: int) -> None:
    """RLIMIT_MEMLOCK unlimited where the process may (CAP_SYS_RESOURCE), else soft = hard."""
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))


@contextmanager
def room_above_locked(room: int | None) -> Iterator[Callable[[int], None]]:
    """Within the block, RLIMIT_MEMLOCK's soft limit is this process's VmLck plus
    ``room`` (capped at the hard limit); ``room`` None: as high as the process
    may set it (unlimited with CAP_SYS_RESOURCE). The limit is restored on
    the way out.

    Yields a function that sets a new room. Used to give one test VM exactly
    the locked memory it may still take; VmLck that cannot be read counts as 0.
    """
    saved = resource.getrlimit(resource.RLIMIT_MEMLOCK)

    def set_room(r: int) -> None:
        try:
            locked = status().vm_lck
        except (OSError, KvmspeError):
            locked = 0
        soft = locked + r
        hard = saved[1]
        if hard != resource.RLIM_INFINITY and soft > hard:
            soft = hard
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (soft, hard))

    try:
        if room is not None:
            set_room(room)
        else:
            _as_high_as_allowed(saved[1])
        yield set_room
    finally:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, saved)
