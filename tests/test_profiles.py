"""Model hosts from profiles and from discovery behave as their description says."""

from __future__ import annotations

import dataclasses
import errno

import pytest

from kvmspe import abi
from kvmspe.errors import KvmError
from kvmspe.host.discovery import HostInfo, discover, fixture_roots
from kvmspe.host.profiles import (
    DEFAULT_PROFILE,
    PROFILES,
    TYPICAL_SPE_TYPE,
    fallback_host,
    model_host,
    spus_from_info,
)
from kvmspe.model.kernel import Host, Spu, Vcpu

SPE, SPU, MAX = abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_SPU, abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE
NO_KVM = "/nonexistent/kvm"


def _vcpu(host: Host, spu: int | None = None) -> Vcpu:
    vcpu = host.create_vm().create_vcpu(0)
    vcpu.set_device_attr(SPE, SPU, host.spus[0].id if spu is None else spu)
    return vcpu


def _set_max(host: Host, size: int, spu: int | None = None) -> int:
    """0 on success, else the errno."""
    try:
        _vcpu(host, spu).set_device_attr(SPE, MAX, size)
    except KvmError as exc:
        return exc.errno or -1
    return 0


def test_required_profiles_exist_with_one_line_descriptions() -> None:
    assert {"default-4k", "64k", "limited-spu"} <= set(PROFILES)
    assert DEFAULT_PROFILE == "default-4k"
    for name, profile in PROFILES.items():
        assert profile.name == name
        assert profile.description and "\n" not in profile.description


def test_default_4k_has_one_unlimited_spu() -> None:
    host = model_host()
    assert host.page_size == 4096
    assert len(host.spus) == 1 and host.spus[0].max_buffer_size == 0
    assert _set_max(host, 1 << 30) == 0
    assert _set_max(model_host(), 4096 + 2048) == errno.EINVAL


def test_64k_refuses_sizes_that_are_not_64k_multiples() -> None:
    host = model_host("64k")
    assert host.page_size == 65536
    assert _set_max(host, 4096) == errno.EINVAL
    assert _set_max(model_host("64k"), 65536) == 0


def test_limited_spu_gives_erange_above_its_limit() -> None:
    limit = model_host("limited-spu").spus[0].max_buffer_size
    assert limit == 4 << 20
    assert _set_max(model_host("limited-spu"), limit) == 0
    assert _set_max(model_host("limited-spu"), limit + (1 << 21)) == errno.ERANGE
    assert _set_max(model_host("limited-spu"), 0) == errno.ERANGE


def test_memlock_limit_and_locked_reach_the_host() -> None:
    host = model_host(memlock_limit=1 << 20, locked=4096)
    assert host.memlock_limit == 1 << 20 and host.locked_bytes == 4096
    assert _set_max(model_host(memlock_limit=1 << 20), 2 << 20) == errno.ENOMEM


def test_each_call_gives_a_fresh_host() -> None:
    assert model_host("64k") is not model_host("64k")
    host = model_host()
    host.create_vm()
    assert model_host().vms == []


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="default-4k") as info:
        model_host("huge")
    assert "\n" not in str(info.value)


def test_big_little_profile_has_two_spus_on_disjoint_cpus() -> None:
    little, big = model_host("big-little").spus
    assert set(little.cpus).isdisjoint(big.cpus)
    assert (little.max_buffer_size, big.max_buffer_size) == (0, 4 << 20)


# -- from discovery ---------------------------------------------------------------------


def test_host_from_the_fixture_tree() -> None:
    info = discover(**fixture_roots(), dev_kvm=NO_KVM)
    host = model_host(info)
    assert host.page_size == info.page_size
    assert [(s.id, s.max_buffer_size, s.cpus) for s in host.spus] == [
        (10, 0, (0, 1, 2, 3)),
        (11, 4 << 20, (4, 5, 6, 7)),
    ]
    # arm_spe_1's max_buff_size limits buffers; arm_spe_0 has no limit.
    assert _set_max(model_host(info), 8 << 20, spu=11) == errno.ERANGE
    assert _set_max(model_host(info), 8 << 20, spu=10) == 0


def test_unencodable_max_buff_size_is_rounded_down() -> None:
    info = discover(**fixture_roots(), dev_kvm=NO_KVM)
    info.spe_instances[1].caps["max_buff_size"] = (4 << 20) + 4096
    assert model_host(info).spus[1].max_buffer_size == 4 << 20


def test_instance_without_type_is_left_out() -> None:
    info = discover(**fixture_roots(), dev_kvm=NO_KVM)
    info.spe_instances[0].type = None
    assert [s.id for s in model_host(info).spus] == [11]


def test_host_without_spe_answers_enxio() -> None:
    info = discover(sysfs_root="/nonexistent", dev_kvm=NO_KVM)
    host = model_host(dataclasses.replace(info, page_size=4096))
    assert host.spus == ()
    vcpu = host.create_vm().create_vcpu(0)
    assert vcpu.has_device_attr(SPE, MAX) is False
    with pytest.raises(KvmError) as exc:
        vcpu.set_device_attr(SPE, MAX, 4096)
    assert exc.value.errno == errno.ENXIO


def test_page_size_that_is_not_arm64_is_refused() -> None:
    info = discover(**fixture_roots(), dev_kvm=NO_KVM)
    with pytest.raises(ValueError, match="accepted"):
        model_host(dataclasses.replace(info, page_size=8192))


# -- the fallback when the real kernel cannot run SPE guests -------------------------------------------


def _info(arch: str, page: int) -> HostInfo:
    return HostInfo(arch, arch, "test", page, "/dev/kvm")


@pytest.mark.parametrize(("page", "name"), [(4096, "default-4k"), (16384, "16k"), (65536, "64k")])
def test_an_arm64_host_without_spe_units_is_modelled_with_its_own_page_size(page: int, name: str) -> None:
    host, why = fallback_host(_info("aarch64", page), memlock_limit=1 << 20, locked=4096)
    assert host.page_size == page and [s.id for s in host.spus] == [TYPICAL_SPE_TYPE]
    assert f"{page // 1024} KiB pages" in why and repr(name) in why
    assert (host.memlock_limit, host.locked_bytes) == (1 << 20, 4096)


def test_a_host_with_spe_units_is_modelled_from_them() -> None:
    info = discover(**fixture_roots(), dev_kvm="/nonexistent/kvm")
    host, why = fallback_host(info)
    assert [s.id for s in host.spus] == [s.id for s in spus_from_info(info)] and "SPE units" in why


@pytest.mark.parametrize("info", [None, _info("x86_64", 4096)])
def test_elsewhere_the_default_profile_is_modelled(info: HostInfo | None) -> None:
    host, why = fallback_host(info)
    assert host.page_size == 4096 and repr(DEFAULT_PROFILE) in why


def test_an_spu_is_one_value_type_shared_by_profiles_planner_and_model() -> None:
    from kvmspe.planner import PlanHost

    a = Spu(10, 4 << 20, cpus=(3, 1, 2))
    b = Spu(10, pmbidr=a.pmbidr, cpus=[1, 2, 3])
    assert a == b and hash(a) == hash(b) and a.cpus == (1, 2, 3)
    assert a != Spu(10, 4 << 20, cpus=(1, 2)) and a != Spu(11, 4 << 20, cpus=(1, 2, 3))
    assert a.to_dict() == {"id": 10, "max_buffer_size": 4 << 20, "cpus": [1, 2, 3]}
    with pytest.raises(AttributeError, match="immutable"):
        a.id = 11
    profile = PROFILES["big-little"]
    assert all(type(s) is Spu for s in profile.spus)
    assert profile.host().spus == profile.spus
    assert PlanHost.from_profile("big-little").spus == profile.spus
