"""The SPE interrupt as the guest's firmware names it: an INTID that must be a PPI.

The VMM gives KVM an INTID with ``KVM_ARM_VCPU_SPE_IRQ`` and must describe the
same interrupt to the guest. KVM takes only a PPI (RFC v4/v5 of the series; the
PMU's interrupt, measured on Linux 7.2, refuses anything else), so the firmware
description accepts exactly the INTIDs the model's check accepts: the range is
read from :data:`kvmspe.assumptions.DEFAULT`, one place for both.

The GIC numbers PPIs from INTID 16 (INTIDs 16..31 are PPIs 0..15): the device
tree's interrupt specifier carries the PPI number (INTID - 16), ACPI carries the
GSIV, which for a GIC interrupt is the INTID itself (QEMU's virt machine writes
INTID 23 as the PMU's "Performance Interrupt" GSIV).
"""

from __future__ import annotations

from ..assumptions import DEFAULT
from ..errors import InvalidArgumentError
from ..validation import is_int

__all__ = ["PPI_INTID_BASE", "check_spe_ppi", "ppi_range"]

#: INTID of PPI 0 on every GIC version: SGIs are 0..15, PPIs 16..31.
PPI_INTID_BASE = 16


def ppi_range() -> tuple[int, int]:
    """The INTIDs accepted for the SPE interrupt, inclusive: the model's rule."""
    return DEFAULT.irq_ppi_range


def check_spe_ppi(irq: object) -> int:
    """``irq`` when it is an INTID the SPE interrupt may use; else
    :class:`~kvmspe.errors.InvalidArgumentError` with a one-line message."""
    lo, hi = ppi_range()
    if not is_int(irq) or not lo <= irq <= hi:
        shown = repr(irq) if not is_int(irq) else str(irq)
        raise InvalidArgumentError(
            f"SPE interrupt {shown} is not a PPI; accepted: INTID {lo}..{hi}"
            " (KVM_ARM_VCPU_SPE_IRQ takes a PPI, the same on every VCPU)"
        )
    return irq
