"""Whether this host can run SPE guests, and why: the answer ``kvmspe probe`` gives.

A host can when its KVM is usable and supports SPE (both found by
:func:`kvmspe.host.discovery.discover`, the one probe); the reason is the
first thing in the way, else what made SPE usable. The verdict reads
nothing itself: it judges what discovery found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .discovery import HostInfo

__all__ = ["Verdict", "verdict"]


@dataclass(frozen=True)
class Verdict:
    """The answer for one host: ``can_run_spe_guests`` and the ``reason`` for it."""

    info: HostInfo
    can_run_spe_guests: bool
    reason: str

    @property
    def exit_status(self) -> int:
        """The command line's status for this answer: 0 yes, 1 no."""
        return 0 if self.can_run_spe_guests else 1

    def to_dict(self) -> dict[str, Any]:
        """The answer and the host it is about, each SPE unit with its CPU count."""
        host = self.info.to_dict()
        for inst, shown in zip(self.info.spe_instances, host["spe_instances"], strict=True):
            shown["cpu_count"] = len(inst.cpus)
        return {"can_run_spe_guests": self.can_run_spe_guests, "reason": self.reason, "host": host}


def verdict(info: HostInfo) -> Verdict:
    """Judge ``info``: a usable KVM with SPE support can run SPE guests."""
    if not info.kvm_usable:
        return Verdict(info, False, info.kvm_reason or "KVM is not usable")
    return Verdict(info, info.spe_supported, info.spe_reason)
