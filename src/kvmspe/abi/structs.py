"""The C structs the ioctls take, declared with their named fields [uapi].

Each struct is a :class:`ctypes.Structure` whose ``_fields_`` read like the C
definition in ``include/uapi/linux/kvm.h``; offsets and sizes come from ctypes,
not from hand-kept numbers. For the hot path each also has a
:class:`struct.Struct` packer derived from those fields (``pack_into`` on a
reused buffer costs less than building a Structure per call); the derivation
refuses a layout with padding, so the two can never disagree.
"""

from __future__ import annotations

import ctypes
import struct
from ctypes import c_uint8, c_uint16, c_uint32, c_uint64
from typing import Any

__all__ = [
    "CREATE_DEVICE",
    "DEVICE_ATTR",
    "INT",
    "KVM_RUN_EXIT_DATA_OFFSET",
    "KVM_RUN_EXIT_REASON_OFFSET",
    "KVM_RUN_RLIMIT_EXCESS_OFFSET",
    "U32",
    "U64",
    "USERSPACE_MEMORY_REGION",
    "VCPU_INIT",
    "kvm_create_device",
    "kvm_device_attr",
    "kvm_run_head",
    "kvm_userspace_memory_region",
    "kvm_vcpu_init",
    "packer",
]

_CODES: dict[type, str] = {c_uint8: "B", c_uint16: "H", c_uint32: "I", c_uint64: "Q"}


class kvm_device_attr(ctypes.Structure):  # noqa: N801 (the C name)
    """The value travels through the user pointer ``addr``; GET writes there,
    never into the struct."""

    _fields_ = [("flags", c_uint32), ("group", c_uint32), ("attr", c_uint64), ("addr", c_uint64)]


class kvm_vcpu_init(ctypes.Structure):  # noqa: N801
    _fields_ = [("target", c_uint32), ("features", c_uint32 * 7)]


class kvm_userspace_memory_region(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("slot", c_uint32),
        ("flags", c_uint32),
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),
        ("userspace_addr", c_uint64),
    ]


class kvm_create_device(ctypes.Structure):  # noqa: N801
    """The kernel writes the new device's fd into ``fd``."""

    _fields_ = [("type", c_uint32), ("fd", c_uint32), ("flags", c_uint32)]


class kvm_run_head(ctypes.Structure):  # noqa: N801
    """The fixed head of ``struct kvm_run``, up to the per-exit union."""

    _fields_ = [
        ("request_interrupt_window", c_uint8),
        ("immediate_exit", c_uint8),
        ("padding1", c_uint8 * 6),
        ("exit_reason", c_uint32),
        ("ready_for_interrupt_injection", c_uint8),
        ("if_flag", c_uint8),
        ("flags", c_uint16),
        ("cr8", c_uint64),
        ("apic_base", c_uint64),
    ]


def packer(cls: type[ctypes.Structure]) -> struct.Struct:
    """A :class:`struct.Struct` with exactly the layout of ``cls`` (arrays flattened).

    Raises ValueError for a field type it cannot express or for padding
    between fields, so a packer is the Structure's layout or nothing.
    """
    fmt = "="
    end = 0
    for name, ctype in cls._fields_:  # type: ignore[misc]
        field = getattr(cls, name)
        if field.offset != end:
            raise ValueError(f"{cls.__name__}.{name}: padding before offset {field.offset}")
        base: Any = ctype
        count = 1
        if issubclass(ctype, ctypes.Array):
            array: Any = ctype
            base, count = array._type_, int(array._length_)
        if base not in _CODES:
            raise ValueError(f"{cls.__name__}.{name}: no struct code for {base.__name__}")
        fmt += f"{count if count > 1 else ''}{_CODES[base]}"
        end = field.offset + field.size
    result = struct.Struct(fmt)
    if result.size != ctypes.sizeof(cls):
        raise ValueError(f"{cls.__name__}: {result.size} packed bytes, {ctypes.sizeof(cls)} in C")
    return result


DEVICE_ATTR = packer(kvm_device_attr)
VCPU_INIT = packer(kvm_vcpu_init)
USERSPACE_MEMORY_REGION = packer(kvm_userspace_memory_region)
CREATE_DEVICE = packer(kvm_create_device)

#: The value behind kvm_device_attr.addr: a __u64 (max buffer size) or an int (IRQ, SPU).
U64 = struct.Struct("=Q")
INT = struct.Struct("=i")
#: The __u32 exit_reason.
U32 = struct.Struct("=I")

KVM_RUN_EXIT_REASON_OFFSET: int = kvm_run_head.exit_reason.offset
#: The per-exit union starts right after the fixed head.
KVM_RUN_EXIT_DATA_OFFSET: int = ctypes.sizeof(kvm_run_head)
#: KVM_EXIT_RLIMIT data: the excess in bytes as the first __u64 of the
#: per-exit union [assumed: series patch 32 names the data, not its layout].
KVM_RUN_RLIMIT_EXCESS_OFFSET = KVM_RUN_EXIT_DATA_OFFSET
