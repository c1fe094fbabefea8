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

import ast
import operator
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .. import abi
from ..arch import maxbuf
from ..arch.registers import PMBIDR_EL1, PMBSR_EL1, Register
from ..arch.stage1 import Stage1
from ..backend import Vcpu, Vm
from ..errors import InvalidArgumentError, KvmError, errno_name
from ..model.rules import RULES, RuleSet
from ..validation import is_int
from .cases import CASES, Case, Expect, Setup, Step

__all__ = [
    "BACKENDS",
    "REPORT_SCHEMA",
    "HostFacts",
    "ModelRunner",
    "Report",
    "Result",
    "resolve",
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

# --- values: the small expression language of the cases ----------------------------------


def _next_size(page: int) -> Callable[[int], int]:
    def next_size(x: int) -> int:
        return maxbuf.round_up(x + 1, page)

    return next_size


def _unrep(page: int) -> Callable[[int], int]:
    def unrep(x: int) -> int:
        size = (x // page + 1) * page
        while maxbuf.is_representable(size):
            if maxbuf.step_at(size) <= page:
                # Every page multiple of this band is representable: try the next band.
                size = (1 << size.bit_length()) + page
            else:
                size += page
        return size

    return unrep


_BINOPS: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
}


def resolve(value: int | str, env: dict[str, Any]) -> int:
    """The integer a case value stands for on a host described by ``env``.

    ``value`` is an int or an expression of ints, names in ``env``, ``+ - *
    // **`` and calls of the functions in ``env`` (see :mod:`kvmspe.conformance.cases`).
    """
    if isinstance(value, int):
        return value

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in env:
            return env[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            return ev(node.func)(*(ev(a) for a in node.args))
        raise ValueError(f"case value {value!r}: {ast.dump(node)} is not allowed here")

    result = ev(ast.parse(value, mode="eval"))
    if not isinstance(result, int):
        raise ValueError(f"case value {value!r} does not give an integer")
    return result


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


def _env(page: int, spu_ids: list[int], limit: int | None) -> dict[str, Any]:
    env: dict[str, Any] = {
        "PAGE": page,
        "LARGEST": maxbuf.LARGEST,
        "KiB": 1 << 10,
        "MiB": 1 << 20,
        "GiB": 1 << 30,
        "NOSPU": max(spu_ids, default=0) + 1000,
        "next_size": _next_size(page),
        "unrep": _unrep(page),
        "enc": maxbuf.encode,
    }
    for name, spu_id in zip(("SPU", "SPU2"), spu_ids, strict=False):
        env[name] = spu_id
    if limit is not None:
        env["LIMIT"] = limit
    return env


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


def _attr(target: str) -> tuple[int, int]:
    if target.isdigit():
        return abi.KVM_ARM_VCPU_SPE_CTRL, int(target)
    return abi.ATTR_BY_NAME[target]


def _show(v: object) -> str:
    if not is_int(v):
        return str(v)
    return f"{v:#x}" if v >= 10 else str(v)


class _Runner:
    """Runs the calls of a case on VCPUs; subclasses supply the host."""

    env: dict[str, Any]
    vm: Vm
    vcpus: list[Vcpu]

    def value(self, v: int | str | None) -> object:
        if v == "BAD":
            return abi.BAD_ADDRESS
        return None if v is None else resolve(v, self.env)

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
            return f"{exp.exit_name} excess={_show(resolve(exp.expr, self.env))}"
        if exp.kind in ("ok", "exit"):
            return exp.kind
        assert exp.expr is not None
        return resolve(exp.expr, self.env)

    def call(self, step: Step) -> object:
        """Perform one call; return what it gave, an errno name on KvmError."""
        try:
            return self.perform(step)
        except KvmError as exc:
            return errno_name(exc.errno or 0)

    def perform(self, step: Step) -> object:
        vcpu: Vcpu = self.vcpus[step.vcpu]
        if step.op == "set":
            group, attr = _attr(step.target)
            vcpu.set_device_attr(group, attr, self.value(step.value))
            return "ok"
        if step.op == "get":
            group, attr = _attr(step.target)
            return vcpu.get_device_attr(group, attr, None if step.value is None else self.value(step.value))
        if step.op == "has":
            return vcpu.has_device_attr(*_attr(step.target))
        if step.op == "run":
            return vcpu.run()
        if step.op == "create_vcpu":
            self.vcpus.append(self.vm.create_vcpu(spe=step.target == "spe"))
            return "ok"
        if step.op == "setrlimit":
            self.set_room(resolve(step.value or 0, self.env))
            return "ok"
        return self.guest(step)

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
        self.env = _env(page, [s.id for s in spus], limit or None)
        room = None if setup.memlock is None else resolve(setup.memlock, self.env)
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
            size = resolve(step.value or 0, self.env)
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
    from ..shim import guest

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
    if facts.arch != "aarch64" and (
        not all(setup.vcpus) or any(s.op == "create_vcpu" and s.target != "spe" for s in case.calls)
    ):
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
        self.env = _env(facts.page_size, ids, facts.spu_limits.get(first) if first is not None else None)
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
            size = resolve(step.value or 0, self.env)
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


def run_bounded(vcpu: Vcpu, seconds: float = RUN_TIMEOUT) -> abi.Exit:
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
    env = _env(facts.page_size, list(facts.spu_limits), None)
    room = None if case.setup.memlock is None else resolve(case.setup.memlock, env)
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
            if refused is not None and _needs_irqchip(case, facts):
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


def _needs_irqchip(case: Case, facts: HostFacts) -> bool:
    """Whether the case depends on its VM having an in-kernel irqchip: on an
    SPE host, one that sets the SPE interrupt (KVM refuses a PMU interrupt
    without one, and the SPE one is modelled on it) or runs a VCPU (the
    interrupt must be set first). Without SPE every such call answers ENXIO
    (or the VCPU runs bare), with or without an irqchip."""
    if not facts.spe:
        return False
    needs = {(abi.KVM_ARM_VCPU_SPE_CTRL, a) for a in (abi.KVM_ARM_VCPU_SPE_IRQ, abi.KVM_ARM_VCPU_SPE_INIT)}
    return any(s.op == "run" or (s.op == "set" and _attr(s.target) in needs) for s in case.calls)


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
