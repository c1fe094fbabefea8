"""The KVM user ABI that kvmspe speaks: ioctl numbers, struct layouts, group
and attribute numbers, and what each errno means for each SPE attribute.

Every number a revision of the SPE series could change lives here, so that a
new revision is a data change. Numbers the series does not state are marked
*assumed* and can be given through :func:`set_assumed` or the environment
(``KVMSPE_SPE_FEATURE_BIT``, ``KVMSPE_CAP_ARM_SPE``, ``KVMSPE_EXIT_RLIMIT``,
read when used); none defaults to a number upstream uses
(:mod:`kvmspe.upstream`).

Sources: ``include/uapi/linux/kvm.h``, ``arch/arm64/include/uapi/asm/kvm.h``
[uapi]; the seed patch [seed] for the SPE group.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass

from .validation import is_int

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
    "KVM_DEV_ARM_VGIC_CTRL_INIT",
    "KVM_DEV_ARM_VGIC_GRP_ADDR",
    "KVM_DEV_ARM_VGIC_GRP_CTRL",
    "KVM_DEV_TYPE_ARM_VGIC_V3",
    "KVM_VGIC_V3_ADDR_TYPE_DIST",
    "KVM_VGIC_V3_ADDR_TYPE_REDIST",
    "VGIC_ERRNOS",
    "Assumed",
    "AssumedNumberError",
    "MODEL_EXIT_RLIMIT",
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
    "explain",
    "set_assumed",
]

# --- ioctl number encoding (asm-generic/ioctl.h) -----------------------------

_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:  # noqa: N802
    return (
        (direction << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IO(type_: int, nr: int) -> int:  # noqa: N802
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOW(type_: int, nr: int, size: int) -> int:  # noqa: N802
    return _IOC(_IOC_WRITE, type_, nr, size)


def _IOR(type_: int, nr: int, size: int) -> int:  # noqa: N802
    return _IOC(_IOC_READ, type_, nr, size)


def _IOWR(type_: int, nr: int, size: int) -> int:  # noqa: N802
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, size)


# --- structs ------------------------------------------------------------------

#: struct kvm_device_attr { __u32 flags; __u32 group; __u64 attr; __u64 addr; }
DEVICE_ATTR = struct.Struct("=IIQQ")
#: struct kvm_vcpu_init { __u32 target; __u32 features[7]; }
VCPU_INIT = struct.Struct("=I7I")
#: The value behind kvm_device_attr.addr: a __u64 (max buffer size) or an int (IRQ, SPU).
U64 = struct.Struct("=Q")
INT = struct.Struct("=i")
#: struct kvm_run starts with two __u8, six bytes of padding, then __u32 exit_reason.
KVM_RUN_EXIT_REASON_OFFSET = 8
#: The __u32 exit_reason itself.
U32 = struct.Struct("=I")
#: struct kvm_run: after exit_reason come two __u8, a __u16, and two __u64
#: (cr8, apic_base); the per-exit union starts at byte 32 [uapi].
KVM_RUN_EXIT_DATA_OFFSET = 32
#: KVM_EXIT_RLIMIT data: the excess in bytes as the first __u64 of the
#: per-exit union [assumed: series patch 32 names the data, not its layout].
KVM_RUN_RLIMIT_EXCESS_OFFSET = KVM_RUN_EXIT_DATA_OFFSET
#: struct kvm_userspace_memory_region { __u32 slot; __u32 flags;
#: __u64 guest_phys_addr; __u64 memory_size; __u64 userspace_addr; }
USERSPACE_MEMORY_REGION = struct.Struct("=IIQQQ")
#: struct kvm_create_device { __u32 type; __u32 fd; __u32 flags; }, 12 bytes;
#: the kernel writes the new device's fd into ``fd`` [uapi: include/uapi/linux/kvm.h].
CREATE_DEVICE = struct.Struct("=III")

KVMIO = 0xAE

KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_RUN = _IO(KVMIO, 0x80)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, USERSPACE_MEMORY_REGION.size)
KVM_ARM_VCPU_INIT = _IOW(KVMIO, 0xAE, VCPU_INIT.size)
KVM_ARM_PREFERRED_TARGET = _IOR(KVMIO, 0xAF, VCPU_INIT.size)
KVM_SET_DEVICE_ATTR = _IOW(KVMIO, 0xE1, DEVICE_ATTR.size)
KVM_GET_DEVICE_ATTR = _IOW(KVMIO, 0xE2, DEVICE_ATTR.size)
KVM_HAS_DEVICE_ATTR = _IOW(KVMIO, 0xE3, DEVICE_ATTR.size)
#: VM ioctl: _IOWR(KVMIO, 0xe0, struct kvm_create_device) = 0xC00CAEE0
#: [uapi: include/uapi/linux/kvm.h]. The device fd it gives takes the same
#: KVM_{SET,GET,HAS}_DEVICE_ATTR ioctls as a VCPU fd.
KVM_CREATE_DEVICE = _IOWR(KVMIO, 0xE0, CREATE_DEVICE.size)
#: kvm_create_device.flags: only ask whether the type could be created [uapi].
KVM_CREATE_DEVICE_TEST = 1

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

#: What the vGIC calls' errnos mean (Documentation/virt/kvm/devices/arm-vgic-v3.rst,
#: kvm_ioctl_create_device): per call, errno -> sentence.
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

# --- assumed numbers -------------------------------------------------------------

#: kvmspe's own number for KVM_EXIT_RLIMIT while the user gives none: the
#: series (patch 32) does not publish it, and every number up to 43 is an
#: upstream exit in Linux 7.2 (42, the old guess, is KVM_EXIT_ARM_LDST64B).
#: 0x10000 lies far above upstream's exits (they grow by a few a year), so
#: on a real kernel it matches nothing: a real KVM_EXIT_RLIMIT shows as its
#: raw number until the user gives it. The model is its own kernel and
#: reports its RLIMIT exit with this number; that is the only place it
#: comes from, so both backends agree.
MODEL_EXIT_RLIMIT = 0x10000

#: The width of each assumed number, for refusing absurd values:
#: kvm_vcpu_init.features[7] holds 224 bits; a capability is an ioctl
#: argument the kernel reads as an int; an exit reason is a __u32.
_LIMITS = {
    "spe_feature_bit": (0, 32 * 7 - 1),
    "cap_arm_spe": (0, (1 << 31) - 1),
    "exit_rlimit": (0, (1 << 32) - 1),
}
_ENV = {
    "spe_feature_bit": "KVMSPE_SPE_FEATURE_BIT",
    "cap_arm_spe": "KVMSPE_CAP_ARM_SPE",
    "exit_rlimit": "KVMSPE_EXIT_RLIMIT",
}
#: Assumed number -> the environment variable that gives it.
ASSUMED_ENV: dict[str, str] = dict(_ENV)
#: The longest accepted spelling of a number (decimal or 0x hex) in the environment.
_MAX_DIGITS = 12


class AssumedNumberError(ValueError):
    """An assumed number (given to :func:`set_assumed` or in a ``KVMSPE_*``
    environment variable) is not acceptable: out of its field's range, or a
    number upstream Linux already uses for something else."""


def _collision(name: str, value: int) -> str | None:
    """Why ``value`` cannot be the assumed number ``name``, or None."""
    from . import upstream

    if name == "spe_feature_bit":
        taken = upstream.ARM64_VCPU_FEATURES.get(value)
        if taken is not None:
            return (
                f"bit {value} is {taken[0]} upstream (since Linux {taken[1]}); the SPE feature"
                f" cannot be any of bits 0..{max(upstream.ARM64_VCPU_FEATURES)}"
            )
    elif name == "cap_arm_spe":
        what = upstream.cap_name(value)
        if what is not None:
            return f"{value} is {what} upstream; KVM_CAP_ARM_SPE must be above {upstream.CAP_MAX}"
    elif name == "exit_rlimit":
        taken = upstream.EXITS.get(value)
        if taken is not None:
            return f"{value} is {taken[0]} upstream (since Linux {taken[1]}), not KVM_EXIT_RLIMIT"
        from .model.assumptions import DEFAULT

        if value == DEFAULT.idle_exit:
            return f"{value} is the exit the model returns when its guest is idle"
    return None


def check_assumed(name: str, value: object) -> int:
    """``value`` as the assumed number ``name``, or :class:`AssumedNumberError` saying why not."""
    if name not in _ENV:
        raise AssumedNumberError(f"unknown assumed number {name!r}; accepted: {', '.join(_ENV)}")
    lo, hi = _LIMITS[name]
    if not is_int(value) or not lo <= value <= hi:
        raise AssumedNumberError(f"{name} must be an integer in {lo}..{hi:#x}, got {value!r}")
    why = _collision(name, value)
    if why is not None:
        raise AssumedNumberError(f"{name}={value} refused: {why}")
    return value


def _parse_env(var: str, raw: str) -> int:
    """A decimal or 0x-hex number of at most :data:`_MAX_DIGITS` ASCII digits."""
    text = raw.strip()
    hexa = text[:2].lower() == "0x"
    digits = text[2:] if hexa else text
    allowed = "0123456789abcdefABCDEF" if hexa else "0123456789"
    if not digits or len(digits) > _MAX_DIGITS or any(c not in allowed for c in digits):
        raise AssumedNumberError(
            f"{var}={raw[:40]!r}: expected a decimal or 0x-hex number of at most {_MAX_DIGITS} digits"
        )
    return int(digits, 16 if hexa else 10)


class Assumed:
    """Numbers the v6 series uses but does not publish in what we have [assumed].

    Each is, in this order: a value given to :func:`set_assumed`; else the
    environment variable (read and checked when the number is used, not at
    import); else the default. None of the defaults is a number upstream
    Linux uses (see :mod:`kvmspe.upstream`), and a given number that is one
    is refused with :class:`AssumedNumberError`.

    * ``spe_feature_bit``: the ``KVM_ARM_VCPU_SPE`` bit for KVM_ARM_VCPU_INIT
      (``KVMSPE_SPE_FEATURE_BIT``). Default None: the real backend finds it by
      probing, and when no bit makes the SPE group answer, the kernel has no
      SPE VCPU feature. Older revisions used 7, then 8; both are taken.
    * ``cap_arm_spe``: ``KVM_CAP_ARM_SPE`` (``KVMSPE_CAP_ARM_SPE``). Default
      None: not asked; it decides nothing. Older revisions used 191, then 208.
    * ``exit_rlimit``: ``KVM_EXIT_RLIMIT`` (series patch 32,
      ``KVMSPE_EXIT_RLIMIT``). Default :data:`MODEL_EXIT_RLIMIT`.
    """

    _DEFAULTS: dict[str, int | None] = {
        "spe_feature_bit": None,
        "cap_arm_spe": None,
        "exit_rlimit": MODEL_EXIT_RLIMIT,
    }

    def __init__(self) -> None:
        self._given: dict[str, int | None] = {}
        self._env_cache: dict[str, tuple[str, int]] = {}

    def _get(self, name: str) -> int | None:
        if name in self._given:
            return self._given[name]
        var = _ENV[name]
        raw = os.environ.get(var)
        if raw is None or raw == "":
            return self._DEFAULTS[name]
        cached = self._env_cache.get(var)
        if cached is not None and cached[0] == raw:
            return cached[1]
        try:
            value = check_assumed(name, _parse_env(var, raw))
        except AssumedNumberError as exc:
            text = str(exc)
            if not text.startswith(var):
                text = f"{var}={raw[:40]!r}: {text}"
            raise AssumedNumberError(text) from None
        self._env_cache[var] = (raw, value)
        return value

    @property
    def spe_feature_bit(self) -> int | None:
        return self._get("spe_feature_bit")

    @property
    def cap_arm_spe(self) -> int | None:
        return self._get("cap_arm_spe")

    @property
    def exit_rlimit(self) -> int:
        value = self._get("exit_rlimit")
        assert value is not None
        return value

    def source(self, name: str) -> str:
        """Where the number ``name`` comes from: "set_assumed", the variable's name, or "default"."""
        if name in self._given:
            return "set_assumed"
        return _ENV[name] if os.environ.get(_ENV[name]) else "default"

    def check(self) -> None:
        """Read and check every number now (e.g. the environment, before a command starts)."""
        for name in _ENV:
            self._get(name)

    def as_dict(self) -> dict[str, int | None]:
        return {name: self._get(name) for name in _ENV}

    def reset(self) -> None:
        """Forget values given to :func:`set_assumed` (back to environment and defaults)."""
        self._given.clear()

    def __repr__(self) -> str:
        return f"Assumed({', '.join(f'{k}={v!r}' for k, v in self._given.items())})"


ASSUMED = Assumed()


def set_assumed(**values: int | None) -> None:
    """Give assumed numbers, e.g. ``set_assumed(exit_rlimit=0x20000)``; ``None``
    goes back to the environment or default. All are checked before any is
    set: a bad one raises :class:`AssumedNumberError` and changes nothing."""
    checked = {
        name: (None if value is None and name in _ENV else check_assumed(name, value))
        for name, value in values.items()
    }
    for name, value in checked.items():
        if value is None:
            ASSUMED._given.pop(name, None)
        else:
            ASSUMED._given[name] = value


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


def check_value(info: AttrInfo, value: int | None) -> None:
    """Refuse a value that does not fit the attribute's C type (before any ioctl).

    An attribute without a value (INIT) takes only None.
    """
    if info.value is None:
        if value is not None:
            raise ValueError(f"{info.name} takes no value (pass None), got {value!r}")
        return
    lo, hi = (0, (1 << 64) - 1) if info.value is U64 else (-(1 << 31), (1 << 31) - 1)
    if not is_int(value) or not lo <= value <= hi:
        ctype = "__u64" if info.value is U64 else "int"
        raise ValueError(f"{info.name} takes a {ctype} ({lo}..{hi}), got {value!r}")
