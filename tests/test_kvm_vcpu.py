"""The VCPU fd against the recorded kernel (tests/kvm_fake.py), byte for byte on any machine:
creation and KVM_ARM_VCPU_INIT on arm64, probing the SPE feature bit, SET / GET / HAS on the SPE
group, EINTR and errnos."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from kvm_fake import (
    ARM_PREFERRED_TARGET,
    ARM_VCPU_INIT,
    CREATE_VCPU,
    CREATE_VM,
    GET_ATTR,
    HAS_ATTR,
    IRQ,
    MAX,
    RUN,
    SET_ATTR,
    SPE,
    SPE_BIT,
    SPU,
    TARGET,
    UNMAPPED,
    Recorder,
    device_attr,
    make_kvm,
    probing_kvm,
    u32,
    u64,
    vcpu_init,
)

from kvmspe import abi
from kvmspe.errors import KvmError
from kvmspe.kvm import Kvm, SpeFeatureUnavailable, Vcpu

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


def test_probing_finds_the_bit_that_makes_the_spe_group_answer(rec: Recorder, tmp_path: Path) -> None:
    # A kernel with the series: SPE at bit 12 (it knows 0..8 and 12).
    with probing_kvm(rec, tmp_path, set(range(9)) | {12}, errno.EINVAL, 12) as kvm:
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
    with probing_kvm(rec, tmp_path, set(range(10)), errno.EINVAL, None) as kvm:
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
    with probing_kvm(rec, tmp_path, set(range(7)), errno.ENOENT, None) as kvm:
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
