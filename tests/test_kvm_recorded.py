"""The /dev/kvm backend against a recording ioctl layer: the arm64 paths,
byte for byte, on any machine.

The recorder stands in for ``fcntl.ioctl``: it keeps each request number and
the exact bytes passed (and, for device attributes, the bytes behind
``addr``), answers like the kernel would, and fails calls on demand. The
expected numbers and layouts are written out here independently of
:mod:`kvmspe.abi`, from the uapi headers.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kvmspe import abi
from kvmspe.errors import KvmError
from kvmspe.kvm import Kvm, Vcpu

# Request numbers as the uapi headers give them [FACTS 1].
CREATE_VM = 0xAE01
CHECK_EXTENSION = 0xAE03
GET_VCPU_MMAP_SIZE = 0xAE04
CREATE_VCPU = 0xAE41
RUN = 0xAE80
ARM_VCPU_INIT = 0x4020AEAE
ARM_PREFERRED_TARGET = 0x8020AEAF
SET_ATTR = 0x4018AEE1
GET_ATTR = 0x4018AEE2
HAS_ATTR = 0x4018AEE3
ATTR_REQUESTS = (SET_ATTR, GET_ATTR, HAS_ATTR)
# _IOWR(KVMIO, 0xe0, struct kvm_create_device): dir 3, size 12 [include/uapi/linux/kvm.h].
CREATE_DEVICE = 0xC00CAEE0

SPE = 3
IRQ, SPU, MAX = 0, 1, 2
TARGET = 5  # KVM_ARM_TARGET_GENERIC_V8
# The GICv3 device [include/uapi/linux/kvm.h, arch/arm64/include/uapi/asm/kvm.h].
DEV_TYPE_ARM_VGIC_V3 = 7
VGIC_GRP_ADDR, VGIC_GRP_CTRL = 0, 4
VGIC_V3_ADDR_TYPE_DIST, VGIC_V3_ADDR_TYPE_REDIST = 2, 3
VGIC_CTRL_INIT = 0
UNMAPPED = 0xFFFF_FFFF_FFFF_F000


def u32(v: int) -> bytes:
    return (v & 0xFFFF_FFFF).to_bytes(4, sys.byteorder)


def u64(v: int) -> bytes:
    return (v & (1 << 64) - 1).to_bytes(8, sys.byteorder)


def device_attr(group: int, attr: int, addr: int) -> bytes:
    """struct kvm_device_attr { __u32 flags; __u32 group; __u64 attr; __u64 addr; }"""
    return u32(0) + u32(group) + u64(attr) + u64(addr)


def create_device(type_: int, fd: int = 0, flags: int = 0) -> bytes:
    """struct kvm_create_device { __u32 type; __u32 fd; __u32 flags; }"""
    return u32(type_) + u32(fd) + u32(flags)


def vcpu_init(target: int, features: list[int]) -> bytes:
    """struct kvm_vcpu_init { __u32 target; __u32 features[7]; }"""
    return u32(target) + b"".join(u32(f) for f in features)


@dataclass
class Record:
    fd: int
    request: int
    arg: int | bytes
    #: For SET: the 8 bytes behind addr when the call was made.
    value: bytes | None = None


class Recorder:
    """An ``ioctl(fd, request, arg)`` that records and answers like KVM."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.calls: list[Record] = []
        self.fail: dict[int, list[int]] = {}
        #: What GET writes behind addr, per (group, attr): 8 raw bytes.
        self.stored: dict[tuple[int, int], bytes] = {}
        self.exit: tuple[int, bytes] = (abi.KVM_EXIT_HLT, b"")
        self.opened: list[int] = []

    def new_fd(self) -> int:
        path = self.tmp / f"fd{len(self.opened)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, 4096)
        self.opened.append(fd)
        return fd

    def requests(self) -> list[int]:
        return [c.request for c in self.calls]

    def __call__(self, fd: int, request: int, arg: Any) -> int:
        payload = arg if isinstance(arg, int) else bytes(arg)
        record = Record(fd, request, payload)
        addr = 0
        if request in ATTR_REQUESTS:
            assert isinstance(payload, bytes) and len(payload) == 24
            addr = int.from_bytes(payload[16:], sys.byteorder)
            if request == SET_ATTR and addr not in (0, UNMAPPED):
                record.value = ctypes.string_at(addr, 8)
        self.calls.append(record)
        pending = self.fail.get(request)
        if pending:
            code = pending.pop(0)
            raise OSError(code, os.strerror(code))
        if request in (CREATE_VM, CREATE_VCPU):
            return self.new_fd()
        if request == CREATE_DEVICE:
            assert isinstance(payload, bytes) and len(payload) == 12
            arg[4:8] = u32(self.new_fd())
        if request == GET_VCPU_MMAP_SIZE:
            return 4096
        if request == ARM_PREFERRED_TARGET:
            arg[:] = vcpu_init(TARGET, [0] * 7)
        if request in (GET_ATTR, SET_ATTR) and addr == UNMAPPED:
            raise OSError(errno.EFAULT, os.strerror(errno.EFAULT))
        if request == GET_ATTR:
            group = int.from_bytes(payload[4:8], sys.byteorder)
            attr = int.from_bytes(payload[8:16], sys.byteorder)
            ctypes.memmove(addr, self.stored[group, attr], 8)
        if request == RUN:
            reason, data = self.exit
            os.pwrite(fd, u32(reason), 8)
            os.pwrite(fd, data, 32)
        return 0


@pytest.fixture
def rec(tmp_path: Path) -> Recorder:
    return Recorder(tmp_path)


@pytest.fixture
def arm(rec: Recorder, tmp_path: Path) -> Iterator[Kvm]:
    (tmp_path / "kvm").touch()
    with Kvm(str(tmp_path / "kvm"), ioctl=rec, arch="aarch64") as kvm:
        yield kvm


@pytest.fixture
def vcpu(arm: Kvm, rec: Recorder) -> Vcpu:
    vcpu = arm.create_vm().create_vcpu(0)
    rec.calls.clear()
    return vcpu


@pytest.fixture
def feature_bit() -> Iterator[None]:
    saved = abi.ASSUMED.spe_feature_bit
    yield
    abi.set_assumed(spe_feature_bit=saved)


# -- VCPU creation on arm64 ---------------------------------------------------------------


def test_arm64_vcpu_creation_sequence_and_bytes(arm: Kvm, rec: Recorder, feature_bit: None) -> None:
    abi.set_assumed(spe_feature_bit=8)
    vm = arm.create_vm()
    vcpu = vm.create_vcpu(3)
    create_vm, create_vcpu, preferred, init = rec.calls
    assert (create_vm.fd, create_vm.request, create_vm.arg) == (arm.fd, CREATE_VM, 0)
    assert (create_vcpu.fd, create_vcpu.request, create_vcpu.arg) == (vm.fd, CREATE_VCPU, 3)
    assert (preferred.fd, preferred.request) == (vm.fd, ARM_PREFERRED_TARGET)
    assert (init.fd, init.request) == (vcpu.fd, ARM_VCPU_INIT)
    assert init.arg == vcpu_init(TARGET, [1 << 8, 0, 0, 0, 0, 0, 0])
    assert vcpu.target == TARGET and vcpu.features[0] == 1 << 8


@pytest.mark.parametrize("bit", [0, 31, 32, 40, 223])
def test_spe_feature_bit_lands_in_the_right_word(
    arm: Kvm, rec: Recorder, feature_bit: None, bit: int
) -> None:
    abi.set_assumed(spe_feature_bit=bit)
    arm.create_vm().create_vcpu()
    features = [0] * 7
    features[bit // 32] = 1 << (bit % 32)
    assert rec.calls[-1].arg == vcpu_init(TARGET, features)


def test_feature_bit_beyond_features_array_is_refused(arm: Kvm, rec: Recorder, feature_bit: None) -> None:
    abi.set_assumed(spe_feature_bit=224)
    vm = arm.create_vm()
    with pytest.raises(ValueError, match="features"):
        vm.create_vcpu()
    assert vm.vcpus == [] and ARM_VCPU_INIT not in rec.requests()


def test_vcpu_without_spe_sends_no_feature(arm: Kvm, rec: Recorder) -> None:
    arm.create_vm().create_vcpu(0, spe=False)
    assert rec.calls[-1].request == ARM_VCPU_INIT
    assert rec.calls[-1].arg == vcpu_init(TARGET, [0] * 7)


def test_refused_init_names_the_assumed_bit_and_closes_the_vcpu(arm: Kvm, rec: Recorder) -> None:
    vm = arm.create_vm()
    rec.fail[ARM_VCPU_INIT] = [errno.EINVAL]
    with pytest.raises(KvmError) as info:
        vm.create_vcpu(0)
    assert info.value.errno == errno.EINVAL and info.value.ioctl == "KVM_ARM_VCPU_INIT"
    assert "KVMSPE_SPE_FEATURE_BIT" in str(info.value)
    assert vm.vcpus == []
    with pytest.raises(OSError):
        os.fstat(rec.opened[-1])


def test_x86_has_no_init_step(rec: Recorder, tmp_path: Path) -> None:
    (tmp_path / "kvm").touch()
    with Kvm(str(tmp_path / "kvm"), ioctl=rec, arch="x86_64") as kvm:
        kvm.create_vm().create_vcpu()
    assert rec.requests() == [CREATE_VM, CREATE_VCPU]


def test_vcpu_ids_default_to_the_lowest_free(arm: Kvm, rec: Recorder) -> None:
    vm = arm.create_vm()
    a, b = vm.create_vcpu(), vm.create_vcpu()
    a.close()
    vm.create_vcpu()
    assert [c.arg for c in rec.calls if c.request == CREATE_VCPU] == [0, 1, 0]
    assert b.index == 1


# -- SET / GET / HAS on the SPE group ----------------------------------------------------------


@pytest.mark.parametrize(
    ("attr", "value", "width"),
    [(IRQ, 27, 4), (IRQ, -1, 4), (SPU, 11, 4), (MAX, 0x1_0000_0040_0000, 8), (MAX, 4096, 8)],
)
def test_set_bytes(vcpu: Vcpu, rec: Recorder, attr: int, value: int, width: int) -> None:
    vcpu.set_device_attr(SPE, attr, value)
    (call,) = rec.calls
    assert (call.fd, call.request) == (vcpu.fd, SET_ATTR)
    assert call.arg == device_attr(SPE, attr, vcpu.value_addr)
    assert call.value is not None
    assert call.value[:width] == value.to_bytes(width, sys.byteorder, signed=value < 0)


@pytest.mark.parametrize(
    ("attr", "raw", "expected"),
    [
        (IRQ, u32(27) + b"\xaa" * 4, 27),
        (IRQ, u32(-5) + b"\xaa" * 4, -5),
        (SPU, u32(11) + b"\xff" * 4, 11),
        (MAX, u64(0x1234_5678_0000_1000), 0x1234_5678_0000_1000),
    ],
)
def test_get_reads_the_right_width_behind_addr(
    vcpu: Vcpu, rec: Recorder, attr: int, raw: bytes, expected: int
) -> None:
    rec.stored[SPE, attr] = raw
    assert vcpu.get_device_attr(SPE, attr) == expected
    (call,) = rec.calls
    assert (call.request, call.arg) == (GET_ATTR, device_attr(SPE, attr, vcpu.value_addr))


@pytest.mark.parametrize("attr", [IRQ, SPU, MAX])
def test_has_bytes(vcpu: Vcpu, rec: Recorder, attr: int) -> None:
    assert vcpu.has_device_attr(SPE, attr) is True
    (call,) = rec.calls
    assert (call.fd, call.request, call.arg[:16]) == (  # type: ignore[index]
        vcpu.fd,
        HAS_ATTR,
        device_attr(SPE, attr, 0)[:16],
    )


def test_the_value_buffer_never_moves(vcpu: Vcpu, rec: Recorder) -> None:
    rec.stored[SPE, MAX] = u64(8192)
    vcpu.set_device_attr(SPE, IRQ, 20)
    vcpu.get_device_attr(SPE, MAX)
    vcpu.set_device_attr(SPE, MAX, 1 << 21)
    addrs = {int.from_bytes(c.arg[16:], sys.byteorder) for c in rec.calls}  # type: ignore[index]
    assert addrs == {vcpu.value_addr}


def test_bad_address_passes_the_unmapped_pointer(vcpu: Vcpu, rec: Recorder) -> None:
    for call in (
        lambda: vcpu.set_device_attr(SPE, MAX, abi.BAD_ADDRESS),
        lambda: vcpu.get_device_attr(SPE, MAX, abi.BAD_ADDRESS),
    ):
        with pytest.raises(KvmError) as info:
            call()
        assert info.value.errno == errno.EFAULT
    assert [c.arg for c in rec.calls] == [device_attr(SPE, MAX, UNMAPPED)] * 2
    # The VCPU's own struct still points at its value buffer afterwards.
    vcpu.set_device_attr(SPE, MAX, 4096)
    assert rec.calls[-1].arg == device_attr(SPE, MAX, vcpu.value_addr)


def test_value_width_is_overridable(vcpu: Vcpu, rec: Recorder) -> None:
    vcpu.set_value_struct(SPE, SPU, abi.U64)
    vcpu.set_device_attr(SPE, SPU, 1 << 40)
    assert rec.calls[-1].value == u64(1 << 40)


def test_other_groups_default_to_u64(vcpu: Vcpu, rec: Recorder) -> None:
    vcpu.set_device_attr(abi.KVM_ARM_VCPU_PVTIME_CTRL, 0, 0x8000_0000_0000_0000)
    assert rec.calls[-1].value == u64(0x8000_0000_0000_0000)


@pytest.mark.parametrize(("attr", "value"), [(IRQ, 1 << 31), (SPU, -(1 << 31) - 1), (MAX, -1), (MAX, True)])
def test_values_that_do_not_fit_never_reach_the_kernel(
    vcpu: Vcpu, rec: Recorder, attr: int, value: int
) -> None:
    with pytest.raises(ValueError):
        vcpu.set_device_attr(SPE, attr, value)
    assert rec.calls == []


# -- EINTR and errnos ------------------------------------------------------------------------------


@pytest.mark.parametrize("request_", [SET_ATTR, GET_ATTR, HAS_ATTR])
def test_eintr_is_retried(vcpu: Vcpu, rec: Recorder, request_: int) -> None:
    rec.stored[SPE, MAX] = u64(4096)
    rec.fail[request_] = [errno.EINTR, errno.EINTR]
    if request_ == SET_ATTR:
        vcpu.set_device_attr(SPE, MAX, 4096)
    elif request_ == GET_ATTR:
        assert vcpu.get_device_attr(SPE, MAX) == 4096
    else:
        assert vcpu.has_device_attr(SPE, MAX) is True
    assert rec.requests() == [request_] * 3


def test_eintr_is_retried_on_run_and_creation(arm: Kvm, rec: Recorder) -> None:
    rec.fail[CREATE_VM] = [errno.EINTR]
    rec.fail[RUN] = [errno.EINTR, errno.EINTR]
    vcpu = arm.create_vm().create_vcpu()
    assert vcpu.run().reason == abi.KVM_EXIT_HLT
    assert rec.requests().count(CREATE_VM) == 2 and rec.requests().count(RUN) == 3


@pytest.mark.parametrize(
    "code",
    [errno.EBUSY, errno.EINVAL, errno.ENODEV, errno.EDOM, errno.ERANGE, errno.ENOMEM, errno.EFAULT],
)
def test_set_errno_is_kept_with_its_explanation(vcpu: Vcpu, rec: Recorder, code: int) -> None:
    rec.fail[SET_ATTR] = [code]
    with pytest.raises(KvmError) as info:
        vcpu.set_device_attr(SPE, MAX, 0x401000)
    exc = info.value
    assert exc.errno == code
    assert exc.strerror == abi.explain("set", SPE, MAX, code)
    assert (exc.ioctl, exc.group, exc.attr) == ("KVM_SET_DEVICE_ATTR", SPE, MAX)
    assert isinstance(exc, OSError)


def test_get_errno_is_kept(vcpu: Vcpu, rec: Recorder) -> None:
    rec.fail[GET_ATTR] = [errno.EINVAL]
    with pytest.raises(KvmError) as info:
        vcpu.get_device_attr(SPE, MAX)
    assert info.value.errno == errno.EINVAL
    assert str(info.value) == f"EINVAL: {abi.explain('get', SPE, MAX, errno.EINVAL)}"


def test_has_enxio_is_false_and_other_errnos_raise(vcpu: Vcpu, rec: Recorder) -> None:
    rec.fail[HAS_ATTR] = [errno.ENXIO, errno.ENODEV]
    assert vcpu.has_device_attr(SPE, MAX) is False
    with pytest.raises(KvmError) as info:
        vcpu.has_device_attr(SPE, MAX)
    assert info.value.errno == errno.ENODEV


def test_enxio_where_kvm_knows_the_attribute_keeps_its_own_meaning(vcpu: Vcpu, rec: Recorder) -> None:
    rec.fail[GET_ATTR] = [errno.ENXIO]
    with pytest.raises(KvmError) as info:
        vcpu.get_device_attr(SPE, IRQ)
    assert str(info.value) == f"ENXIO: {abi.explain('get', SPE, IRQ, errno.ENXIO)}"
    assert rec.requests() == [GET_ATTR, HAS_ATTR]


def test_enxio_where_kvm_lacks_the_group_says_not_supported(vcpu: Vcpu, rec: Recorder) -> None:
    rec.fail[SET_ATTR] = [errno.ENXIO]
    rec.fail[HAS_ATTR] = [errno.ENXIO]
    with pytest.raises(KvmError) as info:
        vcpu.set_device_attr(SPE, MAX, 4096)
    assert info.value.errno == errno.ENXIO
    assert "SPE not supported on this host" in str(info.value)


def test_enxio_on_a_vcpu_without_the_feature_says_so(arm: Kvm, rec: Recorder) -> None:
    vcpu = arm.create_vm().create_vcpu(spe=False)
    rec.fail[SET_ATTR] = [errno.ENXIO]
    rec.fail[HAS_ATTR] = [errno.ENXIO]
    with pytest.raises(KvmError, match="without the SPE feature"):
        vcpu.set_device_attr(SPE, IRQ, 23)


# -- KVM_RUN ----------------------------------------------------------------------------------------


def test_run_reads_the_exit_reason_from_kvm_run(vcpu: Vcpu, rec: Recorder) -> None:
    rec.exit = (abi.KVM_EXIT_MMIO, b"")
    exit_ = vcpu.run()
    assert exit_ == abi.Exit(abi.KVM_EXIT_MMIO)
    assert [c.request for c in rec.calls] == [GET_VCPU_MMAP_SIZE, RUN]
    assert rec.calls[-1].arg == 0
    vcpu.run()
    assert rec.requests().count(GET_VCPU_MMAP_SIZE) == 1


def test_run_rlimit_exit_carries_the_excess(vcpu: Vcpu, rec: Recorder) -> None:
    rec.exit = (abi.ASSUMED.exit_rlimit, u64(3 * 4096))
    exit_ = vcpu.run()
    assert exit_.is_rlimit and exit_.rlimit_excess == 3 * 4096


def test_run_errno_is_explained_for_spe(vcpu: Vcpu, rec: Recorder) -> None:
    rec.fail[RUN] = [errno.EINVAL]
    with pytest.raises(KvmError) as info:
        vcpu.run()
    assert info.value.errno == errno.EINVAL and info.value.ioctl == "KVM_RUN"
    assert info.value.strerror == abi.RUN_ERRNOS[errno.EINVAL]


# -- /dev/kvm calls and closing ------------------------------------------------------------------------


def test_check_extension_passes_the_capability(arm: Kvm, rec: Recorder) -> None:
    arm.check_extension(abi.ASSUMED.cap_arm_spe)
    assert (rec.calls[-1].fd, rec.calls[-1].request, rec.calls[-1].arg) == (
        arm.fd,
        CHECK_EXTENSION,
        abi.ASSUMED.cap_arm_spe,
    )


def test_closing_the_vm_closes_every_fd(arm: Kvm, rec: Recorder) -> None:
    vm = arm.create_vm()
    for _ in range(3):
        vm.create_vcpu().run()
    vm.close()
    for fd in rec.opened:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_alternating_attributes_each_carry_their_own_group_attr_and_width(
    vcpu: Vcpu, rec: Recorder
) -> None:
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
