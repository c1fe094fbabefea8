"""What each errno of each attribute means, the attribute table, and the value checks by C type."""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass

from ..errors import InvalidArgumentError
from ..validation import is_int
from .constants import (
    KVM_ARM_VCPU_SPE_CTRL,
    KVM_ARM_VCPU_SPE_INIT,
    KVM_ARM_VCPU_SPE_IRQ,
    KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE,
    KVM_ARM_VCPU_SPE_SPU,
)
from .structs import INT, U64

__all__ = [
    "ATTRS",
    "ATTR_BY_NAME",
    "AttrInfo",
    "ERRNO_TABLE",
    "RUN_ERRNOS",
    "VGIC_ERRNOS",
    "attr_info",
    "check_value",
    "explain",
    "value_type",
]

VGIC_ERRNOS: dict[str, dict[int, str]] = {
    "create": {
        errno.ENODEV: "this host's KVM cannot emulate a GICv3 (the host has no GICv3,"
        " e.g. a GICv2-only host)",
        errno.EEXIST: "the VM already has an in-kernel interrupt controller",
        errno.EBUSY: "a VCPU of the VM has already run, or is busy in another ioctl",
    },
    "addr": {
        errno.EEXIST: "that vGIC address is already set",
        errno.EINVAL: "the address is not 64 KiB aligned",
        errno.E2BIG: "the frame lies outside the VM's guest physical address range",
        errno.ENXIO: "the kernel does not know that vGIC address type",
    },
    "init": {
        errno.ENXIO: "the vGIC is not fully configured (its addresses must be set first)",
        errno.ENODEV: "the VM has no VCPU yet; create every VCPU before initialising the vGIC",
        errno.EBUSY: "a VCPU of the VM is running, or VCPUs are still being created",
        errno.ENOMEM: "the kernel ran out of memory for the vGIC's state",
    },
}

# --- attributes and what their errnos mean ----------------------------------------


@dataclass(frozen=True)
class AttrInfo:
    """One VCPU device attribute: its name(s), value type and errno meanings."""

    group: int
    attr: int
    names: tuple[str, ...]
    #: The C type behind ``addr``; None for an attribute that takes no value
    #: (the kernel ignores ``addr``, as for KVM_ARM_VCPU_PMU_V3_INIT).
    value: struct.Struct | None
    errnos: dict[str, dict[int, str]]

    @property
    def name(self) -> str:
        return self.names[0]


_GROUP_ERRNOS = {
    errno.ENXIO: "SPE is not supported by this host's KVM, or not properly configured",
    errno.ENODEV: "the VCPU was not created with the SPE feature (KVM_ARM_VCPU_SPE)",
}

ATTRS: dict[tuple[int, int], AttrInfo] = {
    (KVM_ARM_VCPU_SPE_CTRL, KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE): AttrInfo(
        KVM_ARM_VCPU_SPE_CTRL,
        KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE,
        ("KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE", "KVM_ARM_VCPU_MAX_BUFFER_SIZE"),
        U64,
        {
            "set": {
                **_GROUP_ERRNOS,
                errno.EFAULT: "the u64 at kvm_device_attr.addr could not be read",
                errno.EBUSY: "the VM has already run; the max buffer size is fixed from then on",
                errno.EINVAL: "the size is not a multiple of the host page size, or a"
                " different max buffer size is already set for this VM",
                errno.ENODEV: "no SPU has been assigned to the VM yet (set KVM_ARM_VCPU_SPE_SPU"
                " first), or the VCPU lacks the SPE feature",
                errno.EDOM: "the size has no exact PMBIDR_EL1.MaxBuffSize encoding",
                errno.ERANGE: "the size exceeds the SPU's own limit, or is 0 (no limit) while"
                " the SPU has a limit",
                errno.ENOMEM: "the size does not fit in what RLIMIT_MEMLOCK still allows",
            },
            "get": {
                **_GROUP_ERRNOS,
                errno.EINVAL: "no max buffer size has been set for this VM yet",
                errno.EFAULT: "the u64 at kvm_device_attr.addr could not be written",
            },
            "has": {errno.ENXIO: _GROUP_ERRNOS[errno.ENXIO]},
        },
    ),
    (KVM_ARM_VCPU_SPE_CTRL, KVM_ARM_VCPU_SPE_IRQ): AttrInfo(
        KVM_ARM_VCPU_SPE_CTRL,
        KVM_ARM_VCPU_SPE_IRQ,
        ("KVM_ARM_VCPU_SPE_IRQ",),
        INT,
        {
            "set": {
                **_GROUP_ERRNOS,
                errno.EFAULT: "the int at kvm_device_attr.addr could not be read",
                errno.EBUSY: "this VCPU's SPE interrupt is already set (it is set once, even"
                " to the same value), or the VM has already run",
                errno.EINVAL: "the interrupt is not a PPI (16..31), or differs from the VM's SPE"
                " interrupt: every VCPU uses the same PPI",
                errno.ENXIO: "the VM has no in-kernel irqchip (create the vGIC first),"
                " or SPE is not supported",
            },
            "get": {
                **_GROUP_ERRNOS,
                errno.ENXIO: "no SPE interrupt has been set for this VCPU yet, or SPE is not supported",
                errno.EFAULT: "the int at kvm_device_attr.addr could not be written",
            },
            "has": {errno.ENXIO: _GROUP_ERRNOS[errno.ENXIO]},
        },
    ),
    (KVM_ARM_VCPU_SPE_CTRL, KVM_ARM_VCPU_SPE_SPU): AttrInfo(
        KVM_ARM_VCPU_SPE_CTRL,
        KVM_ARM_VCPU_SPE_SPU,
        ("KVM_ARM_VCPU_SPE_SPU",),
        INT,
        {
            "set": {
                **_GROUP_ERRNOS,
                errno.EFAULT: "the int at kvm_device_attr.addr could not be read",
                errno.EBUSY: "the VM has already run; its SPU is fixed from then on",
                errno.EINVAL: "a different SPU is already assigned to this VM",
                errno.ENXIO: "no SPE instance of this host has that id (the perf PMU type"
                " in /sys/bus/event_source/devices/arm_spe_N/type), or SPE is not supported",
            },
            "get": {
                **_GROUP_ERRNOS,
                errno.ENXIO: "no SPU has been assigned to this VM yet, or SPE is not supported",
                errno.EFAULT: "the int at kvm_device_attr.addr could not be written",
            },
            "has": {errno.ENXIO: _GROUP_ERRNOS[errno.ENXIO]},
        },
    ),
    (KVM_ARM_VCPU_SPE_CTRL, KVM_ARM_VCPU_SPE_INIT): AttrInfo(
        KVM_ARM_VCPU_SPE_CTRL,
        KVM_ARM_VCPU_SPE_INIT,
        ("KVM_ARM_VCPU_SPE_INIT",),
        None,
        {
            "set": {
                **_GROUP_ERRNOS,
                errno.EBUSY: "SPE is already initialised on this VCPU, or the VM has already run",
                errno.ENXIO: "SPE is not ready to initialise: the VM needs an in-kernel irqchip,"
                " this VCPU its KVM_ARM_VCPU_SPE_IRQ, and the VM its KVM_ARM_VCPU_SPE_SPU and"
                " KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE, all set first; or SPE is not supported",
            },
            "get": {
                **_GROUP_ERRNOS,
                errno.ENXIO: "KVM_ARM_VCPU_SPE_INIT cannot be read back (it has no value);"
                " or SPE is not supported",
            },
            "has": {errno.ENXIO: _GROUP_ERRNOS[errno.ENXIO]},
        },
    ),
}

#: Name -> (group, attr), both spellings of the max buffer size attribute included.
ATTR_BY_NAME: dict[str, tuple[int, int]] = {n: key for key, info in ATTRS.items() for n in info.names}

#: What KVM_RUN errnos mean for an SPE VCPU (model and real kernel alike).
RUN_ERRNOS = {
    errno.EINVAL: "SPE is not initialised on this VCPU: set its IRQ, the VM's SPU and the"
    " VM's max buffer size, then KVM_ARM_VCPU_SPE_INIT, before the first KVM_RUN",
    errno.ENOEXEC: "the VCPU has not been initialised with KVM_ARM_VCPU_INIT",
    errno.EINTR: "KVM_RUN was interrupted by a signal",
}

#: Every (call, errno) -> meaning, one table to answer "what does EDOM mean?".
ERRNO_TABLE: dict[str, dict[str, dict[int, str]]] = {info.name: info.errnos for info in ATTRS.values()}
ERRNO_TABLE["KVM_RUN"] = {"run": RUN_ERRNOS}


def attr_info(group: int, attr: int) -> AttrInfo | None:
    """The SPE attribute ``(group, attr)``, or ``None`` for any other."""
    return ATTRS.get((group, attr))


def value_type(group: int, attr: int) -> str:
    """The C type behind ``addr`` for ``(group, attr)``: ``"__u64"``, ``"int"``, or
    ``"none"`` (no value); ``"__u64"`` for an attribute the interface does not have,
    which kvmspe's backends pass as one."""
    info = attr_info(group, attr)
    if info is None:
        return "__u64"
    return "none" if info.value is None else "int" if info.value is INT else "__u64"


def explain(call: str, group: int, attr: int, code: int) -> str:
    """Our sentence for errno ``code`` answered by ``call`` ('set', 'get', 'has')."""
    info = attr_info(group, attr)
    if info is not None:
        text = info.errnos.get(call, {}).get(code)
        if text is not None:
            return text
        if code == errno.ENXIO:
            return _GROUP_ERRNOS[errno.ENXIO]
        return f"{os.strerror(code)} (not documented for {info.name} {call})"
    if code == errno.ENXIO:
        return f"the kernel does not know VCPU attribute group {group} attribute {attr}"
    return os.strerror(code)


def check_value(info: AttrInfo, value: int | None) -> None:
    """Refuse a value that does not fit the attribute's C type (before any ioctl).

    An attribute without a value (INIT) takes only None.
    """
    if info.value is None:
        if value is not None:
            raise InvalidArgumentError(f"{info.name} takes no value (pass None), got {value!r}")
        return
    lo, hi = (0, (1 << 64) - 1) if info.value is U64 else (-(1 << 31), (1 << 31) - 1)
    if not is_int(value) or not lo <= value <= hi:
        ctype = "__u64" if info.value is U64 else "int"
        raise InvalidArgumentError(f"{info.name} takes a {ctype} ({lo}..{hi}), got {value!r}")
