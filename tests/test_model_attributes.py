"""The model's other SPE attributes and group-level errnos: IRQ, SPU, INIT, values outside the C
type, the irqchip, and what KVM_RUN needs (the series, RFC v4/v5, the PMU as measured on Linux 7.2).
"""

from __future__ import annotations

import errno

import pytest
from model_oracle import (
    ATTRS,
    INIT,
    IRQ,
    MAX,
    SPE,
    SPU,
    VALUED,
    MiB,
    init,
    make,
    plain_vcpu,
    raised,
    run_ready,
)

from kvmspe import abi
from kvmspe.model.kernel import Host, Spu

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
