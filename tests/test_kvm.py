"""The /dev/kvm backend against this machine's real kernel.

On x86 the VCPU attribute plumbing is exercised through the TSC group
(KVM_VCPU_TSC_CTRL / KVM_VCPU_TSC_OFFSET); the SPE group must answer ENXIO.
Everything here is skipped, with the reason, where /dev/kvm is missing or
unusable. The arm64 paths are covered byte for byte by the test_kvm_*.py files on tests/kvm_fake.py.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from kvmspe import abi
from kvmspe.errors import KvmError
from kvmspe.kvm import SPE_FEATURE_CANDIDATES, Kvm, RunTimeout, Vcpu

TSC = (abi.KVM_VCPU_TSC_CTRL, abi.KVM_VCPU_TSC_OFFSET)
SPE_ATTRS = sorted(attr for group, attr in abi.ATTRS if group == abi.KVM_ARM_VCPU_SPE_CTRL)


def _usable() -> str | None:
    """None when /dev/kvm can be opened and answers; else why not."""
    try:
        with Kvm() as kvm:
            version = kvm.api_version()
            with kvm.create_vm() as vm:
                vm.create_vcpu(0, spe=False)
    except KvmError as exc:
        return f"/dev/kvm is not usable here: {exc}"
    if version != abi.KVM_API_VERSION:
        return f"/dev/kvm speaks API version {version}, not {abi.KVM_API_VERSION}"
    return None


@pytest.fixture(scope="module")
def kvm() -> Iterator[Kvm]:
    reason = _usable()
    if reason is not None:
        print(f"skipping the real-kernel tests: {reason}")
        pytest.skip(reason)
    with Kvm() as k:
        yield k


def _spe(kvm: Kvm) -> bool:
    """Whether a VCPU can get the SPE feature here (on arm64: a bit is known)."""
    return kvm.arch != "aarch64" or kvm.spe_feature().bit is not None


@pytest.fixture
def vcpu(kvm: Kvm) -> Iterator[Vcpu]:
    with kvm.create_vm() as vm:
        yield vm.create_vcpu(0, spe=_spe(kvm))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _require_x86(kvm: Kvm) -> None:
    if kvm.arch != "x86_64":
        pytest.skip(f"the TSC attribute group is x86 only; this host is {kvm.arch}")


# -- /dev/kvm itself -------------------------------------------------------------------


def test_api_version_is_12(kvm: Kvm) -> None:
    assert kvm.api_version() == abi.KVM_API_VERSION


def test_vcpu_attributes_capability_is_reported(kvm: Kvm) -> None:
    assert kvm.check_extension(abi.KVM_CAP_VCPU_ATTRIBUTES) > 0


def test_unknown_capability_answers_zero(kvm: Kvm) -> None:
    assert kvm.check_extension(0x7FFF_FFFF) == 0


def test_fileno_is_the_kernel_object_of_each_fd(kvm: Kvm) -> None:
    """Kvm, Vm and Vcpu give their descriptors with fileno(), and each is the
    kernel's object: /dev/kvm, then the anonymous inodes KVM makes."""
    with kvm.create_vm() as vm:
        vcpu = vm.create_vcpu(0, spe=False)
        links = [os.readlink(f"/proc/self/fd/{o.fileno()}") for o in (kvm, vm, vcpu)]
        assert links == ["/dev/kvm", "anon_inode:kvm-vm", "anon_inode:kvm-vcpu:0"]


def test_missing_device_is_a_kvm_error_with_reason(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(os.fspath(tmp_path), "no-kvm")
    with pytest.raises(KvmError) as info:
        Kvm(path)
    assert info.value.errno == errno.ENOENT
    assert "does not exist" in str(info.value)


def test_device_that_is_not_kvm_answers_enotty() -> None:
    with Kvm("/dev/null") as kvm, pytest.raises(KvmError) as info:
        kvm.api_version()
    assert info.value.errno == errno.ENOTTY


# -- the device-attribute plumbing (x86 TSC group) ------------------------------------


def test_has_tsc_offset(kvm: Kvm, vcpu: Vcpu) -> None:
    _require_x86(kvm)
    assert vcpu.has_device_attr(*TSC) is True


def test_has_unknown_attribute_of_tsc_group_is_false(kvm: Kvm, vcpu: Vcpu) -> None:
    _require_x86(kvm)
    assert vcpu.has_device_attr(abi.KVM_VCPU_TSC_CTRL, 0x1234) is False


def test_get_tsc_offset_is_an_int(kvm: Kvm, vcpu: Vcpu) -> None:
    _require_x86(kvm)
    value = vcpu.get_device_attr(*TSC)
    assert isinstance(value, int) and 0 <= value < 1 << 64


def test_set_tsc_offset_succeeds(kvm: Kvm, vcpu: Vcpu) -> None:
    _require_x86(kvm)
    vcpu.set_device_attr(*TSC, 0)
    vcpu.set_device_attr(*TSC, 1 << 20)


def test_unknown_tsc_attribute_set_and_get_answer_enxio(kvm: Kvm, vcpu: Vcpu) -> None:
    _require_x86(kvm)
    for call in (
        lambda: vcpu.get_device_attr(abi.KVM_VCPU_TSC_CTRL, 0x1234),
        lambda: vcpu.set_device_attr(abi.KVM_VCPU_TSC_CTRL, 0x1234, 0),
    ):
        with pytest.raises(KvmError) as info:
            call()
        assert info.value.errno == errno.ENXIO


def test_set_from_bad_address_is_efault(kvm: Kvm, vcpu: Vcpu) -> None:
    _require_x86(kvm)
    with pytest.raises(KvmError) as info:
        vcpu.set_device_attr(*TSC, abi.BAD_ADDRESS)
    assert info.value.errno == errno.EFAULT
    assert info.value.ioctl == "KVM_SET_DEVICE_ATTR"


def test_get_to_bad_address_is_efault(kvm: Kvm, vcpu: Vcpu) -> None:
    _require_x86(kvm)
    with pytest.raises(KvmError) as info:
        vcpu.get_device_attr(*TSC, abi.BAD_ADDRESS)
    assert info.value.errno == errno.EFAULT
    assert info.value.ioctl == "KVM_GET_DEVICE_ATTR"


def test_bad_address_call_leaves_the_vcpu_usable(kvm: Kvm, vcpu: Vcpu) -> None:
    _require_x86(kvm)
    with pytest.raises(KvmError):
        vcpu.set_device_attr(*TSC, abi.BAD_ADDRESS)
    vcpu.set_device_attr(*TSC, 0)
    assert isinstance(vcpu.get_device_attr(*TSC), int)


def test_value_that_does_not_fit_is_refused_before_the_ioctl(kvm: Kvm, vcpu: Vcpu) -> None:
    with pytest.raises(ValueError, match="uint64"):
        vcpu.set_device_attr(*TSC, -1)
    with pytest.raises(ValueError, match="int"):
        vcpu.set_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_IRQ, 1 << 40)


# -- the SPE group on a host without SPE ------------------------------------------------


def _require_no_spe(vcpu: Vcpu) -> None:
    if any(vcpu.has_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, a) for a in SPE_ATTRS):
        pytest.skip("this host's KVM supports SPE; the not-supported answers cannot be seen")


@pytest.mark.parametrize("attr", SPE_ATTRS)
def test_spe_group_has_is_false(vcpu: Vcpu, attr: int) -> None:
    _require_no_spe(vcpu)
    assert vcpu.has_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, attr) is False


@pytest.mark.parametrize("attr", SPE_ATTRS)
def test_spe_group_set_and_get_say_not_supported(vcpu: Vcpu, attr: int) -> None:
    _require_no_spe(vcpu)
    for call in (
        lambda: vcpu.set_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, attr, 4096),
        lambda: vcpu.get_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, attr),
    ):
        with pytest.raises(KvmError) as info:
            call()
        assert info.value.errno == errno.ENXIO
        assert "SPE not supported on this" in str(info.value)
        assert (info.value.group, info.value.attr) == (abi.KVM_ARM_VCPU_SPE_CTRL, attr)


# -- KVM_RUN -------------------------------------------------------------------------------


def test_run_of_an_empty_vm_gives_an_exit_an_errno_or_a_timeout(kvm: Kvm, vcpu: Vcpu) -> None:
    # A VM without memory: kernels differ (x86 has answered ENOSPC; arm64
    # never returns by itself, so the run ends at its time limit).
    start = time.monotonic()
    try:
        exit_ = vcpu.run(timeout=0.5)
    except RunTimeout as exc:
        assert exc.errno == errno.ETIMEDOUT and exc.ioctl == "KVM_RUN"
        assert 0.5 <= time.monotonic() - start < 5
    except KvmError as exc:
        assert exc.ioctl == "KVM_RUN" and exc.errno not in (None, 0, errno.EINTR)
    else:
        assert isinstance(exit_, abi.Exit) and isinstance(exit_.reason, int)
    # The previous SIGALRM handler is back and no timer is left armed.
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_arm64_run_without_guest_code_is_bounded(kvm: Kvm) -> None:
    if kvm.arch != "aarch64":
        pytest.skip(f"arm64 only: a VCPU without guest code returns from KVM_RUN on {kvm.arch}")
    with kvm.create_vm() as vm:
        vcpu = vm.create_vcpu(spe=False)
        start = time.monotonic()
        with pytest.raises(RunTimeout):
            vcpu.run(timeout=0.3)
        assert time.monotonic() - start < 5


def test_vcpu_threads_pinned_to_one_cpu_enter_the_real_kernel_bounded(kvm: Kvm) -> None:
    """The bring-up's VCPU threads on this kernel: each pins itself to the last
    CPU this process may use, then issues KVM_RUN from that thread (bounded by
    a timer signal sent to it, where the kernel never returns); the main
    thread's affinity and SIGALRM handler are as before."""
    from kvmspe import vmm

    cpu = max(os.sched_getaffinity(0))
    main_cpus = os.sched_getaffinity(0)
    handler = signal.getsignal(signal.SIGALRM)
    with kvm.create_vm() as vm:
        vcpus = [vm.create_vcpu(spe=False) for _ in range(2)]
        choice = vmm.BackendChoice("kvm", "test", None, None)
        result = vmm.BringUpResult(choice, 2, 21, 0, 4 << 20, os.sysconf("SC_PAGE_SIZE"))
        result.vcpu_cpus = [(cpu,), (cpu,)]
        running: list[threading.Event] = []
        entered = vmm.VcpuThreads(result, vcpus).run(running)
        assert not running, "every VCPU thread ended before its VM is closed"
    assert result.vcpu_thread_cpus == [(cpu,), (cpu,)]
    pinned = [s for s in result.steps if s.step.startswith("VCPU thread pinned")]
    assert [(s.vcpu, s.step, s.ok) for s in pinned] == [
        (0, f"VCPU thread pinned to CPUs {cpu}", True),
        (1, f"VCPU thread pinned to CPUs {cpu}", True),
    ]
    runs = [s for s in result.steps if s.vcpu is not None and "KVM_RUN" in s.step]
    assert len(runs) == 2, result.steps
    if kvm.arch == "aarch64":
        # No guest code: only the timer signal ends each run, in its own thread.
        assert entered and all("ended by a timer signal" in s.detail for s in runs), result.steps
    # Elsewhere an empty VM answers at once, with an exit or the kernel's errno: either is recorded.
    assert os.sched_getaffinity(0) == main_cpus
    assert signal.getsignal(signal.SIGALRM) == handler
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


# -- VCPU ids and features ------------------------------------------------------------------


def test_vcpu_ids_are_not_reused_after_close(kvm: Kvm) -> None:
    with kvm.create_vm() as vm:
        first = vm.create_vcpu(spe=False)
        first.close()
        assert vm.create_vcpu(spe=False).index == 1
        with pytest.raises(KvmError) as info:
            vm.create_vcpu(0, spe=False)
        assert info.value.errno == errno.EEXIST and "never frees a VCPU id" in str(info.value)


def test_an_unknown_feature_bit_is_explained(kvm: Kvm) -> None:
    if kvm.arch != "aarch64":
        pytest.skip(f"KVM_ARM_VCPU_INIT is arm64 only; this host is {kvm.arch}")
    if kvm.spe_feature().bit == 31:
        pytest.skip("this kernel's SPE feature is bit 31")
    with Kvm(spe_feature_bit=31) as other, other.create_vm() as vm:
        with pytest.raises(KvmError) as info:
            vm.create_vcpu()
    assert info.value.errno in (errno.ENOENT, errno.EINVAL) and info.value.ioctl == "KVM_ARM_VCPU_INIT"
    assert "bit 31 (asked for as the SPE feature)" in str(info.value)
    assert ("does not know" if info.value.errno == errno.ENOENT else "unknown feature bit") in str(info.value)


def test_spe_feature_probe_answers_with_a_reason(kvm: Kvm) -> None:
    feature = kvm.spe_feature()
    assert feature.reason
    if feature.bit is None:
        assert feature.source == "none"
        if kvm.arch == "aarch64":
            assert feature.reason.startswith("this kernel has no SPE VCPU feature")
            assert [b for b, _ in feature.tried] == list(SPE_FEATURE_CANDIDATES)
    else:
        with kvm.create_vm() as vm:
            vcpu = vm.create_vcpu()
            assert vcpu.has_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE)


def test_run_returns_a_known_exit(kvm: Kvm) -> None:
    _require_x86(kvm)
    # One page at the reset vector holding HLT, so the VCPU has something to run.
    page = mmap.mmap(-1, 4096, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS, mmap.PROT_READ | mmap.PROT_WRITE)
    page[0xFF0] = 0xF4
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    try:
        with kvm.create_vm() as vm:
            vm.set_user_memory_region(0, 0xFFFF_F000, 4096, address)
            vcpu = vm.create_vcpu(0)
            if vcpu.has_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_INIT):
                pytest.skip(
                    "the SPE group answers (kvmspe's shim): KVM_RUN needs SPE set up; test_shim runs it"
                )
            exit_ = vcpu.run()
            assert isinstance(exit_, abi.Exit)
            assert not abi.exit_name(exit_.reason).startswith("exit reason"), exit_.reason
            assert exit_.rlimit_excess is None
    finally:
        page.close()


# -- file descriptors ------------------------------------------------------------------------


def test_no_fd_leak_over_1000_vm_vcpu_cycles(kvm: Kvm) -> None:
    before = _fds()
    for i in range(1000):
        with kvm.create_vm() as vm:
            vcpu = vm.create_vcpu(i % 4, spe=False)
            if i % 10 == 0:
                vcpu.has_device_attr(*TSC)
    assert _fds() == before


def test_vm_close_closes_its_vcpus(kvm: Kvm) -> None:
    before = _fds()
    vm = kvm.create_vm()
    vcpus = [vm.create_vcpu(spe=False) for _ in range(3)]
    assert [v.index for v in vcpus] == [0, 1, 2]
    assert _fds() == before + 4
    vm.close()
    assert all(v.closed for v in vcpus)
    assert _fds() == before
    vm.close()  # twice is harmless


def test_vcpu_close_unmaps_and_closes(kvm: Kvm) -> None:
    before = _fds()
    with kvm.create_vm() as vm:
        vcpu = vm.create_vcpu(spe=False)
        try:
            vcpu.run(timeout=0.2)
        except KvmError:
            pass
        vcpu.close()
        assert vcpu.closed and vm.vcpus == []
    assert _fds() == before


def test_kvm_close_closes_its_vms() -> None:
    if _usable() is not None:
        pytest.skip("/dev/kvm is not usable here")
    before = _fds()
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.create_vcpu(spe=False)
    kvm.close()
    assert vm.closed
    assert _fds() == before
