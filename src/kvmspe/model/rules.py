"""Where every errno of the SPE attributes is decided: the checks, in order.

Each ioctl is an ordered tuple of :class:`Check`. The first check that has
something to say decides the result: an errno, or an early success (errno
0: "same value already set, nothing changes"). The model runs these tuples
and nothing else decides an errno, so a reader answers "where is ERANGE
decided?" here, and a test can swap two checks in a copy of
:data:`RULES` to see which conformance cases catch it.

Each check names its source class:

``seed``
    the reference patch (v6 patch 14/35, "Add SPE VCPU device attribute to
    set the max buffer size");
``series``
    another revision or patch of the SPE series (v6 patches 19, 29, 32, 33;
    RFC v4/v5 for the IRQ and INIT attributes);
``measured``
    the real kernel's nearest interface, KVM_ARM_VCPU_PMU_V3_CTRL or
    KVM_ARM_VCPU_INIT, measured on Linux 7.2 arm64;
``uapi``
    the upstream headers;
``assumed``
    none of these (see :mod:`kvmspe.assumptions` and ``docs/rules.md``).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .. import abi
from ..arch import maxbuf
from ..assumptions import Assumptions
from ..errors import NotRepresentableError

__all__ = [
    "Call",
    "Check",
    "HostState",
    "Outcome",
    "RuleSet",
    "RULES",
    "SpuState",
    "VcpuState",
    "VmState",
    "first_outcome",
]

# What the checks read of the kernel's state: the model's Host, Vm, Vcpu and Spu
# (kvmspe.model.kernel) satisfy these, and the rules need nothing else of them.


class SpuState(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def max_buffer_size(self) -> int:
        """The SPU's own limit in bytes; 0: none."""


class HostState(Protocol):
    @property
    def page_size(self) -> int: ...
    @property
    def spus(self) -> Sequence[SpuState]: ...
    @property
    def assumptions(self) -> Assumptions: ...
    @property
    def memlock_limit(self) -> int | None: ...
    @property
    def locked_bytes(self) -> int: ...
    def memlock_room(self) -> int | None:
        """Bytes that may still be locked under RLIMIT_MEMLOCK; None: no limit."""

    def spu(self, spu_id: object) -> SpuState | None:
        """The host's SPU with this id, or None."""


class VmState(Protocol):
    @property
    def host(self) -> HostState: ...
    @property
    def has_run(self) -> bool: ...
    @property
    def irqchip(self) -> bool: ...
    @property
    def spu(self) -> SpuState | None: ...
    @property
    def max_buffer_size(self) -> int | None: ...
    @property
    def irq(self) -> int | None: ...


class VcpuState(Protocol):
    @property
    def vm(self) -> VmState: ...
    @property
    def index(self) -> int: ...
    @property
    def spe(self) -> bool: ...
    @property
    def initialised(self) -> bool: ...
    @property
    def irq(self) -> int | None: ...


@dataclass
class Call:
    """One ioctl as the checks see it: the VCPU, and the value read from addr."""

    vcpu: VcpuState
    attr: int = 0
    value: object = None


@dataclass(frozen=True)
class Outcome:
    """A decided result: ``code`` 0 is success, else an errno with its sentence;
    ``rule`` and ``source`` name the check that decided it."""

    code: int
    message: str
    rule: str = ""
    source: str = ""


Predicate = Callable[[Call], str | None]


@dataclass(frozen=True)
class Check:
    """A named rule: when ``fails`` returns a sentence, the call ends with ``code``."""

    name: str
    code: int
    source: str
    fails: Predicate = field(repr=False)

    def __call__(self, call: Call) -> Outcome | None:
        why = self.fails(call)
        return None if why is None else Outcome(self.code, why, self.name, self.source)


def first_outcome(checks: tuple[Check, ...], call: Call) -> Outcome | None:
    """Run ``checks`` in order; the first that decides wins."""
    for check in checks:
        outcome = check(call)
        if outcome is not None:
            return outcome
    return None


def _hex(v: object) -> str:
    return f"{v:#x}" if isinstance(v, int) else repr(v)


# --- group level [assumed: before the attribute checks] ------------------------


def _no_spe(c: Call) -> str | None:
    if not c.vcpu.vm.host.spus:
        return "SPE is not supported on this host (no SPE instance usable by KVM)"
    return None


def _no_feature(c: Call) -> str | None:
    if not c.vcpu.spe:
        return f"VCPU {c.vcpu.index} was created without the SPE feature (KVM_ARM_VCPU_SPE)"
    return None


def _unknown_attr(c: Call) -> str | None:
    if abi.attr_info(abi.KVM_ARM_VCPU_SPE_CTRL, c.attr) is None:
        known = ", ".join(
            f"{attr} ({info.name.removeprefix('KVM_ARM_VCPU_SPE_')})"
            for (group, attr), info in sorted(abi.ATTRS.items())
            if group == abi.KVM_ARM_VCPU_SPE_CTRL
        )
        return f"KVM_ARM_VCPU_SPE_CTRL has no attribute {c.attr}; known: {known}"
    return None


def _bad_pointer(c: Call) -> str | None:
    if c.value is abi.BAD_ADDRESS:
        return "the value at kvm_device_attr.addr could not be read"
    return None


def _has_run(c: Call) -> str | None:
    if c.vcpu.vm.has_run:
        return "the VM has already run; SPE configuration is fixed from the first KVM_RUN"
    return None


CHECK_NO_SPE = Check("spe-supported", errno.ENXIO, "seed", _no_spe)
CHECK_FEATURE = Check("vcpu-has-spe-feature", errno.ENODEV, "seed", _no_feature)
CHECK_ATTR = Check("known-attribute", errno.ENXIO, "seed", _unknown_attr)
CHECK_EFAULT = Check("readable-pointer", errno.EFAULT, "seed", _bad_pointer)

# --- MAX_BUFFER_SIZE set: the reference patch's checks 1-7, in its order [seed] -----


def _not_page_aligned(c: Call) -> str | None:
    page = c.vcpu.vm.host.page_size
    assert isinstance(c.value, int)
    if c.value % page:
        return f"{_hex(c.value)} is not a multiple of the host page size {page:#x}"
    return None


def _no_spu(c: Call) -> str | None:
    if c.vcpu.vm.spu is None:
        return "no SPU is assigned to the VM; set KVM_ARM_VCPU_SPE_SPU first"
    return None


def _already_set(c: Call) -> str | None:
    current = c.vcpu.vm.max_buffer_size
    if current is not None and current != c.value:
        return f"the VM's max buffer size is already {_hex(current)}; it cannot change to {_hex(c.value)}"
    return None


def _same_value(c: Call) -> str | None:
    if c.vcpu.vm.max_buffer_size is not None and c.vcpu.vm.max_buffer_size == c.value:
        return "the same max buffer size is already set; nothing changes"
    return None


def _not_encodable(c: Call) -> str | None:
    assert isinstance(c.value, int)
    try:
        maxbuf.encode(c.value)
    except NotRepresentableError as exc:
        return str(exc)
    return None


def _out_of_spu_range(c: Call) -> str | None:
    spu = c.vcpu.vm.spu
    assert spu is not None and isinstance(c.value, int)
    limit = spu.max_buffer_size
    if limit == 0:
        return None
    if c.value == 0:
        return f"0 (no limit) is not allowed: SPU {spu.id} limits buffers to {limit:#x}"
    if c.value > limit:
        return f"{c.value:#x} is larger than SPU {spu.id}'s own limit {limit:#x}"
    return None


def _memlock(c: Call) -> str | None:
    host = c.vcpu.vm.host
    assert isinstance(c.value, int)
    room = host.memlock_room()
    if room is not None and c.value > room:
        return (
            f"{c.value:#x} bytes do not fit under RLIMIT_MEMLOCK ({host.memlock_limit:#x},"
            f" {host.locked_bytes:#x} locked already): raise the limit by"
            f" {c.value - room:#x} first"
        )
    return None


SET_MAX_BUFFER_SIZE = (
    Check("has-run", errno.EBUSY, "seed", _has_run),
    Check("page-aligned", errno.EINVAL, "seed", _not_page_aligned),
    Check("spu-assigned", errno.ENODEV, "seed", _no_spu),
    Check("same-value-no-op", 0, "seed", _same_value),
    Check("already-set", errno.EINVAL, "seed", _already_set),
    Check("encodable", errno.EDOM, "seed", _not_encodable),
    Check("within-spu-limit", errno.ERANGE, "seed", _out_of_spu_range),
    Check("memlock", errno.ENOMEM, "series", _memlock),
)


def _max_unset(c: Call) -> str | None:
    if c.vcpu.vm.max_buffer_size is None:
        return "no max buffer size has been set for this VM yet"
    return None


GET_MAX_BUFFER_SIZE = (Check("is-set", errno.EINVAL, "seed", _max_unset),)

# --- IRQ [series: RFC v4/v5; measured: the PMU's IRQ on Linux 7.2] -----------------------


def _no_irqchip(c: Call) -> str | None:
    if not c.vcpu.vm.irqchip:
        return "the VM has no in-kernel irqchip; create and initialise its vGIC first"
    return None


def _irq_set_here(c: Call) -> str | None:
    irq = c.vcpu.irq
    if irq is not None:
        return f"VCPU {c.vcpu.index}'s SPE interrupt is already {irq}; it is set once per VCPU"
    return None


def _not_ppi(c: Call) -> str | None:
    lo, hi = c.vcpu.vm.host.assumptions.irq_ppi_range
    assert isinstance(c.value, int)
    if not lo <= c.value <= hi:
        return f"interrupt {c.value} is not a PPI; accepted: {lo}..{hi}"
    return None


def _irq_differs(c: Call) -> str | None:
    irq = c.vcpu.vm.irq
    if irq is not None and irq != c.value:
        return f"this VM's SPE interrupt is already {irq}; every VCPU must use the same PPI"
    return None


CHECK_IRQCHIP = Check("irqchip", errno.ENXIO, "series", _no_irqchip)

SET_IRQ = (
    CHECK_IRQCHIP,
    Check("has-run", errno.EBUSY, "measured", _has_run),
    Check("irq-once", errno.EBUSY, "series", _irq_set_here),
    CHECK_EFAULT,
    Check("is-ppi", errno.EINVAL, "series", _not_ppi),
    Check("same-irq-on-every-vcpu", errno.EINVAL, "series", _irq_differs),
)


def _irq_unset(c: Call) -> str | None:
    if c.vcpu.irq is None:
        return f"no SPE interrupt has been set on VCPU {c.vcpu.index}"
    return None


GET_IRQ = (Check("is-set", errno.ENXIO, "series", _irq_unset),)

# --- SPU [seed: a different one is an error; measured: SET_PMU's unknown id] -----------


def _unknown_spu(c: Call) -> str | None:
    host = c.vcpu.vm.host
    if host.spu(c.value) is None:
        known = ", ".join(str(s.id) for s in host.spus)
        return f"no SPE instance has id {c.value}; this host has: {known}"
    return None


def _spu_differs(c: Call) -> str | None:
    spu = c.vcpu.vm.spu
    if spu is not None and spu.id != c.value:
        return f"this VM already uses SPU {spu.id}; a different SPU cannot be set"
    return None


SET_SPU = (
    CHECK_EFAULT,
    Check("spu-exists", errno.ENXIO, "measured", _unknown_spu),
    Check("has-run", errno.EBUSY, "assumed", _has_run),
    Check("same-spu", errno.EINVAL, "seed", _spu_differs),
)


def _spu_unset(c: Call) -> str | None:
    if c.vcpu.vm.spu is None:
        return "no SPU has been assigned to this VM yet"
    return None


GET_SPU = (Check("is-set", errno.ENXIO, "assumed", _spu_unset),)

# --- INIT [series: v6 patch 15 by name, RFC v5 by behaviour; measured: PMU INIT] ---------


def _initialised(c: Call) -> str | None:
    if c.vcpu.initialised:
        return f"SPE is already initialised on VCPU {c.vcpu.index}"
    return None


def _init_without_irq(c: Call) -> str | None:
    # Without an irqchip the interrupt cannot be set at all, so this check
    # also answers for the irqchip that RFC v5's INIT asks for.
    if c.vcpu.irq is None:
        why = "" if c.vcpu.vm.irqchip else " (the VM has no in-kernel irqchip to take one)"
        return f"VCPU {c.vcpu.index} has no SPE interrupt{why}; set KVM_ARM_VCPU_SPE_IRQ before initialising"
    return None


def _init_without_config(c: Call) -> str | None:
    vm = c.vcpu.vm
    missing = [
        name
        for name, unset in (
            ("KVM_ARM_VCPU_SPE_SPU", vm.spu is None),
            ("KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE", vm.max_buffer_size is None),
        )
        if unset
    ]
    if missing:
        return f"the VM has no {' and no '.join(missing)}; set them before initialising"
    return None


SET_INIT = (
    Check("has-run", errno.EBUSY, "measured", _has_run),
    Check("init-once", errno.EBUSY, "series", _initialised),
    Check("init-needs-irq", errno.ENXIO, "series", _init_without_irq),
    Check("init-needs-config", errno.ENXIO, "assumed", _init_without_config),
)


def _no_value(c: Call) -> str | None:
    return "KVM_ARM_VCPU_SPE_INIT has no value to read back"


GET_INIT = (Check("init-has-no-value", errno.ENXIO, "series", _no_value),)

# --- KVM_RUN [series: RFC v5; measured: KVM_RUN before PMU INIT] ------------------------


def _not_initialised(c: Call) -> str | None:
    v = c.vcpu
    if not v.spe or v.initialised:
        return None
    missing = [
        name
        for name, unset in (
            ("KVM_ARM_VCPU_SPE_IRQ", v.irq is None),
            ("KVM_ARM_VCPU_SPE_SPU", v.vm.spu is None),
            ("KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE", v.vm.max_buffer_size is None),
        )
        if unset
    ]
    todo = f"set {', '.join(missing)}, then " if missing else ""
    return f"VCPU {v.index} has SPE but it is not initialised; {todo}set KVM_ARM_VCPU_SPE_INIT before KVM_RUN"


@dataclass(frozen=True)
class RuleSet:
    """All check tuples, keyed the way the model looks them up."""

    group: tuple[Check, ...] = (CHECK_NO_SPE, CHECK_FEATURE, CHECK_ATTR)
    set: dict[int, tuple[Check, ...]] = field(
        default_factory=lambda: {
            abi.KVM_ARM_VCPU_SPE_IRQ: SET_IRQ,
            abi.KVM_ARM_VCPU_SPE_SPU: SET_SPU,
            abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE: (CHECK_EFAULT, *SET_MAX_BUFFER_SIZE),
            abi.KVM_ARM_VCPU_SPE_INIT: SET_INIT,
        }
    )
    get: dict[int, tuple[Check, ...]] = field(
        default_factory=lambda: {
            abi.KVM_ARM_VCPU_SPE_IRQ: GET_IRQ,
            abi.KVM_ARM_VCPU_SPE_SPU: GET_SPU,
            abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE: GET_MAX_BUFFER_SIZE,
            abi.KVM_ARM_VCPU_SPE_INIT: GET_INIT,
        }
    )
    run: tuple[Check, ...] = (Check("spe-initialised", errno.EINVAL, "series", _not_initialised),)


#: The rules as the reference patch, the series, the PMU and our assumptions give them.
RULES = RuleSet()
