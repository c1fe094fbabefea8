"""The VCPU threads of the bring-up against a recorded arm64 kernel with SPE (tests/kvm_fake.py):
each pinned to its SPU's CPUs when it issues KVM_RUN, bounded, joined, and what stops them."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kvm_fake import (
    CREATE_VM,
    RUN,
    AffinityRecorder,
    Recorder,
    spe_host,
)


def _configure_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    import json

    from kvmspe import cli

    code = cli.main(["configure", "--backend", "kvm", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_each_vcpu_thread_is_pinned_to_its_spus_cpus_when_it_issues_kvm_run(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvmspe import cli

    main_before = frozenset(os.sched_getaffinity(0))
    last = max(main_before)
    ioctl = AffinityRecorder(rec)
    spe_host(tmp_path, monkeypatch, ioctl, cpumask=str(last))
    handler = signal.getsignal(signal.SIGALRM)

    code, doc = _configure_json(capsys, "--vcpus", "1", "--spu", "10")
    assert code == 0, doc["error"]
    assert doc["spu_cpus"] == [last] and doc["vcpu_cpus"] == [[last]] and doc["vcpu_thread_cpus"] == [[last]]
    # KVM_RUN came from the VCPU's own thread, restricted to the SPU's CPU at that moment.
    assert len(ioctl.runs) == 1
    run = ioctl.runs[0]
    assert run.thread == "kvmspe-vcpu-0" and run.ident != threading.main_thread().ident
    assert run.cpus == {last}
    steps = [(s["step"], s["vcpu"], s["ok"]) for s in doc["steps"]]
    pinned = steps.index((f"VCPU thread pinned to CPUs {last}", 0, True))
    assert steps.index(("VCPU affinity", None, True)) < steps.index(("KVM_CREATE_VM", None, True)) < pinned
    assert pinned < steps.index(("KVM_RUN (first entry)", 0, True))
    # The main thread's affinity and SIGALRM disposition are as they were.
    assert frozenset(os.sched_getaffinity(0)) == main_before
    assert signal.getsignal(signal.SIGALRM) == handler

    code = cli.main(["configure", "--backend", "kvm", "--vcpus", "1", "--spu", "10"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"  ok   VCPU affinity  (SPU 10 is on CPUs {last} (1 CPU)" in out
    assert f"  ok   vcpu 0: VCPU thread pinned to CPUs {last}\n" in out
    assert [r.cpus for r in ioctl.runs] == [{last}, {last}]
    assert frozenset(os.sched_getaffinity(0)) == main_before
    if len(main_before) < 2:
        # Everything above held, but with one usable CPU a thread that was
        # never pinned would have run on {last} too.
        pytest.skip(f"this process may use only CPU {last}: no narrower set to show the thread was pinned")
    assert run.cpus < main_before  # the VCPU thread's set really changed


def test_spu_cpus_the_process_may_not_use_are_reported_as_not_pinned(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The SPU's cpumask names a CPU this process may use and one it may not (no
    # such CPU here, as for a CPU outside the process's cpuset): the kernel
    # pins to the usable one, and the report says so rather than claim both.
    main_before = frozenset(os.sched_getaffinity(0))
    last, absent = max(main_before), 8191
    if (os.cpu_count() or 1) > absent:
        pytest.skip(f"this machine has CPU {absent}: no CPU number is absent here")
    ioctl = AffinityRecorder(rec)
    spe_host(tmp_path, monkeypatch, ioctl, cpumask=f"{last},{absent}")
    code, doc = _configure_json(capsys, "--vcpus", "1", "--spu", "10")
    assert code == 0, doc["error"]
    assert doc["vcpu_cpus"] == [[last, absent]] and doc["vcpu_thread_cpus"] == [[last]]
    pinned = [s for s in doc["steps"] if s["step"].startswith("VCPU thread pinned")]
    assert [(s["step"], s["vcpu"], s["ok"], s["detail"]) for s in pinned] == [
        (
            f"VCPU thread pinned to CPUs {last}",
            0,
            True,
            f"asked for CPUs {last},{absent}; the OS allows only these",
        )
    ]
    assert [r.cpus for r in ioctl.runs] == [{last}]
    assert frozenset(os.sched_getaffinity(0)) == main_before


def test_vcpu_threads_that_never_return_from_kvm_run_are_bounded_and_joined(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvmspe.host.discovery import format_cpulist

    allowed = frozenset(os.sched_getaffinity(0))
    ioctl = AffinityRecorder(rec, block=True)
    spe_host(tmp_path, monkeypatch, ioctl, cpumask=format_cpulist(allowed))
    vcpus = min(len(allowed), 2)
    before = threading.active_count()
    handler = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    code, doc = _configure_json(capsys, "--vcpus", str(vcpus), "--spu", "10")
    took = time.monotonic() - start
    assert code == 0, doc["error"]
    runs = [s for s in doc["steps"] if s["step"] == "KVM_RUN (first entry)"]
    assert [s["vcpu"] for s in runs] == list(range(vcpus))
    assert all(s["detail"] == "entered; no exit within 1 s, ended by a timer signal" for s in runs)
    assert sorted(r.thread for r in ioctl.runs) == [f"kvmspe-vcpu-{i}" for i in range(vcpus)]
    assert all(r.cpus == allowed for r in ioctl.runs)
    # Bounded (the runs are in parallel, each ended after 1 s), every thread joined,
    # and the SIGALRM handler the bring-up installed for them is gone again.
    assert took < 10, took
    assert threading.active_count() == before
    assert signal.getsignal(signal.SIGALRM) == handler


@pytest.mark.parametrize("interrupts", [1, 2], ids=["ctrl-c", "ctrl-c-twice"])
def test_ctrl_c_while_vcpu_threads_are_in_kvm_run_exits_130_once_every_thread_is_gone(
    rec: Recorder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    interrupts: int,
) -> None:
    from kvmspe import cli
    from kvmspe.host.discovery import format_cpulist

    allowed = frozenset(os.sched_getaffinity(0))
    ioctl = AffinityRecorder(rec, block=True)
    spe_host(tmp_path, monkeypatch, ioctl, cpumask=format_cpulist(allowed))
    vcpus = min(len(allowed), 2)
    handler = signal.getsignal(signal.SIGALRM)
    main = threading.main_thread().ident
    assert main is not None

    def ctrl_c() -> None:
        # Once every VCPU is in KVM_RUN, SIGINT to the main thread; the second
        # one lands while the VMM waits for the runs to end.
        while len(ioctl.runs) < vcpus:
            time.sleep(0.01)
        for _ in range(interrupts):
            time.sleep(0.2)
            # Only while a VCPU thread runs (its run ends at 1 s): a SIGINT after
            # the command returned would interrupt the test instead.
            if any(t.name.startswith("kvmspe-vcpu-") and t.is_alive() for t in threading.enumerate()):
                signal.pthread_kill(main, signal.SIGINT)
                sent.append(True)

    sent: list[bool] = []
    sender = threading.Thread(target=ctrl_c, daemon=True)
    sender.start()
    code = cli.main(["configure", "--backend", "kvm", "--vcpus", str(vcpus), "--spu", "10"])
    out, err = capsys.readouterr()
    assert code == 130 and err == "kvmspe: interrupted\n", err
    # No VCPU thread, nor the timer thread of its run, outlives the command:
    # the VCPUs were not closed under a KVM_RUN, and no timer signal comes later.
    left = [t.name for t in threading.enumerate() if t.name.startswith("kvmspe-") and t.is_alive()]
    assert left == []
    assert signal.getsignal(signal.SIGALRM) == handler
    assert frozenset(os.sched_getaffinity(0)) == allowed
    sender.join(5)
    assert len(sent) == interrupts


def test_ctrl_c_as_a_vcpu_thread_starts_still_waits_for_that_thread(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvmspe import cli

    ioctl = AffinityRecorder(rec, block=True)
    spe_host(tmp_path, monkeypatch, ioctl, cpumask=None)
    real_start = threading.Thread.start

    def start_then_ctrl_c(self: threading.Thread) -> None:
        # SIGINT lands just as the thread has started, before the VMM has noted it.
        real_start(self)
        if self.name == "kvmspe-vcpu-1":
            raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", start_then_ctrl_c)
    code = cli.main(["configure", "--backend", "kvm", "--vcpus", "2", "--spu", "10"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 130 and err == "kvmspe: interrupted\n"
    left = [t.name for t in threading.enumerate() if t.name.startswith("kvmspe-") and t.is_alive()]
    assert left == []


def test_an_unexpected_error_in_a_vcpu_thread_is_a_failing_step_not_a_traceback(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvmspe import cli

    class Buggy(AffinityRecorder):
        def __call__(self, fd: int, request: int, arg: Any) -> int:
            if request == RUN and threading.current_thread().name == "kvmspe-vcpu-1":
                raise RuntimeError("a bug\nof the fake kernel")
            return super().__call__(fd, request, arg)

    ioctl = Buggy(rec)
    spe_host(tmp_path, monkeypatch, ioctl, cpumask=None)  # unpinned: any number of VCPUs
    code, doc = _configure_json(capsys, "--vcpus", "2", "--spu", "10")
    assert code == 1 and doc["ok"] is False
    assert doc["error"] == "VCPU 1: VCPU thread failed: RuntimeError: a bug of the fake kernel"
    steps = [(s["step"], s["vcpu"], s["ok"], s["detail"]) for s in doc["steps"]]
    assert ("VCPU thread failed", 1, False, "RuntimeError: a bug of the fake kernel") in steps
    # VCPU 0's entry is recorded too.
    assert [st for st in steps if st[0] == "KVM_RUN (first entry)"] == [
        ("KVM_RUN (first entry)", 0, True, "exit KVM_EXIT_HLT")
    ]

    code = cli.main(["configure", "--backend", "kvm", "--vcpus", "2", "--spu", "10"])
    out, err = capsys.readouterr()
    assert code == 1 and err == ""
    assert "  FAIL vcpu 1: VCPU thread failed  (RuntimeError: a bug of the fake kernel)\n" in out
    assert out.endswith("stopped: VCPU 1: VCPU thread failed: RuntimeError: a bug of the fake kernel\n")


def test_an_unexpected_error_while_pinning_stops_every_vcpu_from_entering(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvmspe import vmm

    main_before = frozenset(os.sched_getaffinity(0))
    ioctl = AffinityRecorder(rec)
    spe_host(tmp_path, monkeypatch, ioctl, cpumask=str(max(main_before)))

    def broken_pin(cpus: Any) -> frozenset[int]:
        raise MemoryError("no memory for the CPU set")

    monkeypatch.setattr(vmm, "pin_thread", broken_pin)
    code, doc = _configure_json(capsys, "--vcpus", "1", "--spu", "10")
    assert code == 1 and doc["ok"] is False
    assert doc["error"] == "VCPU 0: VCPU thread failed: MemoryError: no memory for the CPU set"
    failed = [(s["step"], s["vcpu"], s["detail"]) for s in doc["steps"] if not s["ok"]]
    assert failed == [("VCPU thread failed", 0, "MemoryError: no memory for the CPU set")]
    assert ioctl.runs == [] and RUN not in rec.requests()
    assert frozenset(os.sched_getaffinity(0)) == main_before


def test_bring_up_from_another_thread_needs_a_sigalrm_handler_and_says_so_before_creating_anything(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvmspe import vmm

    ioctl = AffinityRecorder(rec)
    spe_host(tmp_path, monkeypatch, ioctl, cpumask=str(max(os.sched_getaffinity(0))))
    results: list[vmm.BringUpResult] = []

    def library_caller() -> None:
        choice = vmm.choose_backend("kvm")
        results.append(vmm.bring_up(choice, vcpus=1, irq=21, spu=10, max_buffer_size=4 << 20))

    def in_a_thread() -> vmm.BringUpResult:
        worker = threading.Thread(target=library_caller)
        worker.start()
        worker.join(30)
        assert not worker.is_alive()
        return results.pop()

    previous = signal.signal(signal.SIGALRM, signal.SIG_DFL)
    try:
        r = in_a_thread()
        assert not r.ok and r.error is not None
        assert r.error.startswith("the real backend is brought up from a thread other than the main one")
        assert "install a SIGALRM handler" in r.error
        assert [(s.step, s.ok) for s in r.steps][-1] == ("VCPU threads", False)
        assert CREATE_VM not in rec.requests() and ioctl.runs == []

        # With a handler installed by the main thread, the same call brings the VM up.
        signal.signal(signal.SIGALRM, lambda *_: None)
        r = in_a_thread()
        assert r.ok, r.error
        assert [s.detail for s in r.steps if s.step == "KVM_RUN (first entry)"] == ["exit KVM_EXIT_HLT"]
        assert len(ioctl.runs) == 1
    finally:
        signal.signal(signal.SIGALRM, previous)


_LATE_THREAD_SCRIPT = """
import os, signal, sys, tempfile, threading, time
from pathlib import Path
sys.path[:0] = [sys.argv[1]]
import kvm_fake as t
import kvmspe.kvm
from kvmspe import cli, vmm
from kvmspe.host import discovery

tmp = Path(tempfile.mkdtemp())
rec = t.Recorder(tmp)
made = []
seen = {}

class Stubborn(t.AffinityRecorder):
    def __call__(self, fd, request, arg):
        if request == t.RUN:
            time.sleep(1.5)  # Python retries it across the timer signals: the run ends late
            seen["fd open when the run ended"] = os.path.exists(f"/proc/self/fd/{fd}")
            seen["vcpu closed when the run ended"] = made[0].closed
            raise InterruptedError(4, "EINTR")
        return self.rec(fd, request, arg)

ioctl = Stubborn(rec)
spe = tmp / "sys/bus/event_source/devices/arm_spe_0"
spe.mkdir(parents=True)
(spe / "type").write_text("10\\n")
real = discovery.discover
discovery.discover = lambda **kw: real(sysfs_root=str(tmp / "sys"))
kvmspe.kvm.Kvm = lambda *a, **kw: made.append(t.make_kvm(rec, tmp, ioctl=ioctl)) or made[-1]
vmm.VCPU_THREAD_TIMEOUT = 0.3
code = cli.main(["configure", "--backend", "kvm", "--vcpus", "1", "--spu", "10"])
print("code", code, "closed at once", made[0].closed, flush=True)
time.sleep(2.5)  # past the run's 1 s timer: its signals keep coming until the run ends
print("alive", sorted(seen.items()), "closed in the end", made[0].closed, flush=True)
"""


def test_a_vcpu_thread_still_running_when_the_vmm_gives_up_neither_kills_the_process_nor_loses_its_vcpu(
    tmp_path: Path,
) -> None:
    import subprocess

    script = tmp_path / "late.py"
    script.write_text(_LATE_THREAD_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run(
        [sys.executable, str(script), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    # Before: SIGALRM's default came back while the late run's timer still rang (-14).
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    assert "stopped: VCPU 0: VCPU thread did not finish within 0.3 s\n" in done.stdout
    assert "code 1 closed at once False\n" in done.stdout
    assert (
        "alive [('fd open when the run ended', True), ('vcpu closed when the run ended', False)]"
        " closed in the end True\n"
    ) in done.stdout


@pytest.mark.parametrize(
    ("cpumask", "type_", "why"),
    [
        (None, 10, "arm_spe_0's CPUs are not known: cpumask: "),
        ("", 10, "arm_spe_0's CPUs are not known: its cpumask is ''"),
        ("0-3", 11, "no arm_spe_N of perf type 10: this host shows arm_spe_0 (perf type 11)"),
    ],
    ids=["no-cpumask-file", "empty-cpumask", "no-unit-of-that-type"],
)
def test_an_spu_whose_cpus_are_not_known_runs_its_threads_unpinned_and_says_why(
    rec: Recorder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    cpumask: str | None,
    type_: int,
    why: str,
) -> None:
    main_before = frozenset(os.sched_getaffinity(0))
    ioctl = AffinityRecorder(rec)
    spe_host(tmp_path, monkeypatch, ioctl, cpumask=cpumask, type_=type_)
    code, doc = _configure_json(capsys, "--vcpus", "2", "--spu", "10")
    assert code == 0, doc["error"]
    assert doc["spu_cpus"] == [] and doc["vcpu_cpus"] == [[], []] and doc["vcpu_thread_cpus"] == [None, None]
    affinity = next(s for s in doc["steps"] if s["step"] == "VCPU affinity")
    assert affinity["ok"] and affinity["detail"].startswith("not known, so the VCPU threads are not pinned: ")
    assert why in affinity["detail"]
    unpinned = [s for s in doc["steps"] if s["step"] == "VCPU thread not pinned"]
    assert [s["vcpu"] for s in unpinned] == [0, 1] and all(why in s["detail"] for s in unpinned)
    # The threads still issue KVM_RUN, each on its own thread, with the process's CPUs.
    assert sorted(r.thread for r in ioctl.runs) == ["kvmspe-vcpu-0", "kvmspe-vcpu-1"]
    assert all(r.cpus == main_before for r in ioctl.runs)
    assert frozenset(os.sched_getaffinity(0)) == main_before


def test_a_cpu_set_the_os_refuses_stops_before_any_vcpu_enters(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvmspe import cli

    main_before = frozenset(os.sched_getaffinity(0))
    absent = 8191  # the highest CPU number sysfs may name; no CPU of this machine
    if (os.cpu_count() or 1) > absent:
        pytest.skip(f"this machine has CPU {absent}: no CPU number is absent here")
    ioctl = AffinityRecorder(rec)
    spe_host(tmp_path, monkeypatch, ioctl, cpumask=str(absent))
    code, doc = _configure_json(capsys, "--vcpus", "1", "--spu", "10")
    assert code == 1 and doc["ok"] is False
    assert doc["vcpu_cpus"] == [[absent]] and doc["vcpu_thread_cpus"] == [None]
    failed = [s for s in doc["steps"] if not s["ok"]]
    assert [(s["step"], s["vcpu"]) for s in failed] == [(f"pin VCPU thread to CPUs {absent}", 0)]
    assert failed[0]["detail"].startswith(f"cannot pin to CPUs {absent}: ")
    assert doc["error"].startswith(f"VCPU 0: cannot pin to CPUs {absent}: ") and "\n" not in doc["error"]
    assert ioctl.runs == [] and RUN not in rec.requests()
    assert frozenset(os.sched_getaffinity(0)) == main_before

    code = cli.main(["configure", "--backend", "kvm", "--vcpus", "1", "--spu", "10"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"  FAIL vcpu 0: pin VCPU thread to CPUs {absent}  (cannot pin to CPUs {absent}: " in out
    assert f"\nstopped: VCPU 0: cannot pin to CPUs {absent}: " in out


def test_vcpu_threads_not_ready_in_time_stop_the_bring_up_and_none_enters(
    rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvmspe import affinity, vmm
    from kvmspe.host.discovery import format_cpulist

    allowed = frozenset(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("needs two CPUs this process may use, for two VCPUs on one SPU")
    ioctl = AffinityRecorder(rec)
    spe_host(tmp_path, monkeypatch, ioctl, cpumask=format_cpulist(allowed))
    monkeypatch.setattr(vmm, "VCPU_READY_TIMEOUT", 0.2)
    monkeypatch.setattr(vmm, "VCPU_THREAD_TIMEOUT", 0.5)
    slow_done = threading.Event()

    def slow_pin(cpus: Any) -> frozenset[int]:
        # VCPU 1's thread takes longer to pin itself than the VMM waits.
        if threading.current_thread().name == "kvmspe-vcpu-1":
            time.sleep(1.0)
            slow_done.set()
        return affinity.pin_thread(cpus)

    monkeypatch.setattr(vmm, "pin_thread", slow_pin)
    code, doc = _configure_json(capsys, "--vcpus", "2", "--spu", "10")
    assert code == 1 and doc["ok"] is False
    # VCPU 0's thread gave up waiting for VCPU 1's and never entered; VCPU 1's was still pinning.
    assert doc["error"] == "VCPU 1: VCPU thread did not finish within 0.5 s"
    failed = [(s["step"], s["vcpu"], s["detail"]) for s in doc["steps"] if not s["ok"]]
    assert failed == [
        ("KVM_RUN (first entry)", 0, "not entered: the VCPU threads were not all pinned within 0.2 s"),
        (
            "VCPU thread did not finish within 0.5 s",
            1,
            "it may no longer enter the guest; its VCPU is closed once it ends",
        ),
    ]
    assert ioctl.runs == [] and RUN not in rec.requests()
    assert slow_done.wait(5)
