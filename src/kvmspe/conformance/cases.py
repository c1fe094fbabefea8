"""The conformance cases: the documented SPE attribute interface, as data.

Each :class:`Requirement` states one rule of the interface once, in words, with its
source class (``seed``: the reference patch; ``series``: another patch or
revision of the SPE series; ``measured``: the real kernel's nearest interface,
measured on Linux 7.2 arm64; ``arch``; ``uapi``; ``assumed``) and where in that
source it is; its :class:`Case` objects are
the call sequences that show the rule holds. :mod:`kvmspe.conformance.runner` runs
them against the model or a real kernel, and :mod:`kvmspe.export.vectors` writes
them out for other languages.

A case is a :class:`Setup` (what the host must have, what VCPUs to create)
and a tuple of :class:`Step` calls, each with the result it must give. Values
are integers or small expressions over names the host defines, so that a case
means the same on a model host and on a real one whose page size, SPU ids
and SPU limit are whatever they are. Each is parsed into a
:class:`kvmspe.conformance.expr.Expr` when the case is defined (a bad one stops
the import of this module), which the runner evaluates and the C exporter
renders:

``PAGE``
    the host page size; ``LIMIT`` the first SPU's own max buffer size;
``SPU``, ``SPU2``
    the ids of the first and second SPU; ``NOSPU`` an id no SPU has;
``LARGEST``
    the largest representable size; ``KiB``, ``MiB``, ``GiB``;
``next_size(x)``
    the smallest page-aligned, representable size above ``x``;
``unrep(x)``
    the smallest page-aligned size above ``x`` with no MaxBuffSize encoding;
``enc(x)``
    the MaxBuffSize field value of ``x``.

``BAD`` as a SET value or GET address is a pointer the kernel cannot use.
A SET of KVM_ARM_VCPU_SPE_INIT has no value (``None``).

Expected results: ``"ok"`` (the call succeeded), an errno name (``"EDOM"``),
``True``/``False`` for HAS, an int or expression for a GET or a read,
``"exit"`` for a KVM_RUN that returned (any exit reason), or an exit name
with its data (``"KVM_EXIT_RLIMIT excess=PAGE * 4"``).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

from .. import abi
from .expr import Expr, parse

__all__ = [
    "CASES",
    "INIT",
    "IRQ",
    "MAX",
    "MAX_DOC",
    "OPS",
    "RULE_LIST",
    "SOURCES",
    "SPU",
    "UNKNOWN",
    "Case",
    "Expectation",
    "Requirement",
    "Setup",
    "SpuSpec",
    "Step",
    "attribute_of",
    "by_name",
]

MAX = "KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE"
#: The seed patch's documentation spells the same attribute this way.
MAX_DOC = "KVM_ARM_VCPU_MAX_BUFFER_SIZE"
IRQ = "KVM_ARM_VCPU_SPE_IRQ"
SPU = "KVM_ARM_VCPU_SPE_SPU"
#: Attribute 3 (v6 patch 15/35, "Add SPE VCPU device attribute to initialize SPE").
INIT = "KVM_ARM_VCPU_SPE_INIT"
#: An attribute number of KVM_ARM_VCPU_SPE_CTRL that no revision of the series
#: uses (3 is INIT; RFC v5 also had a STOP attribute after INIT).
UNKNOWN = "255"

SOURCES = ("seed", "series", "measured", "arch", "uapi", "assumed")

#: Operations a step may name. ``set``/``get``/``has`` are the three device
#: attribute ioctls, ``run`` is KVM_RUN, ``setrlimit`` changes the VMM's
#: RLIMIT_MEMLOCK, ``create_vcpu`` adds a VCPU to the VM (KVM_CREATE_VCPU and
#: KVM_ARM_VCPU_INIT; ``target`` "spe" with the SPE feature, "plain" without).
#: The rest need a guest that programs its SPE buffer, which only the model
#: has: ``enable`` (the guest enables a buffer of ``value`` bytes),
#: ``disable``, ``guest_read`` (the guest reads a register field, ``target`` =
#: "REG.FIELD"), ``vm_lck`` (the VMM's VmLck).
OPS = ("set", "get", "has", "run", "setrlimit", "create_vcpu", "enable", "disable", "guest_read", "vm_lck")
#: The operations that need guest code (model only).
GUEST_OPS = frozenset({"enable", "disable", "guest_read", "vm_lck"})
#: The operations on a device attribute (``target`` names it).
ATTR_OPS = frozenset({"set", "get", "has"})
#: The attributes whose SET needs an in-kernel irqchip on an SPE host.
_IRQCHIP_ATTRS = frozenset(
    (abi.KVM_ARM_VCPU_SPE_CTRL, a) for a in (abi.KVM_ARM_VCPU_SPE_IRQ, abi.KVM_ARM_VCPU_SPE_INIT)
)

Value = int | str | None
Expect = int | str | bool


@dataclass(frozen=True)
class Expectation:
    """A step's expected result, parsed once from its short written form.

    ``kind`` is ``"ok"`` (the call succeeded), ``"has"`` (HAS answers
    ``flag``), ``"errno"`` (the call fails with ``errno_name``), ``"exit"``
    (KVM_RUN returned: any exit when ``exit_name`` is None, else that exit,
    with ``expr`` the KVM_EXIT_RLIMIT excess when given) or ``"value"`` (a GET
    or a read gives ``expr``, an expression over the host's names).
    """

    kind: Literal["ok", "has", "errno", "exit", "value"]
    flag: bool = False
    errno_name: str = ""
    exit_name: str | None = None
    expr: Expr | None = None

    @classmethod
    def parse(cls, written: Expect) -> Expectation:
        """The expectation ``written`` stands for (see the module docstring)."""
        if isinstance(written, bool):
            return cls("has", flag=written)
        if isinstance(written, int):
            return cls("value", expr=parse(written))
        if written == "ok":
            return cls("ok")
        if written == "exit":
            return cls("exit")
        if written in errno.errorcode.values():
            return cls("errno", errno_name=written)
        if written.startswith("KVM_EXIT_"):
            name, _, excess = written.partition(" excess=")
            return cls("exit", exit_name=name, expr=parse(excess) if excess else None)
        return cls("value", expr=parse(written))


@dataclass(frozen=True)
class SpuSpec:
    """An SPE instance the case needs.

    ``limit`` is its own max buffer size: ``None`` when the case holds
    whatever it is (the model uses 0, no limit), ``0`` when the case needs an
    SPU without a limit, a positive size when it needs one with a limit (the
    model uses this size; calls name the real one ``LIMIT``).
    """

    limit: int | None = None


@dataclass(frozen=True)
class Setup:
    """What a case needs from the host, and the VCPUs it creates.

    ``spus=()`` is a host without SPE. ``page_size=None`` means any page size
    (the model uses 4 KiB). ``vcpus`` gives, per VCPU, whether it is created
    with the SPE feature. ``irqchip=False`` is a VM without an in-kernel
    irqchip (the real backend then creates no vGIC for it). ``memlock`` is the room left under RLIMIT_MEMLOCK
    (the limit is set to what is locked already plus this); ``None`` leaves
    the limit alone (the model: unlimited). ``locked`` is memory the model's
    VMM has locked already (a real process has its own). ``room`` is
    ``memlock`` parsed.
    """

    spus: tuple[SpuSpec, ...] = (SpuSpec(),)
    page_size: int | None = None
    vcpus: tuple[bool, ...] = (True,)
    irqchip: bool = True
    memlock: Value = None
    locked: int = 0
    room: Expr | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "room", None if self.memlock is None else parse(self.memlock))


@dataclass(frozen=True)
class Step:
    """One call and the result it must give.

    ``target`` is the attribute name (either spelling of the max buffer size,
    or ``UNKNOWN``) for set/get/has, "REG.FIELD" for ``guest_read``.
    ``value`` is the SET value, the GET address (``"BAD"`` or None), the
    new room under the limit for ``setrlimit`` or the buffer size for
    ``enable``; ``amount`` is that value parsed (None for ``"BAD"`` or None).
    ``attribute`` is the (group, attr) ``target`` names for set/get/has
    (None for the other operations).
    """

    op: str
    target: str = ""
    value: Value = None
    expect: Expect = "ok"
    vcpu: int = 0
    expectation: Expectation = field(init=False, repr=False, compare=False)
    amount: Expr | None = field(init=False, repr=False, compare=False)
    attribute: tuple[int, int] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "expectation", Expectation.parse(self.expect))
        amount = None if self.value is None or self.value == "BAD" else parse(self.value)
        object.__setattr__(self, "amount", amount)
        object.__setattr__(self, "attribute", attribute_of(self.target) if self.op in ATTR_OPS else None)

    def describe(self) -> str:
        """The call as one short line, e.g. ``SET SPE_SPU=SPU``: how the runners and the C
        programs name it in a failure's reason."""
        who = f"vcpu{self.vcpu} " if self.vcpu else ""
        name = self.target.removeprefix("KVM_ARM_VCPU_")
        if self.op == "set":
            return f"{who}SET {name}={'(no value)' if self.value is None else self.value}"
        if self.op == "get":
            return f"{who}GET {name}" + (" addr=BAD" if self.value == "BAD" else "")
        if self.op == "has":
            return f"{who}HAS {name}"
        if self.op == "create_vcpu":
            return f"create a VCPU {'with' if self.target == 'spe' else 'without'} SPE"
        if self.op == "guest_read":
            return f"{who}guest reads {self.target}"
        if self.op in ("setrlimit", "enable"):
            return f"{who}{self.op} {self.value}"
        return f"{who}{self.op}"


def attribute_of(target: str) -> tuple[int, int]:
    """The (group, attr) a step's ``target`` names: a name of :data:`kvmspe.abi.ATTR_BY_NAME`,
    or a number of KVM_ARM_VCPU_SPE_CTRL (as ``UNKNOWN``); ValueError for another name."""
    if target.isdigit():
        return abi.KVM_ARM_VCPU_SPE_CTRL, int(target)
    if target not in abi.ATTR_BY_NAME:
        raise ValueError(f"{target!r} is not an attribute kvmspe knows")
    return abi.ATTR_BY_NAME[target]


@dataclass(frozen=True)
class Case:
    """A named call sequence on a fresh VM that shows one rule.

    What the case needs of a host, computed once from its calls:
    ``needs_guest``, guest code that programs SPE (the model, or the real
    backend under kvmspe's shim); ``needs_plain_vcpu``, a VCPU without the SPE
    feature; ``needs_irqchip``, an in-kernel irqchip where there is SPE: it sets
    the SPE interrupt (KVM refuses a PMU interrupt without an irqchip, and the
    SPE one is modelled on it) or INIT, or runs a VCPU (the interrupt must be
    set first). Without SPE every such call answers ENXIO (or the VCPU runs
    bare), with or without an irqchip.
    """

    name: str
    setup: Setup
    calls: tuple[Step, ...]
    rule: Requirement | None = field(default=None, repr=False, compare=False)
    needs_guest: bool = field(init=False, repr=False, compare=False)
    needs_plain_vcpu: bool = field(init=False, repr=False, compare=False)
    needs_irqchip: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        calls = self.calls
        facts = {
            "needs_guest": any(s.op in GUEST_OPS for s in calls),
            "needs_plain_vcpu": not all(self.setup.vcpus)
            or any(s.op == "create_vcpu" and s.target != "spe" for s in calls),
            "needs_irqchip": any(
                s.op == "run" or (s.op == "set" and s.attribute in _IRQCHIP_ATTRS) for s in calls
            ),
        }
        for name, value in facts.items():
            object.__setattr__(self, name, value)

    @property
    def expected(self) -> Expect:
        """The result of the last call: what the case is about."""
        return self.calls[-1].expect


@dataclass(frozen=True)
class Requirement:
    """One rule of the interface, stated once, with the cases that show it."""

    key: str
    source: str
    where: str
    text: str
    cases: tuple[Case, ...]


def _rule(key: str, source: str, where: str, text: str, *cases: Case) -> Requirement:
    if source not in SOURCES:
        raise ValueError(f"rule {key}: source {source!r} is not one of {', '.join(SOURCES)}")
    own = tuple(replace(c) for c in cases)
    rule = Requirement(key, source, where, " ".join(text.split()), own)
    for c in own:
        # Case and Requirement refer to each other; the link is made once, here.
        object.__setattr__(c, "rule", rule)
    return rule


def case(name: str, setup: Setup, *calls: Step) -> Case:
    return Case(name, setup, calls)


# --- the calls -----------------------------------------------------------------------


def set_(target: str, value: Value, expect: Expect = "ok", vcpu: int = 0) -> Step:
    return Step("set", target, value, expect, vcpu)


def get(target: str, expect: Expect, vcpu: int = 0, addr: str | None = None) -> Step:
    return Step("get", target, addr, expect, vcpu)


def has(target: str, expect: bool, vcpu: int = 0) -> Step:
    return Step("has", target, None, expect, vcpu)


def kvm_run(expect: Expect = "exit", vcpu: int = 0) -> Step:
    return Step("run", "", None, expect, vcpu)


def init(expect: Expect = "ok", vcpu: int = 0, addr: str | None = None) -> Step:
    """SET KVM_ARM_VCPU_SPE_INIT: no value; ``addr="BAD"`` passes a pointer the
    kernel cannot read (it reads none)."""
    return Step("set", INIT, addr, expect, vcpu)


def create_vcpu(spe: bool, expect: Expect = "ok") -> Step:
    return Step("create_vcpu", "spe" if spe else "plain", None, expect)


def setrlimit(room: Value) -> Step:
    return Step("setrlimit", "", room)


def enable(size: Value, *, unmapped: bool = False, vcpu: int = 0) -> Step:
    """The guest enables a ``size``-byte buffer; ``unmapped``: with no stage-1
    translation for it."""
    return Step("enable", "unmapped" if unmapped else "", size, "ok", vcpu)


def disable(vcpu: int = 0) -> Step:
    return Step("disable", "", None, "ok", vcpu)


def guest_read(reg_field: str, expect: Expect, vcpu: int = 0) -> Step:
    return Step("guest_read", reg_field, None, expect, vcpu)


def vm_lck(expect: Expect) -> Step:
    return Step("vm_lck", "", None, expect)


# --- setups and preparations -------------------------------------------------------------

NO_SPE = Setup(spus=())
NO_SPE_NO_FEATURE = Setup(spus=(), vcpus=(False,))
ONE = Setup()
NO_FEATURE = Setup(vcpus=(False,))
TWO_VCPUS = Setup(vcpus=(True, True))
NO_IRQCHIP = Setup(irqchip=False)
#: VMs whose VCPUs are added by the case: without an irqchip, because the
#: real backend initialises the vGIC once the setup's VCPUs exist, and KVM
#: refuses a VCPU created after that (EBUSY).
ADD_TO_SPE_VM = Setup(irqchip=False)
ADD_TO_PLAIN_VM = Setup(vcpus=(False,), irqchip=False)
UNLIMITED = Setup(spus=(SpuSpec(0),))
#: A 16 MiB limit on the model; calls use LIMIT, so any non-zero limit will do.
LIMITED = Setup(spus=(SpuSpec(16 << 20),))
UNLIMITED_4K = Setup(spus=(SpuSpec(0),), page_size=4096)
#: Sizes that are multiples of 4 KiB but not of a larger page: they mean
#: what the case says on a 4 KiB host only (on 16 KiB pages they are EINVAL).
PAGE_4K = Setup(page_size=4096)
TWO_SPUS = Setup(spus=(SpuSpec(), SpuSpec()))
PAGE_16K = Setup(page_size=16384)
PAGE_64K = Setup(page_size=65536)

#: Every SPE attribute under every name, with a short name for case names.
_SPE_ATTRS = (("irq", IRQ), ("spu", SPU), ("max", MAX), ("max-doc", MAX_DOC), ("init", INIT))

#: The SPE configuration INIT requires, on VCPU 0; READY adds INIT, which KVM_RUN requires.
SPU_SET = set_(SPU, "SPU")
IRQ_SET = set_(IRQ, 21)
CONFIGURE = (SPU_SET, IRQ_SET, set_(MAX, "PAGE * 2"))
READY = (*CONFIGURE, init())


# --- the rules ------------------------------------------------------------------------------

_ATTRIBUTE_RULES: tuple[Requirement, ...] = (
    # -- group level: the reference patch's ENXIO and ENODEV -------------------------------------------
    _rule(
        "no-spe",
        "seed",
        "the reference patch (ENXIO: SPE not supported); uapi (x86 has no SPE group)",
        """Where KVM has no usable SPE (an arm64 host without it, or any other
        architecture), KVM_ARM_VCPU_SPE_CTRL answers ENXIO: HAS says no, SET and
        GET fail with ENXIO, for every attribute and both spellings.""",
        *(case(f"no-spe-has-{n}", NO_SPE, has(a, False)) for n, a in _SPE_ATTRS),
        *(
            case(
                f"no-spe-set-{n}",
                NO_SPE,
                set_(a, {"init": None, "max": 4096, "max-doc": 4096}.get(n, 21), "ENXIO"),
            )
            for n, a in _SPE_ATTRS
        ),
        *(case(f"no-spe-get-{n}", NO_SPE, get(a, "ENXIO")) for n, a in _SPE_ATTRS),
        case("no-spe-vcpu-without-feature", NO_SPE_NO_FEATURE, has(MAX, False), set_(MAX, 4096, "ENXIO")),
    ),
    _rule(
        "no-feature",
        "seed",
        "the reference patch (ENODEV: the VCPU feature is not set)",
        """A VCPU created without the KVM_ARM_VCPU_SPE feature answers ENODEV to
        SET and GET of every SPE attribute.""",
        case("no-feature-set-irq", NO_FEATURE, set_(IRQ, 21, "ENODEV")),
        case("no-feature-set-spu", NO_FEATURE, set_(SPU, "SPU", "ENODEV")),
        case("no-feature-set-max", NO_FEATURE, set_(MAX, "PAGE", "ENODEV")),
        case("no-feature-set-max-doc", NO_FEATURE, set_(MAX_DOC, "PAGE", "ENODEV")),
        case("no-feature-get-max", NO_FEATURE, get(MAX, "ENODEV")),
        case("no-feature-get-spu", NO_FEATURE, get(SPU, "ENODEV")),
        case("no-feature-set-init", NO_FEATURE, init("ENODEV")),
    ),
    _rule(
        "no-feature-has",
        "measured",
        "KVM_ARM_VCPU_PMU_V3_CTRL HAS without the PMU feature: ENXIO, measured on Linux 7.2 arm64",
        """HAS on a VCPU without the SPE feature says no.""",
        case("no-feature-has-max", NO_FEATURE, has(MAX, False)),
    ),
    _rule(
        "unknown-attribute",
        "seed",
        "the reference patch (HAS: other attributes ENXIO); v6 patch 15 adds 3 (INIT)",
        """KVM_ARM_VCPU_SPE_CTRL has attributes 0 (IRQ), 1 (SPU), 2
        (MAX_BUFFER_SIZE) and 3 (INIT) only: for any other HAS says no and SET
        and GET fail with ENXIO.""",
        case("unknown-attr-has", ONE, has(UNKNOWN, False)),
        case("unknown-attr-set", ONE, set_(UNKNOWN, 0, "ENXIO")),
        case("unknown-attr-get", ONE, get(UNKNOWN, "ENXIO")),
    ),
    _rule(
        "has",
        "seed",
        "the reference patch (HAS)",
        """On an SPE VCPU, HAS says yes for IRQ, SPU and MAX_BUFFER_SIZE, under
        either spelling, before anything is set. (INIT: rule init-has.)""",
        case("has-irq", ONE, has(IRQ, True)),
        case("has-spu", ONE, has(SPU, True)),
        case("has-max", ONE, has(MAX, True)),
        case("has-max-doc-spelling", ONE, has(MAX_DOC, True)),
    ),
    _rule(
        "both-spellings",
        "seed",
        "the reference patch (uapi header and documentation)",
        """KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE and KVM_ARM_VCPU_MAX_BUFFER_SIZE name
        one attribute (2): what is set under one name reads back under the other,
        and counts as set for both.""",
        case("spelling-set-max-get-doc", ONE, SPU_SET, set_(MAX, "PAGE * 2"), get(MAX_DOC, "PAGE * 2")),
        case("spelling-set-doc-get-max", ONE, SPU_SET, set_(MAX_DOC, "PAGE * 2"), get(MAX, "PAGE * 2")),
        case(
            "spelling-set-doc-then-different-max",
            ONE,
            SPU_SET,
            set_(MAX_DOC, "PAGE * 2"),
            set_(MAX, "PAGE * 4", "EINVAL"),
        ),
    ),
    _rule(
        "set-efault",
        "seed",
        "the reference patch (get_user of the u64: EFAULT); uapi (value behind addr)",
        """SET reads its value through kvm_device_attr.addr; a pointer the kernel
        cannot read gives EFAULT.""",
        case("efault-set-max", ONE, SPU_SET, set_(MAX, "BAD", "EFAULT")),
        case("efault-set-max-doc", ONE, SPU_SET, set_(MAX_DOC, "BAD", "EFAULT")),
        case("efault-set-spu", ONE, set_(SPU, "BAD", "EFAULT")),
        case("efault-set-irq", ONE, set_(IRQ, "BAD", "EFAULT")),
    ),
    _rule(
        "get-efault",
        "seed",
        "the reference patch (put_user of the value: EFAULT)",
        """GET writes the value through kvm_device_attr.addr; a pointer the kernel
        cannot write gives EFAULT, once there is a value to write.""",
        case("efault-get-max", ONE, SPU_SET, set_(MAX, "PAGE"), get(MAX, "EFAULT", addr="BAD")),
        case("efault-get-spu", ONE, SPU_SET, get(SPU, "EFAULT", addr="BAD")),
        case("efault-get-irq", ONE, IRQ_SET, get(IRQ, "EFAULT", addr="BAD")),
    ),
    # -- MAX_BUFFER_SIZE set, the reference patch's checks 1-7 -------------------------------------------
    _rule(
        "has-run",
        "seed",
        "the reference patch, SET check 1",
        """Once any VCPU of the VM has entered KVM_RUN, setting the max buffer size
        fails with EBUSY, even to the value already set.""",
        case("run-then-set-same", ONE, *READY, kvm_run(), set_(MAX, "PAGE * 2", "EBUSY")),
        case("run-then-set-different", ONE, *READY, kvm_run(), set_(MAX, "PAGE * 4", "EBUSY")),
        case(
            "run-other-vcpu-then-set",
            TWO_VCPUS,
            *READY,
            set_(IRQ, 21, vcpu=1),
            init(vcpu=1),
            kvm_run(vcpu=1),
            set_(MAX, "PAGE * 2", "EBUSY"),
        ),
    ),
    _rule(
        "page-aligned",
        "seed",
        "the reference patch, SET check 2",
        """A size that is not a multiple of the host page size (4, 16 or 64 KiB)
        gives EINVAL, even when it has an encoding; a multiple is accepted.""",
        case("unaligned-half-page", ONE, SPU_SET, set_(MAX, "PAGE // 2", "EINVAL")),
        case("unaligned-page-plus-one", ONE, SPU_SET, set_(MAX, "PAGE + 1", "EINVAL")),
        case("unaligned-16k-host-12k", PAGE_16K, SPU_SET, set_(MAX, 12 * 1024, "EINVAL")),
        case("aligned-16k-host-16k", PAGE_16K, SPU_SET, set_(MAX, 16 * 1024)),
        case("unaligned-64k-host-4k", PAGE_64K, SPU_SET, set_(MAX, 4096, "EINVAL")),
        case("unaligned-64k-host-2m-plus-32k", PAGE_64K, SPU_SET, set_(MAX, "2 * MiB + 32 * KiB", "EINVAL")),
        case("aligned-64k-host-64k", PAGE_64K, SPU_SET, set_(MAX, 65536)),
    ),
    _rule(
        "spu-assigned",
        "seed",
        "the reference patch, SET check 3",
        """Setting the max buffer size before an SPU is assigned to the VM gives
        ENODEV.""",
        case("no-spu-set-max", ONE, set_(MAX, "PAGE", "ENODEV")),
        case("no-spu-set-max-doc", ONE, set_(MAX_DOC, "PAGE", "ENODEV")),
    ),
    _rule(
        "already-set",
        "seed",
        "the reference patch, SET check 4",
        """Once the VM has a max buffer size, setting the same value again succeeds
        and changes nothing; a different value gives EINVAL and the first stays.""",
        case("set-same-twice", ONE, SPU_SET, set_(MAX, "PAGE"), set_(MAX, "PAGE"), get(MAX, "PAGE")),
        case("set-different", ONE, SPU_SET, set_(MAX, "PAGE"), set_(MAX, "PAGE * 2", "EINVAL")),
        case(
            "set-different-keeps-first",
            ONE,
            SPU_SET,
            set_(MAX, "PAGE"),
            set_(MAX, "PAGE * 2", "EINVAL"),
            get(MAX, "PAGE"),
        ),
        case("set-zero-then-page", UNLIMITED, SPU_SET, set_(MAX, 0), set_(MAX, "PAGE", "EINVAL")),
    ),
    _rule(
        "encodable",
        "seed",
        "the reference patch, SET check 5; Arm DDI0601 PMBIDR_EL1.MaxBuffSize",
        """A page-aligned size with no exact PMBIDR_EL1.MaxBuffSize encoding gives
        EDOM: from 4 MiB up only multiples of the band's step (8 KiB and more) are
        encodable, and nothing above 1023 << 42.""",
        case("unencodable-4m-plus-4k", PAGE_4K, SPU_SET, set_(MAX, "4 * MiB + 4 * KiB", "EDOM")),
        case("unencodable-first-above-page", ONE, SPU_SET, set_(MAX, "unrep(PAGE)", "EDOM")),
        case("unencodable-above-largest", UNLIMITED, SPU_SET, set_(MAX, "LARGEST + PAGE", "EDOM")),
        case("unencodable-u64-top", UNLIMITED, SPU_SET, set_(MAX, "2 ** 64 - PAGE", "EDOM")),
    ),
    _rule(
        "within-spu-limit",
        "seed",
        "the reference patch, SET check 6",
        """When the SPU has its own limit (its MaxBuffSize is not 0), 0 and any size
        above that limit give ERANGE; the limit itself is accepted. An SPU
        without a limit accepts 0 and the largest size.""",
        case("limit-zero", LIMITED, SPU_SET, set_(MAX, 0, "ERANGE")),
        case("limit-above", LIMITED, SPU_SET, set_(MAX, "next_size(LIMIT)", "ERANGE")),
        case("limit-double", LIMITED, SPU_SET, set_(MAX, "LIMIT * 2", "ERANGE")),
        case("limit-exact", LIMITED, SPU_SET, set_(MAX, "LIMIT"), get(MAX, "LIMIT")),
        case("no-limit-zero", UNLIMITED, SPU_SET, set_(MAX, 0), get(MAX, 0)),
        case("no-limit-largest", UNLIMITED, SPU_SET, set_(MAX, "LARGEST"), get(MAX, "LARGEST")),
    ),
    _rule(
        "stored",
        "seed",
        "the reference patch, SET check 7; Arm DDI0601 PMBIDR_EL1.MaxBuffSize",
        """A size that passes every check is stored and GET returns it; both ends of
        an exponent band are accepted.""",
        case("store-page", ONE, SPU_SET, set_(MAX, "PAGE"), get(MAX, "PAGE")),
        case("store-2m-minus-4k", UNLIMITED_4K, SPU_SET, set_(MAX, "2 * MiB - 4 * KiB")),
        case("store-2m", UNLIMITED, SPU_SET, set_(MAX, "2 * MiB"), get(MAX, "2 * MiB")),
        case("store-4m-minus-4k", UNLIMITED_4K, SPU_SET, set_(MAX, "4 * MiB - 4 * KiB")),
        case("store-8m-minus-8k", UNLIMITED_4K, SPU_SET, set_(MAX, "8 * MiB - 8 * KiB")),
        case(
            "store-1g-minus-step", UNLIMITED, SPU_SET, set_(MAX, "GiB - 2 * MiB"), get(MAX, "GiB - 2 * MiB")
        ),
    ),
    _rule(
        "memlock",
        "series",
        "v6 patch 33 (locked memory accounting for the SPE buffer)",
        """Setting the max buffer size accounts it against RLIMIT_MEMLOCK: a size
        larger than what the limit still allows gives ENOMEM; one that just fits
        is accepted.""",
        case("memlock-too-big", Setup(memlock="PAGE * 2"), SPU_SET, set_(MAX, "PAGE * 4", "ENOMEM")),
        case("memlock-fits", Setup(memlock="PAGE * 2"), SPU_SET, set_(MAX, "PAGE * 2"), get(MAX, "PAGE * 2")),
        case(
            "memlock-counts-locked",
            Setup(memlock="PAGE * 2", locked=1 << 20),
            SPU_SET,
            set_(MAX, "PAGE * 3", "ENOMEM"),
        ),
    ),
    # -- order of the checks -----------------------------------------------------------------------------
    _rule(
        "order",
        "seed",
        "the reference patch, order of the SET checks",
        """The SET checks run in the order 1 to 6: when two fail at once, the
        earlier one decides the errno.""",
        case("order-run-before-unaligned", ONE, *READY, kvm_run(), set_(MAX, "PAGE + 1", "EBUSY")),
        case("order-unaligned-before-no-spu", ONE, set_(MAX, "PAGE + 1", "EINVAL")),
        case("order-no-spu-before-unencodable", ONE, set_(MAX, "unrep(PAGE)", "ENODEV")),
        case(
            "order-different-before-unencodable",
            ONE,
            SPU_SET,
            set_(MAX, "PAGE"),
            set_(MAX, "unrep(PAGE)", "EINVAL"),
        ),
        case(
            "order-different-before-limit",
            LIMITED,
            SPU_SET,
            set_(MAX, "LIMIT"),
            set_(MAX, "LIMIT * 2", "EINVAL"),
        ),
        case("order-unencodable-before-limit", LIMITED, SPU_SET, set_(MAX, "unrep(LIMIT)", "EDOM")),
        case(
            "order-unaligned-before-unencodable", ONE, SPU_SET, set_(MAX, "4 * MiB + 4 * KiB + 1", "EINVAL")
        ),
    ),
    _rule(
        "order-group",
        "assumed",
        "the reference patch lists these errnos, not their place",
        """The group-level answers (no SPE: ENXIO; VCPU without the feature:
        ENODEV) come before reading the value (EFAULT), and reading it comes
        before checks 1-6.""",
        case("order-no-spe-before-efault", NO_SPE, set_(MAX, "BAD", "ENXIO")),
        case("order-no-spe-before-get-efault", NO_SPE, get(MAX, "ENXIO", addr="BAD")),
        case("order-no-feature-before-efault", NO_FEATURE, set_(MAX, "BAD", "ENODEV")),
        case("order-efault-before-has-run", ONE, *READY, kvm_run(), set_(MAX, "BAD", "EFAULT")),
        case("order-efault-before-no-spu", ONE, set_(MAX, "BAD", "EFAULT")),
    ),
    _rule(
        "order-memlock",
        "assumed",
        "v6 patch 33 (accounting at set time); assumed: charged once per VM",
        """The locked-memory check comes last: a size the SPU refuses gives ERANGE
        even over the limit, and setting the value already set succeeds even when
        the limit has dropped since.""",
        case(
            "order-limit-before-memlock",
            Setup(spus=(SpuSpec(16 << 20),), memlock="PAGE"),
            SPU_SET,
            set_(MAX, "LIMIT * 2", "ERANGE"),
        ),
        case(
            "order-same-before-memlock",
            ONE,
            SPU_SET,
            set_(MAX, "PAGE * 4"),
            setrlimit("PAGE"),
            set_(MAX, "PAGE * 4"),
        ),
    ),
    # -- get -------------------------------------------------------------------------------------------
    _rule(
        "get-unset",
        "seed",
        "the reference patch (GET of an unset value)",
        """GET of the max buffer size before it is set gives EINVAL (0 is a real
        value, so unset is not 0), even with a pointer the kernel cannot write.""",
        case("get-before-set", ONE, get(MAX, "EINVAL")),
        case("get-before-set-with-spu", ONE, SPU_SET, get(MAX_DOC, "EINVAL")),
        case("get-before-set-bad-pointer", ONE, get(MAX, "EINVAL", addr="BAD")),
    ),
    _rule(
        "per-vm",
        "seed",
        "the reference patch (one value per VM)",
        """There is one max buffer size per VM, shared by its VCPUs and settable
        through any of them: the other VCPUs read it, accept it again and refuse
        a different one.""",
        case(
            "per-vm-get-other-vcpu", TWO_VCPUS, SPU_SET, set_(MAX, "PAGE * 2"), get(MAX, "PAGE * 2", vcpu=1)
        ),
        case(
            "per-vm-same-other-vcpu", TWO_VCPUS, SPU_SET, set_(MAX, "PAGE * 2"), set_(MAX, "PAGE * 2", vcpu=1)
        ),
        case(
            "per-vm-different-other-vcpu",
            TWO_VCPUS,
            SPU_SET,
            set_(MAX, "PAGE * 2"),
            set_(MAX, "PAGE * 4", "EINVAL", vcpu=1),
        ),
        case("per-vm-spu-through-other-vcpu", TWO_VCPUS, set_(SPU, "SPU", vcpu=1), set_(MAX, "PAGE")),
    ),
    # -- SPU and IRQ ---------------------------------------------------------------------------------------
    _rule(
        "spu",
        "seed",
        "the reference patch (SPU documentation: a different one is an error)",
        """The SPU attribute names one SPE instance of the host; once the VM has
        one, setting the same again succeeds and a different one gives EINVAL.""",
        case("spu-set-get", ONE, SPU_SET, get(SPU, "SPU")),
        case("spu-same-twice", ONE, SPU_SET, SPU_SET),
        case("spu-different", TWO_SPUS, SPU_SET, set_(SPU, "SPU2", "EINVAL")),
        case("spu-different-keeps-first", TWO_SPUS, SPU_SET, set_(SPU, "SPU2", "EINVAL"), get(SPU, "SPU")),
    ),
    _rule(
        "spu-unknown",
        "measured",
        "KVM_ARM_VCPU_PMU_V3_SET_PMU with an unknown id: ENXIO, measured on Linux 7.2 arm64",
        """An id that is no SPE instance's perf PMU type gives ENXIO, whatever
        the VM's state: also once it has an SPU, and once it has run. (That the
        id is the perf PMU type is an assumption, by analogy with SET_PMU.)""",
        case("spu-unknown-id", ONE, set_(SPU, "NOSPU", "ENXIO")),
        case("spu-unknown-after-spu", ONE, SPU_SET, set_(SPU, "NOSPU", "ENXIO")),
        case("spu-unknown-after-run", ONE, *READY, kvm_run(), set_(SPU, "NOSPU", "ENXIO")),
    ),
    _rule(
        "spu-get-unset",
        "assumed",
        "as the PMU's GET of an unset IRQ (ENXIO, measured on Linux 7.2 arm64)",
        """GET of the SPU before one is assigned gives ENXIO.""",
        case("spu-get-unset", ONE, get(SPU, "ENXIO")),
    ),
    _rule(
        "irq",
        "series",
        "RFC v4/v5 KVM_ARM_VCPU_SPE_IRQ; the PMU's IRQ, measured on Linux 7.2 arm64",
        """The SPE interrupt is a PPI (INTID 16..31), the same on every VCPU of
        the VM; others give EINVAL. GET before it is set gives ENXIO.""",
        case("irq-set-get", ONE, IRQ_SET, get(IRQ, 21)),
        case("irq-not-ppi-low", ONE, set_(IRQ, 15, "EINVAL")),
        case("irq-not-ppi-high", ONE, set_(IRQ, 32, "EINVAL")),
        case("irq-differs-across-vcpus", TWO_VCPUS, IRQ_SET, set_(IRQ, 22, "EINVAL", vcpu=1)),
        case("irq-same-across-vcpus", TWO_VCPUS, IRQ_SET, set_(IRQ, 21, vcpu=1), get(IRQ, 21, vcpu=1)),
        case("irq-not-ppi-other-vcpu", TWO_VCPUS, IRQ_SET, set_(IRQ, 15, "EINVAL", vcpu=1)),
        case("irq-get-unset", ONE, get(IRQ, "ENXIO")),
    ),
    _rule(
        "irq-once",
        "series",
        "RFC v4/v5 (EBUSY when the VCPU has an interrupt); the PMU's IRQ set twice, even to the"
        " same value: EBUSY, measured on Linux 7.2 arm64",
        """A VCPU's SPE interrupt is set once: setting it again gives EBUSY, even
        to the same value, and the first stays. This is decided before the value
        is read, so a bad pointer or a non-PPI also gives EBUSY.""",
        case("irq-twice-same", ONE, IRQ_SET, set_(IRQ, 21, "EBUSY")),
        case("irq-twice-different", ONE, IRQ_SET, set_(IRQ, 22, "EBUSY"), get(IRQ, 21)),
        case("order-irq-once-before-efault", ONE, IRQ_SET, set_(IRQ, "BAD", "EBUSY")),
        case("order-irq-once-before-not-ppi", ONE, IRQ_SET, set_(IRQ, 15, "EBUSY")),
        case("irq-twice-after-run", ONE, *READY, kvm_run(), set_(IRQ, 21, "EBUSY")),
    ),
    _rule(
        "irq-needs-irqchip",
        "series",
        "RFC v4/v5 (ENXIO without an in-kernel irqchip)",
        """Without an in-kernel irqchip, setting the SPE interrupt gives ENXIO,
        before the value is read or checked.""",
        case("irq-without-irqchip", NO_IRQCHIP, set_(IRQ, 21, "ENXIO"), get(IRQ, "ENXIO")),
        case("order-irqchip-before-not-ppi", NO_IRQCHIP, set_(IRQ, 15, "ENXIO")),
        case("order-irqchip-before-efault", NO_IRQCHIP, set_(IRQ, "BAD", "ENXIO")),
    ),
    _rule(
        "irq-after-run",
        "measured",
        "the PMU's IRQ set after the first run: EBUSY, measured on Linux 7.2 arm64",
        """Once the VM has run, setting the SPE interrupt on any VCPU gives EBUSY,
        before the value is read or checked.""",
        case(
            "order-irq-has-run-before-efault",
            TWO_VCPUS,
            *READY,
            kvm_run(),
            set_(IRQ, "BAD", "EBUSY", vcpu=1),
        ),
        case(
            "order-irq-has-run-before-not-ppi", TWO_VCPUS, *READY, kvm_run(), set_(IRQ, 15, "EBUSY", vcpu=1)
        ),
        case(
            "order-irq-has-run-before-differs", TWO_VCPUS, *READY, kvm_run(), set_(IRQ, 22, "EBUSY", vcpu=1)
        ),
    ),
    # -- INIT ----------------------------------------------------------------------------------------------
    _rule(
        "init-has",
        "series",
        "v6 patch 15/35 (the attribute, by its title); RFC v5 KVM_ARM_VCPU_SPE_INIT",
        """On an SPE VCPU, HAS says yes for KVM_ARM_VCPU_SPE_INIT (attribute 3).""",
        case("has-init", ONE, has(INIT, True)),
    ),
    _rule(
        "init",
        "series",
        "v6 patch 15/35 by title; RFC v5 KVM_ARM_VCPU_SPE_INIT; as KVM_ARM_VCPU_PMU_V3_INIT",
        """INIT takes no value (addr is not read) and initialises SPE on the
        VCPU once its IRQ, the VM's SPU and the VM's max buffer size are set and
        the VM has its irqchip. Each VCPU is initialised on its own.""",
        case("init-configured", ONE, *CONFIGURE, init()),
        case("init-ignores-addr", ONE, *CONFIGURE, init(addr="BAD")),
        case(
            "init-per-vcpu",
            TWO_VCPUS,
            *READY,
            init("ENXIO", vcpu=1),
            set_(IRQ, 21, vcpu=1),
            init(vcpu=1),
        ),
    ),
    _rule(
        "init-needs-irq",
        "series",
        "RFC v5 (ENXIO while the IRQ is unset); PMU INIT before its IRQ: ENXIO, measured on Linux 7.2 arm64",
        """INIT before this VCPU's SPE interrupt is set gives ENXIO.""",
        case("init-without-irq", ONE, SPU_SET, set_(MAX, "PAGE * 2"), init("ENXIO")),
        case("init-unconfigured", ONE, init("ENXIO")),
    ),
    _rule(
        "init-needs-irqchip",
        "series",
        "RFC v5 (ENXIO while the vGIC is not initialised); the PMU answers ENODEV there,"
        " measured on Linux 7.2 arm64",
        """INIT on a VM without an in-kernel irqchip gives ENXIO (its interrupt
        cannot be set there either).""",
        case("init-without-irqchip", NO_IRQCHIP, SPU_SET, set_(MAX, "PAGE * 2"), init("ENXIO")),
    ),
    _rule(
        "init-needs-config",
        "assumed",
        'the reference patch ("Required."; ENXIO: "not properly configured")',
        """INIT before the VM's SPU or its max buffer size is set gives ENXIO.""",
        case("init-without-max", ONE, SPU_SET, IRQ_SET, init("ENXIO")),
        case("init-without-spu", ONE, IRQ_SET, init("ENXIO")),
    ),
    _rule(
        "init-once",
        "series",
        "RFC v5 (EBUSY when initialised); PMU INIT twice: EBUSY, measured on Linux 7.2 arm64",
        """INIT a second time gives EBUSY, and so does INIT once the VM has run,
        also on a VCPU that is not ready to initialise.""",
        case("init-twice", ONE, *READY, init("EBUSY")),
        case("init-after-run", ONE, *READY, kvm_run(), init("EBUSY")),
        case("order-init-has-run-before-needs-irq", TWO_VCPUS, *READY, kvm_run(), init("EBUSY", vcpu=1)),
    ),
    _rule(
        "init-get",
        "series",
        "RFC v5 (GET knows only the IRQ); PMU INIT has no GET either (ENXIO)",
        """GET of INIT gives ENXIO, before and after INIT: it has no value.""",
        case("init-get-before", ONE, get(INIT, "ENXIO")),
        case("init-get-after", ONE, *READY, get(INIT, "ENXIO")),
    ),
    # -- VCPU features ---------------------------------------------------------------------------------
    _rule(
        "features-per-vm",
        "measured",
        "KVM_ARM_VCPU_INIT with features other than the VM's: EINVAL, measured on Linux 7.2 arm64",
        """The VCPU features are the VM's: a VCPU initialised with the SPE feature
        in a VM whose first VCPU has none, or without it in a VM whose first VCPU
        has it, gives EINVAL at KVM_ARM_VCPU_INIT; one with the same features is
        accepted, and the first VCPU is unaffected.""",
        case("features-plain-in-spe-vm", ADD_TO_SPE_VM, create_vcpu(False, "EINVAL"), has(MAX, True)),
        case("features-spe-in-plain-vm", ADD_TO_PLAIN_VM, create_vcpu(True, "EINVAL")),
        case("features-same-spe", ADD_TO_SPE_VM, create_vcpu(True), has(MAX, True, vcpu=1)),
    ),
    # -- KVM_RUN -------------------------------------------------------------------------------------------
    _rule(
        "run-requires-init",
        "series",
        "RFC v5 (KVM_RUN of an SPE VCPU not initialised: EINVAL); KVM_RUN before PMU INIT:"
        " EINVAL, measured on Linux 7.2 arm64",
        """KVM_RUN on an SPE VCPU fails with EINVAL until SPE is initialised on it
        (which needs its IRQ, the VM's SPU and max buffer size); then it runs. A
        VCPU without the SPE feature needs none of them.""",
        case("run-unconfigured", ONE, kvm_run("EINVAL")),
        case("run-without-max", ONE, SPU_SET, IRQ_SET, kvm_run("EINVAL")),
        case("run-without-irq", ONE, SPU_SET, set_(MAX, "PAGE * 2"), kvm_run("EINVAL")),
        case("run-without-init", ONE, *CONFIGURE, kvm_run("EINVAL")),
        case(
            "run-other-vcpu-not-initialised",
            TWO_VCPUS,
            *READY,
            set_(IRQ, 21, vcpu=1),
            kvm_run("EINVAL", vcpu=1),
        ),
        case("run-configured", ONE, *READY, kvm_run()),
        case("run-no-feature", NO_FEATURE, kvm_run()),
    ),
    _rule(
        "fixed-after-run",
        "assumed",
        "the reference patch's SET check 1, extended to the SPU",
        """From the first KVM_RUN the SPU is fixed too (EBUSY for a known id), and
        every value still reads back.""",
        case("run-then-set-spu", ONE, *READY, kvm_run(), set_(SPU, "SPU", "EBUSY")),
        case("spu-different-after-run", TWO_SPUS, *READY, kvm_run(), set_(SPU, "SPU2", "EBUSY")),
        case("order-spu-efault-before-has-run", ONE, *READY, kvm_run(), set_(SPU, "BAD", "EFAULT")),
        case("run-then-get-max", ONE, *READY, kvm_run(), get(MAX, "PAGE * 2"), get(SPU, "SPU"), get(IRQ, 21)),
    ),
    # -- what the guest sees -----------------------------------------------------------------------------
    _rule(
        "guest-pmbidr",
        "series",
        "v6 patch 19 (trap PMBIDR_EL1); Arm DDI0601 MaxBuffSize",
        """The guest reads the VM's max buffer size back as PMBIDR_EL1.MaxBuffSize
        (KVM traps the read), in the architecture's encoding.""",
        case("guest-pmbidr-size", ONE, *CONFIGURE, guest_read("PMBIDR_EL1.MaxBuffSize", "enc(PAGE * 2)")),
        case(
            "guest-pmbidr-zero",
            UNLIMITED,
            SPU_SET,
            IRQ_SET,
            set_(MAX, 0),
            guest_read("PMBIDR_EL1.MaxBuffSize", 0),
        ),
        case(
            "guest-pmbidr-limit",
            LIMITED,
            SPU_SET,
            IRQ_SET,
            set_(MAX, "LIMIT"),
            guest_read("PMBIDR_EL1.MaxBuffSize", "enc(LIMIT)"),
        ),
    ),
)

#: Where the run-phase cases put the guest's buffer, and what the default
#: guest (4 KiB granule, 48-bit VA: 4 levels) pins for an 8 KiB buffer on a
#: 4 KiB host: 2 data pages and one table page per level.
PINNED_8K = "PAGE * 6"
ENABLED = (*READY, enable("PAGE * 2"))

#: The run phase: what the guest's buffer enable does (model only: it needs guest code).
RUN_PHASE: tuple[Requirement, ...] = (
    _rule(
        "run-pins",
        "series",
        "v6 patches 29 (pin the buffer, map it at stage 2) and 33",
        """When the guest enables its buffer, the next KVM_RUN pins the host pages
        behind the buffer and behind the stage-1 table pages that translate it,
        so VmLck grows by more than the buffer; the run goes on.""",
        case("pin-on-enable", ONE, *ENABLED, kvm_run(), vm_lck(PINNED_8K)),
    ),
    _rule(
        "run-rlimit",
        "series",
        "v6 patches 32 (KVM_EXIT_RLIMIT) and 33",
        """When what the enabled buffer needs pinned does not fit under
        RLIMIT_MEMLOCK, KVM_RUN returns 0 with exit reason KVM_EXIT_RLIMIT and
        the excess in bytes, and pins nothing; after userspace raises the limit
        the next KVM_RUN pins and goes on.""",
        case(
            "rlimit-exit",
            Setup(memlock="PAGE * 2"),
            *ENABLED,
            kvm_run("KVM_EXIT_RLIMIT excess=PAGE * 4"),
            vm_lck(0),
        ),
        case(
            "rlimit-raise-and-reenter",
            Setup(memlock="PAGE * 2"),
            *ENABLED,
            kvm_run("KVM_EXIT_RLIMIT excess=PAGE * 4"),
            setrlimit(PINNED_8K),
            kvm_run(),
            vm_lck(PINNED_8K),
        ),
    ),
    _rule(
        "run-rlimit-repeat",
        "assumed",
        "v6 patch 32; assumed: one exit per enable, the next KVM_RUN retries",
        """Re-entering without raising the limit exits with KVM_EXIT_RLIMIT again;
        the exit raises no guest-visible event.""",
        case(
            "rlimit-again",
            Setup(memlock="PAGE * 2"),
            *ENABLED,
            kvm_run("KVM_EXIT_RLIMIT excess=PAGE * 4"),
            kvm_run("KVM_EXIT_RLIMIT excess=PAGE * 4"),
            guest_read("PMBSR_EL1.S", 0),
        ),
    ),
    _rule(
        "vmlck-peak",
        "series",
        "v6 patch 33 (VmLck keeps its peak)",
        """VmLck is the peak of locked memory: it does not go down when the guest
        disables its buffer and KVM unpins it.""",
        case("vmlck-after-disable", ONE, *ENABLED, kvm_run(), disable(), kvm_run(), vm_lck(PINNED_8K)),
    ),
    _rule(
        "stage1-fault",
        "series",
        "v6 patch 29; PMBSR_EL1.EC (Arm architecture)",
        """A buffer address with no stage-1 translation at enable gives the guest a
        buffer management event with EC = stage-1 fault, and pins nothing.""",
        case(
            "stage1-unmapped",
            ONE,
            *READY,
            enable("PAGE * 2", unmapped=True),
            kvm_run(),
            guest_read("PMBSR_EL1.EC", 0b100100),
            guest_read("PMBSR_EL1.S", 1),
            vm_lck(0),
        ),
    ),
    _rule(
        "buffer-over-max",
        "arch",
        "PMBSR_EL1 BSC 0x4 (Arm architecture)",
        """A guest buffer larger than the advertised MaxBuffSize gives the guest a
        buffer management event (EC = 0, BSC = 0x4, S = 1), and pins nothing.""",
        case(
            "guest-buffer-too-big",
            ONE,
            *READY,
            enable("PAGE * 4"),
            kvm_run(),
            guest_read("PMBSR_EL1.EC", 0),
            guest_read("PMBSR_EL1.MSS", 4),
            guest_read("PMBSR_EL1.S", 1),
            vm_lck(0),
        ),
    ),
)

#: Every rule, each stated once.
RULE_LIST: tuple[Requirement, ...] = (*_ATTRIBUTE_RULES, *RUN_PHASE)
#: Every case, in the order of the rules.
CASES: tuple[Case, ...] = tuple(c for r in RULE_LIST for c in r.cases)


def by_name(names: Iterable[str]) -> tuple[Case, ...]:
    """The cases with these names, in the given order; refuses unknown names.

    ``names`` may be any iterable, an iterator included: it is read once.
    """
    names = tuple(names)
    index = {c.name: c for c in CASES}
    missing = [n for n in names if n not in index]
    if missing:
        raise ValueError(f"unknown conformance case(s): {', '.join(missing)}")
    return tuple(index[n] for n in names)


def _check_unique() -> None:
    seen: set[str] = set()
    for c in CASES:
        if c.name in seen:
            raise ValueError(f"conformance case {c.name!r} is defined twice")
        seen.add(c.name)
        for s in c.calls:
            if s.op not in OPS:
                raise ValueError(f"conformance case {c.name!r}: unknown op {s.op!r}")


_check_unique()
