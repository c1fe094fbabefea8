"""The VM fd: VCPU creation (and, on arm64, their initialisation), guest memory, the in-kernel irqchip.

On arm64, :meth:`Vm.create_vgic_v3` and :meth:`Vm.init_vgic` give the VM an
in-kernel GICv3 (a :class:`~kvmspe.kvm.Device`, from KVM_CREATE_DEVICE),
which KVM wants before it takes a VCPU's PMU interrupt, and which the SPE
interrupt attribute is modelled on. Create every VCPU first: KVM sizes the
redistributors by the VCPUs that exist when the vGIC is initialised.

VCPU ids are never reused within a VM (KVM never frees one: creating the
same id again answers EEXIST, even after its fd was closed).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import threading
from typing import TYPE_CHECKING, Any

from .. import abi
from ..errors import InvalidArgumentError, KvmError
from ..validation import U32_MAX, U64_MAX, check_int, is_int
from .device import Device
from .fd import IOCTL_INT_MAX, Owned, fail, retry
from .feature import SpeFeatureUnavailable, feature_bits, init_refused
from .vcpu import Vcpu

if TYPE_CHECKING:
    from .system import Kvm

__all__ = ["VGIC_V3_DIST_BASE", "VGIC_V3_REDIST_BASE", "Vm"]

#: x86's reset vector is 0xFFFFFFF0: the last page below 4 GiB holds it.
_X86_RESET_PAGE = 0xFFFF_F000
_HALT_PAGE = 4096

#: Where :meth:`Vm.create_vgic_v3` puts the GICv3 frames unless told otherwise
#: (ABI data, with the reasons: :data:`kvmspe.abi.VGIC_V3_DIST_BASE`).
VGIC_V3_DIST_BASE = abi.VGIC_V3_DIST_BASE
VGIC_V3_REDIST_BASE = abi.VGIC_V3_REDIST_BASE
_VGIC_ALIGN = 64 << 10


class Vm(Owned):
    """A VM file descriptor. Closing it closes its VCPUs first."""

    def __init__(self, kvm: Kvm, fd: int):
        self.kvm = kvm
        self._own(fd, "Vm")
        self.vcpus: list[Vcpu] = []
        #: Devices from KVM_CREATE_DEVICE (closed with the VM).
        self.devices: list[Device] = []
        #: The in-kernel GICv3, once :meth:`create_vgic_v3` has made it.
        self.vgic: Device | None = None
        #: Every VCPU id created in this VM: KVM never frees one.
        self.ids_used: set[int] = set()
        #: Guest memory this object mapped (:meth:`add_halt_page`), unmapped at close.
        self._memory: list[mmap.mmap] = []
        #: Makes choosing and taking a VCPU id one step, for VCPU threads.
        self._ids_lock = threading.Lock()

    def _call(self, request: int, arg: Any, name: str, text: str | None = None) -> int:
        self._check_open(name)
        try:
            return retry(self.kvm.ioctl, self.fd, request, arg)
        except OSError as exc:
            raise fail(exc, name, text) from None

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM (answers for this VM's configuration)."""
        self._check_open("KVM_CHECK_EXTENSION")
        check_int("capability", cap, 0, IOCTL_INT_MAX)
        return self._call(abi.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")

    def set_user_memory_region(
        self, slot: int, guest_phys_addr: int, memory_size: int, userspace_addr: int, flags: int = 0
    ) -> None:
        """KVM_SET_USER_MEMORY_REGION: back guest memory with process memory."""
        self._check_open("KVM_SET_USER_MEMORY_REGION")
        check_int("slot", slot, 0, U32_MAX)
        check_int("flags", flags, 0, U32_MAX)
        check_int("guest_phys_addr", guest_phys_addr, 0, U64_MAX)
        check_int("memory_size", memory_size, 0, U64_MAX)
        check_int("userspace_addr", userspace_addr, 0, U64_MAX)
        region = bytearray(
            abi.USERSPACE_MEMORY_REGION.pack(slot, flags, guest_phys_addr, memory_size, userspace_addr)
        )
        self._call(abi.KVM_SET_USER_MEMORY_REGION, region, "KVM_SET_USER_MEMORY_REGION")

    def _next_index(self) -> int:
        """The lowest VCPU id this VM has never used (KVM never frees one)."""
        used = self.ids_used
        return next(i for i in range(len(used) + 1) if i not in used)

    def create_vcpu(self, index: int | None = None, *, spe: bool = True) -> Vcpu:
        """KVM_CREATE_VCPU, and on arm64 KVM_ARM_PREFERRED_TARGET + KVM_ARM_VCPU_INIT.

        ``index`` is the VCPU id (default: the lowest id this VM has never
        used; KVM never frees an id, so a closed VCPU's id stays taken). On
        arm64 the VCPU is initialised with the preferred target and, when
        ``spe``, the SPE feature bit of :meth:`Kvm.spe_feature`; when the
        kernel has none, :class:`SpeFeatureUnavailable` is raised before any
        ioctl. On x86 there is no init step and ``spe`` is only recorded.
        """
        self._check_open("KVM_CREATE_VCPU")
        bit = None
        if spe and self.kvm.arch == "aarch64":
            feature = self.kvm.spe_feature()
            if feature.bit is None:
                why = feature.reason + (f" (probed: {feature.answers})" if feature.tried else "")
                raise SpeFeatureUnavailable(errno.EOPNOTSUPP, why, ioctl="KVM_ARM_VCPU_INIT")
            bit = feature.bit
        return self._create(index, spe=spe, bit=bit)

    def _create(self, index: int | None, *, spe: bool, bit: int | None) -> Vcpu:
        if index is not None:
            index = check_int("VCPU index", index, 0, IOCTL_INT_MAX)
        text = None
        with self._ids_lock:  # a default id is chosen and taken at once, whatever other threads do
            if index is None:
                index = self._next_index()
            if index in self.ids_used:
                text = (
                    f"VCPU id {index} was used before in this VM: KVM never frees a VCPU id,"
                    " even after its fd is closed"
                )
            taken = text is None
            self.ids_used.add(index)
        try:
            fd = self._call(abi.KVM_CREATE_VCPU, index, "KVM_CREATE_VCPU", text)
        except KvmError as exc:
            if taken and exc.errno != errno.EEXIST:  # the kernel did not take it: free again
                with self._ids_lock:
                    self.ids_used.discard(index)
            raise
        vcpu = Vcpu(self, fd, index, spe)
        try:
            if self.kvm.arch == "aarch64":
                self._arm_init(vcpu, bit)
        except BaseException:
            vcpu.close()
            raise
        self.vcpus.append(vcpu)
        return vcpu

    def _arm_init(self, vcpu: Vcpu, bit: int | None) -> None:
        init = bytearray(abi.VCPU_INIT.size)
        self._call(abi.KVM_ARM_PREFERRED_TARGET, init, "KVM_ARM_PREFERRED_TARGET")
        target, *features = abi.VCPU_INIT.unpack(init)
        if bit is not None:
            word = bit // 32
            if word >= len(features):
                raise InvalidArgumentError(f"SPE feature bit {bit} does not fit in kvm_vcpu_init.features[7]")
            features[word] |= 1 << (bit % 32)
        abi.VCPU_INIT.pack_into(init, 0, target, *features)
        vcpu.features = tuple(features)
        vcpu.target = target
        try:
            retry(self.kvm.ioctl, vcpu.fd, abi.KVM_ARM_VCPU_INIT, init)
        except OSError as exc:
            text = init_refused(exc.errno or 0, feature_bits(features), bit)
            raise fail(exc, "KVM_ARM_VCPU_INIT", text) from None

    # -- in-kernel devices --------------------------------------------------------------

    def add_halt_page(self) -> None:
        """x86: one page of HLT instructions at the reset vector (guest physical
        0xFFFFF000), so a VCPU has something to run: without memory x86
        answers KVM_RUN with ENOSPC. The page lives as long as the VM."""
        self._check_open("add_halt_page")
        if self.kvm.arch != "x86_64":
            raise InvalidArgumentError(f"the HLT page is for x86_64 VMs; this is {self.kvm.arch}")
        page = mmap.mmap(
            -1, _HALT_PAGE, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS, mmap.PROT_READ | mmap.PROT_WRITE
        )
        page.write(b"\xf4" * _HALT_PAGE)
        address = ctypes.addressof(ctypes.c_char.from_buffer(page))
        try:
            self.set_user_memory_region(0, _X86_RESET_PAGE, _HALT_PAGE, address)
        except BaseException:
            page.close()
            raise
        self._memory.append(page)

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: x86's in-kernel irqchip (PIC, IOAPIC, local
        APICs), before any VCPU exists. arm64 VMs take a vGIC instead
        (:meth:`create_vgic_v3`); kvmspe's shim takes either as the irqchip
        the SPE interrupt needs."""
        self._call(abi.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")

    def create_device(self, type_: int) -> Device:
        """KVM_CREATE_DEVICE: an in-kernel device of ``type_`` (a ``KVM_DEV_TYPE_*``)."""
        self._check_open("KVM_CREATE_DEVICE")
        check_int("device type", type_, 0, U32_MAX)
        arg = bytearray(abi.CREATE_DEVICE.pack(type_, 0, 0))
        text = None
        try:
            retry(self.kvm.ioctl, self.fd, abi.KVM_CREATE_DEVICE, arg)
        except OSError as exc:
            if type_ == abi.KVM_DEV_TYPE_ARM_VGIC_V3:
                text = abi.VGIC_ERRNOS["create"].get(exc.errno or 0)
                if self.kvm.arch != "aarch64":
                    text = (
                        f"the vGIC (KVM_DEV_TYPE_ARM_VGIC_V3) is an arm64 device, and this host is"
                        f" {self.kvm.arch}: its KVM has no such device type"
                    )
            raise fail(exc, "KVM_CREATE_DEVICE", text) from None
        fd: int = abi.CREATE_DEVICE.unpack(arg)[1]
        device = Device(self, fd, type_)
        self.devices.append(device)
        return device

    def create_vgic_v3(
        self, *, dist_base: int = VGIC_V3_DIST_BASE, redist_base: int = VGIC_V3_REDIST_BASE
    ) -> Device:
        """An in-kernel GICv3 for this VM, its distributor and redistributors placed.

        KVM_CREATE_DEVICE (KVM_DEV_TYPE_ARM_VGIC_V3), then KVM_SET_DEVICE_ATTR
        on the device for KVM_DEV_ARM_VGIC_GRP_ADDR: KVM_VGIC_V3_ADDR_TYPE_DIST
        at ``dist_base`` and KVM_VGIC_V3_ADDR_TYPE_REDIST at ``redist_base``
        (one 128 KiB redistributor frame per VCPU from there). Call it after
        creating every VCPU, then :meth:`init_vgic`. Bases must be 64 KiB
        aligned and the frames must not overlap (checked before any ioctl).
        If a step fails the device fd is closed; the kernel keeps the
        irqchip until the VM is closed, so use a fresh VM to try again.
        """
        self._check_open("KVM_CREATE_DEVICE")
        nr = max(len(self.vcpus), 1)
        for name, base in (("dist_base", dist_base), ("redist_base", redist_base)):
            if not is_int(base) or base < 0 or base % _VGIC_ALIGN:
                raise InvalidArgumentError(
                    f"{name} must be a 64 KiB aligned guest physical address, got {base!r}"
                )
        dist_end = dist_base + abi.KVM_VGIC_V3_DIST_SIZE
        redist_end = redist_base + nr * abi.KVM_VGIC_V3_REDIST_SIZE
        if dist_base < redist_end and redist_base < dist_end:
            raise InvalidArgumentError(
                f"the GICv3 distributor [{dist_base:#x}, {dist_end:#x}) overlaps the"
                f" redistributors of {nr} VCPU(s) [{redist_base:#x}, {redist_end:#x})"
            )
        device = self.create_device(abi.KVM_DEV_TYPE_ARM_VGIC_V3)
        try:
            device.set_device_attr(abi.KVM_DEV_ARM_VGIC_GRP_ADDR, abi.KVM_VGIC_V3_ADDR_TYPE_DIST, dist_base)
            device.set_device_attr(
                abi.KVM_DEV_ARM_VGIC_GRP_ADDR, abi.KVM_VGIC_V3_ADDR_TYPE_REDIST, redist_base
            )
        except BaseException:
            device.close()
            raise
        self.vgic = device
        return device

    def init_vgic(self) -> None:
        """KVM_DEV_ARM_VGIC_CTRL_INIT on the vGIC: KVM sets it up for the VCPUs
        that exist now (no VCPU can be added afterwards)."""
        self._check_open("KVM_SET_DEVICE_ATTR")
        if self.vgic is None or self.vgic.closed:
            raise InvalidArgumentError("this VM has no vGIC: call create_vgic_v3() first")
        self.vgic.set_device_attr(abi.KVM_DEV_ARM_VGIC_GRP_CTRL, abi.KVM_DEV_ARM_VGIC_CTRL_INIT)

    def close(self) -> None:
        """Close every VCPU and device of this VM, then the VM. Safe to call twice."""
        if self.closed:
            return
        for vcpu in list(self.vcpus):
            vcpu.close()
        for device in list(self.devices):
            device.close()
        self._close_fd()
        for page in self._memory:
            page.close()
        self._memory.clear()
        if self in self.kvm.vms:
            self.kvm.vms.remove(self)
