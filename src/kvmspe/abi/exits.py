"""KVM_RUN exits: the exit reason by name, and the KVM_EXIT_RLIMIT data."""

from __future__ import annotations

from dataclasses import dataclass

from .assumed import ASSUMED
from .constants import (
    KVM_EXIT_FAIL_ENTRY,
    KVM_EXIT_HLT,
    KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_INTR,
    KVM_EXIT_IO,
    KVM_EXIT_MMIO,
    KVM_EXIT_SHUTDOWN,
    KVM_EXIT_SYSTEM_EVENT,
    KVM_EXIT_UNKNOWN,
)

__all__ = [
    "Exit",
    "exit_name",
]

# --- KVM_RUN exits -----------------------------------------------------------------

_EXIT_NAMES = {
    KVM_EXIT_UNKNOWN: "KVM_EXIT_UNKNOWN",
    KVM_EXIT_IO: "KVM_EXIT_IO",
    KVM_EXIT_HLT: "KVM_EXIT_HLT",
    KVM_EXIT_MMIO: "KVM_EXIT_MMIO",
    KVM_EXIT_SHUTDOWN: "KVM_EXIT_SHUTDOWN",
    KVM_EXIT_FAIL_ENTRY: "KVM_EXIT_FAIL_ENTRY",
    KVM_EXIT_INTR: "KVM_EXIT_INTR",
    KVM_EXIT_INTERNAL_ERROR: "KVM_EXIT_INTERNAL_ERROR",
    KVM_EXIT_SYSTEM_EVENT: "KVM_EXIT_SYSTEM_EVENT",
}


def exit_name(reason: int) -> str:
    """Name of a KVM exit reason, KVM_EXIT_RLIMIT included."""
    if reason == ASSUMED.exit_rlimit:
        return "KVM_EXIT_RLIMIT"
    name = _EXIT_NAMES.get(reason)
    if name is None:
        from . import upstream

        name = upstream.exit_name(reason)
    return name or f"exit reason {reason}"


@dataclass(frozen=True)
class Exit:
    """What a successful KVM_RUN returned: the exit reason, and for
    KVM_EXIT_RLIMIT by how many bytes the locked-memory limit was exceeded."""

    reason: int
    rlimit_excess: int | None = None

    @property
    def name(self) -> str:
        return exit_name(self.reason)

    @property
    def is_rlimit(self) -> bool:
        return self.reason == ASSUMED.exit_rlimit
