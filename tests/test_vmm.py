"""The VMM-style configuration helper, on the model and on the real /dev/kvm."""

from __future__ import annotations

import errno

import pytest

from kvmspe import abi
from kvmspe.errors import KvmError
from kvmspe.host.profiles import model_host
from kvmspe.kvm import Kvm
from kvmspe.model.kernel import Host
from kvmspe.vmm import (
    BackendChoice,
    ConfigStep,
    SpeConfigError,
    bring_up,
    choose_backend,
    configure_spe,
    planned_steps,
)

SPE = abi.KVM_ARM_VCPU_SPE_CTRL
IRQ, SPU, MAX = abi.KVM_ARM_VCPU_SPE_IRQ, abi.KVM_ARM_VCPU_SPE_SPU, abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE
INIT = abi.KVM_ARM_VCPU_SPE_INIT
GOOD = {"irq": 21, "spu": 10, "max_buffer_size": 1 << 21}


class Recording:
    """A VCPU that records calls and can fail one of them."""

    def __init__(self, has: bool = True, fail: tuple[str, int, int] | None = None):
        self.calls: list[tuple[str, int, object]] = []
        self.has = has
        self.fail = fail

    def _maybe_fail(self, call: str, attr: int) -> None:
        if self.fail and self.fail[:2] == (call, attr):
            code = self.fail[2]
            raise KvmError(code, abi.explain(call, SPE, attr, code), group=SPE, attr=attr)

    def has_device_attr(self, group: int, attr: int) -> bool:
        self.calls.append(("has", attr, None))
        self._maybe_fail("has", attr)
        return self.has

    def set_device_attr(self, group: int, attr: int, value: object) -> None:
        self.calls.append(("set", attr, value))
        self._maybe_fail("set", attr)

    # The rest of the VCPU interface, which configuring never uses.
    index = 0

    def get_device_attr(self, group: int, attr: int, addr: object = None) -> int:
        raise AssertionError("configure_spe issues no KVM_GET_DEVICE_ATTR")

    def run(self) -> abi.Exit:
        raise AssertionError("configure_spe does not run the VCPU")


def _configure(host: Host, **kw: int) -> list[str]:
    vcpu = host.create_vm().create_vcpu(0)
    return [s.name for s in configure_spe(vcpu, **{**GOOD, **kw})]


# -- order and messages -----------------------------------------------------------------


def test_has_then_set_for_irq_spu_and_max_buffer_size_then_init_last() -> None:
    vcpu = Recording()
    steps = configure_spe(vcpu, **GOOD)
    expected = [("has", IRQ, None), ("set", IRQ, 21), ("has", SPU, None), ("set", SPU, 10)]
    expected += [("has", MAX, None), ("set", MAX, 1 << 21), ("has", INIT, None), ("set", INIT, None)]
    assert vcpu.calls == expected
    assert [(s.call, s.attr, s.value) for s in steps] == expected
    assert [s.name for s in steps[-2:]] == ["has KVM_ARM_VCPU_SPE_INIT", "set KVM_ARM_VCPU_SPE_INIT"]
    assert [(s.call, s.attr, s.value) for s in planned_steps(21, 10, 1 << 21)] == expected


def test_a_kernel_without_init_stops_at_its_has_step_after_the_values() -> None:
    class NoInit(Recording):
        def has_device_attr(self, group: int, attr: int) -> bool:
            super().has_device_attr(group, attr)
            return attr != INIT

    vcpu = NoInit()
    with pytest.raises(SpeConfigError) as info:
        configure_spe(vcpu, **GOOD)
    assert info.value.step == ConfigStep("has", INIT) and info.value.errno == errno.ENXIO
    assert "KVM_ARM_VCPU_SPE_INIT" in str(info.value)
    assert vcpu.calls[-1] == ("has", INIT, None) and ("set", MAX, 1 << 21) in vcpu.calls


def test_a_refused_init_is_its_own_step() -> None:
    vcpu = Recording(fail=("set", INIT, errno.EBUSY))
    with pytest.raises(SpeConfigError) as info:
        configure_spe(vcpu, **GOOD)
    assert str(info.value).startswith("cannot set KVM_ARM_VCPU_SPE_INIT: EBUSY")
    assert info.value.step == ConfigStep("set", INIT)


def test_has_no_stops_with_not_supported_before_any_set() -> None:
    vcpu = Recording(has=False)
    with pytest.raises(SpeConfigError) as info:
        configure_spe(vcpu, **GOOD)
    assert str(info.value).startswith("SPE not supported by this host's KVM")
    assert info.value.step.name == "has KVM_ARM_VCPU_SPE_IRQ"
    assert info.value.errno == errno.ENXIO
    assert vcpu.calls == [("has", IRQ, None)]


def test_has_error_is_its_own_step() -> None:
    vcpu = Recording(fail=("has", SPU, errno.ENODEV))
    with pytest.raises(SpeConfigError) as info:
        configure_spe(vcpu, **GOOD)
    assert str(info.value).startswith("cannot query KVM_ARM_VCPU_SPE_SPU: ENODEV: ")
    assert info.value.error.errno == errno.ENODEV


@pytest.mark.parametrize(
    ("attr", "code", "start"),
    [
        (IRQ, errno.EINVAL, "cannot set KVM_ARM_VCPU_SPE_IRQ=21: EINVAL: "),
        (SPU, errno.ENXIO, "cannot set KVM_ARM_VCPU_SPE_SPU=10: ENXIO: "),
        (MAX, errno.EDOM, "cannot set KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE=0x200000: EDOM: "),
    ],
)
def test_one_message_per_set_step(attr: int, code: int, start: str) -> None:
    vcpu = Recording(fail=("set", attr, code))
    with pytest.raises(SpeConfigError) as info:
        configure_spe(vcpu, **GOOD)
    assert str(info.value).startswith(start)
    assert "\n" not in str(info.value)
    assert info.value.step.attr == attr and info.value.errno == code
    assert vcpu.calls[-1][:2] == ("set", attr)


@pytest.mark.parametrize("bad", [{"irq": 1 << 31}, {"spu": -(1 << 31) - 1}, {"max_buffer_size": -1}])
def test_values_that_do_not_fit_are_refused_before_any_call(bad: dict[str, int]) -> None:
    vcpu = Recording()
    with pytest.raises(ValueError):
        configure_spe(vcpu, **{**GOOD, **bad})
    assert vcpu.calls == []


# -- on the model -------------------------------------------------------------------------


def test_model_configures_the_vm() -> None:
    host = model_host()
    vcpu = host.create_vm().create_vcpu(0)
    assert len(configure_spe(vcpu, **GOOD)) == 8
    assert (vcpu.irq, vcpu.vm.spu and vcpu.vm.spu.id, vcpu.vm.max_buffer_size) == (21, 10, 1 << 21)


def test_model_edom_message() -> None:
    with pytest.raises(SpeConfigError) as info:
        _configure(model_host(), max_buffer_size=0x401000)
    assert str(info.value).startswith("cannot set KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE=0x401000: EDOM: ")


def test_model_erange_on_limited_spu() -> None:
    with pytest.raises(SpeConfigError) as info:
        _configure(model_host("limited-spu"), max_buffer_size=8 << 20)
    assert info.value.errno == errno.ERANGE


def test_model_unknown_spu() -> None:
    with pytest.raises(SpeConfigError) as info:
        _configure(model_host(), spu=99)
    assert info.value.step.name == "set KVM_ARM_VCPU_SPE_SPU=99" and info.value.errno == errno.ENXIO


def test_model_irq_not_a_ppi() -> None:
    with pytest.raises(SpeConfigError) as info:
        _configure(model_host(), irq=40)
    assert info.value.step.name == "set KVM_ARM_VCPU_SPE_IRQ=40" and info.value.errno == errno.EINVAL


def test_model_host_without_spe_is_not_supported() -> None:
    with pytest.raises(SpeConfigError, match="SPE not supported by this host's KVM"):
        _configure(Host(4096, []))


def test_model_vcpu_without_the_feature_is_not_supported() -> None:
    vcpu = model_host().create_vm().create_vcpu(0, spe=False)
    with pytest.raises(SpeConfigError, match="SPE not supported by this host's KVM"):
        configure_spe(vcpu, **GOOD)


# -- on the real kernel -----------------------------------------------------------------------


def test_real_vcpu_stops_at_the_has_step_where_kvm_lacks_spe() -> None:
    try:
        kvm = Kvm()
    except KvmError as exc:
        pytest.skip(f"/dev/kvm is not usable here: {exc}")
    with kvm, kvm.create_vm() as vm:
        # On arm64 a VCPU gets the SPE feature only where the kernel has one.
        vcpu = vm.create_vcpu(0, spe=kvm.arch != "aarch64" or kvm.spe_feature().bit is not None)
        if vcpu.has_device_attr(SPE, IRQ):
            pytest.skip("this host's KVM supports SPE; the not-supported answer cannot be seen")
        with pytest.raises(SpeConfigError) as info:
            configure_spe(vcpu, **GOOD)
    assert str(info.value).startswith("SPE not supported by this host's KVM")
    assert info.value.step.name == "has KVM_ARM_VCPU_SPE_IRQ"
    assert info.value.errno == errno.ENXIO


# --- the whole bring-up, without the command line ---------------------------------------------


def _model_choice(memlock: int) -> BackendChoice:
    choice = choose_backend("model", profile="default-4k", memlock_limit=memlock)
    assert choice.name == "model" and choice.host is not None and choice.info is None
    assert choice.reason == "asked for with --backend model; modelling profile 'default-4k'"
    assert choice.host.memlock_limit == memlock
    return choice


def test_bring_up_on_the_model_records_every_step_in_order() -> None:
    choice = _model_choice(64 << 20)
    result = bring_up(choice, vcpus=2, irq=21, max_buffer_size=4 << 20)
    assert result.ok and result.error is None and result.stop is None
    assert choice.host is not None and result.spu == choice.host.spus[0].id
    names = [(s.step, s.vcpu) for s in result.steps]
    assert names[:3] == [("backend: model", None), ("VCPU affinity", None), ("KVM_CREATE_VM", None)]
    pin = "would pin VCPU thread to CPUs 0-3"
    assert names[-4:-2] == [(pin, 0), (pin, 1)]
    configured = [s for s in result.steps if s.step.startswith(("has ", "set "))]
    assert [s.step for s in configured if s.vcpu == 1] == [
        s.name for s in planned_steps(21, result.spu, 4 << 20)
    ]
    assert names[-2:] == [("KVM_RUN (first entry)", 0), ("KVM_RUN (first entry)", 1)]
    assert result.guest_max_buffer_size == 4 << 20 and result.pinned_per_vcpu == [0, 0]


def test_bring_up_stops_at_the_refused_step_with_its_errno() -> None:
    result = bring_up(_model_choice(64 << 20), irq=21, max_buffer_size=0x401000)
    assert not result.ok and result.error is not None and "EDOM" in result.error
    failed = [s for s in result.steps if not s.ok]
    assert len(failed) == 1 and failed[0].errno_name == "EDOM" and failed[0].vcpu == 0
    assert result.steps[-1] == failed[0] and result.guest_pmbidr is None


def test_bring_up_answers_kvm_exit_rlimit_by_raising_the_limit() -> None:
    stopped = bring_up(_model_choice(4 << 20), irq=21, max_buffer_size=4 << 20, enable_buffer=0)
    assert not stopped.ok and stopped.stop == "rlimit" and "KVM_EXIT_RLIMIT on VCPU 0" in str(stopped.error)
    done = bring_up(
        _model_choice(4 << 20), irq=21, max_buffer_size=4 << 20, enable_buffer=0, raise_memlock=True
    )
    assert done.ok and done.pinned_per_vcpu is not None and done.pinned_per_vcpu[0] > 4 << 20
    assert done.memlock_limit is not None and done.locked_bytes is not None
    assert done.memlock_limit >= done.locked_bytes


def test_bring_up_refuses_a_bad_guest_buffer_before_anything_runs() -> None:
    choice = _model_choice(64 << 20)
    with pytest.raises(ValueError, match="non-zero multiple of 4 KiB"):
        bring_up(choice, irq=21, max_buffer_size=4 << 20, enable_buffer=5000)
    assert choice.host is not None and choice.host.locked_bytes == 0


# -- which host CPUs each VCPU may run on ---------------------------------------------------------


def _big_little(memlock: int = 64 << 20) -> BackendChoice:
    return choose_backend("model", profile="big-little", memlock_limit=memlock)


@pytest.mark.parametrize(("spu", "cpus"), [(10, (0, 1, 2, 3)), (11, (4, 5, 6, 7))])
def test_big_little_each_vcpu_may_run_on_its_spus_cluster(spu: int, cpus: tuple[int, ...]) -> None:
    result = bring_up(_big_little(), vcpus=4, irq=21, spu=spu, max_buffer_size=4 << 20)
    assert result.ok, result.error
    assert result.spu_cpus == cpus and result.cpus_unknown is None
    assert result.vcpu_cpus == [cpus] * 4
    assert result.vcpu_thread_cpus is None  # the model runs no thread
    shown = f"{cpus[0]}-{cpus[-1]}"
    affinity = next(s for s in result.steps if s.step == "VCPU affinity")
    assert affinity.ok and f"SPU {spu} is on CPUs {shown} (4 CPUs)" in affinity.detail
    pins = [(s.step, s.vcpu) for s in result.steps if "pin" in s.step]
    assert pins == [(f"would pin VCPU thread to CPUs {shown}", i) for i in range(4)]
    # Decided before anything is created; pinned before the first entry.
    names = [s.step for s in result.steps]
    assert names.index("VCPU affinity") < names.index("KVM_CREATE_VM")
    assert max(i for i, n in enumerate(names) if "pin" in n) < names.index("KVM_RUN (first entry)")


def test_more_vcpus_than_the_spus_cpus_are_overcommit_with_a_warning_and_run() -> None:
    choice = _big_little(4 << 20)
    result = bring_up(choice, vcpus=8, irq=21, spu=11, max_buffer_size=4 << 20, raise_memlock=True)
    assert result.ok, result.error
    assert result.vcpu_cpus == [(4, 5, 6, 7)] * 8
    [warning] = result.warnings
    assert "8 VCPUs on SPU 11" in warning and "time-share those 4 CPUs" in warning and "8 buffers" in warning
    # Every VCPU was created and entered, each pinned to the SPU's CPUs.
    entered = [s.vcpu for s in result.steps if s.step == "KVM_RUN (first entry)"]
    assert entered == list(range(8))


def test_with_strict_placement_more_vcpus_than_cpus_stop_before_anything_is_created() -> None:
    choice = _big_little(4 << 20)
    assert choice.host is not None
    result = bring_up(
        choice, vcpus=8, irq=21, spu=11, max_buffer_size=4 << 20, raise_memlock=True, strict_placement=True
    )
    assert not result.ok and result.error is not None and "\n" not in result.error
    assert "8 VCPUs on SPU 11" in result.error and "CPUs 4-7" in result.error and "at most 4" in result.error
    assert [(s.step, s.ok) for s in result.steps] == [("backend: model", True), ("VCPU affinity", False)]
    assert result.vcpu_cpus == [] and result.spu_cpus == (4, 5, 6, 7)
    # Nothing created, nothing raised, nothing locked.
    assert choice.host.vms == [] and choice.host.memlock_limit == 4 << 20 and choice.host.locked_bytes == 0


def test_the_same_vcpus_fit_on_the_spu_they_fit_on() -> None:
    # 4 VCPUs on SPU 11 fit; under strict placement a fifth does not; SPU 10's cluster takes 4 as well.
    assert bring_up(_big_little(), vcpus=4, irq=21, spu=11, max_buffer_size=4 << 20, strict_placement=True).ok
    assert not bring_up(
        _big_little(), vcpus=5, irq=21, spu=11, max_buffer_size=4 << 20, strict_placement=True
    ).ok
    assert bring_up(_big_little(), vcpus=5, irq=21, spu=11, max_buffer_size=4 << 20).warnings
    assert bring_up(_big_little(), vcpus=4, irq=21, spu=10, max_buffer_size=4 << 20).ok


def test_an_spu_the_host_lacks_is_left_to_the_kernel_and_its_cpus_are_unknown() -> None:
    result = bring_up(_big_little(), vcpus=2, irq=21, spu=99, max_buffer_size=4 << 20)
    assert result.vcpu_cpus == [(), ()] and result.spu_cpus == ()
    assert result.cpus_unknown is not None and "no SPU 99" in result.cpus_unknown
    affinity = next(s for s in result.steps if s.step == "VCPU affinity")
    assert affinity.ok and "not pinned" in affinity.detail
    # The kernel (here the model) refuses the id itself: ENXIO at SET SPU.
    failed = [s for s in result.steps if not s.ok]
    assert [(s.step, s.errno_name) for s in failed] == [("set KVM_ARM_VCPU_SPE_SPU=99", "ENXIO")]


def test_an_spu_without_a_cpu_list_runs_unpinned_and_says_why() -> None:
    from kvmspe.model.kernel import Spu

    host = Host(4096, [Spu(10, 0)], 64 << 20)
    choice = BackendChoice("model", "test", host)
    result = bring_up(choice, vcpus=2, irq=21, max_buffer_size=4 << 20)
    assert result.ok and result.vcpu_cpus == [(), ()]
    unpinned = [s for s in result.steps if s.step == "VCPU thread not pinned"]
    assert [s.vcpu for s in unpinned] == [0, 1]
    assert all("CPUs of SPU 10 are not known" in s.detail and "no CPU list" in s.detail for s in unpinned)


def test_a_vcpu_count_below_one_is_refused_before_anything_runs() -> None:
    choice = _model_choice(64 << 20)
    with pytest.raises(ValueError, match="vcpus"):
        bring_up(choice, vcpus=0, irq=21, max_buffer_size=4 << 20)
    assert choice.host is not None and choice.host.vms == []


def test_raise_memlock_plans_with_the_chosen_spus_limit_not_the_first_spus() -> None:
    """With the first SPU limited to 4 MiB and the chosen one unlimited, an 8 MiB buffer
    needs the plan of 8 MiB: the limit is raised once, and no KVM_EXIT_RLIMIT comes."""
    from kvmspe import planner
    from kvmspe.model.kernel import Spu

    host = Host(4096, [Spu(11, 4 << 20, cpus=(4, 5, 6, 7)), Spu(10, 0, cpus=(0, 1, 2, 3))], 8 << 20)
    choice = BackendChoice("model", "test", host, None)
    r = bring_up(
        choice, vcpus=2, irq=21, spu=10, max_buffer_size=8 << 20, enable_buffer=0, raise_memlock=True
    )
    assert r.ok, r.error
    wanted = planner.plan(2, 8 << 20, page_size=4096, spu_limit=0).memlock_limit
    assert wanted is not None and r.memlock_limit == wanted
    assert [s.step for s in r.steps].count("raise RLIMIT_MEMLOCK") == 1
    assert not any("KVM_EXIT_RLIMIT" in s.detail for s in r.steps)
