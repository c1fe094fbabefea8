"""Configuring and bringing up SPE against the recorded kernels (tests/kvm_fake.py):
configure_spe byte for byte, discovery and the conformance probe, ``configure --backend kvm``."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from kvm_fake import (
    ARM_VCPU_INIT,
    CREATE_DEVICE,
    CREATE_VCPU,
    CREATE_VM,
    HAS_ATTR,
    IRQ,
    MAX,
    RUN,
    SET_ATTR,
    SPE,
    SPU,
    VGIC_CTRL_INIT,
    VGIC_GRP_ADDR,
    VGIC_GRP_CTRL,
    VGIC_V3_ADDR_TYPE_DIST,
    VGIC_V3_ADDR_TYPE_REDIST,
    Recorder,
    device_attr,
    make_kvm,
    probing_kvm,
    u32,
    u64,
)

from kvmspe.kvm import Vcpu

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
    with probing_kvm(rec, tmp_path, known, unknown, spe_bit) as kvm:
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
