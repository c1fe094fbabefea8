"""A device fd from KVM_CREATE_DEVICE (the vGIC): its attributes, and the device-attribute ioctls.

``KVM_{HAS,GET,SET}_DEVICE_ATTR`` are the same three requests on a device fd
and on a VCPU fd; their numbers and names (:data:`ATTR_NAMES`) live here and
:mod:`kvmspe.kvm.vcpu` takes them from here.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import TYPE_CHECKING

from .. import abi
from ..errors import InvalidArgumentError, KvmError
from ..validation import U32_MAX, U64_MAX, check_int, is_int
from .fd import Owned, retry

if TYPE_CHECKING:
    from .vm import Vm

__all__ = ["ATTR_NAMES", "GET", "HAS", "SET", "Device"]

HAS = abi.KVM_HAS_DEVICE_ATTR
GET = abi.KVM_GET_DEVICE_ATTR
SET = abi.KVM_SET_DEVICE_ATTR
#: The name of each device-attribute request, as errors show it.
ATTR_NAMES = {HAS: "KVM_HAS_DEVICE_ATTR", GET: "KVM_GET_DEVICE_ATTR", SET: "KVM_SET_DEVICE_ATTR"}


class Device(Owned):
    """A device fd from KVM_CREATE_DEVICE (e.g. the vGIC): its attributes.

    Configuration calls, made a few times per VM, so there is no fast path:
    each call packs a fresh ``struct kvm_device_attr``. A value travels as a
    ``__u64`` behind ``addr`` (the vGIC addresses); no value means ``addr`` 0
    (KVM_DEV_ARM_VGIC_CTRL_INIT takes none).
    """

    def __init__(self, vm: Vm, fd: int, type_: int):
        self.vm = vm
        self._own(fd, f"Device(type={type_})")
        self.type = type_
        self._value = (ctypes.c_uint64 * 1)()
        #: Where the value lives while a call is made.
        self.value_addr = ctypes.addressof(self._value)

    def _explain(self, group: int, attr: int, code: int) -> str | None:
        if self.type != abi.KVM_DEV_TYPE_ARM_VGIC_V3:
            return None
        if group == abi.KVM_DEV_ARM_VGIC_GRP_ADDR:
            return abi.VGIC_ERRNOS["addr"].get(code)
        if group == abi.KVM_DEV_ARM_VGIC_GRP_CTRL and attr == abi.KVM_DEV_ARM_VGIC_CTRL_INIT:
            return abi.VGIC_ERRNOS["init"].get(code)
        return None

    def _call(self, request: int, group: int, attr: int, addr: int) -> None:
        self._check_open(ATTR_NAMES[request])
        check_int("device attribute group", group, 0, U32_MAX)
        check_int("device attribute", attr, 0, U64_MAX)
        arg = bytearray(abi.DEVICE_ATTR.pack(0, group, attr, addr))
        try:
            retry(self.vm.kvm.ioctl, self.fd, request, arg)
        except OSError as exc:
            code = exc.errno or errno.EIO
            text = self._explain(group, attr, code) or os.strerror(code)
            raise KvmError(code, text, ioctl=ATTR_NAMES[request], group=group, attr=attr) from None

    def set_device_attr(self, group: int, attr: int, value: int | None = None) -> None:
        """KVM_SET_DEVICE_ATTR on the device, ``value`` (a u64) behind ``addr``."""
        self._check_open("KVM_SET_DEVICE_ATTR")
        if value is None:
            self._call(SET, group, attr, 0)
            return
        if not is_int(value) or not 0 <= value < 1 << 64:
            raise InvalidArgumentError(f"device attribute {group}/{attr} takes a __u64, got {value!r}")
        self._value[0] = value
        self._call(SET, group, attr, self.value_addr)

    def has_device_attr(self, group: int, attr: int) -> bool:
        """KVM_HAS_DEVICE_ATTR on the device: False on ENXIO, other errnos raise."""
        try:
            self._call(HAS, group, attr, 0)
        except KvmError as exc:
            if exc.errno == errno.ENXIO:
                return False
            raise
        return True

    def close(self) -> None:
        """Close the device fd. Safe to call twice."""
        if self.closed:
            return
        self._close_fd()
        if self in self.vm.devices:
            self.vm.devices.remove(self)
        if self.vm.vgic is self:
            self.vm.vgic = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.fd}"
        return f"Device(type={self.type}, {state})"
