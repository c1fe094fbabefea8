"""The conformance suite: every case passes on the model, the applicable ones
on this machine's /dev/kvm, and a deliberately broken rule set is caught by
the cases that name the broken rule (and only by them)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kvmspe import abi
from kvmspe.conformance import expr
from kvmspe.conformance import runner as conformance
from kvmspe.conformance.cases import CASES, RULE_LIST, SOURCES, Case, Expectation, Setup, Step, by_name
from kvmspe.conformance.cases import INIT as INIT_NAME
from kvmspe.conformance.cases import IRQ as IRQ_NAME
from kvmspe.conformance.cases import MAX as MAX_NAME
from kvmspe.conformance.runner import HostFacts, Report
from kvmspe.errors import KvmError
from kvmspe.model import kernel as model
from kvmspe.model.rules import RULES, Check, RuleSet

MAX = abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE
CASE_IDS = [c.name for c in CASES]


# --- the case list is sound -----------------------------------------------------------------


def test_case_names_are_unique_and_every_case_has_a_rule() -> None:
    assert len(set(CASE_IDS)) == len(CASE_IDS)
    for case in CASES:
        assert case.rule is not None and case.calls, case.name
        assert case in case.rule.cases


def test_each_rule_is_stated_once_with_a_known_source() -> None:
    texts = [r.text for r in RULE_LIST]
    keys = [r.key for r in RULE_LIST]
    assert len(set(texts)) == len(texts)
    assert len(set(keys)) == len(keys)
    assert all(r.source in SOURCES and r.cases for r in RULE_LIST)


def test_every_documented_set_errno_of_max_buffer_size_is_expected_somewhere() -> None:
    """The reference patch lists the SET errnos; each must be the expected result of a case."""
    info = abi.ATTRS[(abi.KVM_ARM_VCPU_SPE_CTRL, MAX)]
    expected = {
        s.expect for c in CASES for s in c.calls if s.op == "set" and s.target.endswith("BUFFER_SIZE")
    }
    missing = [errno.errorcode[e] for e in info.errnos["set"] if errno.errorcode[e] not in expected]
    assert not missing


@pytest.mark.parametrize(
    "attr", [abi.KVM_ARM_VCPU_SPE_IRQ, abi.KVM_ARM_VCPU_SPE_SPU, abi.KVM_ARM_VCPU_SPE_INIT]
)
def test_every_documented_set_errno_of_the_other_attributes_is_expected_somewhere(attr: int) -> None:
    info = abi.ATTRS[(abi.KVM_ARM_VCPU_SPE_CTRL, attr)]
    expected = {s.expect for c in CASES for s in c.calls if s.op == "set" and s.target == info.name}
    missing = [errno.errorcode[e] for e in info.errnos["set"] if errno.errorcode[e] not in expected]
    assert not missing


def test_by_name_keeps_order_and_refuses_unknown_names() -> None:
    assert [c.name for c in by_name(["has-irq", "get-before-set"])] == ["has-irq", "get-before-set"]
    with pytest.raises(ValueError, match="no-such-case"):
        by_name(["no-such-case"])
    # An iterator is read once, not exhausted by the check before the lookup.
    assert [c.name for c in by_name(iter(["has-irq"]))] == ["has-irq"]


def test_an_expression_evaluates_on_its_host_and_the_language_is_nothing_more() -> None:
    env = expr.Env(16384, (10, 11), 1 << 20)
    assert expr.parse("PAGE * 2 + 4 * KiB").evaluate(env) == 36864
    assert expr.parse("LIMIT").evaluate(env) == 1 << 20
    assert expr.parse("unrep(PAGE)").evaluate(env) % 16384 == 0
    assert expr.parse("NOSPU").evaluate(env) == 11 + expr.NOSPU_OFFSET
    assert expr.parse(4096).evaluate(env) == 4096
    for text in ("__import__('os').getpid()", "PAGE.bit_length()", "PAGE / 2", "-1", "enc(1, 2)", "PAGE +"):
        with pytest.raises(ValueError, match="case expression"):
            expr.parse(text)
    with pytest.raises(ValueError, match="fit a u64"):
        expr.parse(1 << 64)


def test_a_name_the_host_lacks_is_an_error_when_evaluated() -> None:
    env = expr.Env(4096, (10,), None)
    for text in ("SPU2", "LIMIT * 2"):
        with pytest.raises(ValueError, match="no value on this host"):
            expr.parse(text).evaluate(env)


def test_an_expression_is_parsed_once_and_renders_to_c() -> None:
    assert expr.parse("PAGE * 2") is expr.parse("PAGE * 2")
    assert expr.parse("enc(PAGE ** 2 - 1)").to_c() == (
        "ks_enc(e, (ks_pow(env_get(e, ENV_PAGE), UINT64_C(0x2)) - UINT64_C(0x1)))"
    )
    assert str(expr.parse("GiB // MiB")) == "GiB // MiB"


def test_a_bad_expression_stops_the_definition_of_its_case() -> None:
    with pytest.raises(ValueError, match="PAGE.bit_length"):
        Step("set", MAX_NAME, "PAGE.bit_length()")
    with pytest.raises(ValueError, match="PAGES"):
        Step("get", MAX_NAME, expect="PAGES")
    with pytest.raises(ValueError, match="PAGE \\+"):
        Expectation.parse("KVM_EXIT_RLIMIT excess=PAGE +")
    with pytest.raises(ValueError, match="os"):
        Setup(memlock="os")
    with pytest.raises(ValueError, match="not an attribute"):
        Step("has", "KVM_ARM_VCPU_SPE_NOTHING", expect=False)
    assert Step("has", "255", expect=False).attribute == (abi.KVM_ARM_VCPU_SPE_CTRL, 255)
    assert Step("run").attribute is None
    # What every case wrote is parsed already: the values are the ones the runner evaluates.
    step = next(s for c in CASES for s in c.calls if s.value == "PAGE * 2")
    assert step.amount is expr.parse("PAGE * 2")


def test_the_facts_of_a_case_are_computed_from_its_calls() -> None:
    by = {c.name: c for c in CASES}
    assert not by["no-spe-has-irq"].needs_irqchip and not by["no-spe-has-irq"].needs_guest
    for c in CASES:
        runs = any(s.op == "run" for s in c.calls)
        sets_irq = any(s.op == "set" and s.target in (IRQ_NAME, INIT_NAME) for s in c.calls)
        assert c.needs_irqchip == (runs or sets_irq), c.name
        assert c.needs_plain_vcpu == (
            not all(c.setup.vcpus) or any(s.op == "create_vcpu" and s.target == "plain" for s in c.calls)
        ), c.name
    assert any(c.needs_guest for c in CASES) and any(c.needs_plain_vcpu for c in CASES)


# --- the model passes every case ------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_report() -> Report:
    return conformance.run("model")


@pytest.mark.parametrize("name", CASE_IDS)
def test_case_passes_on_the_model(model_report: Report, name: str) -> None:
    result = next(r for r in model_report.results if r.case == name)
    assert result.status == "passed", f"expected {result.expected}, got {result.got}: {result.reason}"


def test_model_report_is_ok_and_covers_every_case(model_report: Report) -> None:
    assert model_report.ok
    assert [r.case for r in model_report.results] == CASE_IDS
    assert model_report.count("passed") == len(CASES)


# --- the real kernel: the cases that apply here pass, the others say why ---------------------------


@pytest.fixture(scope="module")
def kvm_report() -> Report:
    report = conformance.run("kvm")
    if "error" in report.host:
        pytest.skip(str(report.host["error"]))
    return report


@pytest.mark.parametrize("name", CASE_IDS)
def test_case_on_this_machines_kvm(kvm_report: Report, name: str) -> None:
    result = next(r for r in kvm_report.results if r.case == name)
    if result.status == "skipped":
        assert result.reason
        pytest.skip(f"does not apply to this host: {result.reason}")
    assert result.status == "passed", f"expected {result.expected}, got {result.got}: {result.reason}"


def test_host_without_spe_runs_every_enxio_case(kvm_report: Report) -> None:
    if kvm_report.host.get("spe"):
        pytest.skip("this host has SPE; the no-SPE cases do not apply")
    ran = {r.case for r in kvm_report.results if r.status == "passed"}
    no_spe = {c.name for c in CASES if not c.setup.spus}
    assert no_spe and ran == no_spe
    assert all(
        r.reason == "host has no SPE: only the ENXIO cases apply"
        for r in kvm_report.results
        if r.status == "skipped"
    )


# --- breaking a rule on purpose is caught -----------------------------------------------------------


def _failing(rules: RuleSet) -> set[str]:
    return {r.case for r in conformance.run("model", rules=rules).results if r.status == "failed"}


def _set_checks(attr: int = MAX) -> list[Check]:
    return list(RULES.set[attr])


def _with_set(checks: list[Check], attr: int = MAX) -> RuleSet:
    return dataclasses.replace(RULES, set={**RULES.set, attr: tuple(checks)})


def _swapped(a: str, b: str) -> RuleSet:
    checks = _set_checks()
    names = [c.name for c in checks]
    i, j = names.index(a), names.index(b)
    checks[i], checks[j] = checks[j], checks[i]
    return _with_set(checks)


@pytest.mark.parametrize(
    ("first", "second", "caught_by"),
    [
        ("page-aligned", "spu-assigned", {"order-unaligned-before-no-spu"}),
        ("encodable", "within-spu-limit", {"order-unencodable-before-limit"}),
        ("has-run", "page-aligned", {"order-run-before-unaligned"}),
        ("within-spu-limit", "memlock", {"order-limit-before-memlock"}),
        ("readable-pointer", "has-run", {"order-efault-before-has-run"}),
    ],
)
def test_swapping_two_checks_fails_exactly_the_order_case(
    first: str, second: str, caught_by: set[str]
) -> None:
    assert _failing(_swapped(first, second)) == caught_by


def _swapped_in(attr: int, a: str, b: str) -> RuleSet:
    checks = _set_checks(attr)
    names = [c.name for c in checks]
    i, j = names.index(a), names.index(b)
    checks[i], checks[j] = checks[j], checks[i]
    return _with_set(checks, attr)


IRQ = abi.KVM_ARM_VCPU_SPE_IRQ
SPU = abi.KVM_ARM_VCPU_SPE_SPU
INIT = abi.KVM_ARM_VCPU_SPE_INIT


@pytest.mark.parametrize(
    ("attr", "first", "second", "caught_by"),
    [
        # Moving the irqchip check after reading the value: a bad pointer on a
        # VM without irqchip, and the two later EBUSY checks, now say EFAULT.
        (
            IRQ,
            "irqchip",
            "readable-pointer",
            {
                "order-irqchip-before-efault",
                "order-irq-once-before-efault",
                "order-irq-has-run-before-efault",
            },
        ),
        (IRQ, "irq-once", "readable-pointer", {"order-irq-once-before-efault"}),
        (
            IRQ,
            "has-run",
            "readable-pointer",
            {"order-irq-has-run-before-efault", "order-irq-once-before-efault"},
        ),
        (SPU, "spu-exists", "has-run", {"spu-unknown-after-run"}),
        (SPU, "has-run", "same-spu", {"spu-different-after-run"}),
        (INIT, "has-run", "init-needs-irq", {"order-init-has-run-before-needs-irq"}),
        # Orders no call can tell apart (same errno, or states KVM cannot reach):
        # without an irqchip the VM cannot have run; both checks say EBUSY or EINVAL;
        # an initialised VCPU has everything INIT needs.
        (IRQ, "irqchip", "has-run", set()),
        (IRQ, "has-run", "irq-once", set()),
        (IRQ, "is-ppi", "same-irq-on-every-vcpu", set()),
        (INIT, "has-run", "init-once", set()),
        (INIT, "init-once", "init-needs-irq", set()),
        (INIT, "init-needs-irq", "init-needs-config", set()),
    ],
)
def test_swapping_two_new_checks_fails_exactly_their_order_case(
    attr: int, first: str, second: str, caught_by: set[str]
) -> None:
    assert _failing(_swapped_in(attr, first, second)) == caught_by


def test_a_swap_is_reported_with_expected_and_got() -> None:
    report = conformance.run("model", rules=_swapped("page-aligned", "spu-assigned"))
    (bad,) = report.failed
    assert (bad.case, bad.expected, bad.got) == ("order-unaligned-before-no-spu", "EINVAL", "ENODEV")
    assert "SET SPE_MAX_BUFFER_SIZE=PAGE + 1" in bad.reason
    assert not report.ok


def test_removing_the_encodable_check_fails_the_edom_cases() -> None:
    checks = [c for c in _set_checks() if c.name != "encodable"]
    assert _failing(_with_set(checks)) == {
        "unencodable-4m-plus-4k",
        "unencodable-first-above-page",
        "unencodable-above-largest",
        "unencodable-u64-top",
        "order-unencodable-before-limit",
    }


def test_swapping_the_group_checks_fails_the_no_spe_vcpu_case() -> None:
    g = RULES.group
    assert _failing(dataclasses.replace(RULES, group=(g[1], g[0], g[2]))) == {"no-spe-vcpu-without-feature"}


def _every_check() -> Iterator[tuple[str, RuleSet]]:
    for i, check in enumerate(RULES.group):
        yield f"group/{check.name}", dataclasses.replace(RULES, group=RULES.group[:i] + RULES.group[i + 1 :])
    for table in ("set", "get"):
        for attr, checks in getattr(RULES, table).items():
            for i, check in enumerate(checks):
                cut = {**getattr(RULES, table), attr: checks[:i] + checks[i + 1 :]}
                if table == "set":
                    rules = dataclasses.replace(RULES, set=cut)
                else:
                    rules = dataclasses.replace(RULES, get=cut)
                yield f"{table}/{attr}/{check.name}", rules
    for i, check in enumerate(RULES.run):
        yield f"run/{check.name}", dataclasses.replace(RULES, run=RULES.run[:i] + RULES.run[i + 1 :])


@pytest.mark.parametrize(("name", "rules"), list(_every_check()), ids=[n for n, _ in _every_check()])
def test_every_check_is_needed_by_some_case(name: str, rules: RuleSet) -> None:
    assert _failing(rules), f"no conformance case notices that {name} is gone"


# --- the report --------------------------------------------------------------------------------------


def test_report_json_has_the_documented_keys(model_report: Report) -> None:
    doc = json.loads(json.dumps(model_report.to_dict()))
    assert doc["schema"] == "kvmspe-conformance-report" and doc["schema_version"] == 1
    assert doc["backend"] == "model" and doc["ok"] is True
    assert doc["summary"] == {"passed": len(CASES), "failed": 0, "skipped": 0}
    assert set(doc["results"][0]) == {"case", "rule", "source", "status", "expected", "got", "reason"}


def test_render_lists_every_case_and_the_totals(model_report: Report) -> None:
    text = model_report.render()
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["STATUS", "CASE", "RULE"]
    assert len(lines) == len(CASES) + 2
    assert all(name in text for name in CASE_IDS)
    assert lines[-1].startswith(f"model: {len(CASES)} passed, 0 failed, 0 skipped")


def test_run_refuses_unknown_backend_and_rules_for_the_kernel() -> None:
    with pytest.raises(ValueError, match="accepted: model, kvm"):
        conformance.run("qemu")
    with pytest.raises(ValueError, match="model only"):
        conformance.run("kvm", rules=RULES)


def test_run_takes_a_subset_of_cases() -> None:
    report = conformance.run("model", cases=by_name(["has-irq"]))
    assert [r.case for r in report.results] == ["has-irq"]


# --- the kvm path on an SPE host, played by the model ---------------------------------------------


class _FakeVm:
    """A model VM with the real one's vGIC calls, holding KVM's order to them:
    no VCPU after the vGIC is initialised, and no irqchip for the model (so no
    SPE interrupt, no INIT) until the vGIC is made and initialised. ``log``
    records the calls."""

    def __init__(self, vm: model.Vm, log: list[str], refuse: int | None):
        self.vm = vm
        self.log = log
        self.refuse = refuse
        self.vgic = False
        self.initialised = False

    def create_vcpu(self, index: int | None = None, *, spe: bool = True) -> model.Vcpu:
        if self.initialised:
            raise KvmError(errno.EBUSY, "VCPU after vGIC init", ioctl="KVM_CREATE_VCPU")
        vcpu = self.vm.create_vcpu(index, spe=spe)
        set_attr = vcpu.set_device_attr

        def set_device_attr(group: int, attr: int, value: object) -> None:
            self.log.append(f"set {group}/{attr}")
            set_attr(group, attr, value)

        vcpu.set_device_attr = set_device_attr  # type: ignore[method-assign]
        self.log.append(f"create_vcpu {vcpu.index}")
        return vcpu

    def create_vgic_v3(self) -> None:
        self.log.append("create_vgic_v3")
        if self.refuse is not None:
            raise KvmError(self.refuse, abi.VGIC_ERRNOS["create"][self.refuse], ioctl="KVM_CREATE_DEVICE")
        self.vgic = True

    def init_vgic(self) -> None:
        self.log.append("init_vgic")
        self.initialised = True
        self.vm.irqchip = self.vgic

    def create_irqchip(self) -> None:
        """x86's KVM_CREATE_IRQCHIP: refused once a VCPU exists, as the kernel does."""
        self.log.append("create_irqchip")
        if self.vm.vcpus:
            raise KvmError(errno.EINVAL, "KVM_CREATE_IRQCHIP after a VCPU", ioctl="KVM_CREATE_IRQCHIP")
        self.vm.irqchip = True

    def add_halt_page(self) -> None:
        self.log.append("add_halt_page")

    def __enter__(self) -> _FakeVm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.vm.close()


class _FakeKvm:
    """Stands in for kvmspe.kvm.Kvm on a host with SPE, using the model;
    ``refuse`` is the errno KVM_CREATE_DEVICE answers for a GICv3 (None: it
    makes one)."""

    def __init__(self, host: model.Host, arch: str = "aarch64", refuse: int | None = None):
        self.host = host
        self.arch = arch
        self.refuse = refuse
        self.log: list[str] = []

    def create_vm(self) -> _FakeVm:
        self.log.append("create_vm")
        return _FakeVm(self.host.create_vm(irqchip=False), self.log, self.refuse)

    def __enter__(self) -> _FakeKvm:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _spe_host_results(
    limit: int, kvm: Callable[[model.Host], _FakeKvm] = _FakeKvm, arch: str = "aarch64"
) -> dict[str, conformance.Result]:
    host = model.Host(4096, [model.Spu(10, limit), model.Spu(11, limit)])

    @contextmanager
    def memlock(room: int | None) -> Iterator[Any]:
        def set_room(r: int) -> None:
            host.set_memlock_limit(host.locked_bytes + r)

        if room is not None:
            set_room(room)
        yield set_room
        host.set_memlock_limit(None)

    facts = HostFacts(arch, True, 4096, {10: limit, 11: limit})
    _, results = conformance._run_kvm(CASES, kvm(host), facts, memlock)
    return {r.case: r for r in results}


@pytest.mark.parametrize("limit", [0, 16 << 20])
def test_on_an_spe_host_the_kvm_runner_passes_what_applies_and_explains_the_rest(limit: int) -> None:
    results = _spe_host_results(limit)
    failed = {n: (r.expected, r.got, r.reason) for n, r in results.items() if r.status == "failed"}
    assert not failed
    skipped = {n: r.reason for n, r in results.items() if r.status == "skipped"}
    by = {c.name: c for c in CASES}
    for name, reason in skipped.items():
        case = by[name]
        assert (
            not case.setup.spus
            or case.needs_guest
            or case.setup.page_size not in (None, 4096)
            or (case.setup.spus[0].limit is not None and (case.setup.spus[0].limit == 0) != (limit == 0))
        ), f"{name} skipped for no good reason: {reason}"
    assert "host has SPE" in skipped["no-spe-has-irq"]
    assert "guest code" in skipped["rlimit-exit"]
    assert "16 KiB host page size" in skipped["aligned-16k-host-16k"]
    assert results["spu-different"].status == "passed"
    assert results["efault-set-max"].status == "passed"


def test_an_spu_limit_sysfs_does_not_show_skips_the_cases_that_need_it() -> None:
    facts = HostFacts("aarch64", True, 4096, {10: None})
    case = by_name(["limit-zero"])[0]
    assert "caps/max_buff_size" in (conformance._skip_reason(case, facts) or "")
    assert conformance._skip_reason(by_name(["store-page"])[0], facts) is None
    two = Case("two", Setup(spus=(case.setup.spus[0], case.setup.spus[0])), case.calls)
    assert "2 SPE instances" in (conformance._skip_reason(two, facts) or "")


def test_run_bounded_ends_a_kvm_run_that_does_not_return() -> None:
    class Spinning:
        def run(self) -> abi.Exit:
            time.sleep(5)
            raise AssertionError("not interrupted")

    exit_ = conformance.run_bounded(Spinning(), 0.05)  # type: ignore[arg-type]
    assert exit_.reason == abi.KVM_EXIT_INTR


def test_run_bounded_passes_a_prompt_exit_through() -> None:
    class Prompt:
        def run(self) -> abi.Exit:
            return abi.Exit(abi.KVM_EXIT_MMIO)

    assert conformance.run_bounded(Prompt(), 5).reason == abi.KVM_EXIT_MMIO  # type: ignore[arg-type]


def test_docs_list_every_rule_with_its_source_and_case_count() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "conformance.md").read_text()
    for rule in RULE_LIST:
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{rule.key}` |")), None)
        assert row is not None, f"docs/conformance.md does not list rule {rule.key}"
        cells = [c.strip() for c in row.split("|")]
        assert cells[2] == rule.source and cells[4] == str(len(rule.cases)), row


# --- the kvm path on arm64 gives each VM an in-kernel GICv3 ---------------------------------------


def _per_vm(log: list[str]) -> list[list[str]]:
    vms: list[list[str]] = []
    for entry in log:
        if entry == "create_vm":
            vms.append([])
        else:
            vms[-1].append(entry)
    return vms


def test_on_arm64_each_vm_gets_its_vgic_after_its_vcpus_and_before_any_attribute() -> None:
    kvms: list[_FakeKvm] = []

    def make(host: model.Host) -> _FakeKvm:
        kvms.append(_FakeKvm(host))
        return kvms[-1]

    results = _spe_host_results(0, make)
    ran = [r for r in results.values() if r.status != "skipped"]
    vms = _per_vm(kvms[0].log)
    assert len(vms) == len(ran) and ran
    # A case whose setup asks for a VM without an irqchip gets no vGIC.
    bare = [calls for calls in vms if "create_vgic_v3" not in calls]
    by = {c.name: c for c in CASES}
    assert len(bare) == sum(1 for r in ran if not by[r.case].setup.irqchip) > 0
    for calls in vms:
        if calls in bare:
            continue
        creates = [i for i, c in enumerate(calls) if c.startswith("create_vcpu")]
        gic = calls.index("create_vgic_v3")
        assert creates and max(creates) < gic and calls[gic + 1] == "init_vgic", calls
        assert all(not c.startswith("set") for c in calls[:gic]), calls
    # The IRQ cases pass, which the fake allows only with the vGIC in place.
    assert results["irq-set-get"].status == "passed"
    assert results["run-configured"].status == "passed"
    assert results["irq-without-irqchip"].status == "passed"
    assert results["features-plain-in-spe-vm"].status == "passed"


def test_a_host_that_refuses_a_gicv3_skips_the_interrupt_and_run_cases_with_the_reason() -> None:
    results = _spe_host_results(0, lambda host: _FakeKvm(host, refuse=errno.ENODEV))
    assert not [n for n, r in results.items() if r.status == "failed"]
    for name in (
        "irq-set-get",
        "irq-not-ppi-low",
        "run-unconfigured",
        "run-configured",
        "efault-set-irq",
        "init-configured",
    ):
        reason = results[name].reason
        assert results[name].status == "skipped", name
        assert "GICv3" in reason and "KVM_CREATE_DEVICE" in reason and "ENODEV" in reason, reason
    # Cases that neither set the interrupt nor run go on without the vGIC.
    assert results["store-page"].status == "passed"
    assert results["irq-without-irqchip"].status == "passed"
    assert results["spu-different"].status == "passed"


def test_without_arm64_x86s_irqchip_stands_in_for_the_vgic() -> None:
    kvms: list[_FakeKvm] = []

    def make(host: model.Host) -> _FakeKvm:
        kvms.append(_FakeKvm(host, arch="x86_64"))
        return kvms[-1]

    results = _spe_host_results(0, make, arch="x86_64")
    log = kvms[0].log
    assert "create_vgic_v3" not in log and "init_vgic" not in log
    # x86's irqchip (and the HLT page a VCPU runs) come before the first VCPU.
    first = next(i for i, entry in enumerate(log) if entry.startswith("create_vcpu"))
    assert log.index("create_irqchip") < first and log.index("add_halt_page") < first
    assert results["irq-set-get"].status == "passed"


# --- the kvm path tells the truth about what it could not run --------------------------------------


class _NoVcpuKvm(_FakeKvm):
    """A host where KVM_CREATE_VCPU fails for a reason of kvmspe's own (e.g. an id used twice)."""

    def create_vm(self) -> _FakeVm:
        vm = super().create_vm()

        def refuse(index: int | None = None, *, spe: bool = True) -> model.Vcpu:
            raise KvmError(errno.EEXIST, "VCPU id 0 was used before in this VM", ioctl="KVM_CREATE_VCPU")

        vm.create_vcpu = refuse  # type: ignore[method-assign]
        return vm


def test_a_case_that_applies_but_cannot_create_its_vcpus_is_a_failure_not_a_skip() -> None:
    host = model.Host(4096, [])
    facts = HostFacts("aarch64", False, 4096, {})
    _, results = conformance._run_kvm(by_name(["no-spe-has-irq"]), _NoVcpuKvm(host), facts)
    (result,) = results
    assert result.status == "failed"
    assert "cannot create the VCPUs" in result.reason and "EEXIST" in result.reason
    assert result.got == "EEXIST"


def test_a_run_that_cannot_open_dev_kvm_is_not_ok_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    import kvmspe.kvm

    def no_access(*args: object, **kw: object) -> None:
        raise KvmError(errno.EACCES, "no permission to open /dev/kvm", ioctl="open")

    monkeypatch.setattr(kvmspe.kvm, "Kvm", no_access)
    report = conformance.run("kvm")
    assert not report.ok and report.count("passed") == 0
    assert report.error is not None and "/dev/kvm is not usable" in report.error
    assert report.to_dict()["ok"] is False and report.to_dict()["error"] == report.error
    assert report.render().splitlines()[-1].startswith("error: nothing was tested: /dev/kvm is not usable")


def test_the_cli_exits_non_zero_when_nothing_could_be_tested(monkeypatch: pytest.MonkeyPatch) -> None:
    import kvmspe.kvm
    from kvmspe import cli

    def no_access(*args: object, **kw: object) -> None:
        raise KvmError(errno.EACCES, "no permission to open /dev/kvm", ioctl="open")

    monkeypatch.setattr(kvmspe.kvm, "Kvm", no_access)
    assert cli.main(["conformance", "--backend", "kvm"]) == 1


def test_a_timed_out_real_run_is_the_kernels_signal_exit(tmp_path: Path) -> None:
    # run_bounded on a real-backend VCPU lets kvm.Vcpu.run bound it (a timer
    # signal); the timeout becomes KVM_EXIT_INTR, what KVM reports for a signal.
    import signal

    from kvmspe.kvm import Kvm

    def ioctl(fd: int, request: int, arg: object) -> int:
        if request == abi.KVM_RUN:
            signal.pause()
            raise InterruptedError(errno.EINTR, "Interrupted")
        if request == abi.KVM_GET_VCPU_MMAP_SIZE:
            return 4096
        if request in (abi.KVM_CREATE_VM, abi.KVM_CREATE_VCPU):
            return os.open(tmp_path / f"fd{request}", os.O_RDWR | os.O_CREAT, 0o600)
        return 0

    (tmp_path / "kvm").touch()
    with Kvm(str(tmp_path / "kvm"), ioctl=ioctl, arch="x86_64") as kvm:
        vcpu = kvm.create_vm().create_vcpu(spe=False)
        os.ftruncate(vcpu.fd, 4096)
        start = time.monotonic()
        assert conformance.run_bounded(vcpu, 0.1).reason == abi.KVM_EXIT_INTR
        assert time.monotonic() - start < 5


def test_expectations_are_parsed_once_into_their_kind() -> None:
    assert Expectation.parse(True) == Expectation("has", flag=True)
    assert Expectation.parse(0x400) == Expectation("value", expr=expr.parse(0x400))
    assert Expectation.parse("ok") == Expectation("ok")
    assert Expectation.parse("exit") == Expectation("exit")
    assert Expectation.parse("EDOM") == Expectation("errno", errno_name="EDOM")
    assert Expectation.parse("KVM_EXIT_RLIMIT excess=PAGE * 4") == Expectation(
        "exit", exit_name="KVM_EXIT_RLIMIT", expr=expr.parse("PAGE * 4")
    )
    assert Expectation.parse("KVM_EXIT_INTR") == Expectation("exit", exit_name="KVM_EXIT_INTR")
    assert Expectation.parse("enc(LIMIT)") == Expectation("value", expr=expr.parse("enc(LIMIT)"))
    assert Step("get", MAX_NAME, expect="EINVAL").expectation.kind == "errno"
