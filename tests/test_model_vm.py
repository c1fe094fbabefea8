"""The model's VMs and VCPUs: features per VM, what KVM_CREATE_VCPU and the host refuse, and the
guest's view of PMBIDR_EL1.
"""

from __future__ import annotations

import errno

import pytest
from model_oracle import (
    MAX,
    SPE,
    SPU,
    MiB,
    make,
    plain_vcpu,
    raised,
)

from kvmspe.arch import maxbuf
from kvmspe.arch.registers import PMBIDR_EL1
from kvmspe.model.kernel import Host, Spu

# --- features per VM ------------------------------------------------------------------------------


@pytest.mark.parametrize("first", [True, False])
def test_vcpu_features_are_the_vms(first: bool) -> None:
    vm = Host(spus=[Spu(8, 0)]).create_vm()
    v0 = vm.create_vcpu(spe=first)
    exc = raised(errno.EINVAL, vm.create_vcpu, spe=not first)
    assert exc.ioctl == "KVM_ARM_VCPU_INIT" and "same features" in str(exc)
    assert vm.vcpus == [v0]
    # The id was used by KVM_CREATE_VCPU: it stays taken.
    raised(errno.EEXIST, vm.create_vcpu, 1, spe=first)
    v2 = vm.create_vcpu(spe=first)
    assert v2.index == 2 and v2.spe is first


def test_a_failed_vcpu_does_not_fix_the_features() -> None:
    vm = Host(spus=[Spu(8, 0)]).create_vm()
    with pytest.raises(ValueError):
        vm.create_vcpu(spe=1)  # type: ignore[arg-type]
    assert vm.spe_feature is None
    vm.create_vcpu(spe=False)
    assert vm.spe_feature is False


# --- model input validation ------------------------------------------------------------------------


@pytest.mark.parametrize("index", [-1, "0", 1.5, 2**64, True, None.__class__])
def test_create_vcpu_refuses_what_kvm_create_vcpu_cannot_take(index: object) -> None:
    vm = Host().create_vm()
    with pytest.raises(ValueError) as info:
        vm.create_vcpu(index)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and "from 0 to 2**64-1" in message and repr(index) in message
    assert vm.vcpus == [] and vm.used_ids == set()


def test_create_vcpu_after_run_is_ebusy_before_the_id_is_looked_up() -> None:
    vcpu = plain_vcpu()
    vcpu.run()
    for index in (0, 1):
        exc = raised(errno.EBUSY, vcpu.vm.create_vcpu, index, spe=False)
        assert exc.ioctl == "KVM_CREATE_VCPU"
    raised(errno.EINVAL, vcpu.vm.create_vcpu, 512, spe=False)  # the id range first


def test_create_vcpu_ids_from_kvm_max_vcpu_ids_up_are_einval() -> None:
    vm = Host().create_vm()
    assert vm.create_vcpu(511).index == 511
    for index in (512, 2**64 - 1):
        exc = raised(errno.EINVAL, vm.create_vcpu, index)
        assert exc.ioctl == "KVM_CREATE_VCPU" and "512" in str(exc)
    assert vm.create_vcpu().index == 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"memlock_limit": -1}, "memlock_limit"),
        ({"memlock_limit": 1.5}, "memlock_limit"),
        ({"memlock_limit": 1 << 64}, "memlock_limit"),
        ({"memlock_limit": True}, "memlock_limit"),
        ({"memlock_limit": "1M"}, "memlock_limit"),
        ({"locked": -1 << 20}, "locked"),
        ({"locked": 1 << 64}, "locked"),
        ({"locked": 4096.0}, "locked"),
        ({"locked": None}, "locked"),
    ],
)
def test_host_refuses_byte_counts_the_kernel_cannot_hold(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError) as info:
        Host(**kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith(f"{name} takes ") and "0 to 2**64-1" in message and "\n" not in message


def test_host_refuses_what_is_not_an_spu() -> None:
    with pytest.raises(ValueError, match="spus takes kvmspe.model.kernel.Spu objects, got 8"):
        Host(spus=[8])  # type: ignore[list-item]


def test_host_byte_count_extremes_are_accepted() -> None:
    host = Host(memlock_limit=(1 << 64) - 1, locked=0)
    assert host.memlock_room() == (1 << 64) - 1
    assert Host(memlock_limit=0).memlock_room() == 0
    with pytest.raises(ValueError, match="memlock_limit takes None"):
        host.set_memlock_limit(-4096)
    assert host.memlock_limit == (1 << 64) - 1
    host.set_memlock_limit(None)
    assert host.memlock_room() is None


# --- guest view ----------------------------------------------------------------------------------------


def test_guest_pmbidr_carries_the_vm_value_and_the_spu_fields() -> None:
    raw = PMBIDR_EL1.encode(ALIGN=4, F=1, EA="SError", MaxBuffSize=maxbuf.encode(16 * MiB))
    host = Host(spus=[Spu(8, pmbidr=raw)])
    vm = host.create_vm()
    vcpu = vm.create_vcpu(spe=True)
    assert vcpu.guest_pmbidr is None
    vcpu.set_device_attr(SPE, SPU, 8)
    assert host.spus[0].max_buffer_size == 16 * MiB
    assert vcpu.guest_pmbidr is None
    vcpu.set_device_attr(SPE, MAX, 4 * MiB)
    assert vcpu.guest_pmbidr == raw & ~(0xFFFF << 32) | 0x400 << 32
    assert vcpu.guest_pmbidr == 0x0000_0400_0000_0000 | 0x2 << 8 | 1 << 5 | 4
    assert plain_vcpu(host).guest_pmbidr is None


def test_guest_pmbidr_zero_means_no_limit() -> None:
    _, _, vcpu = make()
    vcpu.set_device_attr(SPE, MAX, 0)
    assert vcpu.guest_pmbidr is not None
    assert PMBIDR_EL1.get(vcpu.guest_pmbidr, "MaxBuffSize") == 0
