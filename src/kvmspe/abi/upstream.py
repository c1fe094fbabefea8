"""Numbers upstream Linux already uses, as data: arm64 VCPU features, KVM
capabilities and KVM_RUN exit reasons, each with its uapi name and the
mainline release that added it.

Why: the SPE series (v6) does not publish its numbers for the VCPU feature
``KVM_ARM_VCPU_SPE``, the capability ``KVM_CAP_ARM_SPE`` and the exit
``KVM_EXIT_RLIMIT``, and the numbers its older revisions used (feature bit 7
then 8, capability 191 then 208, exit 42) have since been given to other
features. Using one of them on a current kernel asks for something else,
silently. kvmspe therefore never defaults to a number in these tables, and
refuses a user-given number that collides with one (:mod:`kvmspe.abi`).

Source: the uapi headers of Linux 7.2 (``include/uapi/linux/kvm.h`` and
``arch/arm64/include/uapi/asm/kvm.h``, as Debian's ``linux-libc-dev``
7.2.13 installs them). Every number and name here is checked against those
headers by ``tests/test_upstream.py`` when ``KVMSPE_UAPI_DIR`` names a
directory holding them; the same test checks the release column against
whatever header it is given (its ``LINUX_VERSION_CODE`` says which entries
must be present and which must not), e.g. Debian 12's 6.1 headers. The
release of each entry is taken from the kernel's history; only the 6.1/7.2
split is machine-checked here.
"""

from __future__ import annotations

__all__ = [
    "ARM64_FEATURE_CONTESTED",
    "ARM64_VCPU_FEATURES",
    "CAPS",
    "CAP_MAX",
    "EXITS",
    "HEADERS_RELEASE",
    "cap_name",
    "exit_name",
    "feature_name",
]

#: The release whose headers the tables were taken from.
HEADERS_RELEASE = "7.2"

#: arm64 ``KVM_ARM_VCPU_*`` feature bits for KVM_ARM_VCPU_INIT:
#: bit -> (name, first release) [uapi: arch/arm64/include/uapi/asm/kvm.h].
ARM64_VCPU_FEATURES: dict[int, tuple[str, str]] = {
    0: ("KVM_ARM_VCPU_POWER_OFF", "3.11"),
    1: ("KVM_ARM_VCPU_EL1_32BIT", "3.11"),
    2: ("KVM_ARM_VCPU_PSCI_0_2", "3.16"),
    3: ("KVM_ARM_VCPU_PMU_V3", "4.6"),
    4: ("KVM_ARM_VCPU_SVE", "5.2"),
    5: ("KVM_ARM_VCPU_PTRAUTH_ADDRESS", "5.1"),
    6: ("KVM_ARM_VCPU_PTRAUTH_GENERIC", "5.1"),
    7: ("KVM_ARM_VCPU_HAS_EL2", "6.3"),
    8: ("KVM_ARM_VCPU_HAS_EL2_E2H0", "6.15"),
}
#: Bits claimed by series not merged in 7.2. Not upstream, so neither refused
#: nor skipped by probing: a probed bit counts only if the SPE group then
#: answers, which tells SPE from another series' feature at the same bit.
ARM64_FEATURE_CONTESTED: dict[int, str] = {
    9: "claimed by the arm64 SME series and others (not merged in 7.2)",
}

#: ``KVM_EXIT_*`` reasons: number -> (name, first release) [uapi: include/uapi/linux/kvm.h].
EXITS: dict[int, tuple[str, str]] = {
    0: ("KVM_EXIT_UNKNOWN", "2.6.20"),
    1: ("KVM_EXIT_EXCEPTION", "2.6.20"),
    2: ("KVM_EXIT_IO", "2.6.20"),
    3: ("KVM_EXIT_HYPERCALL", "2.6.20"),
    4: ("KVM_EXIT_DEBUG", "2.6.20"),
    5: ("KVM_EXIT_HLT", "2.6.20"),
    6: ("KVM_EXIT_MMIO", "2.6.20"),
    7: ("KVM_EXIT_IRQ_WINDOW_OPEN", "2.6.20"),
    8: ("KVM_EXIT_SHUTDOWN", "2.6.20"),
    9: ("KVM_EXIT_FAIL_ENTRY", "2.6.20"),
    10: ("KVM_EXIT_INTR", "2.6.20"),
    11: ("KVM_EXIT_SET_TPR", "2.6.22"),
    12: ("KVM_EXIT_TPR_ACCESS", "2.6.23"),
    13: ("KVM_EXIT_S390_SIEIC", "2.6.26"),
    14: ("KVM_EXIT_S390_RESET", "2.6.26"),
    15: ("KVM_EXIT_DCR", "2.6.26"),
    16: ("KVM_EXIT_NMI", "2.6.29"),
    17: ("KVM_EXIT_INTERNAL_ERROR", "2.6.33"),
    18: ("KVM_EXIT_OSI", "2.6.35"),
    19: ("KVM_EXIT_PAPR_HCALL", "2.6.37"),
    20: ("KVM_EXIT_S390_UCONTROL", "3.3"),
    21: ("KVM_EXIT_WATCHDOG", "3.5"),
    22: ("KVM_EXIT_S390_TSCH", "3.10"),
    23: ("KVM_EXIT_EPR", "3.9"),
    24: ("KVM_EXIT_SYSTEM_EVENT", "3.14"),
    25: ("KVM_EXIT_S390_STSI", "4.3"),
    26: ("KVM_EXIT_IOAPIC_EOI", "4.4"),
    27: ("KVM_EXIT_HYPERV", "4.5"),
    28: ("KVM_EXIT_ARM_NISV", "5.5"),
    29: ("KVM_EXIT_X86_RDMSR", "5.10"),
    30: ("KVM_EXIT_X86_WRMSR", "5.10"),
    31: ("KVM_EXIT_DIRTY_RING_FULL", "5.11"),
    32: ("KVM_EXIT_AP_RESET_HOLD", "5.11"),
    33: ("KVM_EXIT_X86_BUS_LOCK", "5.12"),
    34: ("KVM_EXIT_XEN", "5.12"),
    35: ("KVM_EXIT_RISCV_SBI", "5.16"),
    36: ("KVM_EXIT_RISCV_CSR", "6.0"),
    37: ("KVM_EXIT_NOTIFY", "6.0"),
    38: ("KVM_EXIT_LOONGARCH_IOCSR", "6.7"),
    39: ("KVM_EXIT_MEMORY_FAULT", "6.8"),
    40: ("KVM_EXIT_TDX", "6.16"),
    41: ("KVM_EXIT_ARM_SEA", "7.0"),
    42: ("KVM_EXIT_ARM_LDST64B", "7.0"),
    43: ("KVM_EXIT_SNP_REQ_CERTS", "7.0"),
}

#: The highest ``KVM_CAP_*`` number in 7.2. Every number from 0 to it is
#: taken (a few, 5 17 19 20 27 28, by capabilities since retired, whose
#: numbers are never reused), so no capability number up to it is free.
CAP_MAX = 249

#: ``KVM_CAP_*`` from 185 up (around the old SPE guesses 191 and 208):
#: number -> (name, first release) [uapi: include/uapi/linux/kvm.h].
CAPS: dict[int, tuple[str, str]] = {
    185: ("KVM_CAP_SMALLER_MAXPHYADDR", "5.9"),
    186: ("KVM_CAP_S390_DIAG318", "5.9"),
    187: ("KVM_CAP_STEAL_TIME", "5.10"),
    188: ("KVM_CAP_X86_USER_SPACE_MSR", "5.10"),
    189: ("KVM_CAP_X86_MSR_FILTER", "5.10"),
    190: ("KVM_CAP_ENFORCE_PV_FEATURE_CPUID", "5.10"),
    191: ("KVM_CAP_SYS_HYPERV_CPUID", "5.11"),
    192: ("KVM_CAP_DIRTY_LOG_RING", "5.11"),
    193: ("KVM_CAP_X86_BUS_LOCK_EXIT", "5.12"),
    194: ("KVM_CAP_PPC_DAWR1", "5.13"),
    195: ("KVM_CAP_SET_GUEST_DEBUG2", "5.14"),
    196: ("KVM_CAP_SGX_ATTRIBUTE", "5.13"),
    197: ("KVM_CAP_VM_COPY_ENC_CONTEXT_FROM", "5.14"),
    198: ("KVM_CAP_PTP_KVM", "5.13"),
    199: ("KVM_CAP_HYPERV_ENFORCE_CPUID", "5.14"),
    200: ("KVM_CAP_SREGS2", "5.14"),
    201: ("KVM_CAP_EXIT_HYPERCALL", "5.15"),
    202: ("KVM_CAP_PPC_RPT_INVALIDATE", "5.14"),
    203: ("KVM_CAP_BINARY_STATS_FD", "5.14"),
    204: ("KVM_CAP_EXIT_ON_EMULATION_FAILURE", "5.14"),
    205: ("KVM_CAP_ARM_MTE", "5.13"),
    206: ("KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM", "5.16"),
    207: ("KVM_CAP_VM_GPA_BITS", "5.16"),
    208: ("KVM_CAP_XSAVE2", "5.17"),
    209: ("KVM_CAP_SYS_ATTRIBUTES", "5.17"),
    210: ("KVM_CAP_PPC_AIL_MODE_3", "5.18"),
    211: ("KVM_CAP_S390_MEM_OP_EXTENSION", "5.19"),
    212: ("KVM_CAP_PMU_CAPABILITY", "6.0"),
    213: ("KVM_CAP_DISABLE_QUIRKS2", "6.0"),
    214: ("KVM_CAP_VM_TSC_CONTROL", "5.19"),
    215: ("KVM_CAP_SYSTEM_EVENT_DATA", "5.18"),
    216: ("KVM_CAP_ARM_SYSTEM_SUSPEND", "5.19"),
    217: ("KVM_CAP_S390_PROTECTED_DUMP", "6.0"),
    218: ("KVM_CAP_X86_TRIPLE_FAULT_EVENT", "6.0"),
    219: ("KVM_CAP_X86_NOTIFY_VMEXIT", "6.0"),
    220: ("KVM_CAP_VM_DISABLE_NX_HUGE_PAGES", "6.0"),
    221: ("KVM_CAP_S390_ZPCI_OP", "6.0"),
    222: ("KVM_CAP_S390_CPU_TOPOLOGY", "6.0"),
    223: ("KVM_CAP_DIRTY_LOG_RING_ACQ_REL", "6.1"),
    224: ("KVM_CAP_S390_PROTECTED_ASYNC_DISABLE", "6.2"),
    225: ("KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP", "6.3"),
    226: ("KVM_CAP_PMU_EVENT_MASKED_EVENTS", "6.3"),
    227: ("KVM_CAP_COUNTER_OFFSET", "6.4"),
    228: ("KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE", "6.5"),
    229: ("KVM_CAP_ARM_SUPPORTED_BLOCK_SIZES", "6.5"),
    230: ("KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES", "6.8"),
    231: ("KVM_CAP_USER_MEMORY2", "6.8"),
    232: ("KVM_CAP_MEMORY_FAULT_INFO", "6.8"),
    233: ("KVM_CAP_MEMORY_ATTRIBUTES", "6.8"),
    234: ("KVM_CAP_GUEST_MEMFD", "6.8"),
    235: ("KVM_CAP_VM_TYPES", "6.8"),
    236: ("KVM_CAP_PRE_FAULT_MEMORY", "6.10"),
    237: ("KVM_CAP_X86_APIC_BUS_CYCLES_NS", "6.11"),
    238: ("KVM_CAP_X86_GUEST_MODE", "6.11"),
    239: ("KVM_CAP_ARM_WRITABLE_IMP_ID_REGS", "6.14"),
    240: ("KVM_CAP_ARM_EL2", "6.16"),
    241: ("KVM_CAP_ARM_EL2_E2H0", "6.16"),
    242: ("KVM_CAP_RISCV_MP_STATE_RESET", "6.16"),
    243: ("KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED", "6.18"),
    244: ("KVM_CAP_GUEST_MEMFD_FLAGS", "6.18"),
    245: ("KVM_CAP_ARM_SEA_TO_USER", "7.0"),
    246: ("KVM_CAP_S390_USER_OPEREXEC", "7.1"),
    247: ("KVM_CAP_S390_KEYOP", "7.1"),
    248: ("KVM_CAP_S390_VSIE_ESAMODE", "7.1"),
    249: ("KVM_CAP_S390_HPAGE_2G", "7.2"),
}


def feature_name(bit: int) -> str | None:
    """The upstream arm64 VCPU feature at ``bit``, or None."""
    entry = ARM64_VCPU_FEATURES.get(bit)
    return entry[0] if entry else None


def exit_name(reason: int) -> str | None:
    """The upstream name of exit ``reason``, or None."""
    entry = EXITS.get(reason)
    return entry[0] if entry else None


def cap_name(cap: int) -> str | None:
    """The upstream capability ``cap`` (its name where listed), or None when free."""
    entry = CAPS.get(cap)
    if entry is not None:
        return entry[0]
    if 0 <= cap <= CAP_MAX:
        return f"capability {cap} (taken upstream: every number up to {CAP_MAX} is, in {HEADERS_RELEASE})"
    return None
