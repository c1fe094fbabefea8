"""Numbers of the KVM ABI: capabilities, device types, vGIC groups, exits, attribute groups [uapi, seed]."""

from __future__ import annotations

__all__ = [
    "BAD_ADDRESS",
    "GROUP_NAMES",
    "KVM_API_VERSION",
    "KVM_ARM_VCPU_MAX_BUFFER_SIZE",
    "KVM_ARM_VCPU_PMU_V3_CTRL",
    "KVM_ARM_VCPU_PVTIME_CTRL",
    "KVM_ARM_VCPU_SPE_CTRL",
    "KVM_ARM_VCPU_SPE_INIT",
    "KVM_ARM_VCPU_SPE_IRQ",
    "KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE",
    "KVM_ARM_VCPU_SPE_SPU",
    "KVM_ARM_VCPU_TIMER_CTRL",
    "KVM_CAP_ARM_PMU_V3",
    "KVM_CAP_DEVICE_CTRL",
    "KVM_CAP_IRQCHIP",
    "KVM_CAP_VCPU_ATTRIBUTES",
    "KVM_DEV_ARM_VGIC_CTRL_INIT",
    "KVM_DEV_ARM_VGIC_GRP_ADDR",
    "KVM_DEV_ARM_VGIC_GRP_CTRL",
    "KVM_DEV_TYPE_ARM_VGIC_V2",
    "KVM_DEV_TYPE_ARM_VGIC_V3",
    "KVM_EXIT_FAIL_ENTRY",
    "KVM_EXIT_HLT",
    "KVM_EXIT_INTERNAL_ERROR",
    "KVM_EXIT_INTR",
    "KVM_EXIT_IO",
    "KVM_EXIT_MMIO",
    "KVM_EXIT_SHUTDOWN",
    "KVM_EXIT_SYSTEM_EVENT",
    "KVM_EXIT_UNKNOWN",
    "KVM_VCPU_TSC_CTRL",
    "KVM_VCPU_TSC_OFFSET",
    "KVM_VGIC_V3_ADDR_TYPE_DIST",
    "KVM_VGIC_V3_ADDR_TYPE_REDIST",
    "KVM_VGIC_V3_DIST_SIZE",
    "KVM_VGIC_V3_REDIST_SIZE",
    "UNMAPPED_ADDRESS",
    "VGIC_V3_DIST_BASE",
    "VGIC_V3_REDIST_BASE",
]

KVM_API_VERSION = 12

#: Capabilities probed with KVM_CHECK_EXTENSION [uapi].
KVM_CAP_DEVICE_CTRL = 89
KVM_CAP_VCPU_ATTRIBUTES = 127
KVM_CAP_ARM_PMU_V3 = 126
#: The VM can have an in-kernel interrupt controller [uapi: include/uapi/linux/kvm.h].
KVM_CAP_IRQCHIP = 0

# --- the arm64 in-kernel interrupt controller (vGIC) --------------------------------
#
# On arm64 KVM takes a VCPU's PMU interrupt (KVM_ARM_VCPU_PMU_V3_IRQ) only when
# the VM has an in-kernel irqchip; the SPE interrupt attribute is modelled on it,
# so a VMM creates a GICv3 for the VM before setting KVM_ARM_VCPU_SPE_IRQ.

#: enum kvm_device_type [uapi: include/uapi/linux/kvm.h]: FSL_MPIC_20 = 1,
#: FSL_MPIC_42, XICS, VFIO, ARM_VGIC_V2 (5), FLIC, ARM_VGIC_V3 (7).
KVM_DEV_TYPE_ARM_VGIC_V2 = 5
KVM_DEV_TYPE_ARM_VGIC_V3 = 7
# Device attribute groups of the vGIC device [uapi: arch/arm64/include/uapi/asm/kvm.h].
KVM_DEV_ARM_VGIC_GRP_ADDR = 0
KVM_DEV_ARM_VGIC_GRP_CTRL = 4
#: Attributes of KVM_DEV_ARM_VGIC_GRP_ADDR: a __u64 guest physical address behind addr.
KVM_VGIC_V3_ADDR_TYPE_DIST = 2
KVM_VGIC_V3_ADDR_TYPE_REDIST = 3
#: Attribute of KVM_DEV_ARM_VGIC_GRP_CTRL: initialise the vGIC (addr unused).
KVM_DEV_ARM_VGIC_CTRL_INIT = 0
#: Sizes of the GICv3 frames in guest physical memory: SZ_64K for the
#: distributor, 2 * SZ_64K per VCPU for the redistributors [uapi: asm/kvm.h].
KVM_VGIC_V3_DIST_SIZE = 64 << 10
KVM_VGIC_V3_REDIST_SIZE = 128 << 10
#: Where kvmspe places the GICv3 frames of a VM unless told otherwise (kvmspe's
#: choice, not a uapi number; the C self-tests use the same): the distributor
#: (64 KiB) at 128 MiB and the redistributors (128 KiB per VCPU) from 128 MiB +
#: 640 KiB up. Both are 64 KiB aligned, as KVM requires, and far below the
#: smallest guest physical address size arm64 KVM offers (32 bits), so any VM
#: can take them. The conformance VMs have no memory for them to collide with;
#: a VMM with guest RAM there passes other bases.
VGIC_V3_DIST_BASE = 0x0800_0000
VGIC_V3_REDIST_BASE = 0x080A_0000

#: What the vGIC calls' errnos mean (Documentation/virt/kvm/devices/arm-vgic-v3.rst,
#: kvm_ioctl_create_device): per call, errno -> sentence.

# --- exit reasons [uapi] -------------------------------------------------------

KVM_EXIT_UNKNOWN = 0
KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24

# --- VCPU device attribute groups ----------------------------------------------

# arm64 [uapi]
KVM_ARM_VCPU_PMU_V3_CTRL = 0
KVM_ARM_VCPU_TIMER_CTRL = 1
KVM_ARM_VCPU_PVTIME_CTRL = 2
# arm64 SPE [seed]
KVM_ARM_VCPU_SPE_CTRL = 3
KVM_ARM_VCPU_SPE_IRQ = 0
KVM_ARM_VCPU_SPE_SPU = 1
KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE = 2
#: Inferred, not stated: v6 patch 15/35 "Add SPE VCPU device attribute to
#: initialize SPE" adds a fourth attribute, the next number after patch 14's 2
#: (RFC v5 had it as KVM_ARM_VCPU_SPE_INIT, taking no value, like
#: KVM_ARM_VCPU_PMU_V3_INIT).
KVM_ARM_VCPU_SPE_INIT = 3
#: The spelling used by the seed patch's documentation; same number.
KVM_ARM_VCPU_MAX_BUFFER_SIZE = KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE
# x86 [uapi]: a real VCPU attribute to exercise the plumbing on x86 hosts.
KVM_VCPU_TSC_CTRL = 0
KVM_VCPU_TSC_OFFSET = 0

GROUP_NAMES = {
    "arm64": {
        KVM_ARM_VCPU_PMU_V3_CTRL: "KVM_ARM_VCPU_PMU_V3_CTRL",
        KVM_ARM_VCPU_TIMER_CTRL: "KVM_ARM_VCPU_TIMER_CTRL",
        KVM_ARM_VCPU_PVTIME_CTRL: "KVM_ARM_VCPU_PVTIME_CTRL",
        KVM_ARM_VCPU_SPE_CTRL: "KVM_ARM_VCPU_SPE_CTRL",
    },
    "x86_64": {KVM_VCPU_TSC_CTRL: "KVM_VCPU_TSC_CTRL"},
}

# --- a user pointer the kernel cannot read -------------------------------------


class _BadAddress:
    """Marker value: pass it instead of a value to make ``addr`` unreadable.

    The model answers EFAULT; the real backend passes an address that is not
    mapped in the process, so the kernel's get_user/put_user fails.
    """

    _instance: _BadAddress | None = None

    def __new__(cls) -> _BadAddress:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "BAD_ADDRESS"


BAD_ADDRESS = _BadAddress()
#: An address that is never mapped in user space (the top of the u64 range).
UNMAPPED_ADDRESS = 0xFFFF_FFFF_FFFF_F000
