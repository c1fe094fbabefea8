"""The conformance runner: the cases of :mod:`kvmspe.conformance.cases` against a backend.

``run("model")`` builds a :class:`kvmspe.model.kernel.Host` per case, shaped as the
case's setup asks. ``run("kvm")`` uses the real kernel through
:class:`kvmspe.kvm.Kvm`: the host is what it is, so a case whose setup needs
something the host lacks (SPE at all, a page size, an SPU with or without its
own limit, guest code) is skipped with the reason. Every case gets a fresh VM;
on arm64 the VM also gets an in-kernel GICv3 once its VCPUs exist, before the
case's first call, since KVM takes VCPU interrupts only with one.

The result is a :class:`Report`: per case passed, failed (with what was
expected and what came back, at the first call that differed) or skipped
(with why); :meth:`Report.render` gives a table and :meth:`Report.to_dict`
the JSON form documented in ``docs/conformance.md``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .. import abi
from ..arch.registers import PMBIDR_EL1, PMBSR_EL1, Register
from ..arch.stage1 import Stage1
from ..backend import AnyVcpu, AnyVm
from ..errors import InvalidArgumentError, KvmError, errno_name
from ..model.rules import RULES, RuleSet
from ..validation import is_int
from .cases import CASES, Case, Expect, Setup, Step
from .expr import Env, Expr

__all__ = [
    "BACKENDS",
    "REPORT_SCHEMA",
    "HostFacts",
    "ModelRunner",
    "Report",
    "Result",
    "run",
    "run_bounded",
]

BACKENDS = ("model", "kvm")
REPORT_SCHEMA = "kvmspe-conformance-report"
REPORT_SCHEMA_VERSION = 1

#: SPU ids the model hosts use: perf PMU types are small dynamic numbers.
MODEL_SPU_IDS = (10, 11)
#: How long a KVM_RUN of a conformance VCPU may take on the real kernel (seconds).
RUN_TIMEOUT = 0.5
#: Where the modelled guest puts its buffer (any page-aligned address will do).
GUEST_BUFFER_BASE = 0x8000_0000
_REGISTERS: dict[str, Register] = {"PMBIDR_EL1": PMBIDR_EL1, "PMBSR_EL1": PMBSR_EL1}

# --- the host a case runs on --------------------------------------------------------------------


@dataclass(frozen=True)
class HostFacts:
    """What a real host offers, for deciding which cases apply.

    ``spu_limits`` maps each SPU id to its own max buffer size, or None where
    it cannot be read (sysfs ``caps/max_buff_size`` is a proposed addition).
    """

    arch: str
    spe: bool
    page_size: int
    spu_limits: dict[int, int | None] = field(default_factory=dict)
    #: The guest's side can be scripted (only under kvmspe's shim).
    scripted_guest: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "spe": self.spe,
            "page_size": self.page_size,
            "scripted_guest": self.scripted_guest,
            "spus": [{"id": i, "max_buffer_size": lim} for i, lim in self.spu_limits.items()],
        }


# --- running one case -------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One case's outcome. ``expected``/``got`` are for the first call that
    differed (a failure) or the last call (a pass); ``reason`` says why a case
    failed or was skipped, and for a failure which call it was."""

    case: str
    rule: str
    source: str
    status: str
    expected: str
    got: str
    reason: str = ""

    def to_dict(self) -> dict[str, str]:
        return {
            "case": self.case,
            "rule": self.rule,
            "source": self.source,
            "status": self.status,
            "expected": self.expected,
            "got": self.got,
            "reason": self.reason,
        }


def _attr(step: Step) -> tuple[int, int]:
    assert step.attribute is not None, step
    return step.attribute


def _show(v: object) -> str:
    if not is_int(v):
        return str(v)
    return f"{v:#x}" if v >= 10 else str(v)


class _Runner:
    """Runs the calls of a case on VCPUs; subclasses supply the host."""

    env: Env
    vm: AnyVm
    vcpus: list[AnyVcpu]

    def value(self, expr: Expr) -> int:
        """What ``expr`` stands for on this host."""
        return expr.evaluate(self.env)

    def argument(self, step: Step) -> object:
        """The SET value or GET address of ``step``: a pointer the kernel cannot
        use for ``"BAD"``, None where the case gives none."""
        if step.value == "BAD":
            return abi.BAD_ADDRESS
        return None if step.amount is None else self.value(step.amount)

    def expected(self, step: Step) -> Expect:
        """What ``step`` must give on this host, in the form :func:`_matches` compares."""
        exp = step.expectation
        if exp.kind == "has":
            return exp.flag
        if exp.kind == "errno":
            return exp.errno_name
        if exp.kind == "exit" and exp.exit_name is not None:
            if exp.expr is None:
                return exp.exit_name
            return f"{exp.exit_name} excess={_show(self.value(exp.expr))}"
        if exp.kind in ("ok", "exit"):
            return exp.kind
        assert exp.expr is not None
        return self.value(exp.expr)

    def call(self, step: Step) -> object:
        """Perform one call; return what it gave, an errno name on KvmError."""
        try:
            return self.perform(step)
        except KvmError as exc:
            return errno_name(exc.errno or 0)

    def perform(self, step: Step) -> object:
        vcpu: AnyVcpu = self.vcpus[step.vcpu]
        if step.op == "set":
            group, attr = _attr(step)
            vcpu.set_device_attr(group, attr, self.argument(step))
            return "ok"
        if step.op == "get":
            group, attr = _attr(step)
            return vcpu.get_device_attr(group, attr, self.argument(step))
        if step.op == "has":
            return vcpu.has_device_attr(*_attr(step))
        if step.op == "run":
            return vcpu.run()
        if step.op == "create_vcpu":
            self.vcpus.append(self.vm.create_vcpu(spe=step.target == "spe"))
            return "ok"
        if step.op == "setrlimit":
            self.set_room(self.size(step))
            return "ok"
        return self.guest(step)

    def size(self, step: Step) -> int:
        """The room of a ``setrlimit``, the buffer size of an ``enable`` (0 when not given)."""
        return 0 if step.amount is None else self.value(step.amount)

    def set_room(self, room: int) -> None:
        raise NotImplementedError

    def guest(self, step: Step) -> object:
        raise NotImplementedError

    def execute(self, case: Case) -> tuple[str, str, str, str]:
        """(status, expected, got, reason) of the case's calls."""
        exp: Expect = ""
        got: object = ""
        for i, step in enumerate(case.calls, 1):
            exp = self.expected(step)
            got = self.call(step)
            if not _matches(exp, got):
                where = f"call {i} of {len(case.calls)}: {step.describe()}"
                return "failed", _show(exp), _show_got(got), where
        return "passed", _show(exp), _show_got(got), ""


def _show_got(got: object) -> str:
    if isinstance(got, abi.Exit):
        if got.is_rlimit:
            return f"{got.name} excess={_show(got.rlimit_excess)}"
        return got.name
    return _show(got)


def _matches(exp: Expect, got: object) -> bool:
    if isinstance(got, abi.Exit):
        return exp in ("exit", got.name, _show_got(got))
    if isinstance(exp, bool) or isinstance(got, bool):
        return exp is got
    return exp == got


# --- the model backend ------------------------------------------------------------------------------


class ModelRunner(_Runner):
    """A case's host on the model, shaped as ``setup`` asks, with ``rules`` deciding.

    ``host``, ``vm`` and ``vcpus`` are the model objects; :meth:`value`
    gives a case value on this host, :meth:`expected` a step's expected
    result, :meth:`execute` runs a case's calls.
    """

    def __init__(self, setup: Setup, rules: RuleSet):
        from ..model.kernel import Host, Spu

        page = setup.page_size or 4096
        spus = [Spu(i, spec.limit or 0) for i, spec in zip(MODEL_SPU_IDS, setup.spus, strict=False)]
        limit = spus[0].max_buffer_size if spus else None
        self.env = Env(page, tuple(s.id for s in spus), limit or None)
        room = None if setup.room is None else self.value(setup.room)
        self.host = Host(
            page, spus, None if room is None else setup.locked + room, locked=setup.locked, rules=rules
        )
        self.vm = self.host.create_vm(irqchip=setup.irqchip)
        self.vcpus = [self.vm.create_vcpu(spe=f) for f in setup.vcpus]

    def set_room(self, room: int) -> None:
        self.host.set_memlock_limit(self.host.locked_bytes + room)

    def guest(self, step: Step) -> object:
        from ..model.kernel import Vcpu as ModelVcpu

        vcpu = self.vcpus[step.vcpu]
        assert isinstance(vcpu, ModelVcpu)
        if step.op == "guest_read":
            reg, _, name = step.target.partition(".")
            raw = vcpu.guest_read(reg)
            if raw is None:
                return "no value"
            return _REGISTERS[reg].get(raw, name) if name else raw
        if step.op == "enable":
            size = self.size(step)
            hole = ((GUEST_BUFFER_BASE, size),) if step.target == "unmapped" else ()
            vcpu.enable_buffer(GUEST_BUFFER_BASE, size, Stage1(unmapped=hole))
            return "ok"
        if step.op == "disable":
            vcpu.disable_buffer()
            return "ok"
        if step.op == "vm_lck":
            return self.host.vm_lck
        raise ValueError(f"unknown op {step.op!r}")


def _run_model(cases: Iterable[Case], rules: RuleSet) -> Iterator[Result]:
    for case in cases:
        rule = case.rule
        key, source = (rule.key, rule.source) if rule else ("", "")
        try:
            runner = ModelRunner(case.setup, rules)
            status, exp, got, reason = runner.execute(case)
        except Exception as exc:  # noqa: BLE001 - a broken rule set is a failed case, not a crash
            status, exp, got, reason = "failed", _show(case.expected), type(exc).__name__, str(exc)
        yield Result(case.name, key, source, status, exp, got, reason)


# --- the real backend ---------------------------------------------------------------------------------


def _sysfs_spus() -> dict[int, int | None]:
    """SPE instances: perf PMU type -> own limit in bytes (None: sysfs does not say)."""
    from ..host.discovery import read_spe_instances

    instances, _ = read_spe_instances()
    return {i.type: i.max_buff_size for i in instances if i.type is not None}


def _probe(kvm: Any, scripted_guest: bool = True) -> HostFacts:
    """Ask the kernel whether SPE is there, on a throwaway VM of its own.

    On arm64 the SPE VCPU feature bit must be known (given, or found by
    :meth:`kvmspe.kvm.Kvm.spe_feature`); then HAS on a VCPU with it decides.
    """
    from ..host.discovery import probe_spe_group

    try:
        probe = probe_spe_group(kvm)
    except KvmError:
        spe = False
    else:
        spe = probe.with_feature and probe.attrs.get("KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE", False)
    from ..kvm import guest

    spus = _sysfs_spus() if spe else {}
    scripted = scripted_guest and spe and guest.available()
    return HostFacts(kvm.arch, spe, os.sysconf("SC_PAGE_SIZE"), spus, scripted)


def _skip_reason(case: Case, facts: HostFacts) -> str | None:
    """Why ``case`` cannot run on this real host, or None when it applies."""
    setup = case.setup
    if not setup.spus:
        return "host has SPE: the no-SPE cases do not apply" if facts.spe else None
    if not facts.spe:
        return "host has no SPE: only the ENXIO cases apply"
    if facts.arch != "aarch64" and case.needs_plain_vcpu:
        return (
            f"needs a VCPU without the SPE feature; on {facts.arch} (no KVM_ARM_VCPU_INIT) every VCPU"
            " has it where the SPE group answers"
        )
    if case.needs_guest and not facts.scripted_guest:
        return (
            "needs guest code that programs SPE; the conformance runner loads none (the model, or"
            " the real backend under kvmspe's shim, scripts it)"
        )
    if setup.page_size is not None and setup.page_size != facts.page_size:
        kib, have = setup.page_size // 1024, facts.page_size // 1024
        return f"needs a {kib} KiB host page size; this host has {have} KiB"
    if len(setup.spus) > len(facts.spu_limits):
        return f"needs {len(setup.spus)} SPE instances; this host has {len(facts.spu_limits)}"
    if not any(_spu_fits(setup.spus[0].limit, lim) for lim in facts.spu_limits.values()):
        want = "without" if setup.spus[0].limit == 0 else "with"
        return (
            f"needs an SPU {want} its own max buffer size, and this host has none known"
            " (sysfs caps/max_buff_size missing or different)"
        )
    return None


def _spu_fits(want: int | None, have: int | None) -> bool:
    if want is None:
        return True
    if have is None:
        return False
    return (have == 0) == (want == 0)


@runtime_checkable
class _Closing(Protocol):
    """A real VCPU, which holds a file descriptor until closed."""

    def close(self) -> None: ...


class _KvmRunner(_Runner):
    def __init__(self, case: Case, facts: HostFacts, vm: Any, set_room: Callable[[int], None]):
        want = case.setup.spus[0].limit if case.setup.spus else None
        first = next((i for i, lim in facts.spu_limits.items() if _spu_fits(want, lim)), None)
        ids = [] if first is None else [first] + [i for i in facts.spu_limits if i != first]
        limit = facts.spu_limits.get(first) if first is not None else None
        self.env = Env(facts.page_size, tuple(ids), limit)
        self._set_room = set_room
        self.vm = vm
        self.vcpus = [self._create(vm, f, facts) for f in case.setup.vcpus]

    @staticmethod
    def _create(vm: Any, spe: bool, facts: HostFacts) -> Any:
        try:
            return vm.create_vcpu(spe=spe)
        except KvmError:
            if facts.spe or not spe:
                raise
            # An arm64 kernel without SPE refuses the feature at KVM_ARM_VCPU_INIT;
            # the SPE group answers ENXIO with or without it.
            return vm.create_vcpu(spe=False)

    def set_room(self, room: int) -> None:
        self._set_room(room)

    def perform(self, step: Step) -> object:
        if step.op == "run":
            return run_bounded(self.vcpus[step.vcpu])
        return super().perform(step)

    def guest(self, step: Step) -> object:
        """The guest's side, scripted by the shim's model (the skip reason says why it must be)."""
        from ..kvm import Vcpu as KvmVcpu

        vcpu = self.vcpus[step.vcpu]
        if not isinstance(vcpu, KvmVcpu):
            raise ValueError(f"{step.op} needs guest code")
        if step.op == "guest_read":
            reg, _, name = step.target.partition(".")
            raw = vcpu.guest_read(reg)
            return _REGISTERS[reg].get(raw, name) if name else raw
        if step.op == "enable":
            size = self.size(step)
            hole = ((GUEST_BUFFER_BASE, size),) if step.target == "unmapped" else ()
            vcpu.enable_buffer(GUEST_BUFFER_BASE, size, hole)
            return "ok"
        if step.op == "disable":
            vcpu.disable_buffer()
            return "ok"
        if step.op == "vm_lck":
            state = vcpu._guest("state")["vm_lck"]
            assert isinstance(state, int)
            return state
        raise ValueError(f"unknown op {step.op!r}")


class _RunTimeout(Exception):
    """Raised by the SIGALRM handler to get out of a KVM_RUN that does not return."""


def run_bounded(vcpu: AnyVcpu, seconds: float = RUN_TIMEOUT) -> abi.Exit:
    """KVM_RUN, cut short after ``seconds``.

    The conformance VMs have no memory and no guest code: on arm64 the VCPU
    takes a prefetch abort at its first instruction and keeps taking them
    inside KVM_RUN, which then only returns on a signal. A real VCPU's run
    is bounded by :meth:`kvmspe.kvm.Vcpu.run` (a timer signal); when it
    times out, the kernel's own answer to a signal, KVM_EXIT_INTR, is the
    exit: the VCPU did enter KVM_RUN, which is all the run cases need. Any
    other VCPU (a stand-in) is bounded in the main thread by the same timer
    (:func:`kvmspe.kvm.timer.alarm`), whose signal raises out of its run once.
    """
    from ..kvm import RunTimeout, Vcpu
    from ..kvm.timer import alarm

    if isinstance(vcpu, Vcpu):
        try:
            return vcpu.run(timeout=seconds)
        except RunTimeout:
            return abi.Exit(abi.KVM_EXIT_INTR)
    if threading.current_thread() is not threading.main_thread():
        return vcpu.run()
    fired = False

    def expire(signum: int, frame: object) -> None:
        nonlocal fired
        if not fired:  # the timer repeats until the block ends: leave the run once
            fired = True
            raise _RunTimeout

    try:
        with alarm(seconds, on_signal=expire):
            return vcpu.run()
    except _RunTimeout:
        return abi.Exit(abi.KVM_EXIT_INTR)


MemlockFn = Callable[[int | None], AbstractContextManager[Callable[[int], None]]]


def _run_kvm(
    cases: Iterable[Case],
    kvm: Any = None,
    facts: HostFacts | None = None,
    memlock: MemlockFn | None = None,
    *,
    scripted_guest: bool = True,
) -> tuple[dict[str, Any], list[Result]]:
    """Run ``cases`` on the real kernel; ``kvm``, ``facts`` and ``memlock``
    stand in for /dev/kvm, the host probe and RLIMIT_MEMLOCK (for tests)."""
    results: list[Result] = []
    if memlock is None:
        from ..host.memlock import room_above_locked

        memlock = room_above_locked
    if kvm is None:
        try:
            from ..kvm import Kvm
        except ImportError as exc:
            reason = f"the real backend kvmspe.kvm is not available ({exc})"
            return {"error": reason}, [_skipped(c, reason) for c in cases]
        try:
            kvm = Kvm()
        except (OSError, ValueError) as exc:
            reason = f"/dev/kvm is not usable: {exc}"
            return {"error": reason}, [_skipped(c, reason) for c in cases]
    with kvm:
        facts = facts or _probe(kvm, scripted_guest)
        for case in cases:
            why = _skip_reason(case, facts)
            if why is not None:
                results.append(_skipped(case, why))
                continue
            results.append(_unlimited_or_skip(case, _run_kvm_case(kvm, facts, case, memlock)))
    return facts.to_dict(), results


def _run_kvm_case(kvm: Any, facts: HostFacts, case: Case, memlock: MemlockFn) -> Result:
    rule = case.rule
    key, source = (rule.key, rule.source) if rule else ("", "")
    env = Env(facts.page_size, tuple(facts.spu_limits))
    room = None if case.setup.room is None else case.setup.room.evaluate(env)
    with ExitStack() as stack:
        set_room = stack.enter_context(memlock(room))
        vm = stack.enter_context(kvm.create_vm())
        if facts.arch != "aarch64" and facts.spe and case.setup.irqchip:
            # x86 has no vGIC; its irqchip, made before the VCPUs, stands in
            # where the SPE group answers there (only under kvmspe's shim).
            vm.create_irqchip()
            vm.add_halt_page()
        try:
            runner = _KvmRunner(case, facts, vm, set_room)
        except KvmError as exc:
            # The case applies to this host: not running it is kvmspe's failure, not a skip.
            return Result(
                case.name,
                key,
                source,
                "failed",
                _show(case.expected),
                exc.name,
                f"cannot create the VCPUs: {exc.ioctl}: {exc}",
            )
        try:
            # The VCPUs exist: now the vGIC, before any call sets an interrupt.
            refused = _add_vgic(vm) if facts.arch == "aarch64" and case.setup.irqchip else None
            if refused is not None and facts.spe and case.needs_irqchip:
                return _skipped(case, refused)
            status, exp, got, why = runner.execute(case)
        except Exception as exc:  # noqa: BLE001 - report it against the case and go on
            status, exp, got, why = "failed", _show(case.expected), type(exc).__name__, str(exc)
        finally:
            for vcpu in runner.vcpus:
                if isinstance(vcpu, _Closing):
                    vcpu.close()
    return Result(case.name, key, source, status, exp, got, why)


def _unlimited_or_skip(case: Case, result: Result) -> Result:
    """A case modelled without a locked-memory limit that met ENOMEM under a
    hard RLIMIT_MEMLOCK this process may not lift did not run as written:
    a skip that says so, not a failure of the kernel's."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if result.status != "failed" or result.got != "ENOMEM" or case.setup.memlock is not None:
        return result
    if hard == resource.RLIM_INFINITY:
        return result
    return _skipped(
        case,
        f"needs RLIMIT_MEMLOCK unlimited (the case has no limit); this process's hard limit is"
        f" {hard} bytes and it may not raise it (CAP_SYS_RESOURCE)",
    )


def _add_vgic(vm: Any) -> str | None:
    """Give an arm64 case VM an in-kernel GICv3, placed and initialised, as a
    VMM would before setting VCPU interrupts; the reason when the host refuses."""
    try:
        vm.create_vgic_v3()
        vm.init_vgic()
    except KvmError as exc:
        return (
            f"needs an in-kernel GICv3 for the SPE interrupt, and the host refused one ({exc.ioctl}: {exc})"
        )
    return None


def _skipped(case: Case, reason: str) -> Result:
    rule = case.rule
    return Result(
        case.name,
        rule.key if rule else "",
        rule.source if rule else "",
        "skipped",
        _show(case.expected),
        "",
        reason,
    )


# --- the report ------------------------------------------------------------------------------------


@dataclass
class Report:
    """The outcome of a conformance run."""

    backend: str
    results: list[Result]
    host: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    #: Why the run could test nothing (e.g. no access to /dev/kvm); then not ok.
    error: str | None = None

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def ok(self) -> bool:
        """True when no case failed (skipped cases do not count against) and
        the run could test something (:attr:`error` is None)."""
        return self.count("failed") == 0 and self.error is None

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if r.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (schema in docs/conformance.md)."""
        return {
            "schema": REPORT_SCHEMA,
            "schema_version": REPORT_SCHEMA_VERSION,
            "backend": self.backend,
            "host": self.host,
            "assumed_numbers": abi.ASSUMED.as_dict(),
            "summary": {s: self.count(s) for s in ("passed", "failed", "skipped")},
            "ok": self.ok,
            "error": self.error,
            "seconds": round(self.seconds, 4),
            "results": [r.to_dict() for r in self.results],
        }

    def render(self) -> str:
        """A table: one line per case, then the totals."""
        head = ("STATUS", "CASE", "RULE", "SOURCE", "EXPECTED", "GOT / REASON")
        rows = [head]
        for r in self.results:
            if r.status == "passed":
                tail = r.got
            elif r.status == "failed":
                tail = f"{r.got}  ({r.reason})" if r.reason else r.got
            else:
                tail = r.reason
            rows.append((r.status.upper(), r.case, r.rule, r.source, r.expected, tail))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)) + "  " + row[5]
            for row in rows
        ]
        lines.append(
            f"{self.backend}: {self.count('passed')} passed, {self.count('failed')} failed,"
            f" {self.count('skipped')} skipped in {self.seconds:.2f} s"
        )
        if self.error is not None:
            lines.append(f"error: nothing was tested: {self.error}")
        return "\n".join(line.rstrip() for line in lines)


def run(
    backend: str = "model",
    *,
    rules: RuleSet | None = None,
    cases: Iterable[Case] | None = None,
    scripted_guest: bool = True,
) -> Report:
    """Run the conformance cases against ``backend`` ("model" or "kvm").

    ``rules`` replaces the model's :data:`kvmspe.model.rules.RULES` (to show that a
    changed rule is caught); it has no meaning for the real kernel.
    ``cases`` defaults to every case of :mod:`kvmspe.conformance.cases`.
    ``scripted_guest`` False runs the real kernel as if its guest could not be
    scripted even under kvmspe's shim (as the C self-test runs), so the cases
    that need guest code are skipped there too.
    """
    if not isinstance(scripted_guest, bool):
        raise InvalidArgumentError(f"scripted_guest must be True or False, got {scripted_guest!r}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; accepted: {', '.join(BACKENDS)}")
    if backend == "kvm" and rules is not None:
        raise ValueError("rules apply to the model only; the real kernel has its own")
    chosen = CASES if cases is None else tuple(cases)
    start = time.perf_counter()
    if backend == "model":
        host: dict[str, Any] = {"model": True}
        results = list(_run_model(chosen, RULES if rules is None else rules))
    else:
        host, results = _run_kvm(chosen, scripted_guest=scripted_guest)
    error = host.get("error")
    if error is None and results and all(r.status == "skipped" for r in results):
        error = "no case applies to this host"
    return Report(backend, results, host, time.perf_counter() - start, error)
