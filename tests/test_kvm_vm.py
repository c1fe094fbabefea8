"""The system, VM and device fds against the recorded kernel (tests/kvm_fake.py): /dev/kvm calls,
closing, ``fileno()``, and the in-kernel GICv3, byte for byte."""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

import pytest
from kvm_fake import (
    CHECK_EXTENSION,
    CREATE_DEVICE,
    DEV_TYPE_ARM_VGIC_V3,
    HAS_ATTR,
    IRQ,
    MAX,
    SET_ATTR,
    SPE,
    SPU,
    VGIC_CTRL_INIT,
    VGIC_GRP_ADDR,
    VGIC_GRP_CTRL,
    VGIC_V3_ADDR_TYPE_DIST,
    VGIC_V3_ADDR_TYPE_REDIST,
    Recorder,
    create_device,
    device_attr,
    u32,
    u64,
)

from kvmspe import abi
from kvmspe.errors import KvmError
from kvmspe.kvm import Kvm, Vcpu

# -- /dev/kvm calls and closing ------------------------------------------------------------------------


def test_check_extension_passes_the_capability(arm: Kvm, rec: Recorder) -> None:
    arm.check_extension(250)
    assert (rec.calls[-1].fd, rec.calls[-1].request, rec.calls[-1].arg) == (
        arm.fd,
        CHECK_EXTENSION,
        250,
    )


def test_closing_the_vm_closes_every_fd(arm: Kvm, rec: Recorder) -> None:
    vm = arm.create_vm()
    for _ in range(3):
        vm.create_vcpu().run()
    vm.close()
    for fd in rec.opened:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_alternating_attributes_each_carry_their_own_group_attr_and_width(vcpu: Vcpu, rec: Recorder) -> None:
    # The struct keeps the last (group, attr) between calls: switching must re-point it.
    rec.stored[SPE, IRQ] = u32(23) + b"\xaa" * 4
    rec.stored[SPE, MAX] = u64(1 << 40)
    sequence = [
        ("set", SPE, MAX, (1 << 33) + 4096),
        ("set", SPE, IRQ, -2),
        ("get", SPE, IRQ, 23),
        ("get", SPE, MAX, 1 << 40),
        ("has", abi.KVM_ARM_VCPU_PVTIME_CTRL, 0, True),
        ("set", SPE, MAX, 8192),
        ("set", SPE, MAX, 16384),
    ]
    for op, group, attr, value in sequence:
        if op == "set":
            vcpu.set_device_attr(group, attr, value)
            width = 4 if attr == IRQ else 8
            assert rec.calls[-1].value is not None
            assert rec.calls[-1].value[:width] == value.to_bytes(width, sys.byteorder, signed=value < 0)
        elif op == "get":
            assert vcpu.get_device_attr(group, attr) == value
        else:
            assert vcpu.has_device_attr(group, attr) is value
        assert rec.calls[-1].arg == device_attr(group, attr, vcpu.value_addr)


def test_overriding_the_width_takes_effect_on_the_next_call(vcpu: Vcpu, rec: Recorder) -> None:
    vcpu.set_device_attr(SPE, SPU, 7)
    with pytest.raises(ValueError):
        vcpu.set_device_attr(SPE, SPU, 1 << 40)
    vcpu.set_value_struct(SPE, SPU, abi.U64)
    vcpu.set_device_attr(SPE, SPU, 1 << 40)
    assert rec.calls[-1].value == u64(1 << 40)


# -- the in-kernel GICv3 ----------------------------------------------------------------------------


def _vm_with_vcpus(arm: Kvm, rec: Recorder, n: int) -> Any:
    vm = arm.create_vm()
    for _ in range(n):
        vm.create_vcpu()
    rec.calls.clear()
    return vm


def test_create_device_number_and_struct_match_the_uapi() -> None:
    assert abi.KVM_CREATE_DEVICE == CREATE_DEVICE
    assert abi.CREATE_DEVICE.size == 12
    assert abi.CREATE_DEVICE.pack(DEV_TYPE_ARM_VGIC_V3, 0, 0) == create_device(DEV_TYPE_ARM_VGIC_V3)


def test_vgic_v3_sequence_and_bytes(arm: Kvm, rec: Recorder) -> None:
    vm = _vm_with_vcpus(arm, rec, 2)
    gic = vm.create_vgic_v3()
    vm.init_vgic()
    create, dist, redist, init = rec.calls
    assert (create.fd, create.request) == (vm.fd, CREATE_DEVICE)
    assert create.arg == create_device(DEV_TYPE_ARM_VGIC_V3)
    # The device fd is the one the kernel wrote into kvm_create_device.fd.
    assert gic.fd == rec.opened[-1] and vm.vgic is gic and vm.devices == [gic]
    assert (dist.fd, dist.request) == (gic.fd, SET_ATTR)
    assert dist.arg == device_attr(VGIC_GRP_ADDR, VGIC_V3_ADDR_TYPE_DIST, gic.value_addr)
    assert dist.value == u64(0x0800_0000)
    assert (redist.fd, redist.request) == (gic.fd, SET_ATTR)
    assert redist.arg == device_attr(VGIC_GRP_ADDR, VGIC_V3_ADDR_TYPE_REDIST, gic.value_addr)
    assert redist.value == u64(0x080A_0000)
    # CTRL_INIT takes no value: addr is 0.
    assert (init.fd, init.request) == (gic.fd, SET_ATTR)
    assert init.arg == device_attr(VGIC_GRP_CTRL, VGIC_CTRL_INIT, 0)
    assert init.value is None


def test_vgic_v3_takes_other_bases(arm: Kvm, rec: Recorder) -> None:
    vm = _vm_with_vcpus(arm, rec, 1)
    vm.create_vgic_v3(dist_base=0x3FFF_0000, redist_base=0x3FFD_0000)
    assert [c.value for c in rec.calls[1:]] == [u64(0x3FFF_0000), u64(0x3FFD_0000)]


@pytest.mark.parametrize(
    ("dist", "redist", "match"),
    [
        (0x0800_1000, 0x080A_0000, "dist_base must be a 64 KiB aligned"),
        (0x0800_0000, -(64 << 10), "redist_base must be a 64 KiB aligned"),
        (0x0800_0000, True, "redist_base"),
        # Three VCPUs take 3 x 128 KiB from redist_base: the last one reaches the distributor.
        (0x0804_0000, 0x0800_0000, "overlaps the redistributors of 3 VCPU"),
    ],
)
def test_bad_vgic_bases_never_reach_the_kernel(
    arm: Kvm, rec: Recorder, dist: int, redist: int, match: str
) -> None:
    vm = _vm_with_vcpus(arm, rec, 3)
    with pytest.raises(ValueError, match=match):
        vm.create_vgic_v3(dist_base=dist, redist_base=redist)
    assert rec.calls == [] and vm.vgic is None


def test_a_host_without_gicv3_emulation_says_so(arm: Kvm, rec: Recorder) -> None:
    vm = _vm_with_vcpus(arm, rec, 1)
    rec.fail[CREATE_DEVICE] = [errno.ENODEV]
    with pytest.raises(KvmError) as info:
        vm.create_vgic_v3()
    exc = info.value
    assert (exc.errno, exc.ioctl) == (errno.ENODEV, "KVM_CREATE_DEVICE")
    assert "GICv2-only host" in str(exc)
    assert vm.vgic is None and vm.devices == [] and rec.requests() == [CREATE_DEVICE]


def test_a_refused_address_closes_the_device_and_explains(arm: Kvm, rec: Recorder) -> None:
    vm = _vm_with_vcpus(arm, rec, 1)
    rec.fail[SET_ATTR] = [errno.E2BIG]
    with pytest.raises(KvmError) as info:
        vm.create_vgic_v3()
    exc = info.value
    assert (exc.errno, exc.ioctl, exc.group, exc.attr) == (
        errno.E2BIG,
        "KVM_SET_DEVICE_ATTR",
        VGIC_GRP_ADDR,
        VGIC_V3_ADDR_TYPE_DIST,
    )
    assert exc.strerror == abi.VGIC_ERRNOS["addr"][errno.E2BIG]
    assert vm.vgic is None and vm.devices == []
    with pytest.raises(OSError):
        os.fstat(rec.opened[-1])


def test_init_vgic_errors(arm: Kvm, rec: Recorder) -> None:
    vm = _vm_with_vcpus(arm, rec, 1)
    with pytest.raises(ValueError, match="create_vgic_v3"):
        vm.init_vgic()
    assert rec.calls == []
    vm.create_vgic_v3()
    rec.fail[SET_ATTR] = [errno.ENXIO]
    with pytest.raises(KvmError) as info:
        vm.init_vgic()
    assert info.value.errno == errno.ENXIO
    assert info.value.strerror == abi.VGIC_ERRNOS["init"][errno.ENXIO]


def test_device_attr_eintr_is_retried_and_has_enxio_is_false(arm: Kvm, rec: Recorder) -> None:
    vm = _vm_with_vcpus(arm, rec, 1)
    rec.fail[CREATE_DEVICE] = [errno.EINTR]
    rec.fail[SET_ATTR] = [errno.EINTR]
    gic = vm.create_vgic_v3()
    assert rec.requests() == [CREATE_DEVICE, CREATE_DEVICE, SET_ATTR, SET_ATTR, SET_ATTR]
    rec.fail[HAS_ATTR] = [errno.ENXIO]
    assert gic.has_device_attr(VGIC_GRP_ADDR, 9) is False
    assert gic.has_device_attr(VGIC_GRP_CTRL, VGIC_CTRL_INIT) is True
    assert rec.calls[-1].arg == device_attr(VGIC_GRP_CTRL, VGIC_CTRL_INIT, 0)
    with pytest.raises(ValueError, match="__u64"):
        gic.set_device_attr(VGIC_GRP_ADDR, VGIC_V3_ADDR_TYPE_DIST, 1 << 64)


def test_closing_the_vm_closes_the_vgic(arm: Kvm, rec: Recorder) -> None:
    vm = _vm_with_vcpus(arm, rec, 1)
    gic = vm.create_vgic_v3()
    vm.close()
    assert gic.closed
    with pytest.raises(OSError):
        os.fstat(gic.fd)


def test_every_object_that_owns_a_descriptor_gives_it_with_fileno(arm: Kvm, rec: Recorder) -> None:
    import select

    from kvmspe.errors import ClosedError

    vm = _vm_with_vcpus(arm, rec, 1)
    vcpu = vm.vcpus[0]
    device = vm.create_vgic_v3()
    owners = [arm, vm, vcpu, device]
    fds = [o.fileno() for o in owners]
    assert fds == [o.fd for o in owners] and len(set(fds)) == 4
    assert vcpu.fileno() in rec.opened and device.fileno() in rec.opened
    for owner in owners:
        os.fstat(owner.fileno())  # a descriptor of this process
    # select takes the objects themselves, as it takes files.
    assert select.select([], owners, [], 0)[1] == owners
    arm.close()
    for owner, name in zip(owners, ("Kvm", "Vm", "Vcpu", "Device"), strict=True):
        with pytest.raises(ClosedError, match=f"this {name} has been closed") as info:
            owner.fileno()
        assert info.value.errno == errno.EBADF and info.value.ioctl == "fileno"
