"""Every modelling assumption of kvmspe, as data in one place.

The seed patch and the series fix the MAX_BUFFER_SIZE checks and their errnos;
the order of checks, including the assumed ones (marked ``assumed``), is in
:mod:`kvmspe.rules`. The quantities and policies they leave open are decided
here; the docs list each item as an assumption. Change a value (or pass a modified
copy to :class:`kvmspe.model.Host`) to model another reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Assumptions", "DEFAULT"]


@dataclass(frozen=True)
class Assumptions:
    #: IRQ: the SPE interrupt must be a PPI, INTIDs 16..31 (as for the PMU).
    irq_ppi_range: tuple[int, int] = (16, 31)
    #: Set-time locked-memory accounting: charged once per VM, when the value
    #: is stored (after check 6), never for a repeated set of the same value.
    set_time_charge: Literal["per-vm"] = "per-vm"
    #: Whether the set-time charge stays locked until the VM is destroyed
    #: ("held"), or is only a check that the maximum fits under the limit
    #: next to what is locked already ("check"). "check" avoids counting the
    #: buffer twice once the guest really pins it.
    set_time_charge_mode: Literal["check", "held"] = "check"
    #: KVM_EXIT_RLIMIT is returned once per buffer enable that would exceed
    #: the limit; its data is the excess in bytes; the next KVM_RUN retries.
    rlimit_exit_per_enable: bool = True
    #: The model returns this exit when the modelled guest has nothing more
    #: to do (a real guest would go on running).
    idle_exit: int = 10  # KVM_EXIT_INTR


DEFAULT = Assumptions()
