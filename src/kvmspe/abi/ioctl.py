"""ioctl request numbers, computed as asm-generic/ioctl.h does (_IO, _IOW, _IOR, _IOWR) [uapi]."""

from __future__ import annotations

from .structs import CREATE_DEVICE, DEVICE_ATTR, USERSPACE_MEMORY_REGION, VCPU_INIT

__all__ = [
    "KVMIO",
    "KVM_ARM_PREFERRED_TARGET",
    "KVM_ARM_VCPU_INIT",
    "KVM_CHECK_EXTENSION",
    "KVM_CREATE_DEVICE",
    "KVM_CREATE_DEVICE_TEST",
    "KVM_CREATE_IRQCHIP",
    "KVM_CREATE_VCPU",
    "KVM_CREATE_VM",
    "KVM_GET_API_VERSION",
    "KVM_GET_DEVICE_ATTR",
    "KVM_GET_VCPU_MMAP_SIZE",
    "KVM_HAS_DEVICE_ATTR",
    "KVM_RUN",
    "KVM_SET_DEVICE_ATTR",
    "KVM_SET_SIGNAL_MASK",
    "KVM_SET_USER_MEMORY_REGION",
    "SIGSET_BYTES",
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


KVMIO = 0xAE

KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
#: VM ioctl: the in-kernel irqchip of x86 (PIC, IOAPIC, local APICs) [uapi].
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_RUN = _IO(KVMIO, 0x80)
#: VCPU ioctl: _IOW(KVMIO, 0x8b, struct kvm_signal_mask), whose size is its
#: __u32 len alone (the sigset is a flexible array) = 0x4004AE8B [uapi]. The
#: mask the thread has while in KVM_RUN; a NULL argument drops it.
KVM_SET_SIGNAL_MASK = _IOW(KVMIO, 0x8B, 4)
#: kvm_signal_mask.len KVM accepts: the kernel's sigset_t, 64 signals, on
#: x86_64 and arm64 alike.
SIGSET_BYTES = 8
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
