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
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kvmspe import abi
from kvmspe.errors import KvmError
from kvmspe.kvm import Kvm, RunTimeout, SpeFeatureUnavailable, Vcpu

# Request numbers as the uapi headers give them.
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
    #: For KVM_CREATE_VM / KVM_CREATE_VCPU: the fd answered.
    result: int | None = None


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
        #: A kernel's VCPU features, when set: the bits KVM_ARM_VCPU_INIT
        #: accepts (others answer ``unknown_feature``), and the bit whose VCPUs
        #: have the SPE group (HAS on group 3 answers ENXIO on any other VCPU).
        self.known_bits: set[int] | None = None
        self.unknown_feature = errno.ENOENT
        self.spe_bit: int | None = None
        self.features: dict[int, int] = {}

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
            record.result = self.new_fd()
            return record.result
        if request == CREATE_DEVICE:
            assert isinstance(payload, bytes) and len(payload) == 12
            arg[4:8] = u32(self.new_fd())
        if request == GET_VCPU_MMAP_SIZE:
            return 4096
        if request == ARM_PREFERRED_TARGET:
            arg[:] = vcpu_init(TARGET, [0] * 7)
        if request == ARM_VCPU_INIT and self.known_bits is not None:
            assert isinstance(payload, bytes)
            words = [int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(4, 32, 4)]
            bits = {32 * w + b for w, word in enumerate(words) for b in range(32) if word >> b & 1}
            if not bits <= self.known_bits:
                raise OSError(self.unknown_feature, os.strerror(self.unknown_feature))
            self.features[fd] = words[0]
        if request == HAS_ATTR and self.known_bits is not None:
            assert isinstance(payload, bytes)
            group = int.from_bytes(payload[4:8], sys.byteorder)
            has_spe = self.spe_bit is not None and self.features.get(fd, 0) >> self.spe_bit & 1
            if group == SPE and not has_spe:
                raise OSError(errno.ENXIO, os.strerror(errno.ENXIO))
        if request in (GET_ATTR, SET_ATTR) and addr == UNMAPPED:
            raise OSError(errno.EFAULT, os.strerror(errno.EFAULT))
        if request == GET_ATTR:
            assert isinstance(payload, bytes)
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


#: The SPE feature bit the ``arm`` fixture's backend is given (not an upstream bit).
SPE_BIT = 9


def make_kvm(rec: Recorder, tmp_path: Path, **kw: Any) -> Kvm:
    (tmp_path / "kvm").touch()
    return Kvm(str(tmp_path / "kvm"), **{"ioctl": rec, "arch": "aarch64", **kw})


@pytest.fixture
def arm(rec: Recorder, tmp_path: Path) -> Iterator[Kvm]:
    with make_kvm(rec, tmp_path, spe_feature_bit=SPE_BIT) as kvm:
        yield kvm


@pytest.fixture
def vcpu(arm: Kvm, rec: Recorder) -> Vcpu:
    vcpu = arm.create_vm().create_vcpu(0)
    rec.calls.clear()
    return vcpu


@pytest.fixture
def feature_bit() -> Iterator[None]:
    yield
    abi.set_assumed(spe_feature_bit=None)


# -- VCPU creation on arm64 ---------------------------------------------------------------


def test_arm64_vcpu_creation_sequence_and_bytes(arm: Kvm, rec: Recorder) -> None:
    vm = arm.create_vm()
    vcpu = vm.create_vcpu(3)
    create_vm, create_vcpu, preferred, init = rec.calls
    assert (create_vm.fd, create_vm.request, create_vm.arg) == (arm.fd, CREATE_VM, 0)
    assert (create_vcpu.fd, create_vcpu.request, create_vcpu.arg) == (vm.fd, CREATE_VCPU, 3)
    assert (preferred.fd, preferred.request) == (vm.fd, ARM_PREFERRED_TARGET)
    assert (init.fd, init.request) == (vcpu.fd, ARM_VCPU_INIT)
    assert init.arg == vcpu_init(TARGET, [1 << SPE_BIT, 0, 0, 0, 0, 0, 0])
    assert vcpu.target == TARGET and vcpu.features[0] == 1 << SPE_BIT


@pytest.mark.parametrize("bit", [9, 31, 32, 40, 223])
def test_spe_feature_bit_lands_in_the_right_word(
    rec: Recorder, tmp_path: Path, feature_bit: None, bit: int
) -> None:
    abi.set_assumed(spe_feature_bit=bit)
    with make_kvm(rec, tmp_path) as kvm:
        kvm.create_vm().create_vcpu()
        assert kvm.spe_feature().source == "set_assumed"
    features = [0] * 7
    features[bit // 32] = 1 << (bit % 32)
    assert rec.calls[-1].arg == vcpu_init(TARGET, features)
    assert rec.requests().count(CREATE_VM) == 1  # given, so not probed


@pytest.mark.parametrize("bit", [-1, 224, 1 << 40, 0, 7, 8, True, "9"])
def test_a_given_feature_bit_beyond_the_array_or_taken_upstream_is_refused(
    rec: Recorder, tmp_path: Path, feature_bit: None, bit: Any
) -> None:
    with pytest.raises(abi.AssumedNumberError):
        make_kvm(rec, tmp_path, spe_feature_bit=bit)
    with pytest.raises(abi.AssumedNumberError):
        abi.set_assumed(spe_feature_bit=bit)
    assert abi.ASSUMED.spe_feature_bit is None and rec.calls == []


def test_vcpu_without_spe_sends_no_feature(arm: Kvm, rec: Recorder) -> None:
    arm.create_vm().create_vcpu(0, spe=False)
    assert rec.calls[-1].request == ARM_VCPU_INIT
    assert rec.calls[-1].arg == vcpu_init(TARGET, [0] * 7)


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOENT, ["does not know", "ENOENT", "bit 9 (asked for as the SPE feature)"]),
        (errno.EINVAL, ["unknown feature bit (EINVAL on newer kernels)", "differ from the VM's other VCPUs"]),
    ],
)
def test_refused_init_explains_an_unknown_feature_bit_and_closes_the_vcpu(
    arm: Kvm, rec: Recorder, code: int, words: list[str]
) -> None:
    vm = arm.create_vm()
    rec.fail[ARM_VCPU_INIT] = [code]
    with pytest.raises(KvmError) as info:
        vm.create_vcpu(0)
    assert info.value.errno == code and info.value.ioctl == "KVM_ARM_VCPU_INIT"
    for word in words:
        assert word in str(info.value)
    assert vm.vcpus == []
    with pytest.raises(OSError):
        os.fstat(rec.opened[-1])


def test_x86_has_no_init_step(rec: Recorder, tmp_path: Path) -> None:
    (tmp_path / "kvm").touch()
    with Kvm(str(tmp_path / "kvm"), ioctl=rec, arch="x86_64") as kvm:
        kvm.create_vm().create_vcpu()
    assert rec.requests() == [CREATE_VM, CREATE_VCPU]


def test_vcpu_ids_are_never_reused_within_a_vm(arm: Kvm, rec: Recorder) -> None:
    vm = arm.create_vm()
    a, b = vm.create_vcpu(), vm.create_vcpu()
    a.close()
    c = vm.create_vcpu()
    assert [r.arg for r in rec.calls if r.request == CREATE_VCPU] == [0, 1, 2]
    assert (b.index, c.index) == (1, 2)
    # Another VM starts from 0 again: ids are per VM.
    assert arm.create_vm().create_vcpu().index == 0


def test_a_vcpu_id_used_before_is_explained_when_the_kernel_says_eexist(arm: Kvm, rec: Recorder) -> None:
    vm = arm.create_vm()
    vm.create_vcpu(0).close()
    rec.fail[CREATE_VCPU] = [errno.EEXIST]
    with pytest.raises(KvmError) as info:
        vm.create_vcpu(0)
    assert info.value.errno == errno.EEXIST and "KVM never frees a VCPU id" in str(info.value)


def test_a_failed_init_uses_up_the_id_and_the_next_vcpu_takes_a_new_one(arm: Kvm, rec: Recorder) -> None:
    vm = arm.create_vm()
    rec.fail[ARM_VCPU_INIT] = [errno.ENOENT]
    with pytest.raises(KvmError):
        vm.create_vcpu(spe=True)
    vm.create_vcpu(spe=False)
    assert [r.arg for r in rec.calls if r.request == CREATE_VCPU] == [0, 1]


# -- probing the SPE feature bit ---------------------------------------------------------------------


def _probe(rec: Recorder, tmp_path: Path, known: set[int], unknown: int, spe_bit: int | None) -> Kvm:
    rec.known_bits, rec.unknown_feature, rec.spe_bit = known, unknown, spe_bit
    return make_kvm(rec, tmp_path)


def test_probing_finds_the_bit_that_makes_the_spe_group_answer(rec: Recorder, tmp_path: Path) -> None:
    # A kernel with the series: SPE at bit 12 (it knows 0..8 and 12).
    with _probe(rec, tmp_path, set(range(9)) | {12}, errno.EINVAL, 12) as kvm:
        feature = kvm.spe_feature()
        assert (feature.bit, feature.source) == (12, "probed")
        assert feature.tried == (
            (9, "KVM_ARM_VCPU_INIT EINVAL"),
            (10, "KVM_ARM_VCPU_INIT EINVAL"),
            (11, "KVM_ARM_VCPU_INIT EINVAL"),
        )
        # Each candidate on a throwaway VM of its own, VCPU 0, only that bit.
        inits = [c for c in rec.calls if c.request == ARM_VCPU_INIT]
        assert [c.arg for c in inits] == [vcpu_init(TARGET, [1 << b] + [0] * 6) for b in (9, 10, 11, 12)]
        assert rec.requests().count(CREATE_VM) == 4
        assert [c.arg for c in rec.calls if c.request == CREATE_VCPU] == [0, 0, 0, 0]
        has = rec.calls[-1]
        assert has.request == HAS_ATTR and isinstance(has.arg, bytes)
        assert has.arg[:16] == device_attr(SPE, MAX, 0)[:16]
        # Probed once: the VCPUs of a VM then get that bit.
        rec.calls.clear()
        kvm.create_vm().create_vcpu()
        assert rec.requests() == [CREATE_VM, CREATE_VCPU, ARM_PREFERRED_TARGET, ARM_VCPU_INIT]
        assert rec.calls[-1].arg == vcpu_init(TARGET, [1 << 12, 0, 0, 0, 0, 0, 0])


def test_a_kernel_that_accepts_an_unrelated_bit_has_no_spe_feature(rec: Recorder, tmp_path: Path) -> None:
    # Linux 7.2 as measured: knows 0..8, accepts bit 8 with no SPE anywhere; 9 on: EINVAL here.
    # Make it accept bit 9 as well (a contested bit, e.g. SME), whose VCPU has no SPE group.
    with _probe(rec, tmp_path, set(range(10)), errno.EINVAL, None) as kvm:
        feature = kvm.spe_feature()
        assert feature.bit is None and feature.source == "none"
        assert feature.tried[0] == (9, "accepted by KVM_ARM_VCPU_INIT, but the SPE group answers ENXIO")
        assert feature.reason.startswith("this kernel has no SPE VCPU feature")
        assert feature.answers == (
            "bit 9: accepted by KVM_ARM_VCPU_INIT, but the SPE group answers ENXIO;"
            " bits 10..31: refused by KVM_ARM_VCPU_INIT (unknown or not available here)"
        )
        # Bits 0..8 are upstream features: never tried.
        bits = [
            int.from_bytes(c.arg[4:8], sys.byteorder).bit_length() - 1  # type: ignore[index]
            for c in rec.calls
            if c.request == ARM_VCPU_INIT
        ]
        assert bits == list(range(9, 32))
        vms = rec.requests().count(CREATE_VM)
        # No guessed bit is ever set: an SPE VCPU is refused before any ioctl.
        vm = kvm.create_vm()
        rec.calls.clear()
        with pytest.raises(SpeFeatureUnavailable) as info:
            vm.create_vcpu(spe=True)
        assert rec.calls == [] and info.value.errno == errno.EOPNOTSUPP
        assert "this kernel has no SPE VCPU feature" in str(info.value)
        assert f"(probed: {feature.answers})" in str(info.value)
        assert vms == 23
        # A VCPU without SPE still works, with id 0 (nothing was used up).
        assert vm.create_vcpu(spe=False).index == 0


def test_a_kernel_that_answers_enoent_to_unknown_bits_has_no_spe_feature(
    rec: Recorder, tmp_path: Path
) -> None:
    # Linux 6.1 as measured: an unknown feature bit answers ENOENT.
    with _probe(rec, tmp_path, set(range(7)), errno.ENOENT, None) as kvm:
        feature = kvm.spe_feature()
        assert feature.bit is None
        assert feature.reason.startswith("this kernel has no SPE VCPU feature")
        assert "ENOENT" not in feature.reason  # the kernel's answers are kept apart
        assert feature.answers == "bits 9..31: unknown to this kernel (KVM_ARM_VCPU_INIT refuses them)"
        assert feature.tried[0] == (9, "KVM_ARM_VCPU_INIT ENOENT")
        assert rec.requests().count(CREATE_VM) == 23 and HAS_ATTR not in rec.requests()
    # Every probe VM and VCPU was closed.
    for fd in rec.opened:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_probing_is_not_done_off_arm64(rec: Recorder, tmp_path: Path) -> None:
    with make_kvm(rec, tmp_path, arch="x86_64") as kvm:
        feature = kvm.spe_feature()
    assert feature.bit is None and "arm64" in feature.reason and rec.calls == []


def test_a_given_bit_is_used_without_probing(rec: Recorder, tmp_path: Path) -> None:
    with make_kvm(rec, tmp_path, spe_feature_bit=20) as kvm:
        assert kvm.spe_feature().source == "argument"
        kvm.create_vm().create_vcpu()
    assert rec.requests() == [CREATE_VM, CREATE_VCPU, ARM_PREFERRED_TARGET, ARM_VCPU_INIT]
    assert rec.calls[-1].arg == vcpu_init(TARGET, [1 << 20, 0, 0, 0, 0, 0, 0])


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
    assert isinstance(call.arg, bytes)
    assert (call.fd, call.request, call.arg[:16]) == (vcpu.fd, HAS_ATTR, device_attr(SPE, attr, 0)[:16])


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


def test_run_einval_on_an_spe_vcpu_names_spe_and_the_other_causes(vcpu: Vcpu, rec: Recorder) -> None:
    rec.fail[RUN] = [errno.EINVAL]
    with pytest.raises(KvmError) as info:
        vcpu.run()
    assert info.value.errno == errno.EINVAL and info.value.ioctl == "KVM_RUN"
    text = info.value.strerror
    assert text is not None and text.startswith(abi.RUN_ERRNOS[errno.EINVAL])
    assert "not because of SPE" in text and "KVM_ARM_VCPU_PMU_V3_INIT" in text
    assert rec.requests()[-1] == HAS_ATTR  # asked, not guessed


def test_run_einval_without_spe_does_not_blame_spe(arm: Kvm, rec: Recorder) -> None:
    vcpu = arm.create_vm().create_vcpu(spe=False)
    rec.fail[RUN] = [errno.EINVAL]
    rec.fail[HAS_ATTR] = [errno.ENXIO]
    with pytest.raises(KvmError) as info:
        vcpu.run()
    text = info.value.strerror
    assert text is not None
    assert "not because of SPE" in text and "PMU" in text and "vGIC" in text
    assert "SPE is not fully configured" not in text


class _Blocking:
    """An ioctl whose KVM_RUN blocks until a signal interrupts it, like arm64
    KVM_RUN of a VCPU without guest code; everything else goes to ``rec``."""

    def __init__(self, rec: Recorder, returns_after: int | None = None):
        self.rec = rec
        self.runs = 0
        self.returns_after = returns_after

    def __call__(self, fd: int, request: int, arg: Any) -> int:
        if request != RUN:
            return self.rec(fd, request, arg)
        self.runs += 1
        if self.returns_after is not None and self.runs > self.returns_after:
            return self.rec(fd, request, arg)
        signal.pause()  # returns once a signal was delivered to this thread
        raise InterruptedError(errno.EINTR, os.strerror(errno.EINTR))


def _blocking_vcpu(rec: Recorder, tmp_path: Path, returns_after: int | None = None) -> tuple[Vcpu, _Blocking]:
    blocking = _Blocking(rec, returns_after)
    kvm = make_kvm(rec, tmp_path, spe_feature_bit=SPE_BIT, ioctl=blocking)
    return kvm.create_vm().create_vcpu(), blocking


def test_a_kvm_run_that_never_returns_is_ended_and_reported_as_a_timeout(
    rec: Recorder, tmp_path: Path
) -> None:
    vcpu, _ = _blocking_vcpu(rec, tmp_path)
    seen: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda s, f: seen.append(s))
    try:
        start = time.monotonic()
        with pytest.raises(RunTimeout) as info:
            vcpu.run(timeout=0.2)
        took = time.monotonic() - start
        assert 0.2 <= took < 2, took
        assert info.value.errno == errno.ETIMEDOUT and info.value.ioctl == "KVM_RUN"
        assert "did not return within 0.2 s" in str(info.value) and isinstance(info.value, KvmError)
        # The previous handler is back, and no timer is left running.
        assert signal.getsignal(signal.SIGALRM) is not None
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        time.sleep(0.1)
        assert seen == []
    finally:
        signal.signal(signal.SIGALRM, previous)
    vcpu.vm.kvm.close()


def test_a_previous_timer_is_restored_after_a_bounded_run(rec: Recorder, tmp_path: Path) -> None:
    vcpu, _ = _blocking_vcpu(rec, tmp_path, returns_after=0)
    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda s, f: fired.append(s))
    signal.setitimer(signal.ITIMER_REAL, 30)
    try:
        assert vcpu.run(timeout=5).reason == abi.KVM_EXIT_HLT
        delay, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25 < delay <= 30
        assert fired == []
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    vcpu.vm.kvm.close()


def test_a_run_outside_the_main_thread_is_bounded_too(rec: Recorder, tmp_path: Path) -> None:
    vcpu, _ = _blocking_vcpu(rec, tmp_path)
    previous = signal.signal(signal.SIGALRM, lambda s, f: None)
    out: list[BaseException] = []

    def work() -> None:
        try:
            vcpu.run(timeout=0.2)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    try:
        worker = threading.Thread(target=work)
        worker.start()
        worker.join(10)
        assert not worker.is_alive()
        assert len(out) == 1 and isinstance(out[0], RunTimeout)
    finally:
        signal.signal(signal.SIGALRM, previous)
    vcpu.vm.kvm.close()


def test_outside_the_main_thread_without_a_handler_run_refuses_rather_than_hang(
    rec: Recorder, tmp_path: Path
) -> None:
    vcpu, blocking = _blocking_vcpu(rec, tmp_path)
    previous = signal.signal(signal.SIGALRM, signal.SIG_DFL)
    out: list[BaseException] = []

    def work() -> None:
        try:
            vcpu.run(timeout=0.2)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    try:
        worker = threading.Thread(target=work)
        worker.start()
        worker.join(10)
        assert isinstance(out[0], KvmError) and "main thread" in str(out[0])
        assert blocking.runs == 0
    finally:
        signal.signal(signal.SIGALRM, previous)
    vcpu.vm.kvm.close()


@pytest.mark.parametrize("timeout", [0, -1, 1e9, True, "1", float("nan")])
def test_a_bad_timeout_is_refused(vcpu: Vcpu, rec: Recorder, timeout: Any) -> None:
    with pytest.raises(ValueError, match="timeout"):
        vcpu.run(timeout=timeout)
    assert RUN not in rec.requests()


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


# -- KVM_ARM_VCPU_SPE_INIT and configure_spe, byte for byte ----------------------------------------

INIT = 3  # KVM_ARM_VCPU_SPE_INIT, v6 patch 15 (inferred: the number after patch 14's 2)


def test_set_without_a_value_passes_addr_zero(vcpu: Vcpu, rec: Recorder) -> None:
    vcpu.set_device_attr(SPE, MAX, 1 << 20)  # leaves a value behind addr
    vcpu.set_device_attr(SPE, INIT, None)
    last = rec.calls[-1]
    assert (last.fd, last.request, last.value) == (vcpu.fd, SET_ATTR, None)
    assert last.arg == device_attr(SPE, INIT, 0)
    # The PMU's INIT the same way; and the next valued call carries its pointer again.
    vcpu.set_device_attr(0, 1, None)
    assert rec.calls[-1].arg == device_attr(0, 1, 0)
    vcpu.set_device_attr(SPE, MAX, 2 << 20)
    assert rec.calls[-1].arg == device_attr(SPE, MAX, vcpu.value_addr) and rec.calls[-1].value == u64(2 << 20)


def test_configure_spe_issues_has_then_set_for_each_attribute_and_init_last(
    vcpu: Vcpu, rec: Recorder
) -> None:
    from kvmspe import vmm

    steps = vmm.configure_spe(vcpu, irq=23, spu=10, max_buffer_size=4 << 20)
    assert [s.name for s in steps] == [
        "has KVM_ARM_VCPU_SPE_IRQ",
        "set KVM_ARM_VCPU_SPE_IRQ=23",
        "has KVM_ARM_VCPU_SPE_SPU",
        "set KVM_ARM_VCPU_SPE_SPU=10",
        "has KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE",
        "set KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE=0x400000",
        "has KVM_ARM_VCPU_SPE_INIT",
        "set KVM_ARM_VCPU_SPE_INIT",
    ]
    addr = vcpu.value_addr
    assert [(c.fd, c.request, c.arg, c.value) for c in rec.calls] == [
        (vcpu.fd, HAS_ATTR, device_attr(SPE, IRQ, addr), None),
        (vcpu.fd, SET_ATTR, device_attr(SPE, IRQ, addr), u32(23) + u32(0)),
        (vcpu.fd, HAS_ATTR, device_attr(SPE, SPU, addr), None),
        (vcpu.fd, SET_ATTR, device_attr(SPE, SPU, addr), u32(10) + u32(0)),
        (vcpu.fd, HAS_ATTR, device_attr(SPE, MAX, addr), None),
        (vcpu.fd, SET_ATTR, device_attr(SPE, MAX, addr), u64(4 << 20)),
        (vcpu.fd, HAS_ATTR, device_attr(SPE, INIT, addr), None),
        (vcpu.fd, SET_ATTR, device_attr(SPE, INIT, 0), None),
    ]


def test_configure_spe_stops_at_a_refused_init_and_names_it(vcpu: Vcpu, rec: Recorder) -> None:
    from kvmspe import vmm

    sets = 0

    def failing(fd: int, request: int, arg: Any) -> int:
        nonlocal sets
        if request == SET_ATTR:
            sets += 1
            if sets == 4:
                raise OSError(errno.ENXIO, os.strerror(errno.ENXIO))
        return rec(fd, request, arg)

    vcpu._ioctl = failing
    with pytest.raises(vmm.SpeConfigError) as info:
        vmm.configure_spe(vcpu, irq=23, spu=10, max_buffer_size=4 << 20)
    assert info.value.step == vmm.ConfigStep("set", INIT) and info.value.errno == errno.ENXIO
    assert str(info.value).startswith("cannot set KVM_ARM_VCPU_SPE_INIT: ENXIO")


# -- discovery and the conformance probe against the recorded kernels ------------------------------


def _host_info() -> Any:
    from kvmspe.host.discovery import HostInfo

    return HostInfo("aarch64", "aarch64", "test", 4096, "/dev/kvm", kvm_usable=True)


def _vcpu_ids_per_vm(rec: Recorder) -> dict[int, list[int]]:
    """VCPU ids asked for, per VM in creation order (fd numbers are reused after close)."""
    ids: dict[int, list[int]] = {}
    vm_fd: dict[int, int] = {}  # fd -> index of the VM currently holding it
    for n, c in enumerate(rec.calls):
        if c.request == CREATE_VM:
            assert c.result is not None
            vm_fd[c.result] = n
        elif c.request == CREATE_VCPU:
            assert isinstance(c.arg, int)
            ids.setdefault(vm_fd[c.fd], []).append(c.arg)
    return ids


@pytest.mark.parametrize(
    ("known", "unknown", "spe_bit", "supported", "words"),
    [
        (set(range(9)) | {12}, errno.EINVAL, 12, True, ["bit 12, probed"]),
        (
            set(range(10)),
            errno.EINVAL,
            None,
            False,
            [
                "this kernel has no SPE VCPU feature",
                "bit 9: accepted by KVM_ARM_VCPU_INIT, but the SPE group",
            ],
        ),
        (
            set(range(7)),
            errno.ENOENT,
            None,
            False,
            [
                "this kernel has no SPE VCPU feature",
                "the kernel answered: bits 9..31: unknown to this kernel",
            ],
        ),
    ],
    ids=["spe-at-bit-12", "accepts-an-unrelated-bit", "enoent-like-6.1"],
)
def test_discovery_probes_on_throwaway_vms_and_says_why(
    rec: Recorder,
    tmp_path: Path,
    known: set[int],
    unknown: int,
    spe_bit: int | None,
    supported: bool,
    words: list[str],
) -> None:
    from kvmspe.conformance import runner as conformance
    from kvmspe.host import discovery

    info = _host_info()
    with _probe(rec, tmp_path, known, unknown, spe_bit) as kvm:
        discovery._probe_spe_group(kvm, info)
        assert info.spe_supported is supported
        for word in words:
            assert word in f"{info.spe_reason} {info.spe_feature_reason}", info
        # No errno of an unrelated feature bit is shown as if it were SPE's answer.
        shown = f"{info.spe_reason} {info.spe_feature_reason}"
        assert "ENOENT" not in shown and "EINVAL" not in shown
        assert info.spe_feature_bit == spe_bit
        assert info.cap_arm_spe is None
        # Never the same VCPU id twice in one VM (KVM never frees one).
        for ids in _vcpu_ids_per_vm(rec).values():
            assert len(ids) == len(set(ids))
        # The conformance runner's probe agrees, on a VM of its own.
        assert conformance._probe(kvm).spe is supported
    # Every INIT with a feature bit set was a one-candidate probe (bits 9..31), never a guess.
    for c in rec.calls:
        if c.request == ARM_VCPU_INIT and isinstance(c.arg, bytes):
            bits = int.from_bytes(c.arg[4:8], sys.byteorder)
            assert bits == 0 or (bits & (bits - 1) == 0 and bits.bit_length() - 1 in range(9, 32))
            assert c.arg[8:] == bytes(24)


# -- configure --backend kvm on a recorded arm64 kernel with SPE -------------------------------------


def test_configure_gives_the_vm_its_gicv3_before_the_spe_irq_then_inits_spe(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kvmspe.kvm
    from kvmspe import cli

    rec.known_bits, rec.unknown_feature, rec.spe_bit = set(range(9)) | {12}, errno.EINVAL, 12
    monkeypatch.setattr(kvmspe.kvm, "Kvm", lambda *a, **kw: make_kvm(rec, tmp_path))
    code = cli.main(["configure", "--backend", "kvm", "--vcpus", "2", "--spu", "10"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "KVM_ARM_VCPU_INIT with the SPE feature (bit 12)" in out
    assert "KVM_DEV_ARM_VGIC_CTRL_INIT" in out and "KVM_ARM_VCPU_SPE_INIT" in out
    # After the probe (its own VMs), the configured VM: both VCPUs, then the vGIC, then SPE.
    last_vm = max(i for i, c in enumerate(rec.calls) if c.request == CREATE_VM)
    calls = rec.calls[last_vm:]
    names: list[tuple[str | int, ...]] = []
    for c in calls:
        if c.request in (SET_ATTR, HAS_ATTR) and isinstance(c.arg, bytes):
            group = int.from_bytes(c.arg[4:8], sys.byteorder)
            attr = int.from_bytes(c.arg[8:16], sys.byteorder)
            names.append(("set" if c.request == SET_ATTR else "has", group, attr))
        else:
            names.append((c.request,))
    first_irq = names.index(("has", SPE, IRQ))
    vgic = names.index((CREATE_DEVICE,))
    init = names.index(("set", VGIC_GRP_CTRL, VGIC_CTRL_INIT))
    assert [i for i, n in enumerate(names) if n == (CREATE_VCPU,)][-1] < vgic < init < first_irq
    assert names[vgic + 1 : init] == [
        ("set", VGIC_GRP_ADDR, VGIC_V3_ADDR_TYPE_DIST),
        ("set", VGIC_GRP_ADDR, VGIC_V3_ADDR_TYPE_REDIST),
    ]
    per_vcpu = [
        ("has", SPE, IRQ),
        ("set", SPE, IRQ),
        ("has", SPE, SPU),
        ("set", SPE, SPU),
        ("has", SPE, MAX),
        ("set", SPE, MAX),
        ("has", SPE, INIT),
        ("set", SPE, INIT),
    ]
    assert names[first_irq : first_irq + 16] == per_vcpu * 2
    init_sets = [c for c in calls if c.request == SET_ATTR and c.arg == device_attr(SPE, INIT, 0)]
    assert len(init_sets) == 2
    assert names.count((RUN,)) == 2 and names.index((RUN,)) > first_irq + 15


def test_configure_on_a_kernel_without_the_spe_feature_stops_and_never_claims_it(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kvmspe.kvm
    from kvmspe import cli

    # Linux 7.2 as measured: bit 8 accepted with no SPE anywhere; unknown bits ENOENT.
    rec.known_bits, rec.unknown_feature, rec.spe_bit = set(range(9)), errno.ENOENT, None
    monkeypatch.setattr(kvmspe.kvm, "Kvm", lambda *a, **kw: make_kvm(rec, tmp_path))
    code = cli.main(["configure", "--backend", "kvm", "--vcpus", "2"])
    out = capsys.readouterr().out
    assert code == 1
    assert "stopped: SPE is not supported: this kernel has no SPE VCPU feature" in out
    assert "ok   vcpu" not in out and "with the SPE feature (bit" not in out
    # Only probe VCPUs were created (one per throwaway VM), never one with bit 8.
    for c in rec.calls:
        if c.request == ARM_VCPU_INIT:
            assert isinstance(c.arg, bytes) and int.from_bytes(c.arg[4:8], sys.byteorder) != 1 << 8
    assert RUN not in rec.requests()


def test_a_has_error_other_than_enxio_during_probing_does_not_count_the_bit(
    rec: Recorder, tmp_path: Path
) -> None:
    rec.known_bits, rec.unknown_feature, rec.spe_bit = set(range(10)), errno.ENOENT, None
    rec.fail[HAS_ATTR] = [errno.ENODEV]
    with make_kvm(rec, tmp_path) as kvm:
        feature = kvm.spe_feature()
    assert feature.bit is None
    assert feature.tried[0] == (9, "accepted by KVM_ARM_VCPU_INIT, but HAS on the SPE group answers ENODEV")


# -- VCPU threads pinned to their SPU's CPUs, on a recorded arm64 kernel with SPE --------------------
#
# The ioctl layer is fake but the threads and their CPU affinity are this
# machine's: the fake KVM_RUN reads sched_getaffinity(0) of the thread that
# issued it, so the tests see the set KVM_RUN really ran under.


@dataclass
class RunSeen:
    """One KVM_RUN as the fake kernel saw it: which thread, on which CPUs."""

    thread: str
    ident: int
    cpus: frozenset[int]


class AffinityRecorder:
    """The recorded arm64 kernel with SPE (bit 12), noting each KVM_RUN's
    thread and CPU affinity; ``block`` makes KVM_RUN wait for a signal, as an
    arm64 VCPU without guest code does."""

    def __init__(self, rec: Recorder, block: bool = False):
        rec.known_bits, rec.unknown_feature, rec.spe_bit = set(range(9)) | {12}, errno.EINVAL, 12
        self.rec = rec
        self.block = block
        self.runs: list[RunSeen] = []

    def __call__(self, fd: int, request: int, arg: Any) -> int:
        if request == RUN:
            me = threading.current_thread()
            self.runs.append(RunSeen(me.name, threading.get_ident(), frozenset(os.sched_getaffinity(0))))
            if self.block:
                signal.pause()
                raise InterruptedError(errno.EINTR, os.strerror(errno.EINTR))
        return self.rec(fd, request, arg)


def _spe_host(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ioctl: AffinityRecorder,
    cpumask: str | None,
    type_: int = 10,
) -> None:
    """This machine as an arm64 host with one SPE unit, ``arm_spe_0`` of perf type
    ``type_`` whose ``cpumask`` is ``cpumask`` (None: no such file)."""
    import kvmspe.kvm
    from kvmspe.host import discovery

    spe = tmp_path / "sys" / "bus" / "event_source" / "devices" / "arm_spe_0"
    spe.mkdir(parents=True)
    (spe / "type").write_text(f"{type_}\n")
    if cpumask is not None:
        (spe / "cpumask").write_text(f"{cpumask}\n")
    real_discover = discovery.discover
    monkeypatch.setattr(discovery, "discover", lambda **kw: real_discover(sysfs_root=str(tmp_path / "sys")))
    monkeypatch.setattr(kvmspe.kvm, "Kvm", lambda *a, **kw: make_kvm(ioctl.rec, tmp_path, ioctl=ioctl))


def _configure_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    import json

    from kvmspe import cli

    code = cli.main(["configure", "--backend", "kvm", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_each_vcpu_thread_is_pinned_to_its_spus_cpus_when_it_issues_kvm_run(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvmspe import cli

    main_before = frozenset(os.sched_getaffinity(0))
    last = max(main_before)
    ioctl = AffinityRecorder(rec)
    _spe_host(tmp_path, monkeypatch, ioctl, cpumask=str(last))
    handler = signal.getsignal(signal.SIGALRM)

    code, doc = _configure_json(capsys, "--vcpus", "1", "--spu", "10")
    assert code == 0, doc["error"]
    assert doc["spu_cpus"] == [last] and doc["vcpu_cpus"] == [[last]] and doc["vcpu_thread_cpus"] == [[last]]
    # KVM_RUN came from the VCPU's own thread, restricted to the SPU's CPU at that moment.
    assert len(ioctl.runs) == 1
    run = ioctl.runs[0]
    assert run.thread == "kvmspe-vcpu-0" and run.ident != threading.main_thread().ident
    assert run.cpus == {last}
    steps = [(s["step"], s["vcpu"], s["ok"]) for s in doc["steps"]]
    pinned = steps.index((f"VCPU thread pinned to CPUs {last}", 0, True))
    assert steps.index(("VCPU affinity", None, True)) < steps.index(("KVM_CREATE_VM", None, True)) < pinned
    assert pinned < steps.index(("KVM_RUN (first entry)", 0, True))
    # The main thread's affinity and SIGALRM disposition are as they were.
    assert frozenset(os.sched_getaffinity(0)) == main_before
    assert signal.getsignal(signal.SIGALRM) == handler

    code = cli.main(["configure", "--backend", "kvm", "--vcpus", "1", "--spu", "10"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"  ok   VCPU affinity  (SPU 10 is on CPUs {last} (1 CPU)" in out
    assert f"  ok   vcpu 0: VCPU thread pinned to CPUs {last}\n" in out
    assert [r.cpus for r in ioctl.runs] == [{last}, {last}]
    assert frozenset(os.sched_getaffinity(0)) == main_before
    if len(main_before) < 2:
        # Everything above held, but with one usable CPU a thread that was
        # never pinned would have run on {last} too.
        pytest.skip(f"this process may use only CPU {last}: no narrower set to show the thread was pinned")
    assert run.cpus < main_before  # the VCPU thread's set really changed


def test_spu_cpus_the_process_may_not_use_are_reported_as_not_pinned(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The SPU's cpumask names a CPU this process may use and one it may not (no
    # such CPU here, as for a CPU outside the process's cpuset): the kernel
    # pins to the usable one, and the report says so rather than claim both.
    main_before = frozenset(os.sched_getaffinity(0))
    last, absent = max(main_before), 8191
    if (os.cpu_count() or 1) > absent:
        pytest.skip(f"this machine has CPU {absent}: no CPU number is absent here")
    ioctl = AffinityRecorder(rec)
    _spe_host(tmp_path, monkeypatch, ioctl, cpumask=f"{last},{absent}")
    code, doc = _configure_json(capsys, "--vcpus", "1", "--spu", "10")
    assert code == 0, doc["error"]
    assert doc["vcpu_cpus"] == [[last, absent]] and doc["vcpu_thread_cpus"] == [[last]]
    pinned = [s for s in doc["steps"] if s["step"].startswith("VCPU thread pinned")]
    assert [(s["step"], s["vcpu"], s["ok"], s["detail"]) for s in pinned] == [
        (
            f"VCPU thread pinned to CPUs {last}",
            0,
            True,
            f"asked for CPUs {last},{absent}; the OS allows only these",
        )
    ]
    assert [r.cpus for r in ioctl.runs] == [{last}]
    assert frozenset(os.sched_getaffinity(0)) == main_before


def test_vcpu_threads_that_never_return_from_kvm_run_are_bounded_and_joined(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvmspe.host.discovery import format_cpulist

    allowed = frozenset(os.sched_getaffinity(0))
    ioctl = AffinityRecorder(rec, block=True)
    _spe_host(tmp_path, monkeypatch, ioctl, cpumask=format_cpulist(allowed))
    vcpus = min(len(allowed), 2)
    before = threading.active_count()
    handler = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    code, doc = _configure_json(capsys, "--vcpus", str(vcpus), "--spu", "10")
    took = time.monotonic() - start
    assert code == 0, doc["error"]
    runs = [s for s in doc["steps"] if s["step"] == "KVM_RUN (first entry)"]
    assert [s["vcpu"] for s in runs] == list(range(vcpus))
    assert all(s["detail"] == "entered; no exit within 1 s, ended by a timer signal" for s in runs)
    assert sorted(r.thread for r in ioctl.runs) == [f"kvmspe-vcpu-{i}" for i in range(vcpus)]
    assert all(r.cpus == allowed for r in ioctl.runs)
    # Bounded (the runs are in parallel, each ended after 1 s), every thread joined,
    # and the SIGALRM handler the bring-up installed for them is gone again.
    assert took < 10, took
    assert threading.active_count() == before
    assert signal.getsignal(signal.SIGALRM) == handler


@pytest.mark.parametrize("interrupts", [1, 2], ids=["ctrl-c", "ctrl-c-twice"])
def test_ctrl_c_while_vcpu_threads_are_in_kvm_run_exits_130_once_every_thread_is_gone(
    rec: Recorder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    interrupts: int,
) -> None:
    from kvmspe import cli
    from kvmspe.host.discovery import format_cpulist

    allowed = frozenset(os.sched_getaffinity(0))
    ioctl = AffinityRecorder(rec, block=True)
    _spe_host(tmp_path, monkeypatch, ioctl, cpumask=format_cpulist(allowed))
    vcpus = min(len(allowed), 2)
    handler = signal.getsignal(signal.SIGALRM)
    main = threading.main_thread().ident
    assert main is not None

    def ctrl_c() -> None:
        # Once every VCPU is in KVM_RUN, SIGINT to the main thread; the second
        # one lands while the VMM waits for the runs to end.
        while len(ioctl.runs) < vcpus:
            time.sleep(0.01)
        for _ in range(interrupts):
            time.sleep(0.2)
            # Only while a VCPU thread runs (its run ends at 1 s): a SIGINT after
            # the command returned would interrupt the test instead.
            if any(t.name.startswith("kvmspe-vcpu-") and t.is_alive() for t in threading.enumerate()):
                signal.pthread_kill(main, signal.SIGINT)
                sent.append(True)

    sent: list[bool] = []
    sender = threading.Thread(target=ctrl_c, daemon=True)
    sender.start()
    code = cli.main(["configure", "--backend", "kvm", "--vcpus", str(vcpus), "--spu", "10"])
    out, err = capsys.readouterr()
    assert code == 130 and err == "kvmspe: interrupted\n", err
    # No VCPU thread, nor the timer thread of its run, outlives the command:
    # the VCPUs were not closed under a KVM_RUN, and no timer signal comes later.
    left = [t.name for t in threading.enumerate() if t.name.startswith("kvmspe-") and t.is_alive()]
    assert left == []
    assert signal.getsignal(signal.SIGALRM) == handler
    assert frozenset(os.sched_getaffinity(0)) == allowed
    sender.join(5)
    assert len(sent) == interrupts


def test_ctrl_c_as_a_vcpu_thread_starts_still_waits_for_that_thread(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvmspe import cli

    ioctl = AffinityRecorder(rec, block=True)
    _spe_host(tmp_path, monkeypatch, ioctl, cpumask=None)
    real_start = threading.Thread.start

    def start_then_ctrl_c(self: threading.Thread) -> None:
        # SIGINT lands just as the thread has started, before the VMM has noted it.
        real_start(self)
        if self.name == "kvmspe-vcpu-1":
            raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", start_then_ctrl_c)
    code = cli.main(["configure", "--backend", "kvm", "--vcpus", "2", "--spu", "10"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 130 and err == "kvmspe: interrupted\n"
    left = [t.name for t in threading.enumerate() if t.name.startswith("kvmspe-") and t.is_alive()]
    assert left == []


def test_an_unexpected_error_in_a_vcpu_thread_is_a_failing_step_not_a_traceback(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvmspe import cli

    class Buggy(AffinityRecorder):
        def __call__(self, fd: int, request: int, arg: Any) -> int:
            if request == RUN and threading.current_thread().name == "kvmspe-vcpu-1":
                raise RuntimeError("a bug\nof the fake kernel")
            return super().__call__(fd, request, arg)

    ioctl = Buggy(rec)
    _spe_host(tmp_path, monkeypatch, ioctl, cpumask=None)  # unpinned: any number of VCPUs
    code, doc = _configure_json(capsys, "--vcpus", "2", "--spu", "10")
    assert code == 1 and doc["ok"] is False
    assert doc["error"] == "VCPU 1: VCPU thread failed: RuntimeError: a bug of the fake kernel"
    steps = [(s["step"], s["vcpu"], s["ok"], s["detail"]) for s in doc["steps"]]
    assert ("VCPU thread failed", 1, False, "RuntimeError: a bug of the fake kernel") in steps
    # VCPU 0's entry is recorded too.
    assert [st for st in steps if st[0] == "KVM_RUN (first entry)"] == [
        ("KVM_RUN (first entry)", 0, True, "exit KVM_EXIT_HLT")
    ]

    code = cli.main(["configure", "--backend", "kvm", "--vcpus", "2", "--spu", "10"])
    out, err = capsys.readouterr()
    assert code == 1 and err == ""
    assert "  FAIL vcpu 1: VCPU thread failed  (RuntimeError: a bug of the fake kernel)\n" in out
    assert out.endswith("stopped: VCPU 1: VCPU thread failed: RuntimeError: a bug of the fake kernel\n")


def test_an_unexpected_error_while_pinning_stops_every_vcpu_from_entering(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvmspe import vmm

    main_before = frozenset(os.sched_getaffinity(0))
    ioctl = AffinityRecorder(rec)
    _spe_host(tmp_path, monkeypatch, ioctl, cpumask=str(max(main_before)))

    def broken_pin(cpus: Any) -> frozenset[int]:
        raise MemoryError("no memory for the CPU set")

    monkeypatch.setattr(vmm, "pin_thread", broken_pin)
    code, doc = _configure_json(capsys, "--vcpus", "1", "--spu", "10")
    assert code == 1 and doc["ok"] is False
    assert doc["error"] == "VCPU 0: VCPU thread failed: MemoryError: no memory for the CPU set"
    failed = [(s["step"], s["vcpu"], s["detail"]) for s in doc["steps"] if not s["ok"]]
    assert failed == [("VCPU thread failed", 0, "MemoryError: no memory for the CPU set")]
    assert ioctl.runs == [] and RUN not in rec.requests()
    assert frozenset(os.sched_getaffinity(0)) == main_before


def test_bring_up_from_another_thread_needs_a_sigalrm_handler_and_says_so_before_creating_anything(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvmspe import vmm

    ioctl = AffinityRecorder(rec)
    _spe_host(tmp_path, monkeypatch, ioctl, cpumask=str(max(os.sched_getaffinity(0))))
    results: list[vmm.BringUpResult] = []

    def library_caller() -> None:
        choice = vmm.choose_backend("kvm")
        results.append(vmm.bring_up(choice, vcpus=1, irq=21, spu=10, max_buffer_size=4 << 20))

    def in_a_thread() -> vmm.BringUpResult:
        worker = threading.Thread(target=library_caller)
        worker.start()
        worker.join(30)
        assert not worker.is_alive()
        return results.pop()

    previous = signal.signal(signal.SIGALRM, signal.SIG_DFL)
    try:
        r = in_a_thread()
        assert not r.ok and r.error is not None
        assert r.error.startswith("the real backend is brought up from a thread other than the main one")
        assert "install a SIGALRM handler" in r.error
        assert [(s.step, s.ok) for s in r.steps][-1] == ("VCPU threads", False)
        assert CREATE_VM not in rec.requests() and ioctl.runs == []

        # With a handler installed by the main thread, the same call brings the VM up.
        signal.signal(signal.SIGALRM, lambda *_: None)
        r = in_a_thread()
        assert r.ok, r.error
        assert [s.detail for s in r.steps if s.step == "KVM_RUN (first entry)"] == ["exit KVM_EXIT_HLT"]
        assert len(ioctl.runs) == 1
    finally:
        signal.signal(signal.SIGALRM, previous)


_LATE_THREAD_SCRIPT = """
import os, signal, sys, tempfile, threading, time
from pathlib import Path
sys.path[:0] = [sys.argv[1]]
import test_kvm_recorded as t
import kvmspe.kvm
from kvmspe import cli, vmm
from kvmspe.host import discovery

tmp = Path(tempfile.mkdtemp())
rec = t.Recorder(tmp)
made = []
seen = {}

class Stubborn(t.AffinityRecorder):
    def __call__(self, fd, request, arg):
        if request == t.RUN:
            time.sleep(1.5)  # Python retries it across the timer signals: the run ends late
            seen["fd open when the run ended"] = os.path.exists(f"/proc/self/fd/{fd}")
            seen["vcpu closed when the run ended"] = made[0].closed
            raise InterruptedError(4, "EINTR")
        return self.rec(fd, request, arg)

ioctl = Stubborn(rec)
spe = tmp / "sys/bus/event_source/devices/arm_spe_0"
spe.mkdir(parents=True)
(spe / "type").write_text("10\\n")
real = discovery.discover
discovery.discover = lambda **kw: real(sysfs_root=str(tmp / "sys"))
kvmspe.kvm.Kvm = lambda *a, **kw: made.append(t.make_kvm(rec, tmp, ioctl=ioctl)) or made[-1]
vmm.VCPU_THREAD_TIMEOUT = 0.3
code = cli.main(["configure", "--backend", "kvm", "--vcpus", "1", "--spu", "10"])
print("code", code, "closed at once", made[0].closed, flush=True)
time.sleep(2.5)  # past the run's 1 s timer: its signals keep coming until the run ends
print("alive", sorted(seen.items()), "closed in the end", made[0].closed, flush=True)
"""


def test_a_vcpu_thread_still_running_when_the_vmm_gives_up_neither_kills_the_process_nor_loses_its_vcpu(
    tmp_path: Path,
) -> None:
    import subprocess

    script = tmp_path / "late.py"
    script.write_text(_LATE_THREAD_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run(
        [sys.executable, str(script), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    # Before: SIGALRM's default came back while the late run's timer still rang (-14).
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    assert "stopped: VCPU 0: VCPU thread did not finish within 0.3 s\n" in done.stdout
    assert "code 1 closed at once False\n" in done.stdout
    assert (
        "alive [('fd open when the run ended', True), ('vcpu closed when the run ended', False)]"
        " closed in the end True\n"
    ) in done.stdout


@pytest.mark.parametrize(
    ("cpumask", "type_", "why"),
    [
        (None, 10, "arm_spe_0's CPUs are not known: cpumask: "),
        ("", 10, "arm_spe_0's CPUs are not known: its cpumask is ''"),
        ("0-3", 11, "no arm_spe_N of perf type 10: this host shows arm_spe_0 (perf type 11)"),
    ],
    ids=["no-cpumask-file", "empty-cpumask", "no-unit-of-that-type"],
)
def test_an_spu_whose_cpus_are_not_known_runs_its_threads_unpinned_and_says_why(
    rec: Recorder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    cpumask: str | None,
    type_: int,
    why: str,
) -> None:
    main_before = frozenset(os.sched_getaffinity(0))
    ioctl = AffinityRecorder(rec)
    _spe_host(tmp_path, monkeypatch, ioctl, cpumask=cpumask, type_=type_)
    code, doc = _configure_json(capsys, "--vcpus", "2", "--spu", "10")
    assert code == 0, doc["error"]
    assert doc["spu_cpus"] == [] and doc["vcpu_cpus"] == [[], []] and doc["vcpu_thread_cpus"] == [None, None]
    affinity = next(s for s in doc["steps"] if s["step"] == "VCPU affinity")
    assert affinity["ok"] and affinity["detail"].startswith("not known, so the VCPU threads are not pinned: ")
    assert why in affinity["detail"]
    unpinned = [s for s in doc["steps"] if s["step"] == "VCPU thread not pinned"]
    assert [s["vcpu"] for s in unpinned] == [0, 1] and all(why in s["detail"] for s in unpinned)
    # The threads still issue KVM_RUN, each on its own thread, with the process's CPUs.
    assert sorted(r.thread for r in ioctl.runs) == ["kvmspe-vcpu-0", "kvmspe-vcpu-1"]
    assert all(r.cpus == main_before for r in ioctl.runs)
    assert frozenset(os.sched_getaffinity(0)) == main_before


def test_a_cpu_set_the_os_refuses_stops_before_any_vcpu_enters(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvmspe import cli

    main_before = frozenset(os.sched_getaffinity(0))
    absent = 8191  # the highest CPU number sysfs may name; no CPU of this machine
    if (os.cpu_count() or 1) > absent:
        pytest.skip(f"this machine has CPU {absent}: no CPU number is absent here")
    ioctl = AffinityRecorder(rec)
    _spe_host(tmp_path, monkeypatch, ioctl, cpumask=str(absent))
    code, doc = _configure_json(capsys, "--vcpus", "1", "--spu", "10")
    assert code == 1 and doc["ok"] is False
    assert doc["vcpu_cpus"] == [[absent]] and doc["vcpu_thread_cpus"] == [None]
    failed = [s for s in doc["steps"] if not s["ok"]]
    assert [(s["step"], s["vcpu"]) for s in failed] == [(f"pin VCPU thread to CPUs {absent}", 0)]
    assert failed[0]["detail"].startswith(f"cannot pin to CPUs {absent}: ")
    assert doc["error"].startswith(f"VCPU 0: cannot pin to CPUs {absent}: ") and "\n" not in doc["error"]
    assert ioctl.runs == [] and RUN not in rec.requests()
    assert frozenset(os.sched_getaffinity(0)) == main_before

    code = cli.main(["configure", "--backend", "kvm", "--vcpus", "1", "--spu", "10"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"  FAIL vcpu 0: pin VCPU thread to CPUs {absent}  (cannot pin to CPUs {absent}: " in out
    assert f"\nstopped: VCPU 0: cannot pin to CPUs {absent}: " in out


def test_vcpu_threads_not_ready_in_time_stop_the_bring_up_and_none_enters(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvmspe import affinity, vmm
    from kvmspe.host.discovery import format_cpulist

    allowed = frozenset(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("needs two CPUs this process may use, for two VCPUs on one SPU")
    ioctl = AffinityRecorder(rec)
    _spe_host(tmp_path, monkeypatch, ioctl, cpumask=format_cpulist(allowed))
    monkeypatch.setattr(vmm, "VCPU_READY_TIMEOUT", 0.2)
    monkeypatch.setattr(vmm, "VCPU_THREAD_TIMEOUT", 0.5)
    slow_done = threading.Event()

    def slow_pin(cpus: Any) -> frozenset[int]:
        # VCPU 1's thread takes longer to pin itself than the VMM waits.
        if threading.current_thread().name == "kvmspe-vcpu-1":
            time.sleep(1.0)
            slow_done.set()
        return affinity.pin_thread(cpus)

    monkeypatch.setattr(vmm, "pin_thread", slow_pin)
    code, doc = _configure_json(capsys, "--vcpus", "2", "--spu", "10")
    assert code == 1 and doc["ok"] is False
    # VCPU 0's thread gave up waiting for VCPU 1's and never entered; VCPU 1's was still pinning.
    assert doc["error"] == "VCPU 1: VCPU thread did not finish within 0.5 s"
    failed = [(s["step"], s["vcpu"], s["detail"]) for s in doc["steps"] if not s["ok"]]
    assert failed == [
        ("KVM_RUN (first entry)", 0, "not entered: the VCPU threads were not all pinned within 0.2 s"),
        (
            "VCPU thread did not finish within 0.5 s",
            1,
            "it may no longer enter the guest; its VCPU is closed once it ends",
        ),
    ]
    assert ioctl.runs == [] and RUN not in rec.requests()
    assert slow_done.wait(5)


def test_run_timer_handler_installs_one_only_where_none_is_and_puts_the_old_back() -> None:
    from kvmspe.kvm import run_timer_handler

    previous = signal.signal(signal.SIGALRM, signal.SIG_DFL)
    try:
        with run_timer_handler():
            installed = signal.getsignal(signal.SIGALRM)
            assert installed != signal.SIG_DFL and installed != signal.SIG_IGN and callable(installed)
        assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL

        def mine(s: int, f: object) -> None:
            pass

        signal.signal(signal.SIGALRM, mine)
        with run_timer_handler():
            assert signal.getsignal(signal.SIGALRM) is mine  # a handler already there is kept
        assert signal.getsignal(signal.SIGALRM) is mine

        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        seen: list[object] = []

        def elsewhere() -> None:
            with run_timer_handler():  # Python cannot install handlers here: nothing changes
                seen.append(signal.getsignal(signal.SIGALRM))

        worker = threading.Thread(target=elsewhere)
        worker.start()
        worker.join(10)
        assert seen == [signal.SIG_DFL]
    finally:
        signal.signal(signal.SIGALRM, previous)
