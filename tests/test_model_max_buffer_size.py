"""The model's MAX_BUFFER_SIZE set, check by check, against an oracle written from the reference patch.

Each check on its own, the set-time ENOMEM accounting, every pair of checks failing at once (the
first wins), and a grid of compatible failing checks, each against :func:`model_oracle.expected_set_max`.
"""

from __future__ import annotations

import errno
import itertools

import pytest
from model_oracle import (
    LARGEST,
    MAX,
    SPE,
    SPU,
    U64_MAX,
    MiB,
    expected_set_max,
    make,
    mark_ran,
    outcome,
    plain_vcpu,
    raised,
    representable,
    run_ready,
)

from kvmspe import abi
from kvmspe.arch import maxbuf
from kvmspe.model.kernel import Host, Spu

# --- each check of MAX_BUFFER_SIZE set on its own --------------------------------------


def test_check1_has_run_ebusy() -> None:
    _, vm, vcpu = make()
    run_ready(vcpu)
    # The same value (check 4 would say success) and a valid new one: both EBUSY.
    for value in (4 * MiB, 2 * MiB):
        exc = raised(errno.EBUSY, vcpu.set_device_attr, SPE, MAX, value)
        assert str(exc) == "EBUSY: the VM has already run; SPE configuration is fixed from the first KVM_RUN"
    assert vcpu.get_device_attr(SPE, MAX) == 4 * MiB


@pytest.mark.parametrize(("page", "value"), [(4096, 0x1001), (16384, 0x1000), (65536, 0x3F1000), (65536, 1)])
def test_check2_misaligned_einval(page: int, value: int) -> None:
    _, vm, vcpu = make(page=page)
    exc = raised(errno.EINVAL, vcpu.set_device_attr, SPE, MAX, value)
    assert str(exc) == f"EINVAL: {value:#x} is not a multiple of the host page size {page:#x}"
    assert vm.max_buffer_size is None


@pytest.mark.parametrize("page", maxbuf.PAGE_SIZES)
def test_page_aligned_representable_sizes_accepted(page: int) -> None:
    for value in (0, page, 2 * MiB - page, 2 * MiB, 4 * MiB + 8192 * (page // 4096), LARGEST):
        _, vm, vcpu = make(page=page)
        vcpu.set_device_attr(SPE, MAX, value)
        assert vcpu.get_device_attr(SPE, MAX) == value


def test_check3_no_spu_enodev() -> None:
    _, vm, vcpu = make(spu=False)
    exc = raised(errno.ENODEV, vcpu.set_device_attr, SPE, MAX, 4 * MiB)
    assert "no SPU is assigned" in str(exc) and "KVM_ARM_VCPU_SPE_SPU" in str(exc)


def test_check4_different_value_einval_same_value_success() -> None:
    _, vm, vcpu = make()
    vcpu.set_device_attr(SPE, MAX, 4 * MiB)
    exc = raised(errno.EINVAL, vcpu.set_device_attr, SPE, MAX, 8 * MiB)
    assert "0x400000" in str(exc) and "0x800000" in str(exc)
    vcpu.set_device_attr(SPE, MAX, 4 * MiB)
    assert vcpu.get_device_attr(SPE, MAX) == 4 * MiB


def test_zero_is_a_value_not_unset() -> None:
    _, vm, vcpu = make()
    vcpu.set_device_attr(SPE, MAX, 0)
    assert vcpu.get_device_attr(SPE, MAX) == 0
    raised(errno.EINVAL, vcpu.set_device_attr, SPE, MAX, 4096)
    vcpu.set_device_attr(SPE, MAX, 0)


def test_check5_unencodable_edom_message() -> None:
    _, vm, vcpu = make()
    exc = raised(errno.EDOM, vcpu.set_device_attr, SPE, MAX, 0x401000)
    assert str(exc) == "EDOM: 0x401000 has no exact MaxBuffSize encoding; nearest are 0x400000 and 0x402000"
    assert (exc.ioctl, exc.group, exc.attr) == ("KVM_SET_DEVICE_ATTR", SPE, MAX)
    assert vm.max_buffer_size is None


@pytest.mark.parametrize("value", [0x401000, LARGEST + 4096, U64_MAX - 4095, (1 << 52)])
def test_check5_page_aligned_unrepresentable(value: int) -> None:
    _, _, vcpu = make()
    exc = raised(errno.EDOM, vcpu.set_device_attr, SPE, MAX, value)
    assert f"{value:#x}" in str(exc) and "nearest" in str(exc)


def test_check6_spu_limit_erange() -> None:
    _, vm, vcpu = make(limit=4 * MiB)
    exc = raised(errno.ERANGE, vcpu.set_device_attr, SPE, MAX, 8 * MiB)
    assert str(exc) == "ERANGE: 0x800000 is larger than SPU 8's own limit 0x400000"
    exc = raised(errno.ERANGE, vcpu.set_device_attr, SPE, MAX, 0)
    assert "0 (no limit)" in str(exc) and "0x400000" in str(exc)
    vcpu.set_device_attr(SPE, MAX, 4 * MiB)  # the limit itself is allowed
    assert vcpu.get_device_attr(SPE, MAX) == 4 * MiB


def test_check6_spu_without_limit_takes_anything_encodable() -> None:
    for value in (0, 4096, LARGEST):
        _, _, vcpu = make(limit=0)
        vcpu.set_device_attr(SPE, MAX, value)
        assert vcpu.get_device_attr(SPE, MAX) == value


def test_check7_stored_per_vm_through_any_vcpu() -> None:
    host, vm, v0 = make()
    v1 = vm.create_vcpu(spe=True)
    raised(errno.EINVAL, v1.get_device_attr, SPE, MAX)
    v1.set_device_attr(SPE, MAX, 4 * MiB)
    assert v0.get_device_attr(SPE, MAX) == v1.get_device_attr(SPE, MAX) == 4 * MiB
    raised(errno.EINVAL, v0.set_device_attr, SPE, MAX, 2 * MiB)
    v0.set_device_attr(SPE, MAX, 4 * MiB)
    # Another VM of the same host has its own value.
    other = host.create_vm().create_vcpu(spe=True)
    raised(errno.EINVAL, other.get_device_attr, SPE, MAX)
    other.set_device_attr(SPE, SPU, 9)
    other.set_device_attr(SPE, MAX, 2 * MiB)
    assert v0.get_device_attr(SPE, MAX) == 4 * MiB


def test_get_before_set_einval() -> None:
    _, _, vcpu = make()
    exc = raised(errno.EINVAL, vcpu.get_device_attr, SPE, MAX)
    assert "no max buffer size has been set" in str(exc)
    # Unset is decided before the pointer is written.
    raised(errno.EINVAL, vcpu.get_device_attr, SPE, MAX, abi.BAD_ADDRESS)


# --- ENOMEM: set-time accounting ---------------------------------------------------------


def test_enomem_when_the_size_exceeds_the_memlock_room() -> None:
    _, vm, vcpu = make(memlock=3 * MiB)
    exc = raised(errno.ENOMEM, vcpu.set_device_attr, SPE, MAX, 4 * MiB)
    assert "RLIMIT_MEMLOCK" in str(exc) and "0x100000" in str(exc)
    assert vm.max_buffer_size is None
    vcpu.set_device_attr(SPE, MAX, 2 * MiB)


def test_enomem_counts_what_is_locked_already() -> None:
    _, _, vcpu = make(memlock=4 * MiB, locked=3 * MiB)
    raised(errno.ENOMEM, vcpu.set_device_attr, SPE, MAX, 2 * MiB)
    vcpu.set_device_attr(SPE, MAX, MiB)


def test_memlock_room_boundary_is_inclusive() -> None:
    _, _, vcpu = make(memlock=4 * MiB)
    vcpu.set_device_attr(SPE, MAX, 4 * MiB)


def test_unlimited_memlock() -> None:
    _, _, vcpu = make(memlock=None)
    vcpu.set_device_attr(SPE, MAX, LARGEST)


# --- two checks failing at once: the first wins --------------------------------------------


def test_pair_has_run_and_misaligned_ebusy() -> None:
    _, vm, vcpu = make()
    mark_ran(vm)
    raised(errno.EBUSY, vcpu.set_device_attr, SPE, MAX, 0x1001)


def test_pair_has_run_and_no_spu_ebusy() -> None:
    _, vm, vcpu = make(spu=False)
    mark_ran(vm)
    raised(errno.EBUSY, vcpu.set_device_attr, SPE, MAX, 4 * MiB)


def test_pair_misaligned_and_no_spu_einval() -> None:
    _, _, vcpu = make(spu=False)
    exc = raised(errno.EINVAL, vcpu.set_device_attr, SPE, MAX, 0x1001)
    assert "page size" in str(exc)


def test_pair_misaligned_and_already_set_einval_from_check2() -> None:
    _, _, vcpu = make()
    vcpu.set_device_attr(SPE, MAX, 4 * MiB)
    exc = raised(errno.EINVAL, vcpu.set_device_attr, SPE, MAX, 0x1001)
    assert "not a multiple of the host page size" in str(exc)


def test_pair_no_spu_and_unencodable_enodev() -> None:
    _, _, vcpu = make(spu=False)
    raised(errno.ENODEV, vcpu.set_device_attr, SPE, MAX, 0x401000)


def test_pair_already_set_and_unencodable_einval() -> None:
    _, _, vcpu = make()
    vcpu.set_device_attr(SPE, MAX, 4 * MiB)
    exc = raised(errno.EINVAL, vcpu.set_device_attr, SPE, MAX, 0x401000)
    assert "already" in str(exc)


def test_pair_already_set_and_above_spu_limit_einval() -> None:
    _, _, vcpu = make(limit=4 * MiB)
    vcpu.set_device_attr(SPE, MAX, 2 * MiB)
    raised(errno.EINVAL, vcpu.set_device_attr, SPE, MAX, 8 * MiB)


def test_same_value_after_set_succeeds_even_when_memlock_was_lowered() -> None:
    host, vm, vcpu = make(memlock=8 * MiB)
    vcpu.set_device_attr(SPE, MAX, 4 * MiB)
    host.set_memlock_limit(MiB)
    vcpu.set_device_attr(SPE, MAX, 4 * MiB)
    raised(errno.EINVAL, vcpu.set_device_attr, SPE, MAX, 512 * 1024)  # different: check 4


def test_pair_unencodable_and_above_spu_limit_edom() -> None:
    _, _, vcpu = make(limit=4 * MiB)
    raised(errno.EDOM, vcpu.set_device_attr, SPE, MAX, 0x801000)


def test_pair_above_spu_limit_and_memlock_erange() -> None:
    _, _, vcpu = make(limit=4 * MiB, memlock=MiB)
    raised(errno.ERANGE, vcpu.set_device_attr, SPE, MAX, 8 * MiB)


def test_pair_unencodable_and_memlock_edom() -> None:
    _, _, vcpu = make(memlock=MiB)
    raised(errno.EDOM, vcpu.set_device_attr, SPE, MAX, 0x401000)


def test_pair_efault_before_has_run() -> None:
    _, vm, vcpu = make()
    mark_ran(vm)
    raised(errno.EFAULT, vcpu.set_device_attr, SPE, MAX, abi.BAD_ADDRESS)


def test_pair_no_feature_before_everything() -> None:
    plain = plain_vcpu()
    raised(errno.ENODEV, plain.set_device_attr, SPE, MAX, 0x1001)
    raised(errno.ENODEV, plain.set_device_attr, SPE, MAX, abi.BAD_ADDRESS)


# Values for the grid: each breaks a different subset of the checks.
GRID_VALUES = (
    0, 4096, 0x10000, 0x1001, 2 * MiB, 3 * MiB, 0x401000, 0x402000, 0x410000, 4 * MiB, 0x801000, 0x810000,
    8 * MiB, LARGEST, U64_MAX - 4095,
)  # fmt: skip
GRID_PRESET = 2 * MiB
GRID_SPU_LIMIT = 4 * MiB
GRID_MEMLOCK = 3 * MiB


def _grid() -> list[tuple[bool, int, int | None, int | None, int | None, int]]:
    cases = []
    for ran, page, limit, memlock, value in itertools.product(
        (False, True), (4096, 65536), (None, 0, GRID_SPU_LIMIT), (None, GRID_MEMLOCK), GRID_VALUES
    ):
        for preset in (None, GRID_PRESET) if limit is not None else (None,):
            cases.append((ran, page, limit, preset, memlock, value))
    return cases


def _failing(case: tuple[bool, int, int | None, int | None, int | None, int]) -> frozenset[str]:
    ran, page, limit, preset, memlock, value = case
    fails = {
        "has-run": ran,
        "misaligned": value % page != 0,
        "no-spu": limit is None,
        "differs": preset is not None and value != preset,
        "unencodable": not representable(value),
        "spu-range": bool(limit) and (value == 0 or value > (limit or 0)),
        "memlock": memlock is not None and value > memlock,
    }
    return frozenset(k for k, v in fails.items() if v)


def test_grid_covers_every_compatible_pair_of_failing_checks() -> None:
    seen = set()
    for case in _grid():
        seen |= {frozenset(p) for p in itertools.combinations(sorted(_failing(case)), 2)}
    names = ("has-run", "misaligned", "no-spu", "differs", "unencodable", "spu-range", "memlock")
    impossible = {frozenset({"no-spu", "differs"}), frozenset({"no-spu", "spu-range"})}
    wanted = {frozenset(p) for p in itertools.combinations(names, 2)} - impossible
    assert wanted <= seen, sorted(map(sorted, wanted - seen))


@pytest.mark.parametrize("case", _grid(), ids=lambda c: "-".join(map(str, c)))
def test_set_max_grid_against_oracle(case: tuple[bool, int, int | None, int | None, int | None, int]) -> None:
    ran, page, limit, preset, memlock, value = case
    host = Host(page_size=page, spus=[Spu(8, limit or 0)], memlock_limit=memlock)
    vm = host.create_vm()
    vcpu = vm.create_vcpu(spe=True)
    if limit is not None:
        vcpu.set_device_attr(SPE, SPU, 8)
    if preset is not None:
        vcpu.set_device_attr(SPE, MAX, preset)
    if ran:
        mark_ran(vm)
    want = expected_set_max(
        host_has_spe=True,
        vcpu_spe=True,
        bad_address=False,
        ran=ran,
        page=page,
        spu_limit=limit,
        current=preset,
        room=memlock,
        value=value,
    )
    assert outcome(vcpu.set_device_attr, SPE, MAX, value) == want
    assert vm.max_buffer_size == (value if want == 0 else preset)
