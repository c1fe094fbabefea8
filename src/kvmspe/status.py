"""How close each running VMM is to its RLIMIT_MEMLOCK: headroom and the warning threshold.

While a guest's SPE buffer is enabled, KVM pins it (and the guest's stage-1
table pages that translate it) and charges the pages to the VMM process's
RLIMIT_MEMLOCK; a buffer enable that would go past the limit makes KVM_RUN
exit with KVM_EXIT_RLIMIT (v6 series patches 29, 32 and 33). The locked
memory KVM accounts shows as ``VmLck`` in ``/proc/PID/status``. So the
*headroom* of a process is its soft RLIMIT_MEMLOCK (the one the kernel
checks) minus its VmLck: what the next buffer enable may still pin.

:func:`report` turns a :class:`~kvmspe.host.kvmprocs.KvmScan` into one
:class:`ProcessStatus` per process with a verdict against a
:class:`Threshold` (``--warn-below SIZE|PERCENT``): a process whose headroom
is below it is *past the threshold*. An unlimited soft limit is never past
it. Nothing here reads the host: :mod:`kvmspe.host.kvmprocs` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgumentError
from .host.kvmprocs import KvmProcess, KvmScan
from .units import ACCEPTED, format_size, parse_size

__all__ = [
    "DEFAULT_THRESHOLD",
    "ProcessStatus",
    "StatusReport",
    "Threshold",
    "parse_threshold",
    "report",
]


@dataclass(frozen=True)
class Threshold:
    """Warn when the headroom is below ``nbytes`` bytes, or below ``percent`` per cent
    of the soft limit (exactly one of the two is set)."""

    nbytes: int | None = None
    percent: float | None = None

    def bytes_for(self, soft: int) -> int:
        """The threshold in bytes for a process whose soft limit is ``soft`` bytes."""
        if self.percent is not None:
            return int(soft * self.percent / 100)
        assert self.nbytes is not None
        return self.nbytes

    def describe(self) -> str:
        """``10% of the soft limit`` or ``1 MiB``."""
        if self.percent is not None:
            return f"{self.percent:g}% of the soft limit"
        assert self.nbytes is not None
        return format_size(self.nbytes)

    def to_dict(self) -> dict[str, Any]:
        return {"bytes": self.nbytes, "percent": self.percent}


#: The threshold without ``--warn-below``: a tenth of the soft limit left.
DEFAULT_THRESHOLD = Threshold(percent=10.0)

_PERCENT_ACCEPTED = "accepted: a size (" + ACCEPTED.removeprefix("accepted: ") + ") or a percentage 0%..100%"


def parse_threshold(text: str) -> Threshold:
    """``10%``, ``2.5%`` (of the soft limit) or a size (``64M``). ValueError for anything else."""
    if not isinstance(text, str):
        raise InvalidArgumentError(f"invalid threshold {text!r}: not a string; {_PERCENT_ACCEPTED}")
    s = text.strip()
    if s.endswith("%"):
        number = s[:-1].strip()
        whole, dot, frac = number.partition(".")
        ok = whole.isascii() and whole.isdigit() and (not dot or (frac.isascii() and frac.isdigit()))
        if not ok or len(number) > 12:
            raise InvalidArgumentError(f"invalid threshold {text!r}: not a percentage; {_PERCENT_ACCEPTED}")
        percent = float(number)
        if percent > 100:
            raise InvalidArgumentError(f"invalid threshold {text!r}: above 100%; {_PERCENT_ACCEPTED}")
        return Threshold(percent=percent)
    try:
        return Threshold(nbytes=parse_size(text))
    except ValueError as exc:
        raise InvalidArgumentError(f"{exc}; or a percentage 0%..100%") from None


@dataclass(frozen=True)
class ProcessStatus:
    """One VMM process: what it holds, what it has locked, and how much it may still lock.

    ``headroom`` is the soft limit minus VmLck in bytes (negative when the
    limit was lowered below what is locked), None when the soft limit is
    unlimited or unknown; ``past_threshold`` is whether it is below the threshold.
    """

    process: KvmProcess
    headroom: int | None
    threshold_bytes: int | None
    past_threshold: bool

    @property
    def headroom_percent(self) -> float | None:
        """The headroom as a percentage of the soft limit (None: unlimited or unknown)."""
        m = self.process.memlock
        if self.headroom is None or m is None or not m.soft:
            return None
        return 100 * self.headroom / m.soft

    def to_dict(self) -> dict[str, Any]:
        p, m = self.process, self.process.memlock
        return {
            "pid": p.pid,
            "command": p.command,
            "vms": p.fds.vms,
            "vcpus": p.fds.vcpus,
            "dev_kvm": p.fds.dev_kvm,
            "other_kvm_fds": p.fds.other,
            "vm_lck": None if m is None else m.vm_lck,
            "memlock_soft": None if m is None else m.soft,
            "memlock_hard": None if m is None else m.hard,
            "unlimited": m is not None and m.soft is None,
            "headroom": self.headroom,
            "headroom_percent": None if self.headroom_percent is None else round(self.headroom_percent, 2),
            "threshold_bytes": self.threshold_bytes,
            "past_threshold": self.past_threshold,
            "problem": p.problem,
        }


@dataclass(frozen=True)
class StatusReport:
    """Every VMM process's :class:`ProcessStatus`, and what could not be looked at."""

    scan: KvmScan
    threshold: Threshold
    processes: list[ProcessStatus]

    @property
    def past_threshold(self) -> list[ProcessStatus]:
        """The processes whose headroom is below the threshold."""
        return [s for s in self.processes if s.past_threshold]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON; the keys are listed in ``docs/cli.md`` (``status --json``)."""
        return {
            "warn_below": self.threshold.to_dict(),
            "scanned": self.scan.scanned,
            "processes": [s.to_dict() for s in self.processes],
            "past_threshold": [s.process.pid for s in self.past_threshold],
            "uninspectable": [
                {"pid": u.pid, "command": u.command, "reason": u.reason} for u in self.scan.uninspectable
            ],
            "without_kvm": list(self.scan.without_kvm),
        }


def _status(p: KvmProcess, threshold: Threshold) -> ProcessStatus:
    m = p.memlock
    if m is None or m.soft is None:
        return ProcessStatus(p, None, None, False)
    headroom = m.soft - m.vm_lck
    limit = threshold.bytes_for(m.soft)
    return ProcessStatus(p, headroom, limit, headroom < limit)


def report(scan: KvmScan, threshold: Threshold = DEFAULT_THRESHOLD) -> StatusReport:
    """Each process of ``scan`` against ``threshold``."""
    return StatusReport(scan, threshold, [_status(p, threshold) for p in scan.processes])
