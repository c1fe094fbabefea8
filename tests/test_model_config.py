"""The kernel model's configuration phase, against the reference patch, the
series (RFC v4/v5 for the IRQ and INIT), the PMU as measured on Linux 7.2
arm64, and the documented assumptions.

The expected errno of every MAX_BUFFER_SIZE set is computed by
:func:`expected_set_max`, written straight from the reference patch's checks
1-7 (and the documented assumptions: group-level checks first, ENOMEM after
ERANGE), not from :mod:`kvmspe.model.rules`. It is checked on a systematic grid of
pairs of failing checks and, with the IRQ, SPU and INIT rules, on every step
of a random state machine.
"""

from __future__ import annotations

import errno
import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, rule

from kvmspe import abi
from kvmspe.arch import maxbuf
from kvmspe.arch.registers import PMBIDR_EL1
from kvmspe.errors import KvmError, errno_name
from kvmspe.model.kernel import Host, Spu, Vcpu, Vm

SPE = abi.KVM_ARM_VCPU_SPE_CTRL
IRQ = abi.KVM_ARM_VCPU_SPE_IRQ
SPU = abi.KVM_ARM_VCPU_SPE_SPU
MAX = abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE
INIT = abi.KVM_ARM_VCPU_SPE_INIT
ATTRS = (IRQ, SPU, MAX, INIT)
VALUED = (IRQ, SPU, MAX)
U64_MAX = (1 << 64) - 1
MiB = 1 << 20
LARGEST = 1023 << 42
GROUP_ERRNOS = {errno.ENXIO, errno.ENODEV}


# --- independent oracle, from the reference patch's checks --------------------------------


def representable(size: int) -> bool:
    """The MaxBuffSize encoding (Arm DDI0601), normalised by the top bit."""
    if size < 2 * MiB:
        return size % 4096 == 0
    return size <= LARGEST and size & ((1 << (size.bit_length() - 10)) - 1) == 0


def expected_set_max(
    *,
    host_has_spe: bool,
    vcpu_spe: bool,
    bad_address: bool,
    ran: bool,
    page: int,
    spu_limit: int | None,
    current: int | None,
    room: int | None,
    value: int,
) -> int:
    """Errno (0 for success) of KVM_SET_DEVICE_ATTR(MAX_BUFFER_SIZE).

    ``spu_limit`` is None when the VM has no SPU, else the SPU's limit (0: none);
    ``current`` is the VM's value (None: unset); ``room`` is what RLIMIT_MEMLOCK
    still allows (None: unlimited).
    """
    # Group level [assumed: before checks 1-7], then reading the u64.
    if not host_has_spe:
        return errno.ENXIO
    if not vcpu_spe:
        return errno.ENODEV
    if bad_address:
        return errno.EFAULT
    # Checks 1-7, first failure wins.
    if ran:
        return errno.EBUSY
    if value % page:
        return errno.EINVAL
    if spu_limit is None:
        return errno.ENODEV
    if current is not None:
        return 0 if value == current else errno.EINVAL
    if not representable(value):
        return errno.EDOM
    if spu_limit and (value == 0 or value > spu_limit):
        return errno.ERANGE
    # Set-time accounting [series 33; placed after check 6, assumed].
    if room is not None and value > room:
        return errno.ENOMEM
    return 0


def outcome(fn: object, *args: object, **kwargs: object) -> int:
    """Errno of a model call, 0 on success."""
    try:
        fn(*args, **kwargs)  # type: ignore[operator]
    except KvmError as exc:
        assert exc.errno is not None
        return exc.errno
    return 0


def raised(code: int, fn: object, *args: object, **kwargs: object) -> KvmError:
    with pytest.raises(KvmError) as info:
        fn(*args, **kwargs)  # type: ignore[operator]
    assert info.value.errno == code, str(info.value)
    return info.value


def make(
    *,
    page: int = 4096,
    limit: int = 0,
    memlock: int | None = None,
    locked: int = 0,
    spu: bool = True,
    irq: bool = True,
) -> tuple[Host, Vm, Vcpu]:
    """A host with SPUs 8 (``limit``) and 9 (no limit), a VM and one SPE VCPU."""
    host = Host(page_size=page, spus=[Spu(8, limit), Spu(9, 0)], memlock_limit=memlock, locked=locked)
    vm = host.create_vm()
    vcpu = vm.create_vcpu(spe=True)
    if spu:
        vcpu.set_device_attr(SPE, SPU, 8)
    if irq:
        vcpu.set_device_attr(SPE, IRQ, 23)
    return host, vm, vcpu


def mark_ran(vm: Vm) -> None:
    """Put the VM in the state its first KVM_RUN leaves it in, whatever its SPE state.

    The reference patch decides check 1 (the VM has run) before checks 2-6,
    and the grid below shows that on every combination. Through the API a VM
    with SPE VCPUs runs only once they are initialised, which needs the SPU
    and the max buffer size, so some combinations (run without an SPU) cannot
    be reached that way: this sets the flag the first KVM_RUN sets.
    """
    vm.has_run = True


def init(vcpu: Vcpu) -> None:
    vcpu.set_device_attr(SPE, INIT, None)


def run_ready(vcpu: Vcpu, size: int = 4 * MiB) -> abi.Exit:
    """Set what is still unset (IRQ 23, SPU 8, ``size``), INIT, KVM_RUN."""
    if vcpu.irq is None:
        vcpu.set_device_attr(SPE, IRQ, 23)
    if vcpu.vm.spu is None:
        vcpu.set_device_attr(SPE, SPU, 8)
    if vcpu.vm.max_buffer_size is None:
        vcpu.set_device_attr(SPE, MAX, size)
    init(vcpu)
    return vcpu.run()


def plain_vcpu(host: Host | None = None) -> Vcpu:
    """A VCPU without the SPE feature, in a VM of its own (features are per VM)."""
    host = host or Host(spus=[Spu(8, 0)])
    return host.create_vm().create_vcpu(spe=False)


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


# --- group-level errnos ----------------------------------------------------------------------


def test_host_without_spe() -> None:
    host = Host(spus=[])
    vcpu = host.create_vm().create_vcpu(spe=True)
    for attr in ATTRS:
        value = {MAX: 4096, INIT: None}.get(attr, 23)
        exc = raised(errno.ENXIO, vcpu.set_device_attr, SPE, attr, value)
        assert "not supported" in str(exc)
        raised(errno.ENXIO, vcpu.get_device_attr, SPE, attr)
        assert vcpu.has_device_attr(SPE, attr) is False


def test_vcpu_without_spe_feature() -> None:
    plain = plain_vcpu()
    for attr in ATTRS:
        exc = raised(errno.ENODEV, plain.set_device_attr, SPE, attr, {MAX: 4096, INIT: None}.get(attr, 23))
        assert "without the SPE feature" in str(exc)
        raised(errno.ENODEV, plain.get_device_attr, SPE, attr)
        assert plain.has_device_attr(SPE, attr) is False


@pytest.mark.parametrize(
    ("group", "attr"), [(SPE, 4), (SPE, 99), (SPE, 1 << 63), (abi.KVM_ARM_VCPU_PMU_V3_CTRL, 0), (7, 2)]
)
def test_unknown_attribute_enxio(group: int, attr: int) -> None:
    _, _, vcpu = make()
    exc = raised(errno.ENXIO, vcpu.set_device_attr, group, attr, 4096)
    assert str(attr) in str(exc) or str(group) in str(exc)
    raised(errno.ENXIO, vcpu.get_device_attr, group, attr)
    assert vcpu.has_device_attr(group, attr) is False


def test_has_true_for_the_four_attributes() -> None:
    _, _, vcpu = make(spu=False, irq=False)
    assert all(vcpu.has_device_attr(SPE, attr) for attr in ATTRS)
    assert vcpu.has_device_attr(SPE, abi.KVM_ARM_VCPU_MAX_BUFFER_SIZE)


@pytest.mark.parametrize("attr", VALUED)
def test_efault_on_set_and_get(attr: int) -> None:
    _, vm, vcpu = make(irq=attr != IRQ, spu=attr != SPU)
    raised(errno.EFAULT, vcpu.set_device_attr, SPE, attr, abi.BAD_ADDRESS)
    value = {IRQ: 23, SPU: 8, MAX: 4 * MiB}[attr]
    vcpu.set_device_attr(SPE, attr, value)
    exc = raised(errno.EFAULT, vcpu.get_device_attr, SPE, attr, abi.BAD_ADDRESS)
    assert "kvm_device_attr.addr" in str(exc)
    assert vcpu.get_device_attr(SPE, attr) == value


# --- values outside the C type -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("attr", "value"),
    [(MAX, -1), (MAX, 1 << 64), (MAX, True), (MAX, 4096.0), (MAX, "4096"),
     (IRQ, 1 << 31), (IRQ, -(1 << 31) - 1), (IRQ, False), (SPU, 1 << 31), (SPU, -(1 << 31) - 1), (SPU, None),
     (INIT, 0), (INIT, 1), (INIT, "x")],
)  # fmt: skip
def test_values_outside_the_c_type_raise_value_error_first(attr: int, value: object) -> None:
    # On a host without SPE, from a VCPU without the feature, after run: still ValueError.
    plain = plain_vcpu(Host(spus=[]))
    plain.run()
    with pytest.raises(ValueError, match=r"takes a|takes no value"):
        plain.set_device_attr(SPE, attr, value)
    with pytest.raises(ValueError):
        make()[2].set_device_attr(SPE, attr, value)


@pytest.mark.parametrize("value", [-(1 << 31), (1 << 31) - 1])
def test_int_extremes_reach_the_checks(value: int) -> None:
    _, _, vcpu = make(spu=False, irq=False)
    raised(errno.EINVAL, vcpu.set_device_attr, SPE, IRQ, value)
    raised(errno.ENXIO, vcpu.set_device_attr, SPE, SPU, value)


# --- IRQ ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("irq", [16, 23, 31])
def test_irq_ppi_accepted(irq: int) -> None:
    _, _, vcpu = make(irq=False)
    vcpu.set_device_attr(SPE, IRQ, irq)
    assert vcpu.get_device_attr(SPE, IRQ) == irq


@pytest.mark.parametrize("irq", [-1, 0, 15, 32, 1020])
def test_irq_not_a_ppi_einval(irq: int) -> None:
    _, _, vcpu = make(irq=False)
    exc = raised(errno.EINVAL, vcpu.set_device_attr, SPE, IRQ, irq)
    assert str(exc) == f"EINVAL: interrupt {irq} is not a PPI; accepted: 16..31"
    raised(errno.ENXIO, vcpu.get_device_attr, SPE, IRQ)


def test_irq_is_set_once_per_vcpu_even_to_the_same_value() -> None:
    _, _, vcpu = make()  # IRQ 23 set
    for value in (23, 24, 5, abi.BAD_ADDRESS):  # decided before the value is read or checked
        exc = raised(errno.EBUSY, vcpu.set_device_attr, SPE, IRQ, value)
        assert str(exc) == "EBUSY: VCPU 0's SPE interrupt is already 23; it is set once per VCPU"
    assert vcpu.get_device_attr(SPE, IRQ) == 23


def test_irq_same_on_every_vcpu() -> None:
    _, vm, v0 = make(irq=False)
    v1 = vm.create_vcpu(spe=True)
    v0.set_device_attr(SPE, IRQ, 20)
    raised(errno.ENXIO, v1.get_device_attr, SPE, IRQ)  # per VCPU: v1 has none yet
    exc = raised(errno.EINVAL, v1.set_device_attr, SPE, IRQ, 21)
    assert "20" in str(exc)
    v1.set_device_attr(SPE, IRQ, 20)
    assert v1.get_device_attr(SPE, IRQ) == 20


def test_irq_fixed_after_run() -> None:
    _, vm, vcpu = make()
    run_ready(vcpu)
    raised(errno.EBUSY, vcpu.set_device_attr, SPE, IRQ, 23)
    raised(errno.EBUSY, vcpu.set_device_attr, SPE, IRQ, 5)  # EBUSY before the PPI check
    assert vcpu.get_device_attr(SPE, IRQ) == 23


# --- SPU ---------------------------------------------------------------------------------------------


def test_spu_unknown_id_enxio() -> None:
    _, vm, vcpu = make(spu=False)
    exc = raised(errno.ENXIO, vcpu.set_device_attr, SPE, SPU, 7)
    assert "7" in str(exc) and "8, 9" in str(exc)
    raised(errno.ENXIO, vcpu.get_device_attr, SPE, SPU)


def test_spu_different_one_einval() -> None:
    _, vm, vcpu = make()
    v1 = vm.create_vcpu(spe=True)
    assert v1.get_device_attr(SPE, SPU) == 8  # per VM
    exc = raised(errno.EINVAL, v1.set_device_attr, SPE, SPU, 9)
    assert "8" in str(exc)
    v1.set_device_attr(SPE, SPU, 8)
    raised(errno.ENXIO, vcpu.set_device_attr, SPE, SPU, 7)  # unknown before different


def test_spu_fixed_after_run() -> None:
    _, vm, vcpu = make()
    run_ready(vcpu)
    raised(errno.EBUSY, vcpu.set_device_attr, SPE, SPU, 8)
    raised(errno.EBUSY, vcpu.set_device_attr, SPE, SPU, 9)
    # An unknown id is ENXIO whatever the state, as SET_PMU's (measured on Linux 7.2).
    raised(errno.ENXIO, vcpu.set_device_attr, SPE, SPU, 7)
    raised(errno.EFAULT, vcpu.set_device_attr, SPE, SPU, abi.BAD_ADDRESS)


# --- run ---------------------------------------------------------------------------------------------


def test_run_without_irq_einval_then_configure_and_run() -> None:
    _, vm, vcpu = make(irq=False)
    vcpu.set_device_attr(SPE, MAX, 4 * MiB)
    exc = raised(errno.EINVAL, vcpu.run)
    assert str(exc) == (
        "EINVAL: VCPU 0 has SPE but it is not initialised; set KVM_ARM_VCPU_SPE_IRQ, then set"
        " KVM_ARM_VCPU_SPE_INIT before KVM_RUN"
    )
    assert not vm.has_run
    # A failed first run fixes nothing: configuration still works.
    vcpu.set_device_attr(SPE, IRQ, 23)
    raised(errno.EINVAL, vcpu.run)  # configured, not initialised
    init(vcpu)
    assert isinstance(vcpu.run(), abi.Exit)
    assert vm.has_run


def test_run_without_max_einval() -> None:
    _, vm, vcpu = make()
    exc = raised(errno.EINVAL, vcpu.run)
    assert "KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE" in str(exc) and "KVM_ARM_VCPU_SPE_IRQ" not in str(exc)
    assert not vm.has_run
    vcpu.set_device_attr(SPE, MAX, 2 * MiB)
    init(vcpu)
    vcpu.run()


def test_run_lists_everything_missing() -> None:
    _, _, vcpu = make(irq=False, spu=False)
    exc = raised(errno.EINVAL, vcpu.run)
    for name in ("KVM_ARM_VCPU_SPE_IRQ", "KVM_ARM_VCPU_SPE_SPU", "KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE"):
        assert name in str(exc)
    assert str(exc).endswith("then set KVM_ARM_VCPU_SPE_INIT before KVM_RUN")


def test_every_spe_vcpu_needs_its_own_irq_and_init() -> None:
    _, vm, v0 = make()
    v0.set_device_attr(SPE, MAX, 4 * MiB)
    init(v0)
    v1 = vm.create_vcpu(spe=True)
    raised(errno.EINVAL, v1.run)
    exc = raised(errno.ENXIO, init, v1)
    assert "VCPU 1 has no SPE interrupt" in str(exc)
    v1.set_device_attr(SPE, IRQ, 23)
    raised(errno.EINVAL, v1.run)
    init(v1)
    v1.run()
    v0.run()


def test_after_first_run_configuration_answers_ebusy() -> None:
    _, vm, vcpu = make()
    other = vm.create_vcpu(spe=True)
    exit_ = run_ready(vcpu)
    assert isinstance(exit_, abi.Exit) and not exit_.is_rlimit
    for v in (vcpu, other):
        for attr, value in ((IRQ, 23), (SPU, 8), (MAX, 4 * MiB), (INIT, None)):
            exc = raised(errno.EBUSY, v.set_device_attr, SPE, attr, value)
            assert "already run" in str(exc)
    # Reading and probing still work.
    assert [vcpu.get_device_attr(SPE, a) for a in VALUED] == [23, 8, 4 * MiB]
    assert all(vcpu.has_device_attr(SPE, a) for a in ATTRS)
    vcpu.run()
    raised(errno.EINVAL, other.run)  # never initialised, and now it cannot be


def test_vcpu_without_spe_runs_unconfigured() -> None:
    assert isinstance(plain_vcpu().run(), abi.Exit)


# --- INIT ----------------------------------------------------------------------------------------------


def test_init_initialises_once() -> None:
    _, vm, vcpu = make()
    vcpu.set_device_attr(SPE, MAX, 4 * MiB)
    assert vcpu.has_device_attr(SPE, INIT)
    init(vcpu)
    assert vcpu.initialised and not vm.has_run
    exc = raised(errno.EBUSY, init, vcpu)
    assert str(exc) == "EBUSY: SPE is already initialised on VCPU 0"
    vcpu.run()


def test_init_reads_no_value() -> None:
    _, _, vcpu = make()
    vcpu.set_device_attr(SPE, MAX, 4 * MiB)
    vcpu.set_device_attr(SPE, INIT, abi.BAD_ADDRESS)  # addr is not read: no EFAULT
    assert vcpu.initialised
    with pytest.raises(ValueError, match="takes no value"):
        vcpu.set_device_attr(SPE, INIT, 0)


def test_init_get_is_enxio_before_and_after() -> None:
    _, _, vcpu = make()
    exc = raised(errno.ENXIO, vcpu.get_device_attr, SPE, INIT)
    assert "no value" in str(exc)
    vcpu.set_device_attr(SPE, MAX, 4 * MiB)
    init(vcpu)
    raised(errno.ENXIO, vcpu.get_device_attr, SPE, INIT, abi.BAD_ADDRESS)


@pytest.mark.parametrize(
    ("irqchip", "irq", "spu", "size", "words"),
    [
        (True, False, True, True, "no SPE interrupt"),
        (False, False, True, True, "no in-kernel irqchip"),
        (True, True, False, False, "no KVM_ARM_VCPU_SPE_SPU and no KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE"),
        (True, True, True, False, "no KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE"),
        (False, False, False, False, "no SPE interrupt"),
    ],
)
def test_init_before_everything_is_set_enxio(
    irqchip: bool, irq: bool, spu: bool, size: bool, words: str
) -> None:
    host = Host(spus=[Spu(8, 0)])
    vcpu = host.create_vm(irqchip=irqchip).create_vcpu()
    if irq:
        vcpu.set_device_attr(SPE, IRQ, 23)
    if spu:
        vcpu.set_device_attr(SPE, SPU, 8)
    if size:
        vcpu.set_device_attr(SPE, MAX, 4 * MiB)
    exc = raised(errno.ENXIO, init, vcpu)
    assert words in str(exc)
    assert not vcpu.initialised


def test_init_after_run_on_an_unready_vcpu_is_ebusy() -> None:
    _, vm, v0 = make()
    v1 = vm.create_vcpu()
    run_ready(v0)
    raised(errno.EBUSY, init, v1)  # has-run before the missing IRQ


# --- the irqchip ------------------------------------------------------------------------------------


def test_irq_without_irqchip_enxio_before_reading_or_checking() -> None:
    host = Host(spus=[Spu(8, 0)])
    vm = host.create_vm(irqchip=False)
    vcpu = vm.create_vcpu()
    for value in (23, 5, abi.BAD_ADDRESS):
        exc = raised(errno.ENXIO, vcpu.set_device_attr, SPE, IRQ, value)
        assert "irqchip" in str(exc)
    assert vcpu.has_device_attr(SPE, IRQ)
    raised(errno.ENXIO, vcpu.get_device_attr, SPE, IRQ)
    # The rest of the configuration does not need one.
    vcpu.set_device_attr(SPE, SPU, 8)
    vcpu.set_device_attr(SPE, MAX, 4 * MiB)
    raised(errno.EINVAL, vcpu.run)


def test_create_vm_irqchip_takes_a_bool() -> None:
    with pytest.raises(ValueError, match="irqchip must be True or False"):
        Host().create_vm(irqchip=1)  # type: ignore[arg-type]


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


# --- the state machine --------------------------------------------------------------------------------

INTERESTING_SIZES = (
    0, 4096, 0x4000, 0x10000, 0x1001, 0x1FF000, 2 * MiB, 0x201000, 3 * MiB, 4 * MiB, 0x401000, 0x402000,
    0x410000, 8 * MiB, 0x801000, 16 * MiB, LARGEST, LARGEST + 4096, U64_MAX - 4095, U64_MAX,
)  # fmt: skip
SPU_LIMITS = (0, 0, 2 * MiB, 4 * MiB, 16 * MiB, LARGEST)

#: No encoding, but aligned to every page size: a band whose step exceeds 64 KiB, off by 64 KiB multiples.
aligned_unrepresentable = st.builds(
    lambda f, k: maxbuf.decode(f) + 0x10000 * k, st.integers(0x1000, maxbuf.FIELD_MAX), st.integers(1, 3)
)
sizes = st.one_of(
    st.sampled_from(INTERESTING_SIZES),
    st.builds(maxbuf.decode, st.integers(0, maxbuf.FIELD_MAX)),  # representable
    aligned_unrepresentable,
    aligned_unrepresentable,
    st.builds(lambda f, d: maxbuf.decode(f) + d, st.integers(0, maxbuf.FIELD_MAX), st.integers(1, 4095)),
    st.integers(0, U64_MAX),
)
irqs = st.sampled_from((15, 16, 20, 23, 31, 32, 0, -1)) | st.integers(-(1 << 31), (1 << 31) - 1)
spu_ids = st.sampled_from((8, 9, 10, 7, -1))
#: Values outside each attribute's C type (__u64 for MAX, int for IRQ and SPU, none for INIT).
BAD_VALUES = {
    MAX: (-1, 1 << 64, True, 1.0, None),
    IRQ: (-(1 << 31) - 1, 1 << 31, False, 23.0, None),
    SPU: (-(1 << 31) - 1, 1 << 31, True, 8.0, None),
    INIT: (0, 1, -1, 3.0, "x"),
}
PPIS = range(16, 32)


@dataclass
class SHost:
    host: Host
    limits: dict[int, int]


@dataclass
class SVm:
    """The oracle's own record of a VM, kept from the rules as documented."""

    vm: Vm
    host: SHost
    irqchip: bool = True
    #: The SPE feature of the VM's VCPUs, fixed by the first one.
    spe: bool | None = None
    spu: int | None = None
    max: int | None = None
    irq: int | None = None
    ran: bool = False
    frozen: object = None
    vcpus: list[SVcpu] = field(default_factory=list)
    used_ids: set[int] = field(default_factory=set)

    def snapshot(self) -> object:
        return (
            None if self.vm.spu is None else self.vm.spu.id,
            self.vm.max_buffer_size,
            self.vm.irq,
            [(v.irq, v.initialised) for v in self.vm.vcpus],
        )


@dataclass
class SVcpu:
    vcpu: Vcpu
    vm: SVm
    spe: bool
    irq: int | None = None
    initialised: bool = False
    ran: bool = False


def documented(call: str, attr: int) -> set[int]:
    """Errnos the docs list for ``call`` on ``attr``, the group-level ones, and ENOMEM."""
    info = abi.ATTRS.get((SPE, attr))
    listed = set(info.errnos[call]) if info is not None else set()
    return listed | GROUP_ERRNOS | {errno.ENOMEM}


class ConfigMachine(RuleBasedStateMachine):
    """Random configuration sequences on several hosts, VMs and VCPUs."""

    vcpus = Bundle("vcpus")

    def __init__(self) -> None:
        super().__init__()
        self.all_vms: list[SVm] = []

    # -- building: every new host or VM comes with one VCPU ---------------------------------------

    def add_vcpu(self, vm: SVm, spe: bool) -> SVcpu | None:
        """KVM_CREATE_VCPU + KVM_ARM_VCPU_INIT; None when the oracle says it fails."""
        index = next(i for i in range(len(vm.used_ids) + 1) if i not in vm.used_ids)
        if vm.ran:
            want = errno.EBUSY
        elif vm.spe is not None and vm.spe != spe:
            want = errno.EINVAL  # features are per VM (measured on Linux 7.2); the id is used
            vm.used_ids.add(index)
        else:
            want = 0
        try:
            vcpu = vm.vm.create_vcpu(spe=spe)
        except KvmError as exc:
            assert exc.errno == want != 0, str(exc)
            return None
        assert want == 0 and vcpu.index == index
        vm.used_ids.add(index)
        vm.spe = spe
        svcpu = SVcpu(vcpu, vm, spe)
        vm.vcpus.append(svcpu)
        return svcpu

    def add_vm(self, host: SHost, *, spe: bool = True, irqchip: bool = True) -> SVcpu:
        svm = SVm(host.host.create_vm(irqchip=irqchip), host, irqchip)
        self.all_vms.append(svm)
        first = self.add_vcpu(svm, spe)
        assert first is not None
        return first

    @initialize(
        target=vcpus,
        page=st.sampled_from(maxbuf.PAGE_SIZES),
        limit=st.sampled_from(SPU_LIMITS),
        memlock=st.sampled_from((None, None, 3 * MiB, 16 * MiB)),
        assign=st.booleans(),
    )
    def first_host(self, page: int, limit: int, memlock: int | None, assign: bool) -> SVcpu:
        v = self.add_vm(SHost(Host(page, [Spu(8, limit)], memlock), {8: limit}))
        if assign:
            self.do_set(v, SPU, 8)
        return v

    @rule(
        target=vcpus,
        page=st.sampled_from(maxbuf.PAGE_SIZES),
        limits=st.lists(st.sampled_from(SPU_LIMITS), max_size=2),
        memlock=st.sampled_from((None, None, 0, 3 * MiB, 16 * MiB)),
        locked=st.sampled_from((0, 0, MiB)),
    )
    def new_host(self, page: int, limits: list[int], memlock: int | None, locked: int) -> SVcpu:
        spus = {8 + i: lim for i, lim in enumerate(limits)}
        host = Host(page, [Spu(i, lim) for i, lim in spus.items()], memlock, locked=locked)
        return self.add_vm(SHost(host, spus))

    @rule(
        target=vcpus,
        v=vcpus,
        configure=st.booleans(),
        spe=st.sampled_from((True, True, False)),
        irqchip=st.sampled_from((True, True, False)),
    )
    def new_vm(self, v: SVcpu, configure: bool, spe: bool, irqchip: bool) -> SVcpu:
        new = self.add_vm(v.vm.host, spe=spe, irqchip=irqchip)
        if configure:
            self.configure(new)
        return new

    @rule(target=vcpus, v=vcpus, spe=st.sampled_from((True, True, False)))
    def new_vcpu(self, v: SVcpu, spe: bool) -> object:
        made = self.add_vcpu(v.vm, spe)
        return multiple() if made is None else made

    @rule(v=vcpus)
    def configure(self, v: SVcpu) -> None:
        """What a VMM does: SPU 8, PPI 23 (each may fail, and is checked)."""
        self.do_set(v, SPU, 8)
        self.do_set(v, IRQ, 23)

    @rule(v=vcpus)
    def configure_and_init(self, v: SVcpu) -> None:
        """The whole sequence: SPU 8, PPI 23, the VM's size or 2 MiB, INIT."""
        self.configure(v)
        self.do_set(v, MAX, v.vm.max if v.vm.max is not None else 2 * MiB)
        self.do_set(v, INIT, None)

    # -- the oracle's view --------------------------------------------------------------------------

    def group_errno(self, v: SVcpu, attr: int) -> int:
        if not v.vm.host.limits:
            return errno.ENXIO
        if not v.spe:
            return errno.ENODEV
        if attr not in ATTRS:
            return errno.ENXIO
        return 0

    def expect_set(self, v: SVcpu, attr: int, value: object) -> int:
        vm = v.vm
        bad = value is abi.BAD_ADDRESS
        if attr == MAX:
            host = vm.host.host
            room = None if host.memlock_limit is None else max(0, host.memlock_limit - host.locked_bytes)
            return expected_set_max(
                host_has_spe=bool(vm.host.limits),
                vcpu_spe=v.spe,
                bad_address=bad,
                ran=vm.ran,
                page=host.page_size,
                spu_limit=None if vm.spu is None else vm.host.limits[vm.spu],
                current=vm.max,
                room=room,
                value=0 if bad else value,  # type: ignore[arg-type]
            )
        code = self.group_errno(v, attr)
        if code:
            return code
        if attr == IRQ:
            # RFC v4/v5: no irqchip, then (as the PMU) after run, then set once;
            # only then is the value read, and it must be the VM's one PPI.
            if not vm.irqchip:
                return errno.ENXIO
            if vm.ran or v.irq is not None:
                return errno.EBUSY
            if bad:
                return errno.EFAULT
            if value not in PPIS or (vm.irq is not None and vm.irq != value):
                return errno.EINVAL
            return 0
        if attr == INIT:
            # Takes no value: a bad pointer changes nothing.
            if vm.ran or v.initialised:
                return errno.EBUSY
            if not vm.irqchip or v.irq is None or vm.spu is None or vm.max is None:
                return errno.ENXIO
            return 0
        # SPU: the value is read first; an unknown id is ENXIO whatever the state (as SET_PMU).
        if bad:
            return errno.EFAULT
        if value not in vm.host.limits:
            return errno.ENXIO
        if vm.ran:
            return errno.EBUSY
        return errno.EINVAL if vm.spu is not None and vm.spu != value else 0

    def do_set(self, v: SVcpu, attr: int, value: object) -> None:
        want = self.expect_set(v, attr, value)
        got = outcome(v.vcpu.set_device_attr, SPE, attr, value)
        event(f"set {abi.ATTRS[(SPE, attr)].name} -> {errno_name(got) if got else 'ok'}")
        assert got == want, (attr, value, got, want)
        assert got in documented("set", attr) | {0}
        if got:
            return
        if attr == INIT:
            v.initialised = True
            return
        assert isinstance(value, int)
        if attr == MAX:
            assert v.vm.max in (None, value)  # the VM's value never changes once set
            v.vm.max = value
        elif attr == SPU:
            v.vm.spu = value
        else:
            v.irq = v.vm.irq = value

    # -- calls ----------------------------------------------------------------------------------------

    @rule(v=vcpus, size=sizes)
    def set_max(self, v: SVcpu, size: int) -> None:
        self.do_set(v, MAX, size)

    @rule(v=vcpus)
    def set_max_again(self, v: SVcpu) -> None:
        """Repeat the VM's value (or a fresh one) through this VCPU."""
        self.do_set(v, MAX, v.vm.max if v.vm.max is not None else 4 * MiB)

    @rule(v=vcpus, irq=irqs)
    def set_irq(self, v: SVcpu, irq: int) -> None:
        self.do_set(v, IRQ, irq)

    @rule(v=vcpus)
    def set_irq_again(self, v: SVcpu) -> None:
        """The VM's PPI again (or 23): EBUSY on a VCPU that has one, even the same."""
        self.do_set(v, IRQ, v.vm.irq if v.vm.irq is not None else 23)

    @rule(v=vcpus, spu=spu_ids)
    def set_spu(self, v: SVcpu, spu: int) -> None:
        self.do_set(v, SPU, spu)

    @rule(v=vcpus, bad=st.booleans())
    def set_init(self, v: SVcpu, bad: bool) -> None:
        self.do_set(v, INIT, abi.BAD_ADDRESS if bad else None)

    @rule(v=vcpus, attr=st.sampled_from(VALUED))
    def set_bad_address(self, v: SVcpu, attr: int) -> None:
        self.do_set(v, attr, abi.BAD_ADDRESS)

    @rule(v=vcpus, attr=st.sampled_from(ATTRS), pick=st.integers(0, 4))
    def set_outside_c_type(self, v: SVcpu, attr: int, pick: int) -> None:
        value = BAD_VALUES[attr][pick]
        before = v.vm.snapshot()
        try:
            v.vcpu.set_device_attr(SPE, attr, value)
        except KvmError as exc:  # pragma: no cover - reported by the assert
            raise AssertionError(f"{value!r} reached the checks: {exc}") from exc
        except ValueError:
            pass
        else:
            raise AssertionError(f"{value!r} was accepted")
        assert v.vm.snapshot() == before

    @rule(v=vcpus, attr=st.sampled_from((4, 5, 255, 1 << 32)))
    def unknown_attr(self, v: SVcpu, attr: int) -> None:
        want = self.group_errno(v, attr)
        assert outcome(v.vcpu.set_device_attr, SPE, attr, 0) == want
        assert outcome(v.vcpu.get_device_attr, SPE, attr) == want
        assert v.vcpu.has_device_attr(SPE, attr) is False

    @rule(v=vcpus, attr=st.sampled_from(ATTRS), bad=st.booleans())
    def get(self, v: SVcpu, attr: int, bad: bool) -> None:
        want = self.group_errno(v, attr)
        value = {MAX: v.vm.max, SPU: v.vm.spu, IRQ: v.irq, INIT: None}[attr]
        if not want and value is None:
            want = errno.EINVAL if attr == MAX else errno.ENXIO
        if not want and bad:
            want = errno.EFAULT
        try:
            got = v.vcpu.get_device_attr(SPE, attr, abi.BAD_ADDRESS if bad else None)
        except KvmError as exc:
            assert exc.errno == want, str(exc)
            assert exc.errno in documented("get", attr)
        else:
            assert want == 0 and got == value

    @rule(v=vcpus, attr=st.sampled_from(ATTRS))
    def has(self, v: SVcpu, attr: int) -> None:
        assert v.vcpu.has_device_attr(SPE, attr) is (self.group_errno(v, attr) == 0)

    @rule(v=vcpus)
    def run(self, v: SVcpu) -> None:
        vm = v.vm
        ready = not v.spe or v.initialised
        try:
            exit_ = v.vcpu.run()
        except KvmError as exc:
            assert exc.errno == errno.EINVAL and not ready, str(exc)
            assert exc.errno in abi.RUN_ERRNOS
            return
        assert ready and isinstance(exit_, abi.Exit)
        v.ran = True
        if not vm.ran:
            vm.ran = True
            vm.frozen = vm.snapshot()

    @rule(v=vcpus, limit=st.sampled_from((None, 0, MiB, 4 * MiB, 1 << 40)))
    def change_memlock(self, v: SVcpu, limit: int | None) -> None:
        v.vm.host.host.set_memlock_limit(limit)

    # -- invariants -----------------------------------------------------------------------------------

    @invariant()
    def model_matches_shadow(self) -> None:
        for svm in self.all_vms:
            vm = svm.vm
            assert vm.has_run is svm.ran
            assert vm.irqchip is svm.irqchip
            assert vm.spe_feature is svm.spe
            assert vm.max_buffer_size == svm.max
            assert (None if vm.spu is None else vm.spu.id) == svm.spu
            assert vm.irq == svm.irq
            assert vm.used_ids == svm.used_ids
            assert [v.vcpu for v in svm.vcpus] == vm.vcpus
            for sv in svm.vcpus:
                assert sv.vcpu.irq == sv.irq
                assert sv.vcpu.initialised is sv.initialised

    @invariant()
    def one_ppi_per_vm(self) -> None:
        """Every VCPU's SPE interrupt is the VM's, a PPI, set only with an irqchip."""
        for svm in self.all_vms:
            irqs = {sv.vcpu.irq for sv in svm.vcpus} - {None}
            assert irqs <= {svm.vm.irq}
            assert svm.vm.irq is None or (svm.vm.irq in PPIS and svm.irqchip)

    @invariant()
    def features_are_the_vms(self) -> None:
        for svm in self.all_vms:
            assert {sv.vcpu.spe for sv in svm.vcpus} <= {svm.spe}

    @invariant()
    def initialised_means_ready(self) -> None:
        """INIT succeeded only with an irqchip, this VCPU's IRQ, the VM's SPU and size;
        a run VCPU with SPE was initialised; a run VM with SPE has its SPU and size."""
        for svm in self.all_vms:
            for sv in svm.vcpus:
                if sv.vcpu.initialised:
                    assert svm.irqchip and sv.irq is not None
                    assert svm.spu is not None and svm.max is not None
                if sv.ran and sv.spe:
                    assert sv.vcpu.initialised
            if svm.ran and svm.spe:
                assert svm.spu is not None and svm.max is not None and svm.irqchip

    @invariant()
    def nothing_changes_after_run(self) -> None:
        for svm in self.all_vms:
            if svm.ran:
                assert svm.snapshot() == svm.frozen

    @invariant()
    def guest_pmbidr_carries_the_vm_value(self) -> None:
        for svm in self.all_vms:
            for sv in svm.vcpus:
                pmbidr = sv.vcpu.guest_pmbidr
                if not sv.spe or svm.spu is None or svm.max is None:
                    assert pmbidr is None
                    continue
                assert svm.vm.spu is not None
                assert pmbidr == svm.vm.spu.pmbidr & ~(0xFFFF << 32) | maxbuf.encode(svm.max) << 32


ConfigMachine.TestCase.settings = settings(stateful_step_count=50, max_examples=100)
test_config_state_machine = ConfigMachine.TestCase
