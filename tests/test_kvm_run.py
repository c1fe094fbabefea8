"""KVM_RUN against the recorded kernel (tests/kvm_fake.py): the exit read from ``kvm_run``, its
errnos, and the one run timer that bounds it, in the main thread and in others."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kvm_fake import (
    GET_VCPU_MMAP_SIZE,
    HAS_ATTR,
    RUN,
    SPE_BIT,
    Recorder,
    make_kvm,
    u64,
)

from kvmspe import abi
from kvmspe.errors import KvmError
from kvmspe.kvm import Kvm, RunTimeout, Vcpu

# -- KVM_RUN ----------------------------------------------------------------------------------------


def test_run_reads_the_exit_reason_from_kvm_run(vcpu: Vcpu, rec: Recorder) -> None:
    rec.exit = (abi.KVM_EXIT_MMIO, b"")
    exit_ = vcpu.run()
    assert exit_ == abi.Exit(abi.KVM_EXIT_MMIO)
    assert [c.request for c in rec.calls] == [GET_VCPU_MMAP_SIZE, RUN]
    assert rec.calls[-1].arg == 0
    vcpu.run()
    assert rec.requests().count(GET_VCPU_MMAP_SIZE) == 1


def test_run_rlimit_exit_carries_the_excess(vcpu: Vcpu, rec: Recorder) -> None:
    rec.exit = (abi.ASSUMED.exit_rlimit, u64(3 * 4096))
    exit_ = vcpu.run()
    assert exit_.is_rlimit and exit_.rlimit_excess == 3 * 4096


def test_run_einval_on_an_spe_vcpu_names_spe_and_the_other_causes(vcpu: Vcpu, rec: Recorder) -> None:
    rec.fail[RUN] = [errno.EINVAL]
    with pytest.raises(KvmError) as info:
        vcpu.run()
    assert info.value.errno == errno.EINVAL and info.value.ioctl == "KVM_RUN"
    text = info.value.strerror
    assert text is not None and text.startswith(abi.RUN_ERRNOS[errno.EINVAL])
    assert "not because of SPE" in text and "KVM_ARM_VCPU_PMU_V3_INIT" in text
    assert rec.requests()[-1] == HAS_ATTR  # asked, not guessed


def test_run_einval_without_spe_does_not_blame_spe(arm: Kvm, rec: Recorder) -> None:
    vcpu = arm.create_vm().create_vcpu(spe=False)
    rec.fail[RUN] = [errno.EINVAL]
    rec.fail[HAS_ATTR] = [errno.ENXIO]
    with pytest.raises(KvmError) as info:
        vcpu.run()
    text = info.value.strerror
    assert text is not None
    assert "not because of SPE" in text and "PMU" in text and "vGIC" in text
    assert "SPE is not fully configured" not in text


class _Blocking:
    """An ioctl whose KVM_RUN blocks until a signal interrupts it, like arm64
    KVM_RUN of a VCPU without guest code; everything else goes to ``rec``."""

    def __init__(self, rec: Recorder, returns_after: int | None = None):
        self.rec = rec
        self.runs = 0
        self.returns_after = returns_after

    def __call__(self, fd: int, request: int, arg: Any) -> int:
        if request != RUN:
            return self.rec(fd, request, arg)
        self.runs += 1
        if self.returns_after is not None and self.runs > self.returns_after:
            return self.rec(fd, request, arg)
        signal.pause()  # returns once a signal was delivered to this thread
        raise InterruptedError(errno.EINTR, os.strerror(errno.EINTR))


def _blocking_vcpu(rec: Recorder, tmp_path: Path, returns_after: int | None = None) -> tuple[Vcpu, _Blocking]:
    blocking = _Blocking(rec, returns_after)
    kvm = make_kvm(rec, tmp_path, spe_feature_bit=SPE_BIT, ioctl=blocking)
    return kvm.create_vm().create_vcpu(), blocking


def test_a_kvm_run_that_never_returns_is_ended_and_reported_as_a_timeout(
    rec: Recorder, tmp_path: Path
) -> None:
    vcpu, _ = _blocking_vcpu(rec, tmp_path)
    seen: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda s, f: seen.append(s))
    try:
        start = time.monotonic()
        with pytest.raises(RunTimeout) as info:
            vcpu.run(timeout=0.2)
        took = time.monotonic() - start
        assert 0.2 <= took < 2, took
        assert info.value.errno == errno.ETIMEDOUT and info.value.ioctl == "KVM_RUN"
        assert "did not return within 0.2 s" in str(info.value) and isinstance(info.value, KvmError)
        # The previous handler is back, and no timer is left running.
        assert signal.getsignal(signal.SIGALRM) is not None
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        time.sleep(0.1)
        assert seen == []
    finally:
        signal.signal(signal.SIGALRM, previous)
    vcpu.vm.kvm.close()


def test_a_previous_timer_is_restored_after_a_bounded_run(rec: Recorder, tmp_path: Path) -> None:
    vcpu, _ = _blocking_vcpu(rec, tmp_path, returns_after=0)
    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda s, f: fired.append(s))
    signal.setitimer(signal.ITIMER_REAL, 30)
    try:
        assert vcpu.run(timeout=5).reason == abi.KVM_EXIT_HLT
        delay, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25 < delay <= 30
        assert fired == []
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    vcpu.vm.kvm.close()


def _run_in_a_thread(vcpu: Vcpu) -> tuple[threading.Thread, list[BaseException]]:
    """``vcpu.run(timeout=0.2)`` in a thread of its own, joined (10 s at most); what it raised."""
    out: list[BaseException] = []

    def work() -> None:
        try:
            vcpu.run(timeout=0.2)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(10)
    return worker, out


def test_a_run_outside_the_main_thread_is_bounded_too(rec: Recorder, tmp_path: Path) -> None:
    vcpu, _ = _blocking_vcpu(rec, tmp_path)
    previous = signal.signal(signal.SIGALRM, lambda s, f: None)
    try:
        worker, out = _run_in_a_thread(vcpu)
        assert not worker.is_alive()
        assert len(out) == 1 and isinstance(out[0], RunTimeout)
    finally:
        signal.signal(signal.SIGALRM, previous)
    vcpu.vm.kvm.close()


def test_outside_the_main_thread_without_a_handler_run_refuses_rather_than_hang(
    rec: Recorder, tmp_path: Path
) -> None:
    vcpu, blocking = _blocking_vcpu(rec, tmp_path)
    previous = signal.signal(signal.SIGALRM, signal.SIG_DFL)
    try:
        _, out = _run_in_a_thread(vcpu)
        assert isinstance(out[0], KvmError) and "main thread" in str(out[0])
        assert blocking.runs == 0
    finally:
        signal.signal(signal.SIGALRM, previous)
    vcpu.vm.kvm.close()


@pytest.mark.parametrize("timeout", [0, -1, 1e9, True, "1", float("nan")])
def test_a_bad_timeout_is_refused(vcpu: Vcpu, rec: Recorder, timeout: Any) -> None:
    with pytest.raises(ValueError, match="timeout"):
        vcpu.run(timeout=timeout)
    assert RUN not in rec.requests()


def test_run_timer_handler_installs_one_only_where_none_is_and_puts_the_old_back() -> None:
    from kvmspe.kvm import run_timer_handler

    previous = signal.signal(signal.SIGALRM, signal.SIG_DFL)
    try:
        with run_timer_handler():
            installed = signal.getsignal(signal.SIGALRM)
            assert installed != signal.SIG_DFL and installed != signal.SIG_IGN and callable(installed)
        assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL

        def mine(s: int, f: object) -> None:
            pass

        signal.signal(signal.SIGALRM, mine)
        with run_timer_handler():
            assert signal.getsignal(signal.SIGALRM) is mine  # a handler already there is kept
        assert signal.getsignal(signal.SIGALRM) is mine

        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        seen: list[object] = []

        def elsewhere() -> None:
            with run_timer_handler():  # Python cannot install handlers here: nothing changes
                seen.append(signal.getsignal(signal.SIGALRM))

        worker = threading.Thread(target=elsewhere)
        worker.start()
        worker.join(10)
        assert seen == [signal.SIG_DFL]
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_a_stand_in_run_is_bounded_by_the_same_timer_and_a_timer_set_before_survives() -> None:
    """conformance.run_bounded bounds a VCPU that is not the real backend's with
    the run timer of kvmspe.kvm: the stand-in is got out of its run, and the
    caller's own SIGALRM handler and ITIMER_REAL timer are as they were."""
    from kvmspe.conformance import runner as conformance

    class Spinning:
        index = 0

        def run(self) -> abi.Exit:
            time.sleep(5)
            raise AssertionError("not interrupted")

    fired: list[int] = []

    def mine(s: int, f: object) -> None:
        fired.append(s)

    previous = signal.signal(signal.SIGALRM, mine)
    try:
        signal.setitimer(signal.ITIMER_REAL, 30)
        start = time.monotonic()
        exit_ = conformance.run_bounded(Spinning(), 0.1)  # type: ignore[arg-type]
        assert exit_.reason == abi.KVM_EXIT_INTR and time.monotonic() - start < 2
        assert signal.getsignal(signal.SIGALRM) is mine
        left, interval = signal.getitimer(signal.ITIMER_REAL)
        assert 25 < left <= 30 and interval == 0
        assert fired == []  # the run's own signals reached only the run
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
