"""Configuring SPE on a VCPU the way a VMM does: HAS, then SET, per attribute.

:func:`configure_spe` does what QEMU does for its PMU: for the SPE
interrupt, the SPU and the max buffer size, in that order, it asks
KVM_HAS_DEVICE_ATTR and then issues KVM_SET_DEVICE_ATTR, and last the same
for KVM_ARM_VCPU_SPE_INIT (v6 patch 15), which takes no value (``addr`` 0)
and, like KVM_ARM_VCPU_PMU_V3_INIT, comes after the values it depends on
(and after the VM's vGIC is initialised, on arm64). It stops at the first
step that fails with one clear :class:`SpeConfigError` naming that step.
It only uses ``has_device_attr`` and ``set_device_attr``, so it runs
unchanged on a model VCPU (:mod:`kvmspe.model.kernel`) and a real one
(:mod:`kvmspe.kvm`).

:func:`bring_up` is the whole sequence a VMM runs around it, on either
backend (:func:`choose_backend`): decide which host CPUs each VCPU may run on
(those of its SPU, :mod:`kvmspe.affinity`), plan, raise RLIMIT_MEMLOCK,
create the VM and its VCPUs, the vGIC, configure SPE on every VCPU, enter
each VCPU once from its own thread pinned to those CPUs and, when asked, let
the guest enable a buffer and handle KVM_EXIT_RLIMIT by raising the limit
and re-entering. It returns a :class:`BringUpResult`: every step as data,
and what the VM ended with.

The sequence is one for both backends: the kernel is a
:class:`kvmspe.backend.System` (a model ``Host`` or a real ``Kvm``), and what
differs between them (what the host is, x86's irqchip and arm64's vGIC, how
the VCPUs are entered) is asked of a backend object. On the real kernel the
VCPUs are entered by :class:`VcpuThreads`, one thread each.
"""

from __future__ import annotations

import enum
import errno
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, cast

from . import abi
from .affinity import AffinityError, describe_cpus, overcommit, pin_thread, vcpu_affinity
from .backend import AnyVcpu, GuestVcpu, GuestVm, System
from .errors import InvalidArgumentError, KvmError, KvmspeError
from .host.discovery import format_cpulist
from .units import format_limit, format_size, format_size_hex
from .validation import U64_MAX, check_int

if TYPE_CHECKING:
    from .arch.registers import FieldValue
    from .host.discovery import HostInfo
    from .kvm import Kvm
    from .kvm import Vcpu as KvmVcpu
    from .kvm import Vm as KvmVm
    from .model.kernel import Host

__all__ = [
    "ORDER",
    "RLIMIT_REENTRIES",
    "VCPU_READY_TIMEOUT",
    "VCPU_THREAD_TIMEOUT",
    "BackendChoice",
    "BringUpResult",
    "BringUpStep",
    "StepKind",
    "SpeConfigError",
    "ConfigStep",
    "VcpuThreads",
    "bring_up",
    "choose_backend",
    "configure_spe",
    "planned_steps",
]


@dataclass(frozen=True)
class ConfigStep:
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

    def __init__(self, message: str, step: ConfigStep, error: KvmError):
        super().__init__(message)
        self.step = step
        self.error = error
        self.errno = error.errno


def _not_supported(step: ConfigStep) -> SpeConfigError:
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


def planned_steps(irq: int, spu: int, max_buffer_size: int) -> list[ConfigStep]:
    """Every step :func:`configure_spe` takes when all succeed, in order."""
    values = {
        abi.KVM_ARM_VCPU_SPE_IRQ: irq,
        abi.KVM_ARM_VCPU_SPE_SPU: spu,
        abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE: max_buffer_size,
    }
    out: list[ConfigStep] = []
    for attr, _ in ORDER:
        out += [ConfigStep("has", attr), ConfigStep("set", attr, values.get(attr))]
    return out


def configure_spe(vcpu: AnyVcpu, *, irq: int, spu: int, max_buffer_size: int) -> list[ConfigStep]:
    """Give ``vcpu`` its SPE interrupt, SPU and max buffer size, then
    initialise SPE on it: HAS then SET each, KVM_ARM_VCPU_SPE_INIT last
    (no value: ``set_device_attr(group, attr, None)``).

    Returns the steps done, in order. A ``vcpu`` without those two methods,
    or a value that is not an int of its attribute's C type (``irq`` and
    ``spu`` a C int, ``max_buffer_size`` a __u64), is refused with
    :class:`~kvmspe.errors.InvalidArgumentError` naming the argument, before
    any call. Raises
    :class:`SpeConfigError` at the first failing step: "SPE not supported by
    this host's KVM" when HAS says no, else e.g. ``cannot set
    KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE=0x401000: EDOM: ...``.
    """
    if not all(callable(getattr(vcpu, m, None)) for m in ("has_device_attr", "set_device_attr")):
        raise InvalidArgumentError(
            f"vcpu must be a VCPU, got {type(vcpu).__name__}; accepted: a kvmspe.kvm.Vcpu, a"
            " kvmspe.model.kernel.Vcpu, or any object with has_device_attr and set_device_attr"
        )
    plan: list[tuple[int, int | None]] = list(_check_values(irq, spu, max_buffer_size).items())
    plan.append((abi.KVM_ARM_VCPU_SPE_INIT, None))
    done: list[ConfigStep] = []
    for attr, value in plan:
        has = ConfigStep("has", attr)
        try:
            known = vcpu.has_device_attr(has.group, attr)
        except KvmError as exc:
            raise SpeConfigError(f"cannot query {has.attr_name}: {exc}", has, exc) from exc
        if not known:
            raise _not_supported(has)
        done.append(has)
        put = ConfigStep("set", attr, value)
        try:
            vcpu.set_device_attr(put.group, attr, value)
        except KvmError as exc:
            raise SpeConfigError(f"cannot {put.name}: {exc}", put, exc) from exc
        done.append(put)
    return done


def _check_values(irq: object, spu: object, max_buffer_size: object) -> dict[int, int]:
    """The three values by attribute, each an int of its attribute's C type, else
    InvalidArgumentError naming the argument."""
    out: dict[int, int] = {}
    for name, attr, value in (
        ("irq", abi.KVM_ARM_VCPU_SPE_IRQ, irq),
        ("spu", abi.KVM_ARM_VCPU_SPE_SPU, spu),
        ("max_buffer_size", abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE, max_buffer_size),
    ):
        info = abi.attr_info(abi.KVM_ARM_VCPU_SPE_CTRL, attr)
        assert info is not None
        if info.value is abi.U64:
            out[attr] = check_int(f"{name} (a __u64, for {info.name})", value, 0, U64_MAX)
        else:
            out[attr] = check_int(f"{name} (a C int, for {info.name})", value, -(1 << 31), (1 << 31) - 1)
    return out


# --- the whole bring-up -----------------------------------------------------------------------


@dataclass(frozen=True)
class BackendChoice:
    """Which kernel :func:`bring_up` talks to, and why.

    ``name`` is ``"kvm"`` (this host's /dev/kvm) or ``"model"`` (``host``, a
    model :class:`~kvmspe.model.kernel.Host`); ``info`` is what discovery found, or
    None when nothing was probed.
    """

    name: Literal["kvm", "model"]
    reason: str
    host: Host | None = None
    info: HostInfo | None = None


def choose_backend(
    backend: Literal["auto", "kvm", "model"] = "auto",
    *,
    profile: str | None = None,
    memlock_limit: int | None = None,
    locked: int = 0,
) -> BackendChoice:
    """The backend ``backend`` asks for: ``"auto"`` takes the real kernel when
    discovery says it supports SPE, else a model of this host (or of
    ``profile``). ``memlock_limit`` is the model's RLIMIT_MEMLOCK; None reads
    this process's soft limit. ``locked`` is memory the model's VMM has
    locked already. A bad argument (an unknown ``backend`` or ``profile``, a
    limit that is not None or a byte count) is refused with
    :class:`~kvmspe.errors.InvalidArgumentError` naming it, before anything
    is probed."""
    from .host import discovery, memlock, profiles

    if not isinstance(backend, str) or backend not in ("auto", "kvm", "model"):
        raise InvalidArgumentError(f"backend {backend!r} is unknown; accepted: 'auto', 'kvm', 'model'")
    if profile is not None and (not isinstance(profile, str) or profile not in profiles.PROFILES):
        raise InvalidArgumentError(
            f"unknown host profile {profile!r}; accepted: {', '.join(profiles.PROFILES)}"
        )
    if memlock_limit is not None:
        check_int("memlock_limit (None: this process's soft limit)", memlock_limit, 0, U64_MAX)
    check_int("locked", locked, 0, U64_MAX)
    abi.ASSUMED.check()  # a bad assumed number stops here, before anything is probed
    info = discovery.discover() if backend != "model" or profile is None else None
    if backend == "kvm":
        assert info is not None
        return BackendChoice("kvm", "asked for with --backend kvm", None, info)
    if backend == "auto" and info is not None and info.spe_supported:
        return BackendChoice("kvm", f"this host's KVM supports SPE ({info.spe_reason})", None, info)
    limit = memlock_limit if memlock_limit is not None else memlock.status().soft
    why = (
        "asked for with --backend model"
        if backend == "model"
        else f"the real kernel cannot: {info.spe_reason if info is not None else 'not probed'}"
    )
    if profile is not None:
        host = profiles.model_host(profile, memlock_limit=limit, locked=locked)
        return BackendChoice("model", f"{why}; modelling profile {profile!r}", host, info)
    host, modelling = profiles.fallback_host(info, memlock_limit=limit, locked=locked)
    return BackendChoice("model", f"{why}; {modelling}", host, info)


class StepKind(enum.Enum):
    """What a bring-up step is: a HAS or a SET of the SPE configuration
    (:class:`ConfigStep`), or any other step."""

    HAS = "has"
    SET = "set"
    OTHER = "other"


@dataclass(frozen=True)
class BringUpStep:
    """One step of :func:`bring_up` as it happened.

    ``vcpu`` is the VCPU's index for per-VCPU steps. ``errno_name`` is the
    kernel's errno (e.g. ``"EDOM"``) when a configuration step was refused.
    ``kind`` tells the configuration's HAS and SET steps from the others.
    """

    step: str
    ok: bool
    detail: str = ""
    vcpu: int | None = None
    errno_name: str | None = None
    kind: StepKind = StepKind.OTHER


#: How many times a VCPU is re-entered after KVM_EXIT_RLIMIT, each time with the
#: limit raised by the excess reported, before the VMM gives up.
RLIMIT_REENTRIES = 8

#: How long (seconds) a VCPU thread of the real backend waits for every other
#: VCPU thread to be pinned before it enters the guest; then none enters.
VCPU_READY_TIMEOUT = 5.0
#: How long (seconds) the VMM waits for its VCPU threads, all together, to pin
#: themselves and make their first KVM_RUN: more than :data:`VCPU_READY_TIMEOUT`
#: plus :data:`kvmspe.kvm.RUN_TIMEOUT` (the runs are in parallel).
VCPU_THREAD_TIMEOUT = 10.0


@dataclass
class BringUpResult:
    """What :func:`bring_up` did and what the VM ended with.

    ``error`` is one line saying why it stopped (None when every step
    succeeded); ``stop`` names the kind of stop a caller may want to advise
    on: ``"rlimit"`` when KVM_EXIT_RLIMIT came and ``raise_memlock`` was off.
    The guest's view and the pinned memory are known on the model, and on
    the real backend under kvmspe's shim (whose model is the guest).

    ``spu_cpus`` are the host CPUs that have the SPU (empty: not known, with
    ``cpus_unknown`` saying why); ``vcpu_cpus`` the CPUs each VCPU may run
    on, decided before anything is created (empty when strict placement
    refused more VCPUs than the SPU has CPUs; an empty tuple per VCPU when
    the SPU's CPUs are not known). ``warnings`` are what the bring-up did
    that costs: overcommit of the SPU's CPUs (:func:`kvmspe.affinity.overcommit`).
    ``vcpu_thread_cpus`` is, on the real backend, the CPU set each VCPU's thread read back with
    ``sched_getaffinity`` after pinning itself, just before its KVM_RUN
    (None on the model, or for a thread that did not pin or report).
    """

    backend: BackendChoice
    vcpus: int
    irq: int
    spu: int
    max_buffer_size: int
    page_size: int
    steps: list[BringUpStep] = field(default_factory=list)
    ok: bool = False
    error: str | None = None
    stop: Literal["rlimit"] | None = None
    guest_pmbidr: int | None = None
    pinned_per_vcpu: list[int] | None = None
    locked_bytes: int | None = None
    vm_lck: int | None = None
    memlock_limit: int | None = None
    spu_cpus: tuple[int, ...] = ()
    cpus_unknown: str | None = None
    vcpu_cpus: list[tuple[int, ...]] = field(default_factory=list)
    vcpu_thread_cpus: list[tuple[int, ...] | None] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def guest_pmbidr_fields(self) -> dict[str, FieldValue] | None:
        """PMBIDR_EL1 as the guest reads it, field by field."""
        from .arch.registers import PMBIDR_EL1

        return None if self.guest_pmbidr is None else PMBIDR_EL1.decode(self.guest_pmbidr)

    @property
    def guest_max_buffer_size(self) -> int | None:
        """The max buffer size the guest's PMBIDR_EL1.MaxBuffSize says."""
        from .arch import maxbuf
        from .arch.registers import PMBIDR_EL1

        if self.guest_pmbidr is None:
            return None
        return maxbuf.decode(PMBIDR_EL1.get(self.guest_pmbidr, "MaxBuffSize"))

    def add(
        self,
        step: str,
        ok: bool,
        detail: str = "",
        vcpu: int | None = None,
        errno_name: str | None = None,
        kind: StepKind = StepKind.OTHER,
    ) -> None:
        self.steps.append(BringUpStep(step, ok, detail, vcpu, errno_name, kind))

    def _stop(self, error: str, stop: Literal["rlimit"] | None = None) -> BringUpResult:
        self.ok, self.error, self.stop = False, " ".join(error.split()), stop
        return self


class _Limit:
    """RLIMIT_MEMLOCK as the backend has it: the model host's, or this process's."""

    def __init__(self, result: BringUpResult, backend: _Backend):
        self.result = result
        self.backend = backend

    def get(self) -> int | None:
        return self.backend.memlock_limit()

    def raise_to(self, nbytes: int, why: str) -> bool:
        before = self.get()
        refused = self.backend.raise_memlock(before, nbytes)
        if refused is not None:
            self.result.add("raise RLIMIT_MEMLOCK", False, " ".join(refused.split()))
            return False
        change = f"{format_limit(before)} -> {format_limit(self.get())}"
        self.result.add("raise RLIMIT_MEMLOCK", True, f"{change}: {why}")
        return True


def bring_up(
    choice: BackendChoice,
    *,
    vcpus: int = 1,
    irq: int,
    spu: int | None = None,
    max_buffer_size: int,
    raise_memlock: bool = False,
    case: str | None = None,
    enable_buffer: int | None = None,
    strict_placement: bool = False,
) -> BringUpResult:
    """Bring up a VM with SPE on ``vcpus`` VCPUs as a VMM does, on ``choice``'s backend.

    In order: decide the host CPUs each VCPU may run on, all those of its SPU
    (:func:`kvmspe.affinity.vcpu_affinity`; more VCPUs than the SPU has CPUs is a warning saying what it
    costs, and with ``strict_placement`` stops the bring-up here, step "VCPU affinity", before anything
    is created or raised); with ``raise_memlock``, raise RLIMIT_MEMLOCK to the planner's worst case (or
    ``case``); create the VM and its VCPUs with the SPE feature; on arm64 the vGIC (the SPE interrupt
    needs it); :func:`configure_spe` on every VCPU; enter every VCPU once (KVM_RUN). On the real backend
    each VCPU enters from its own thread, which first pins itself to its CPUs (``sched_setaffinity``; a
    CPU set the OS refuses stops the bring-up before any VCPU enters); the model reports what it would
    pin. An SPU whose CPUs are not known leaves the threads unpinned, and says why. A VCPU thread still
    running when the wait for them ends (:data:`VCPU_THREAD_TIMEOUT`) is recorded as a failing step; its
    VCPU is closed only once it ends, and, if it is still in a bounded KVM_RUN, the SIGALRM handler
    installed for the threads stays installed (see :func:`kvmspe.kvm.run_timer_handler`). Called on the
    real backend from a thread other than the main one, it needs a Python SIGALRM handler installed
    (only the main thread can install one); without, it stops before anything is created, step "VCPU
    threads". With ``enable_buffer`` (a size; 0 means ``max_buffer_size``), which only the model can
    simulate, the guest then enables a buffer on every VCPU, and each KVM_EXIT_RLIMIT is answered, with
    ``raise_memlock``, by raising the limit by the excess and re-entering (at most
    :data:`RLIMIT_REENTRIES` times).

    ``spu`` None takes the host's first SPU. A refusal of the kernel (real or modelled) ends the
    bring-up with ``ok`` False and the failing step recorded; nothing is raised for it. Every argument
    is checked before anything runs: a ``choice`` that is not a :class:`BackendChoice`, a ``vcpus`` that
    is not an int from 1, a value that is not an int of its attribute's C type, a ``raise_memlock`` that
    is not a bool, an unknown ``case`` or a bad ``enable_buffer`` raise
    :class:`~kvmspe.errors.InvalidArgumentError` (a ValueError) naming the argument; a bad ``KVMSPE_*``
    number :class:`~kvmspe.abi.AssumedNumberError`.
    """
    case = _check_bring_up(choice, vcpus, irq, spu, max_buffer_size, raise_memlock, case)
    backend = _backend(choice)
    if enable_buffer is not None:
        _check_enable_buffer(backend, enable_buffer, max_buffer_size)
    spus = backend.spus()
    chosen_spu = spu if spu is not None else (spus[0] if spus else 0)
    spu_limit, locked = backend.spu_limit(chosen_spu), backend.locked()
    result = BringUpResult(choice, vcpus, irq, chosen_spu, max_buffer_size, backend.page_size())
    result.spu_cpus, result.cpus_unknown = backend.spu_cpus(chosen_spu)
    result.add(f"backend: {choice.name}", True, choice.reason)
    if not _decide_affinity(result, strict_placement) or not _bounded(result, backend):
        return result
    limit = _Limit(result, backend)
    if raise_memlock and not _raise_for_plan(result, limit, spu_limit, locked, case):
        return result
    return _bring_up_vm(result, backend, limit, raise_memlock, enable_buffer)


def _bounded(result: BringUpResult, backend: _Backend) -> bool:
    """Whether the VCPUs' runs can be bounded from here, else the step "VCPU threads"
    fails and ``result`` stops, before anything is created."""
    unbounded = backend.unbounded()
    if unbounded is not None:
        result.add("VCPU threads", False, unbounded)
        result._stop(unbounded)
        return False
    return True


def _raise_for_plan(result: BringUpResult, limit: _Limit, spu_limit: int, locked: int, case: str) -> bool:
    """Raise RLIMIT_MEMLOCK to what the planner's ``case`` needs; False (and
    ``result`` stopped) when it could not be raised."""
    from . import planner

    p = planner.plan(
        result.vcpus,
        result.max_buffer_size,
        page_size=result.page_size,
        spu_limit=spu_limit,
        locked_already=locked,
        case=case,
    )
    if p.memlock_limit is None:
        result.add("raise RLIMIT_MEMLOCK", True, "not bounded: max buffer size 0 means no limit")
    elif not limit.raise_to(p.memlock_limit, f"the planner's {case} case"):
        result._stop("RLIMIT_MEMLOCK could not be raised")
        return False
    return True


def _check_bring_up(
    choice: object,
    vcpus: object,
    irq: object,
    spu: object,
    max_buffer_size: object,
    raise_memlock: object,
    case: str | None,
) -> str:
    """Refuse a bad argument of :func:`bring_up` by name, before anything runs; the case to plan for."""
    from . import planner

    if not isinstance(choice, BackendChoice):
        raise InvalidArgumentError(
            f"choice must be a kvmspe.vmm.BackendChoice, got {type(choice).__name__};"
            " accepted: what choose_backend() returns"
        )
    check_int("vcpus", vcpus, 1, planner.MAX_VCPUS)
    _check_values(irq, 0 if spu is None else spu, max_buffer_size)
    if not isinstance(raise_memlock, bool):
        raise InvalidArgumentError(
            f"raise_memlock must be a bool, got {raise_memlock!r}; accepted: True or False"
        )
    checked = planner.check_case(planner.DEFAULT_CASE if case is None else case)
    abi.ASSUMED.check()  # a bad assumed number stops here, before anything runs
    return checked


def _check_enable_buffer(backend: _Backend, enable_buffer: int, max_buffer_size: int) -> None:
    """Refuse an ``enable_buffer`` that is not a buffer size, or that this backend cannot script."""
    check_int("enable_buffer (0: the max buffer size)", enable_buffer, 0, U64_MAX)
    if not backend.scripts_guest():
        raise InvalidArgumentError(
            "enable_buffer simulates the guest, which only the model can, or the real backend"
            " under kvmspe's shim (kvmspe shim run); accepted: None on the real kernel otherwise"
        )
    size = enable_buffer or max_buffer_size
    if size == 0 or size % 4096:
        raise InvalidArgumentError(
            f"enable_buffer {size:#x} is not a buffer size; accepted: a non-zero multiple of 4 KiB"
        )


def _bring_up_vm(
    result: BringUpResult, backend: _Backend, limit: _Limit, raise_memlock: bool, enable_buffer: int | None
) -> BringUpResult:
    """The bring-up proper, the same sequence on either backend: the VM, its VCPUs,
    SPE on each, one entry each, and with ``enable_buffer`` the guest's buffers."""
    try:
        vm = backend.open().create_vm()
        result.add("KVM_CREATE_VM", True)
        backend.before_vcpus(result, vm)
        vcpus = []
        for i in range(result.vcpus):
            vcpus.append(vm.create_vcpu(i, spe=True))
            result.add(backend.vcpu_step(), True, vcpu=i)
        backend.after_vcpus(result, vm)
        if not _configure_all(result, vcpus) or not backend.enter(result, vcpus):
            return result
        if enable_buffer is not None:
            size = enable_buffer or result.max_buffer_size
            _enable_buffers(result, backend, vcpus, size, limit, raise_memlock)
        return backend.finish(result, vcpus, limit, enable_buffer is not None)
    except KvmError as exc:
        step, detail, error = backend.refusal(exc)
        result.add(step, False, detail)
        return result._stop(error)
    finally:
        backend.close()


def _guest_scriptable() -> bool:
    """Whether the real backend's guest can be scripted: only under kvmspe's shim."""
    from .kvm import guest

    return guest.available()


def _real_spu_cpus(info: HostInfo, spu: int) -> tuple[tuple[int, ...], str | None]:
    """The host CPUs that have SPU ``spu`` on the real kernel, or no CPU and why
    they are not known: the ``arm_spe_N`` whose perf type is ``spu`` (the SPU
    id is assumed to be the perf type), its ``cpumask``. An id the host does
    not show is left to the kernel to refuse (KVM_ARM_VCPU_SPE_SPU); here its
    CPUs are just not known.
    """
    inst = next((i for i in info.spe_instances if i.type == spu), None)
    if inst is None:
        shown = ", ".join(f"{i.name} (perf type {i.type})" for i in info.spe_instances)
        why = f"this host shows {shown}" if shown else info.spe_instances_reason or "no SPE unit"
        return (), f"no arm_spe_N of perf type {spu}: {why} (KVM_ARM_VCPU_SPE_SPU decides whether it exists)"
    if not inst.cpus:
        problems = [p for p in inst.problems if p.startswith("cpumask")]
        why = "; ".join(problems) if problems else f"its cpumask is {inst.cpumask!r}"
        return (), f"{inst.name}'s CPUs are not known: {why}"
    return tuple(inst.cpus), None


def _runs_cannot_be_bounded() -> str | None:
    """Why the VCPU threads' KVM_RUN could not be bounded from here, or None.

    Their timer interrupts them with SIGALRM, which needs a Python handler;
    :func:`~kvmspe.kvm.run_timer_handler` installs one only in the main
    thread. Checked before anything is created, so that a library caller in
    another thread is told what to do instead of seeing every VCPU fail.
    """
    import signal

    if threading.current_thread() is threading.main_thread():
        return None
    if signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, signal.SIG_IGN, None):
        return None
    return (
        "the real backend is brought up from a thread other than the main one and SIGALRM has no"
        " Python handler, so the VCPU threads' KVM_RUN could not be bounded: call bring_up from the"
        " main thread, or install a SIGALRM handler there first"
        " (signal.signal(signal.SIGALRM, lambda *_: None))"
    )


def _decide_affinity(result: BringUpResult, strict: bool) -> bool:
    """Which CPUs each VCPU may run on, recorded as the step "VCPU affinity";
    False (and ``result`` stopped) when strict placement finds too few CPUs for the VCPUs."""
    try:
        result.vcpu_cpus = vcpu_affinity(result.vcpus, result.spu, result.spu_cpus, strict=strict)
    except AffinityError as exc:
        result.add("VCPU affinity", False, str(exc))
        result._stop(str(exc))
        return False
    cpus = result.spu_cpus
    cost = overcommit(result.vcpus, result.spu, cpus)
    if cost is not None:
        result.warnings.append(cost)
        detail = f"SPU {result.spu} is on {describe_cpus(cpus)}: each VCPU may run on any of them; overcommit"
    elif cpus:
        detail = f"SPU {result.spu} is on {describe_cpus(cpus)}: each VCPU may run on any of them"
    else:
        detail = f"not known, so the VCPU threads are not pinned: {result.cpus_unknown}"
    result.add("VCPU affinity", True, detail)
    return True


def _not_pinned(result: BringUpResult) -> str:
    """The step detail of a VCPU thread left unpinned: why."""
    return f"the CPUs of SPU {result.spu} are not known: {result.cpus_unknown}"


def _configure_all(result: BringUpResult, vcpus: Sequence[AnyVcpu]) -> bool:
    """:func:`configure_spe` on every VCPU, each step recorded; False at the first refusal."""
    for vcpu in vcpus:
        index = vcpu.index
        try:
            done = configure_spe(vcpu, irq=result.irq, spu=result.spu, max_buffer_size=result.max_buffer_size)
        except SpeConfigError as exc:
            planned = planned_steps(result.irq, result.spu, result.max_buffer_size)
            for step in planned[: planned.index(exc.step)] if exc.step in planned else []:
                result.add(step.name, True, vcpu=index, kind=StepKind(step.call))
            kind = StepKind(exc.step.call)
            result.add(exc.step.name, False, str(exc.error), vcpu=index, errno_name=exc.error.name, kind=kind)
            result._stop(str(exc))
            return False
        for step in done:
            result.add(step.name, True, vcpu=index, kind=StepKind(step.call))
    return True


# --- the two backends, as the bring-up drives them ---------------------------------------------


class _Backend(Protocol):
    """What :func:`bring_up` asks of a backend beyond the kernel's own interface.

    The kernel is a :class:`kvmspe.backend.System` (a model ``Host``, a real
    ``Kvm``); around it, what the host is (its SPUs, page size, the CPUs of an
    SPU, RLIMIT_MEMLOCK), the steps only one kernel takes (x86's irqchip,
    arm64's vGIC), how the VCPUs are entered, and what the VM ended with.
    """

    def spus(self) -> list[int]:
        """The host's SPU ids, first the one taken when none is asked for."""
        ...

    def page_size(self) -> int: ...

    def spu_limit(self, spu: int) -> int:
        """The SPU's own max buffer size, for the planner (0: not known)."""
        ...

    def locked(self) -> int:
        """Memory the VMM has locked already."""
        ...

    def spu_cpus(self, spu: int) -> tuple[tuple[int, ...], str | None]:
        """The host CPUs that have SPU ``spu``, or no CPU and why they are not known."""
        ...

    def unbounded(self) -> str | None:
        """Why the VCPUs' runs could not be bounded from here, or None."""
        ...

    def scripts_guest(self) -> bool:
        """Whether the guest's side can be scripted (``enable_buffer``)."""
        ...

    def memlock_limit(self) -> int | None: ...

    def raise_memlock(self, before: int | None, nbytes: int) -> str | None:
        """Raise RLIMIT_MEMLOCK to ``nbytes``: None when done, else why not."""
        ...

    def open(self) -> System:
        """The kernel the VM is created on."""
        ...

    def before_vcpus(self, result: BringUpResult, vm: GuestVm) -> None:
        """What the VM needs before its VCPUs exist."""
        ...

    def vcpu_step(self) -> str:
        """The step recorded for each VCPU created."""
        ...

    def after_vcpus(self, result: BringUpResult, vm: GuestVm) -> None:
        """What the VM needs once every VCPU exists, before SPE is configured."""
        ...

    def enter(self, result: BringUpResult, vcpus: Sequence[GuestVcpu]) -> bool:
        """Enter every VCPU once, each step recorded; False when stopped."""
        ...

    def run_once(self, vcpu: GuestVcpu) -> abi.Exit:
        """KVM_RUN once; a run ended by its timer counts as KVM_EXIT_INTR (it entered)."""
        ...

    def finish(
        self, result: BringUpResult, vcpus: Sequence[GuestVcpu], limit: _Limit, buffers: bool
    ) -> BringUpResult:
        """What the VM ended with (the guest's view, pinned and locked memory), and ``ok``."""
        ...

    def refusal(self, exc: KvmError) -> tuple[str, str, str]:
        """A refusal of the kernel as the failing step, its detail and the error."""
        ...

    def close(self) -> None:
        """Release the kernel's objects, once no VCPU is running."""
        ...


def _backend(choice: BackendChoice) -> _Backend:
    """The backend ``choice`` names: its model host, else this host's /dev/kvm."""
    if choice.host is not None:
        return _ModelBackend(choice.host)
    return _KvmBackend(choice.info)


class _ModelBackend(_Backend):
    """The model: its host is the kernel, and the main thread runs every VCPU."""

    def __init__(self, host: Host):
        self.host = host

    def spus(self) -> list[int]:
        return [s.id for s in self.host.spus]

    def page_size(self) -> int:
        return self.host.page_size

    def spu_limit(self, spu: int) -> int:
        return next((s.max_buffer_size for s in self.host.spus if s.id == spu), 0)

    def locked(self) -> int:
        return self.host.locked_bytes

    def spu_cpus(self, spu: int) -> tuple[tuple[int, ...], str | None]:
        spu_ = next((s for s in self.host.spus if s.id == spu), None)
        if spu_ is None:
            return (), f"the modelled host has no SPU {spu} (KVM_ARM_VCPU_SPE_SPU decides whether it exists)"
        if not spu_.cpus:
            return (), f"the modelled SPU {spu} has no CPU list (its cpumask was not read)"
        return spu_.cpus, None

    def unbounded(self) -> str | None:
        return None

    def scripts_guest(self) -> bool:
        return True

    def memlock_limit(self) -> int | None:
        return self.host.memlock_limit

    def raise_memlock(self, before: int | None, nbytes: int) -> str | None:
        if before is not None and before < nbytes:
            self.host.set_memlock_limit(nbytes)
        return None

    def open(self) -> System:
        return self.host

    def before_vcpus(self, result: BringUpResult, vm: GuestVm) -> None:
        """The model's irqchip is ready whenever a call needs it."""

    def vcpu_step(self) -> str:
        return "KVM_CREATE_VCPU with the SPE feature"

    def after_vcpus(self, result: BringUpResult, vm: GuestVm) -> None:
        """No vGIC to create: see :meth:`before_vcpus`."""

    def enter(self, result: BringUpResult, vcpus: Sequence[GuestVcpu]) -> bool:
        # What a VMM's VCPU threads would do here; the model runs no thread.
        for vcpu, cpus in zip(vcpus, result.vcpu_cpus, strict=True):
            if cpus:
                result.add(f"would pin VCPU thread to CPUs {format_cpulist(cpus)}", True, vcpu=vcpu.index)
            else:
                result.add("VCPU thread not pinned", True, _not_pinned(result), vcpu=vcpu.index)
        for vcpu in vcpus:
            result.add("KVM_RUN (first entry)", True, f"exit {vcpu.run().name}", vcpu=vcpu.index)
        return True

    def run_once(self, vcpu: GuestVcpu) -> abi.Exit:
        return vcpu.run()

    def finish(
        self, result: BringUpResult, vcpus: Sequence[GuestVcpu], limit: _Limit, buffers: bool
    ) -> BringUpResult:
        result.guest_pmbidr = vcpus[0].guest_read("PMBIDR_EL1")
        result.pinned_per_vcpu = [v.pinned_bytes for v in vcpus]
        result.locked_bytes, result.vm_lck = self.host.locked_bytes, self.host.vm_lck
        result.memlock_limit = limit.get()
        result.ok = result.error is None
        return result

    def refusal(self, exc: KvmError) -> tuple[str, str, str]:
        return exc.ioctl or "ioctl", str(exc), str(exc)

    def close(self) -> None:
        """The model's VM stays: its host's accounting is what the result shows."""


class _KvmBackend(_Backend):
    """This host's /dev/kvm: each VCPU enters from a thread of its own, pinned to its SPU's CPUs."""

    def __init__(self, info: HostInfo | None):
        self.info = info
        self.kvm: Kvm | None = None
        #: VCPU threads the bring-up stopped waiting for: the VM is closed once they end.
        self.running: list[threading.Event] = []

    def _info(self) -> HostInfo:
        assert self.info is not None
        return self.info

    def spus(self) -> list[int]:
        return [i.type for i in self._info().spe_instances if i.type is not None]

    def page_size(self) -> int:
        return self._info().page_size

    def spu_limit(self, spu: int) -> int:
        return 0

    def locked(self) -> int:
        return self._info().vm_lck or 0

    def spu_cpus(self, spu: int) -> tuple[tuple[int, ...], str | None]:
        return _real_spu_cpus(self._info(), spu)

    def unbounded(self) -> str | None:
        return _runs_cannot_be_bounded()

    def scripts_guest(self) -> bool:
        return _guest_scriptable()

    def memlock_limit(self) -> int | None:
        from .host import memlock

        return memlock.status().soft

    def raise_memlock(self, before: int | None, nbytes: int) -> str | None:
        from .host import memlock

        try:
            memlock.raise_limit(nbytes)
        except (memlock.MemlockPermissionError, OSError) as exc:
            return str(exc)
        return None

    def open(self) -> System:
        from .kvm import Kvm

        self.kvm = Kvm()
        return self.kvm

    def _arch(self) -> str:
        assert self.kvm is not None
        return self.kvm.arch

    def before_vcpus(self, result: BringUpResult, vm: GuestVm) -> None:
        if self._arch() != "aarch64" and self.info is not None and self.info.spe_supported:
            # x86 has no vGIC; its in-kernel irqchip, made before any VCPU, is
            # what an SPE group answered there (kvmspe's shim) takes instead.
            real = cast("KvmVm", vm)  # this backend's Kvm made it
            real.create_irqchip()
            result.add("KVM_CREATE_IRQCHIP", True, "x86's in-kernel irqchip, standing in for the vGIC")
            real.add_halt_page()
            result.add("KVM_SET_USER_MEMORY_REGION", True, "one page of HLT at x86's reset vector")

    def vcpu_step(self) -> str:
        if self._arch() != "aarch64":
            return "KVM_CREATE_VCPU with the SPE feature"
        assert self.kvm is not None
        bit = self.kvm.spe_feature().bit
        return f"KVM_CREATE_VCPU + KVM_ARM_VCPU_INIT with the SPE feature (bit {bit})"

    def after_vcpus(self, result: BringUpResult, vm: GuestVm) -> None:
        if self._arch() == "aarch64":
            # The SPE interrupt, like the PMU's, needs the VM's in-kernel irqchip:
            # a GICv3, created once every VCPU exists, placed, then initialised.
            real = cast("KvmVm", vm)  # this backend's Kvm made it
            real.create_vgic_v3()
            result.add("KVM_CREATE_DEVICE GICv3, distributor and redistributor addresses", True)
            real.init_vgic()
            result.add("KVM_DEV_ARM_VGIC_CTRL_INIT", True)

    def enter(self, result: BringUpResult, vcpus: Sequence[GuestVcpu]) -> bool:
        from .host import memlock

        if not VcpuThreads(result, vcpus).run(self.running):
            return False
        result.vm_lck = memlock.status().vm_lck
        return True

    def run_once(self, vcpu: GuestVcpu) -> abi.Exit:
        from .kvm import RunTimeout

        try:
            return vcpu.run()
        except RunTimeout:
            return abi.Exit(abi.KVM_EXIT_INTR)

    def finish(
        self, result: BringUpResult, vcpus: Sequence[GuestVcpu], limit: _Limit, buffers: bool
    ) -> BringUpResult:
        if buffers:
            if result.error is not None:
                return result
            # Under the shim the model pins, so its accounting is the one to show.
            state = cast("KvmVcpu", vcpus[0])._guest("state")
            result.guest_pmbidr = vcpus[0].guest_read("PMBIDR_EL1")
            result.pinned_per_vcpu = [v.pinned_bytes for v in vcpus]
            result.locked_bytes, result.vm_lck = state["locked"], state["vm_lck"]
        result.memlock_limit = limit.get()
        result.ok = True
        return result

    def refusal(self, exc: KvmError) -> tuple[str, str, str]:
        from .kvm import SpeFeatureUnavailable

        if isinstance(exc, SpeFeatureUnavailable):
            why = str(exc.strerror)
            return "KVM_ARM_VCPU_INIT with the SPE feature", why, f"SPE is not supported: {why}"
        return exc.ioctl or "ioctl", str(exc), str(exc)

    def close(self) -> None:
        if self.kvm is None:
            return
        if self.running:
            _close_when_done(self.kvm, self.running)
        else:
            self.kvm.close()


def _close_when_done(kvm: Kvm, running: Sequence[threading.Event]) -> None:
    """Close ``kvm`` (its VM and VCPUs) once every thread of ``running`` has
    finished, from a daemon thread: a VCPU is never closed under its KVM_RUN
    (the fd number could be reused, and the run's retry would reach another file)."""

    def close() -> None:
        for ended in running:
            ended.wait()
        kvm.close()

    threading.Thread(target=close, name="kvmspe-vm-closer", daemon=True).start()


@dataclass
class _VcpuThread:
    """What one VCPU thread did, for the main thread to record in order."""

    cpus: tuple[int, ...]
    pinned: tuple[int, ...] | None = None
    pin_error: str | None = None
    exit: abi.Exit | None = None
    timeout: float | None = None
    error: KvmError | None = None
    crash: BaseException | None = None
    not_entered: bool = False
    #: Set by the thread as its last act. The VMM waits on this, not on
    #: ``Thread.join``: on Python 3.11 a KeyboardInterrupt during ``join``
    #: marks a thread that is still running as stopped (bpo-45274's fix), so a
    #: join after Ctrl-C would return at once with the thread still in KVM_RUN.
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def done(self) -> bool:
        return self.finished.is_set()


def _wait_for_threads(
    started: Sequence[tuple[threading.Thread, _VcpuThread]], deadline: float, *, shielded: bool = False
) -> None:
    """Wait until each started VCPU thread has finished, or ``deadline`` (monotonic)
    has passed; then join those that finished. ``shielded``: a KeyboardInterrupt
    meanwhile does not end the wait (the caller is already handling one)."""
    for t, out in started:
        while True:
            try:
                if out.finished.wait(max(deadline - time.monotonic(), 0)):
                    t.join(max(deadline - time.monotonic(), 0.5))  # it only has to return now
                break
            except KeyboardInterrupt:
                if not shielded:
                    raise


class VcpuThreads:
    """Every VCPU entered once, each from its own thread pinned to its CPUs, as a
    VMM runs its VCPUs; each thread's pinning, then each entry, recorded in
    ``result`` in VCPU order.

    No VCPU enters until every thread is pinned; a CPU set the OS refuses stops
    the bring-up there. The main thread's own affinity is never changed
    (``sched_setaffinity(0)`` applies to the calling thread only), and the
    threads are joined within :data:`VCPU_THREAD_TIMEOUT`; those that did not
    finish by then may no longer enter the guest.
    """

    def __init__(self, result: BringUpResult, vcpus: Sequence[AnyVcpu]):
        self.result = result
        self.vcpus = vcpus
        self.outs = [_VcpuThread(cpus) for cpus in result.vcpu_cpus]
        self.start = threading.Barrier(len(vcpus))
        #: Why a thread could not be started, if one could not.
        self.cannot_start: str | None = None

    def run(self, running: list[threading.Event]) -> bool:
        """Start the threads, wait for them, record what each did; False when stopped.

        The ``finished`` events of threads still running when the wait ends
        are added to ``running``: the caller must not close their VCPUs before.
        """
        from .kvm import run_timer_handler

        with run_timer_handler():
            self._start_and_wait(running)
        if self.cannot_start is not None:
            self.result.add("start VCPU threads", False, self.cannot_start)
            self.result._stop(self.cannot_start)
            return False
        self.result.vcpu_thread_cpus = [out.pinned for out in self.outs]
        if not self._record_pinning():
            return False
        return self._record_entries()

    def _body(self, vcpu: AnyVcpu, out: _VcpuThread) -> None:
        """A VCPU thread: pin itself, wait until every VCPU thread is pinned, then
        enter the guest once (KVM_RUN, bounded by :meth:`kvmspe.kvm.Vcpu.run`)."""
        from .kvm import RunTimeout

        start = self.start
        entering = False
        try:
            if out.cpus:
                try:
                    pin_thread(out.cpus)
                except AffinityError as exc:
                    out.pin_error = str(exc)
                    start.abort()  # no VCPU enters the guest
                    return
                # What the kernel really applied (cpusets may narrow the set), read
                # back on this thread, the one that issues KVM_RUN.
                out.pinned = tuple(sorted(os.sched_getaffinity(0)))
            try:
                start.wait(VCPU_READY_TIMEOUT)
            except threading.BrokenBarrierError:
                out.not_entered = True  # another thread failed, or they were not all ready in time
                return
            entering = True
            try:
                out.exit = vcpu.run()
            except RunTimeout as exc:
                out.timeout = exc.seconds
            except KvmError as exc:
                out.error = exc
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which records it
            out.crash = exc
            if not entering:
                # Past the barrier the others are entering: breaking it then could
                # still stop one that was released but not yet woken.
                start.abort()
        finally:
            out.finished.set()

    def _start_and_wait(self, running: list[threading.Event]) -> None:
        """Start every thread and wait for them all, within :data:`VCPU_THREAD_TIMEOUT`."""
        threads = [
            threading.Thread(
                target=self._body, args=(vcpu, out), name=f"kvmspe-vcpu-{vcpu.index}", daemon=True
            )
            for vcpu, out in zip(self.vcpus, self.outs, strict=True)
        ]
        started: list[tuple[threading.Thread, _VcpuThread]] = []
        deadline = time.monotonic() + VCPU_THREAD_TIMEOUT
        try:
            for t, out in zip(threads, self.outs, strict=True):
                # Noted before it starts: a Ctrl-C as start() returns must not
                # leave a running thread unwaited for (one it stopped from
                # starting at all is then waited for until the deadline).
                started.append((t, out))
                try:
                    t.start()
                except RuntimeError as exc:  # the OS gives no more threads
                    started.pop()
                    self.cannot_start = f"cannot start the thread of VCPU {len(started)}: {exc}"
                    self.start.abort()
                    break
            _wait_for_threads(started, deadline)
        except BaseException:
            # Interrupted (Ctrl-C): no VCPU enters any more, and the runs are
            # bounded, so let them end before the caller closes the VCPUs
            # under them; a second Ctrl-C does not cut this wait short.
            self.start.abort()
            _wait_for_threads(started, time.monotonic() + VCPU_THREAD_TIMEOUT, shielded=True)
            running += [out.finished for _, out in started if not out.done]
            raise
        if any(not out.done for _, out in started):
            self.start.abort()  # the VMM gave up on them: a late thread no longer enters
            running += [out.finished for _, out in started if not out.done]

    def _record_pinning(self) -> bool:
        """Each thread's pinning, and any thread that failed; False when the OS refused a CPU set."""
        result = self.result
        for vcpu, out in zip(self.vcpus, self.outs, strict=True):
            i = vcpu.index
            if out.pin_error is not None:
                step = f"pin VCPU thread to CPUs {format_cpulist(out.cpus)}"
                result.add(step, False, out.pin_error, vcpu=i)
            elif out.pinned is not None:
                detail = ""
                if set(out.pinned) != set(out.cpus):
                    detail = f"asked for CPUs {format_cpulist(out.cpus)}; the OS allows only these"
                result.add(f"VCPU thread pinned to CPUs {format_cpulist(out.pinned)}", True, detail, vcpu=i)
            elif not out.cpus:
                result.add("VCPU thread not pinned", True, _not_pinned(result), vcpu=i)
            if out.crash is not None:
                # An error no step expects (a bug, or MemoryError): recorded, not lost
                # with its thread, and not raised past the bring-up's documented errors.
                crash = " ".join(f"{type(out.crash).__name__}: {out.crash}".split())
                result.add("VCPU thread failed", False, crash, vcpu=i)
        pairs = zip(self.vcpus, self.outs, strict=True)
        refused = next(((v, o) for v, o in pairs if o.pin_error is not None), None)
        if refused is not None:
            result._stop(f"VCPU {refused[0].index}: {refused[1].pin_error}")
            return False
        return True

    def _record_entries(self) -> bool:
        """Each VCPU's entry; then stop at the worst kind of outcome: a failed or
        unfinished thread, then one that did not enter, then a KVM_RUN the kernel
        refused. False when stopped."""
        result = self.result
        late = f"VCPU thread did not finish within {VCPU_THREAD_TIMEOUT:g} s"
        late_detail = "it may no longer enter the guest; its VCPU is closed once it ends"
        waited = f"not entered: the VCPU threads were not all pinned within {VCPU_READY_TIMEOUT:g} s"
        pairs = list(zip(self.vcpus, self.outs, strict=True))
        crashed = [(v.index, o.crash) for v, o in pairs if o.crash is not None]
        if crashed:
            waited = f"not entered: the thread of VCPU {crashed[0][0]} failed"
        stops = [(0, f"VCPU {i}: VCPU thread failed: {type(c).__name__}: {c}") for i, c in crashed]
        for vcpu, out in pairs:
            i = vcpu.index
            if not out.done:
                result.add(late, False, late_detail, vcpu=i)
                stops.append((0, f"VCPU {i}: {late}"))
            elif out.not_entered:
                result.add("KVM_RUN (first entry)", False, waited, vcpu=i)
                stops.append((1, f"VCPU {i}: {waited}"))
            elif out.timeout is not None:
                # The VCPU entered the guest (no guest code here, so it would never come back).
                detail = f"entered; no exit within {out.timeout:g} s, ended by a timer signal"
                result.add("KVM_RUN (first entry)", True, detail, vcpu=i)
            elif out.exit is not None:
                result.add("KVM_RUN (first entry)", True, f"exit {out.exit.name}", vcpu=i)
            elif out.error is not None:
                result.add(out.error.ioctl or "KVM_RUN", False, str(out.error), vcpu=i)
                stops.append((2, str(out.error)))
        if stops:
            result._stop(min(stops, key=lambda s: s[0])[1])
            return False
        return True


def _enable_buffers(
    result: BringUpResult,
    backend: _Backend,
    vcpus: Sequence[GuestVcpu],
    size: int,
    limit: _Limit,
    raise_memlock: bool,
) -> None:
    """The guest enables a ``size`` buffer on every VCPU; KVM_EXIT_RLIMIT is handled as a VMM
    should; ``result`` stops at the first VCPU whose buffer is not pinned. On the real backend
    (under kvmspe's shim, whose model is the guest) a run that enters the guest comes back only
    at its timer (no guest code): that entry is the VCPU running with its buffer pinned."""
    from .arch.registers import PMBSR_EL1

    for vcpu in vcpus:
        i = vcpu.index
        base = i * size
        vcpu.enable_buffer(base, size)
        result.add(f"guest enables a {format_size(size)} buffer at VA {base:#x}", True, vcpu=i)
        for entry in range(RLIMIT_REENTRIES + 1):
            exit_ = backend.run_once(vcpu)
            if not exit_.is_rlimit:
                break
            excess = exit_.rlimit_excess or 0
            over = f"{exit_.name}: RLIMIT_MEMLOCK exceeded by {format_size_hex(excess)}"
            result.add("KVM_RUN", False, over, vcpu=i)
            if excess <= 0:
                # Raising the limit by nothing cannot help: this exit number is
                # probably another exit of this kernel (KVMSPE_EXIT_RLIMIT is assumed).
                result._stop(
                    f"VCPU {i}: KVM_RUN returned exit reason {exit_.reason}, taken for KVM_EXIT_RLIMIT,"
                    " without a positive excess; if this kernel numbers KVM_EXIT_RLIMIT"
                    " differently, set KVMSPE_EXIT_RLIMIT"
                )
                return
            if entry == RLIMIT_REENTRIES:
                result._stop(
                    f"VCPU {i}: still KVM_EXIT_RLIMIT after raising RLIMIT_MEMLOCK"
                    f" {RLIMIT_REENTRIES} times; giving up"
                )
                return
            if not raise_memlock:
                result._stop(
                    f"KVM_EXIT_RLIMIT on VCPU {i}: pinning its buffer exceeds RLIMIT_MEMLOCK by"
                    f" {format_size(excess)}",
                    "rlimit",
                )
                return
            if not limit.raise_to((limit.get() or 0) + excess, "by the excess KVM_EXIT_RLIMIT reported"):
                result._stop("RLIMIT_MEMLOCK could not be raised")
                return
        pmbsr = vcpu.guest_read("PMBSR_EL1")
        if PMBSR_EL1.get(pmbsr, "S"):
            f = PMBSR_EL1.decode(pmbsr)
            event = f"buffer management event PMBSR_EL1 EC={f['EC']} MSS={f['MSS']:#x}"
            result.add("KVM_RUN", False, f"exit {exit_.name}; the guest got a {event}", vcpu=i)
            result._stop(f"VCPU {i}: the guest's buffer was not pinned: {event}")
            return
        result.add("KVM_RUN", True, f"exit {exit_.name}; pinned {format_size_hex(vcpu.pinned_bytes)}", vcpu=i)
