"""Every modelling assumption of kvmspe, as data in one place.

The seed patch and the series fix the MAX_BUFFER_SIZE checks and their errnos;
the order of checks, including the assumed ones (marked ``assumed``), is in
:mod:`kvmspe.model.rules`. The quantities and policies they leave open are decided
here; the docs list each item as an assumption. Change a value (or pass a modified
copy to :class:`kvmspe.model.kernel.Host`) to model another reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Assumptions", "DEFAULT"]


@dataclass(frozen=True)
class Assumptions:
    #: IRQ: the SPE interrupt must be a PPI, INTIDs 16..31 (RFC v4/v5; the
    #: PMU's interrupt measured on Linux 7.2 refuses an SGI too).
    irq_ppi_range: tuple[int, int] = (16, 31)
    #: KVM_CREATE_VCPU answers EINVAL for an id from this number up: arm64's
    #: KVM_MAX_VCPU_IDS, which is KVM_MAX_VCPUS, the GICv3 limit of 512 VCPUs
    #: (read from the kernel source, not measured).
    max_vcpu_ids: int = 512
    #: Whether the set-time charge stays locked until the VM is destroyed
    #: ("held"), or is only a check that the maximum fits under the limit
    #: next to what is locked already ("check"). "check" avoids counting the
    #: buffer twice once the guest really pins it.
    set_time_charge_mode: Literal["check", "held"] = "check"
    #: The model returns this exit when the modelled guest has nothing more
    #: to do (a real guest would go on running).
    idle_exit: int = 10  # KVM_EXIT_INTR

    # -- run phase: the guest's buffer ------------------------------------------------
    #: PMBPTR_EL1 bits below PMBIDR_EL1.ALIGN. The architecture lets an
    #: implementation treat bits [M-1:0] (1 <= M <= ALIGN) as RES0 or keep
    #: them (IMPLEMENTATION DEFINED). "res0": the model ignores bits
    #: [ALIGN-1:0] of a write, so a misaligned pointer is aligned down and
    #: nothing else happens; "rw": the bits are kept and the buffer starts
    #: where the guest said (pinning rounds out to whole pages either way).
    pmbptr_low_bits: Literal["res0", "rw"] = "res0"
    #: PMBLIMITR_EL1.LIMIT is bits [63:12]: the limit is 4 KiB aligned by
    #: construction. When the smallest translation granule the PE implements
    #: is larger, bits [N-1:12] are RES0 too; the model's PE implements 4 KiB.
    smallest_granule: int = 4096
    #: The size checked against MaxBuffSize is limit - pointer at enable
    #: (the bytes the SPU may still write), not a size the guest declares.
    #: An enable with limit <= pointer leaves no room: the model raises a
    #: buffer management event with this BSC (0x1, buffer full) and pins nothing.
    empty_buffer_bsc: int = 0x1
    #: PMBSR_EL1.MSS of the stage-1 fault for a buffer address without a
    #: translation: a translation fault (FSC 0b0001LL) at level LL; the
    #: model reports the start level for a VA outside the guest's VA range
    #: and the last level (3) for a hole in a mapped range.
    stage1_fault_fsc: int = 0b000100
    #: A trapped write that disables the buffer (PMBLIMITR_EL1.E=0, or a new
    #: pointer/limit) unpins at once; an enable is handled at the next
    #: KVM_RUN, because it may have to exit to userspace with KVM_EXIT_RLIMIT.
    disable_unpins_at_write: bool = True


DEFAULT = Assumptions()
