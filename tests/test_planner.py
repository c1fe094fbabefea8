"""The planner: safe rounding, refusals, and agreement with the model to the byte."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kvmspe import abi
from kvmspe.arch import maxbuf
from kvmspe.arch.registers import PMBIDR_EL1
from kvmspe.model.assumptions import DEFAULT, Assumptions
from kvmspe.model.kernel import Host, Spu
from kvmspe.planner import PINNING_CASES, placements, plan

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
KEYS = {
    "vcpus",
    "requested",
    "size",
    "max_buff_size_field",
    "guest_pmbidr",
    "page_size",
    "spu_limit",
    "granule",
    "levels",
    "va_bits",
    "warnings",
    "pinned",
    "locked_already",
    "held_at_set",
    "memlock_limit",
}


def test_dict_keys_are_stable() -> None:
    d = plan(4, 4 * MiB).to_dict()
    assert set(d) == KEYS
    assert set(d["pinned"]) == set(PINNING_CASES)
    assert all(set(v) == {"per_vcpu", "per_vm", "assumptions"} for v in d["pinned"].values())


def test_exact_size_has_no_warning_and_its_encoding() -> None:
    d = plan(2, 4 * MiB).to_dict()
    assert d["size"] == 4 * MiB and d["warnings"] == []
    assert d["max_buff_size_field"] == maxbuf.encode(4 * MiB)
    assert PMBIDR_EL1.get(d["guest_pmbidr"], "MaxBuffSize") == d["max_buff_size_field"]


def test_unrepresentable_size_rounds_down_with_a_warning() -> None:
    d = plan(1, 4 * MiB + 4 * KiB).to_dict()
    assert d["size"] == 4 * MiB and "rounded down" in d["warnings"][0]


def test_size_rounding_to_zero_rounds_up_instead() -> None:
    d = plan(1, 4 * KiB, page_size=65536).to_dict()
    assert d["size"] == 64 * KiB and "rounded up" in d["warnings"][0]


def test_above_spu_limit_is_clamped() -> None:
    d = plan(1, 64 * MiB, spu_limit=16 * MiB).to_dict()
    assert d["size"] == 16 * MiB and "clamped" in d["warnings"][0]


def test_zero_with_spu_limit_uses_the_limit() -> None:
    d = plan(1, 0, spu_limit=16 * MiB).to_dict()
    assert d["size"] == 16 * MiB and d["warnings"]


def test_none_takes_the_spu_limit() -> None:
    assert plan(1, None, spu_limit=32 * MiB).size == 32 * MiB


def test_none_with_unlimited_spu_is_no_limit_and_unbounded() -> None:
    d = plan(1, None).to_dict()
    assert d["size"] == 0 and d["memlock_limit"] is None
    assert d["pinned"]["worst"]["per_vm"] is None and "no limit" in d["warnings"][0]


def test_memlock_adds_locked_already_and_held_charge() -> None:
    base = plan(2, MiB, locked_already=8 * MiB)
    assert base.memlock_limit == 8 * MiB + base.pinned["worst"]["per_vm"]
    held = plan(2, MiB, assumptions=dataclasses.replace(DEFAULT, set_time_charge_mode="held"))
    assert held.held_at_set == MiB
    assert held.memlock_limit == MiB + held.pinned["worst"]["per_vm"]


def test_cases_are_ordered() -> None:
    p = plan(8, 64 * MiB, page_size=65536)
    best, typical, worst = (p.pinned[c]["per_vm"] for c in PINNING_CASES)
    assert 8 * 64 * MiB <= best <= typical <= worst


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((0, MiB), {}),
        ((True, MiB), {}),
        ((1, -1), {}),
        ((1, MiB), {"page_size": 8192}),
        ((1, MiB), {"granule": 2048}),
        ((1, MiB), {"spu_limit": 4097}),
        ((1, MiB), {"levels": 9}),
        ((1, MiB), {"locked_already": -1}),
        ((1, None), {"spu_limit": 4096, "page_size": 65536}),
        ((8192, GiB), {"levels": 2, "granule": 65536}),
        ((1, MiB), {"levels": 4, "granule": 65536}),
    ],
)
def test_bad_input_is_one_line_value_error(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError) as info:
        plan(*args, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and ("accepted" in message or "must be" in message)


def _model_pinned(
    case: str,
    vcpus: int,
    size: int,
    page: int,
    granule: int,
    levels: int | None,
    assumptions: Assumptions,
    limit: int | None,
) -> tuple[int, int, Host]:
    host = Host(page, [Spu(1, 0)], limit, assumptions=assumptions)
    vm = host.create_vm()
    cpus = [vm.create_vcpu() for _ in range(vcpus)]
    for v in cpus:
        v.set_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_IRQ, 20)
    cpus[0].set_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_SPU, 1)
    cpus[0].set_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE, size)
    for v in cpus:
        v.set_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_INIT, None)
    for v, where in zip(cpus, placements(case, vcpus, size, granule=granule, levels=levels), strict=True):
        v.enable_buffer(where.base, where.size, where.stage1)
        assert v.run() == abi.Exit(assumptions.idle_exit)
    return cpus[0].pinned_bytes, host.locked_bytes, host


@settings(max_examples=60, deadline=None)
@given(
    vcpus=st.integers(1, 6),
    field=st.integers(1, maxbuf.encode(512 * MiB)),
    page=st.sampled_from(maxbuf.PAGE_SIZES),
    granule=st.sampled_from([4096, 16384, 65536]),
    levels=st.sampled_from([None, 3, 4]),
    held=st.booleans(),
)
def test_planner_and_model_agree_to_the_byte(
    vcpus: int, field: int, page: int, granule: int, levels: int | None, held: bool
) -> None:
    assume(not (granule == 65536 and levels == 4))  # a 64 KiB granule walks at most 3 levels
    assumptions = dataclasses.replace(DEFAULT, set_time_charge_mode="held" if held else "check")
    p = plan(
        vcpus,
        maxbuf.decode(field),
        page_size=page,
        granule=granule,
        levels=levels,
        locked_already=3 * page,
        assumptions=assumptions,
    )
    for case in PINNING_CASES:
        per_vcpu, _, host = _model_pinned(case, vcpus, p.size, page, granule, levels, assumptions, None)
        assert per_vcpu == p.pinned[case]["per_vcpu"], case
        assert host.locked_bytes - p.held_at_set == p.pinned[case]["per_vm"], case
    # The recommended limit is exactly enough: the worst case runs with no KVM_EXIT_RLIMIT,
    # counting what was locked before, and leaves no room.
    assert p.memlock_limit is not None
    _, _, host = _model_pinned(
        "worst", vcpus, p.size, page, granule, levels, assumptions, p.memlock_limit - p.locked_already
    )
    assert host.memlock_room() == 0


def test_sweep_is_the_plan_at_each_power_of_two_size() -> None:
    from kvmspe import planner

    s = planner.sweep(3, page_size=16384, up_to=1 << 26)
    assert s.sizes == [16384 << k for k in range(13)]
    for i, size in enumerate(s.sizes):
        p = planner.plan(3, size, page_size=16384)
        assert {case: s.per_vm[case][i] for case in planner.PINNING_CASES} == {
            case: p.pinned[case]["per_vm"] for case in planner.PINNING_CASES
        }
    with pytest.raises(ValueError, match="vcpus"):
        planner.sweep(0)
