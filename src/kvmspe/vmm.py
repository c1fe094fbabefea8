"""Configuring SPE on a VCPU the way a VMM does: HAS, then SET, per attribute.

:func:`configure_spe` does what QEMU does for its PMU: for the SPE
interrupt, the SPU and the max buffer size, in that order, it asks
KVM_HAS_DEVICE_ATTR and then issues KVM_SET_DEVICE_ATTR, and last the same
for KVM_ARM_VCPU_SPE_INIT (v6 patch 15), which takes no value (``addr`` 0)
and, like KVM_ARM_VCPU_PMU_V3_INIT, comes after the values it depends on
(and after the VM's vGIC is initialised, on arm64). It stops at the first
step that fails with one clear :class:`SpeConfigError` naming that step.
It only uses ``has_device_attr`` and ``set_device_attr``, so it runs
unchanged on a model VCPU (:mod:`kvmspe.model`) and a real one
(:mod:`kvmspe.kvm`).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Literal, Protocol

from . import abi
from .errors import KvmError, KvmspeError

__all__ = ["ORDER", "SpeConfigError", "SpeVcpu", "Step", "configure_spe", "planned_steps"]


class SpeVcpu(Protocol):
    """What :func:`configure_spe` needs of a VCPU (model or real)."""

    def has_device_attr(self, group: int, attr: int) -> bool: ...

    def set_device_attr(self, group: int, attr: int, value: object) -> None: ...


@dataclass(frozen=True)
class Step:
    """One ioctl of the configuration: ``call`` is ``"has"`` or ``"set"``."""

    call: Literal["has", "set"]
    attr: int
    value: int | None = None
    group: int = abi.KVM_ARM_VCPU_SPE_CTRL

    @property
    def attr_name(self) -> str:
        info = abi.attr_info(self.group, self.attr)
        if info is not None:
            return info.name
        if (self.group, self.attr) == (abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_INIT):
            return "KVM_ARM_VCPU_SPE_INIT"
        return f"attribute {self.attr}"

    @property
    def shown_value(self) -> str:
        """The value as a message shows it: sizes in hex, IRQ and SPU in decimal."""
        if self.value is None:
            return ""
        return f"{self.value:#x}" if self.attr == abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE else str(self.value)

    @property
    def name(self) -> str:
        """E.g. ``has KVM_ARM_VCPU_SPE_IRQ`` or ``set KVM_ARM_VCPU_SPE_SPU=10``."""
        if self.call == "has":
            return f"has {self.attr_name}"
        if self.value is None:
            return f"set {self.attr_name}"
        return f"set {self.attr_name}={self.shown_value}"


class SpeConfigError(KvmspeError):
    """A configuration step failed: ``step`` is the step, ``error`` the kernel's answer.

    ``errno`` is the kernel's errno, so callers can branch on it as on an OSError.
    """

    def __init__(self, message: str, step: Step, error: KvmError):
        super().__init__(message)
        self.step = step
        self.error = error
        self.errno = error.errno


def _not_supported(step: Step) -> SpeConfigError:
    error = KvmError(
        errno.ENXIO,
        abi.explain("has", step.group, step.attr, errno.ENXIO),
        ioctl="KVM_HAS_DEVICE_ATTR",
        group=step.group,
        attr=step.attr,
    )
    return SpeConfigError(
        f"SPE not supported by this host's KVM: KVM_HAS_DEVICE_ATTR does not know {step.attr_name}",
        step,
        error,
    )


#: The steps of :func:`configure_spe`, in order: (attribute, takes a value).
ORDER: tuple[tuple[int, bool], ...] = (
    (abi.KVM_ARM_VCPU_SPE_IRQ, True),
    (abi.KVM_ARM_VCPU_SPE_SPU, True),
    (abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE, True),
    (abi.KVM_ARM_VCPU_SPE_INIT, False),
)


def planned_steps(irq: int, spu: int, max_buffer_size: int) -> list[Step]:
    """Every step :func:`configure_spe` takes when all succeed, in order."""
    values = {abi.KVM_ARM_VCPU_SPE_IRQ: irq, abi.KVM_ARM_VCPU_SPE_SPU: spu,
              abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE: max_buffer_size}
    out: list[Step] = []
    for attr, _ in ORDER:
        out += [Step("has", attr), Step("set", attr, values.get(attr))]
    return out


def configure_spe(vcpu: SpeVcpu, *, irq: int, spu: int, max_buffer_size: int) -> list[Step]:
    """Give ``vcpu`` its SPE interrupt, SPU and max buffer size, then
    initialise SPE on it: HAS then SET each, KVM_ARM_VCPU_SPE_INIT last
    (no value: ``set_device_attr(group, attr, None)``).

    Returns the steps done, in order. Values that do not fit their C type
    are refused with ValueError before any call. Raises
    :class:`SpeConfigError` at the first failing step: "SPE not supported by
    this host's KVM" when HAS says no, else e.g. ``cannot set
    KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE=0x401000: EDOM: ...``.
    """
    plan: list[tuple[int, int | None]] = [
        (abi.KVM_ARM_VCPU_SPE_IRQ, irq),
        (abi.KVM_ARM_VCPU_SPE_SPU, spu),
        (abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE, max_buffer_size),
    ]
    for attr, value in plan:
        info = abi.attr_info(abi.KVM_ARM_VCPU_SPE_CTRL, attr)
        assert info is not None and value is not None
        abi.check_value(info, value)
    plan.append((abi.KVM_ARM_VCPU_SPE_INIT, None))
    done: list[Step] = []
    for attr, value in plan:
        has = Step("has", attr)
        try:
            known = vcpu.has_device_attr(has.group, attr)
        except KvmError as exc:
            raise SpeConfigError(f"cannot query {has.attr_name}: {exc}", has, exc) from exc
        if not known:
            raise _not_supported(has)
        done.append(has)
        put = Step("set", attr, value)
        try:
            vcpu.set_device_attr(put.group, attr, value)
        except KvmError as exc:
            raise SpeConfigError(f"cannot {put.name}: {exc}", put, exc) from exc
        done.append(put)
    return done
