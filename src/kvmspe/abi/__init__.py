"""The KVM user ABI that kvmspe speaks: ioctl numbers, struct layouts, group
and attribute numbers, and what each errno means for each SPE attribute.

Every number a revision of the SPE series could change lives here, so that a
new revision is a data change. Numbers the series does not state are marked
*assumed* and can be given through :func:`set_assumed` or the environment
(``KVMSPE_SPE_FEATURE_BIT``, ``KVMSPE_CAP_ARM_SPE``, ``KVMSPE_EXIT_RLIMIT``,
read when used); none defaults to a number upstream uses
(:mod:`kvmspe.abi.upstream`).

Sources: ``include/uapi/linux/kvm.h``, ``arch/arm64/include/uapi/asm/kvm.h``
[uapi]; the seed patch [seed] for the SPE group.
"""

from __future__ import annotations

from .assumed import _ENV as _ENV
from .assumed import _LIMITS as _LIMITS
from .assumed import _MAX_DIGITS as _MAX_DIGITS
from .assumed import ASSUMED as ASSUMED
from .assumed import ASSUMED_ENV as ASSUMED_ENV
from .assumed import MODEL_EXIT_RLIMIT as MODEL_EXIT_RLIMIT
from .assumed import Assumed as Assumed
from .assumed import AssumedNumberError as AssumedNumberError
from .assumed import _collision as _collision
from .assumed import _parse_env as _parse_env
from .assumed import accepted_range as accepted_range
from .assumed import check_assumed as check_assumed
from .assumed import set_assumed as set_assumed
from .constants import BAD_ADDRESS as BAD_ADDRESS
from .constants import GROUP_NAMES as GROUP_NAMES
from .constants import KVM_API_VERSION as KVM_API_VERSION
from .constants import KVM_ARM_VCPU_MAX_BUFFER_SIZE as KVM_ARM_VCPU_MAX_BUFFER_SIZE
from .constants import KVM_ARM_VCPU_PMU_V3_CTRL as KVM_ARM_VCPU_PMU_V3_CTRL
from .constants import KVM_ARM_VCPU_PVTIME_CTRL as KVM_ARM_VCPU_PVTIME_CTRL
from .constants import KVM_ARM_VCPU_SPE_CTRL as KVM_ARM_VCPU_SPE_CTRL
from .constants import KVM_ARM_VCPU_SPE_INIT as KVM_ARM_VCPU_SPE_INIT
from .constants import KVM_ARM_VCPU_SPE_IRQ as KVM_ARM_VCPU_SPE_IRQ
from .constants import KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE as KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE
from .constants import KVM_ARM_VCPU_SPE_SPU as KVM_ARM_VCPU_SPE_SPU
from .constants import KVM_ARM_VCPU_TIMER_CTRL as KVM_ARM_VCPU_TIMER_CTRL
from .constants import KVM_CAP_ARM_PMU_V3 as KVM_CAP_ARM_PMU_V3
from .constants import KVM_CAP_DEVICE_CTRL as KVM_CAP_DEVICE_CTRL
from .constants import KVM_CAP_IRQCHIP as KVM_CAP_IRQCHIP
from .constants import KVM_CAP_VCPU_ATTRIBUTES as KVM_CAP_VCPU_ATTRIBUTES
from .constants import KVM_DEV_ARM_VGIC_CTRL_INIT as KVM_DEV_ARM_VGIC_CTRL_INIT
from .constants import KVM_DEV_ARM_VGIC_GRP_ADDR as KVM_DEV_ARM_VGIC_GRP_ADDR
from .constants import KVM_DEV_ARM_VGIC_GRP_CTRL as KVM_DEV_ARM_VGIC_GRP_CTRL
from .constants import KVM_DEV_TYPE_ARM_VGIC_V2 as KVM_DEV_TYPE_ARM_VGIC_V2
from .constants import KVM_DEV_TYPE_ARM_VGIC_V3 as KVM_DEV_TYPE_ARM_VGIC_V3
from .constants import KVM_EXIT_FAIL_ENTRY as KVM_EXIT_FAIL_ENTRY
from .constants import KVM_EXIT_HLT as KVM_EXIT_HLT
from .constants import KVM_EXIT_INTERNAL_ERROR as KVM_EXIT_INTERNAL_ERROR
from .constants import KVM_EXIT_INTR as KVM_EXIT_INTR
from .constants import KVM_EXIT_IO as KVM_EXIT_IO
from .constants import KVM_EXIT_MMIO as KVM_EXIT_MMIO
from .constants import KVM_EXIT_SHUTDOWN as KVM_EXIT_SHUTDOWN
from .constants import KVM_EXIT_SYSTEM_EVENT as KVM_EXIT_SYSTEM_EVENT
from .constants import KVM_EXIT_UNKNOWN as KVM_EXIT_UNKNOWN
from .constants import KVM_VCPU_TSC_CTRL as KVM_VCPU_TSC_CTRL
from .constants import KVM_VCPU_TSC_OFFSET as KVM_VCPU_TSC_OFFSET
from .constants import KVM_VGIC_V3_ADDR_TYPE_DIST as KVM_VGIC_V3_ADDR_TYPE_DIST
from .constants import KVM_VGIC_V3_ADDR_TYPE_REDIST as KVM_VGIC_V3_ADDR_TYPE_REDIST
from .constants import KVM_VGIC_V3_DIST_SIZE as KVM_VGIC_V3_DIST_SIZE
from .constants import KVM_VGIC_V3_REDIST_SIZE as KVM_VGIC_V3_REDIST_SIZE
from .constants import UNMAPPED_ADDRESS as UNMAPPED_ADDRESS
from .constants import VGIC_V3_DIST_BASE as VGIC_V3_DIST_BASE
from .constants import VGIC_V3_REDIST_BASE as VGIC_V3_REDIST_BASE
from .constants import _BadAddress as _BadAddress
from .errnos import _GROUP_ERRNOS as _GROUP_ERRNOS
from .errnos import ATTR_BY_NAME as ATTR_BY_NAME
from .errnos import ATTRS as ATTRS
from .errnos import ERRNO_TABLE as ERRNO_TABLE
from .errnos import RUN_ERRNOS as RUN_ERRNOS
from .errnos import VGIC_ERRNOS as VGIC_ERRNOS
from .errnos import AttrInfo as AttrInfo
from .errnos import attr_info as attr_info
from .errnos import check_value as check_value
from .errnos import explain as explain
from .errnos import value_type as value_type
from .exits import _EXIT_NAMES as _EXIT_NAMES
from .exits import Exit as Exit
from .exits import exit_name as exit_name
from .ioctl import _IO as _IO
from .ioctl import _IOC as _IOC
from .ioctl import _IOC_DIRSHIFT as _IOC_DIRSHIFT
from .ioctl import _IOC_NRSHIFT as _IOC_NRSHIFT
from .ioctl import _IOC_SIZESHIFT as _IOC_SIZESHIFT
from .ioctl import _IOC_TYPESHIFT as _IOC_TYPESHIFT
from .ioctl import _IOR as _IOR
from .ioctl import _IOW as _IOW
from .ioctl import _IOWR as _IOWR
from .ioctl import KVM_ARM_PREFERRED_TARGET as KVM_ARM_PREFERRED_TARGET
from .ioctl import KVM_ARM_VCPU_INIT as KVM_ARM_VCPU_INIT
from .ioctl import KVM_CHECK_EXTENSION as KVM_CHECK_EXTENSION
from .ioctl import KVM_CREATE_DEVICE as KVM_CREATE_DEVICE
from .ioctl import KVM_CREATE_DEVICE_TEST as KVM_CREATE_DEVICE_TEST
from .ioctl import KVM_CREATE_IRQCHIP as KVM_CREATE_IRQCHIP
from .ioctl import KVM_CREATE_VCPU as KVM_CREATE_VCPU
from .ioctl import KVM_CREATE_VM as KVM_CREATE_VM
from .ioctl import KVM_GET_API_VERSION as KVM_GET_API_VERSION
from .ioctl import KVM_GET_DEVICE_ATTR as KVM_GET_DEVICE_ATTR
from .ioctl import KVM_GET_VCPU_MMAP_SIZE as KVM_GET_VCPU_MMAP_SIZE
from .ioctl import KVM_HAS_DEVICE_ATTR as KVM_HAS_DEVICE_ATTR
from .ioctl import KVM_RUN as KVM_RUN
from .ioctl import KVM_SET_DEVICE_ATTR as KVM_SET_DEVICE_ATTR
from .ioctl import KVM_SET_SIGNAL_MASK as KVM_SET_SIGNAL_MASK
from .ioctl import KVM_SET_USER_MEMORY_REGION as KVM_SET_USER_MEMORY_REGION
from .ioctl import KVMIO as KVMIO
from .ioctl import SIGSET_BYTES as SIGSET_BYTES
from .structs import CREATE_DEVICE as CREATE_DEVICE
from .structs import DEVICE_ATTR as DEVICE_ATTR
from .structs import INT as INT
from .structs import KVM_RUN_EXIT_DATA_OFFSET as KVM_RUN_EXIT_DATA_OFFSET
from .structs import KVM_RUN_EXIT_REASON_OFFSET as KVM_RUN_EXIT_REASON_OFFSET
from .structs import KVM_RUN_RLIMIT_EXCESS_OFFSET as KVM_RUN_RLIMIT_EXCESS_OFFSET
from .structs import U32 as U32
from .structs import U64 as U64
from .structs import USERSPACE_MEMORY_REGION as USERSPACE_MEMORY_REGION
from .structs import VCPU_INIT as VCPU_INIT
from .structs import kvm_create_device as kvm_create_device
from .structs import kvm_device_attr as kvm_device_attr
from .structs import kvm_run_head as kvm_run_head
from .structs import kvm_userspace_memory_region as kvm_userspace_memory_region
from .structs import kvm_vcpu_init as kvm_vcpu_init

__all__ = [
    "ASSUMED",
    "ASSUMED_ENV",
    "Exit",
    "check_value",
    "exit_name",
    "ATTRS",
    "BAD_ADDRESS",
    "CREATE_DEVICE",
    "KVM_CREATE_DEVICE",
    "KVM_CREATE_IRQCHIP",
    "KVM_SET_SIGNAL_MASK",
    "KVM_DEV_ARM_VGIC_CTRL_INIT",
    "KVM_DEV_ARM_VGIC_GRP_ADDR",
    "KVM_DEV_ARM_VGIC_GRP_CTRL",
    "KVM_DEV_TYPE_ARM_VGIC_V3",
    "KVM_VGIC_V3_ADDR_TYPE_DIST",
    "KVM_VGIC_V3_ADDR_TYPE_REDIST",
    "VGIC_ERRNOS",
    "VGIC_V3_DIST_BASE",
    "VGIC_V3_REDIST_BASE",
    "Assumed",
    "AssumedNumberError",
    "MODEL_EXIT_RLIMIT",
    "accepted_range",
    "check_assumed",
    "AttrInfo",
    "DEVICE_ATTR",
    "ERRNO_TABLE",
    "GROUP_NAMES",
    "KVM_ARM_VCPU_SPE_CTRL",
    "KVM_ARM_VCPU_SPE_IRQ",
    "KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE",
    "KVM_ARM_VCPU_MAX_BUFFER_SIZE",
    "KVM_ARM_VCPU_SPE_SPU",
    "KVM_ARM_VCPU_SPE_INIT",
    "VCPU_INIT",
    "attr_info",
    "value_type",
    "explain",
    "set_assumed",
]
