"""kvmspe in hostile surroundings, round two: standard output closed, full or
without a reader; objects used after close; library arguments of the wrong
kind; KVM_RUN under a blocked timer signal; threads; signals while files are
written; a sysfs snapshot too large in all; exports and the values kvmspe accepts.

Every subprocess here is bounded by a timeout. ``STATS`` counts the runs and
how they ended; the figures are printed at the end of the module (``-s``).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmspe import abi
from kvmspe.errors import ClosedError, InvalidArgumentError, KvmError
from kvmspe.kvm import Kvm
from kvmspe.model import kernel as model

STATS: Counter[str] = Counter()
SRC = Path(__file__).resolve().parent.parent / "src"
HAVE_KVM = os.access("/dev/kvm", os.R_OK | os.W_OK)
needs_kvm = pytest.mark.skipif(not HAVE_KVM, reason="/dev/kvm is missing or not usable here")


def kvmspe(
    argv: list[str],
    *,
    stdout: str = "pipe",
    stderr: str = "pipe",
    python_flags: tuple[str, ...] = (),
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m kvmspe ARGV`` with stdout and stderr each "pipe" (captured),
    "closed" (no descriptor at all), "full" (/dev/full) or "gone" (a pipe whose
    reader has already left: the first write fails with EPIPE)."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("PYTHONUNBUFFERED", None)
    redirect = {"closed": ">&-", "full": ">/dev/full"}
    shell = f'exec {sys.executable} {" ".join(python_flags)} -m kvmspe "$@"'
    ends: list[int] = []
    files: dict[str, int] = {}
    for name, how in (("1", stdout), ("2", stderr)):
        if how in redirect:
            shell += f" {name}{redirect[how]}"
        elif how == "gone":
            read, write = os.pipe()
            os.close(read)
            ends.append(write)
            files[name] = write
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", shell, "sh", *argv],
            stdout=files.get("1", subprocess.PIPE),
            stderr=files.get("2", subprocess.PIPE),
            text=True,
            env=env,
            cwd=cwd,
            timeout=120,
        )
    finally:
        for fd in ends:
            os.close(fd)
    STATS["runs"] += 1
    STATS[f"stdout {stdout}, stderr {stderr}: exit {done.returncode}"] += 1
    return done


# --- 1. standard output closed, full, or without a reader -----------------------------------------

#: Commands whose answer is yes (0), no (1) and bad input (2), small and large outputs.
OUTPUT_COMMANDS = [
    ["encode", "4M"],
    ["encode", "0x401000"],
    ["encode", "4M", "--json"],
    ["sizes", "--limit", "0"],
    ["explain", "NO_SUCH_NAME"],
    ["explain", "KVM_ARM_VCPU_SPE_CTRL", "--json"],
    ["export", "--lang", "c"],
    ["guest", "--dt"],
    ["plan", "--vcpus", "4"],
    ["configure", "--vcpus", "2"],
    ["--help"],
    ["--version"],
    ["encode", "--help"],
]

_expected: dict[tuple[str, ...], subprocess.CompletedProcess[str]] = {}


def expected(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """The command's run with both outputs captured: its own status and answer."""
    key = tuple(argv)
    if key not in _expected:
        _expected[key] = kvmspe(argv)
        assert "Traceback" not in _expected[key].stderr
    return _expected[key]


def assert_one_line_about_stdout(err: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kvmspe: error: cannot write the answer to standard output"), err


@pytest.mark.parametrize("flags", [(), ("-u",)], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("argv", OUTPUT_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("how", ["closed", "full"])
def test_stdout_that_cannot_be_written_is_one_line_and_exit_2(
    argv: list[str], how: str, flags: tuple[str, ...]
) -> None:
    normal = expected(argv)
    done = kvmspe(argv, stdout=how, python_flags=flags)
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    if normal.returncode == 2 and not normal.stdout:
        # A refusal writes nothing on stdout: it is told as before, on stderr.
        assert (done.returncode, done.stderr) == (2, normal.stderr)
        return
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert_one_line_about_stdout(done.stderr)


@pytest.mark.parametrize("flags", [(), ("-u",)], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("argv", OUTPUT_COMMANDS, ids=" ".join)
def test_a_reader_gone_keeps_the_answers_status_and_says_nothing(
    argv: list[str], flags: tuple[str, ...]
) -> None:
    normal = expected(argv)
    done = kvmspe(argv, stdout="gone", python_flags=flags)
    assert done.returncode == normal.returncode, (done.returncode, normal.returncode, done.stderr)
    if normal.returncode == 2 and not normal.stdout:
        assert done.stderr == normal.stderr
    else:
        assert done.stderr == "", done.stderr


@pytest.mark.parametrize(
    "argv", [["encode", "0x401000"], ["explain", "NO_SUCH_NAME"], ["encode", "4M"]], ids=" ".join
)
@pytest.mark.parametrize("err", ["closed", "full", "gone"])
@pytest.mark.parametrize("out", ["closed", "full", "gone", "pipe"])
def test_stderr_that_cannot_be_written_changes_no_status_and_nothing_goes_to_stdout(
    argv: list[str], out: str, err: str
) -> None:
    normal = expected(argv)
    done = kvmspe(argv, stdout=out, stderr=err)
    if out == "pipe":
        assert (done.returncode, done.stdout) == (normal.returncode, normal.stdout)
    elif out == "gone":
        assert done.returncode == normal.returncode
    else:
        assert done.returncode == 2


def test_vectors_with_stdout_closed_writes_its_files_and_says_it_could_not_tell(tmp_path: Path) -> None:
    done = kvmspe(["vectors", "--out", str(tmp_path / "v")], stdout="closed")
    assert done.returncode == 2
    assert_one_line_about_stdout(done.stderr)
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["maxbuffsize-codec.json", "scenarios.json"]


# --- 5. use after close ----------------------------------------------------------------------------

#: Methods that may be called on a closed object: closing again, and the model's
#: release of what a VCPU pinned (which its VM's close calls).
AFTER_CLOSE_ALLOWED = {"close", "release"}


def public_methods(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}


def assert_every_call_refused(obj: Any, calls: dict[str, Callable[[], object]], what: str) -> None:
    """Each call raises ClosedError (EBADF, naming ``what``); ``calls`` covers every public method."""
    assert public_methods(type(obj)) - AFTER_CLOSE_ALLOWED == set(calls), "a method is not tried"
    for name, call in calls.items():
        with pytest.raises(ClosedError) as info:
            call()
        STATS[f"closed {type(obj).__module__}.{type(obj).__name__}.{name}: ClosedError"] += 1
        assert isinstance(info.value, KvmError) and info.value.errno == errno.EBADF, name
        assert f"this {what} has been closed" in str(info.value), (name, str(info.value))


def model_calls(vcpu: Any) -> dict[str, Callable[[], object]]:
    g, irq = abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_IRQ
    return {
        "has_device_attr": lambda: vcpu.has_device_attr(g, irq),
        "set_device_attr": lambda: vcpu.set_device_attr(g, irq, 21),
        "get_device_attr": lambda: vcpu.get_device_attr(g, irq),
        "run": vcpu.run,
        "guest_write": lambda: vcpu.guest_write("PMBPTR_EL1", 0),
        "guest_read": lambda: vcpu.guest_read("PMBSR_EL1"),
        "guest_map": lambda: vcpu.guest_map(None),
        "enable_buffer": lambda: vcpu.enable_buffer(0, 4096),
        "disable_buffer": vcpu.disable_buffer,
    }


@pytest.mark.parametrize("closing", ["vcpu", "vm"])
def test_model_vm_and_vcpu_refuse_every_call_once_closed(closing: str) -> None:
    host = model.Host(spus=[model.Spu(8)])
    vm = host.create_vm()
    vcpu = vm.create_vcpu()
    vcpu.set_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_IRQ, 21)
    (vcpu if closing == "vcpu" else vm).close()
    assert_every_call_refused(vcpu, model_calls(vcpu), "Vcpu")
    if closing == "vm":
        assert_every_call_refused(vm, {"create_vcpu": vm.create_vcpu}, "Vm")
        assert vm.closed
    vcpu.close()
    vm.close()  # closing twice is harmless


def kvm_calls(
    kvm: Any, vm: Any, vcpu: Any, device: Any
) -> list[tuple[Any, dict[str, Callable[[], object]], str]]:
    return [
        (
            vcpu,
            {
                "has_device_attr": lambda: vcpu.has_device_attr(0, 0),
                "set_device_attr": lambda: vcpu.set_device_attr(0, 0, 1),
                "get_device_attr": lambda: vcpu.get_device_attr(0, 0),
                "run": lambda: vcpu.run(timeout=0.5),
                "set_value_struct": lambda: vcpu.set_value_struct(0, 0, abi.INT),
                "enable_buffer": lambda: vcpu.enable_buffer(0, 4096),
                "disable_buffer": vcpu.disable_buffer,
                "guest_read": lambda: vcpu.guest_read("PMBSR_EL1"),
                "fileno": vcpu.fileno,
            },
            "Vcpu",
        ),
        (
            device,
            {
                "has_device_attr": lambda: device.has_device_attr(0, 0),
                "set_device_attr": lambda: device.set_device_attr(0, 0, 1),
                "fileno": device.fileno,
            },
            "Device",
        ),
        (
            vm,
            {
                "check_extension": lambda: vm.check_extension(1),
                "set_user_memory_region": lambda: vm.set_user_memory_region(0, 0, 4096, 0),
                "create_vcpu": vm.create_vcpu,
                "create_device": lambda: vm.create_device(abi.KVM_DEV_TYPE_ARM_VGIC_V3),
                "create_vgic_v3": vm.create_vgic_v3,
                "init_vgic": vm.init_vgic,
                "create_irqchip": vm.create_irqchip,
                "add_halt_page": vm.add_halt_page,
                "fileno": vm.fileno,
            },
            "Vm",
        ),
        (
            kvm,
            {
                "api_version": kvm.api_version,
                "check_extension": lambda: kvm.check_extension(1),
                "vcpu_mmap_size": kvm.vcpu_mmap_size,
                "create_vm": kvm.create_vm,
                "spe_feature": kvm.spe_feature,
                "fileno": kvm.fileno,
            },
            "Kvm",
        ),
    ]


@pytest.mark.parametrize("order", ["each", "kvm first"])
def test_recorded_arm64_backend_refuses_every_call_once_closed_without_an_ioctl(
    tmp_path: Path, order: str
) -> None:
    from kvm_fake import Recorder, make_kvm

    rec = Recorder(tmp_path)
    kvm = make_kvm(rec, tmp_path, spe_feature_bit=9)
    vm = kvm.create_vm()
    vcpu = vm.create_vcpu(0)
    vcpu.run(timeout=1.0)  # its kvm_run area mapped, its size asked
    device = vm.create_vgic_v3()
    if order == "each":
        for obj in (vcpu, device, vm, kvm):
            obj.close()
    else:
        kvm.close()
    before = len(rec.calls)
    for obj, calls, what in kvm_calls(kvm, vm, vcpu, device):
        assert obj.closed
        assert_every_call_refused(obj, calls, what)
    assert len(rec.calls) == before, "an ioctl was issued on a closed object"


@needs_kvm
def test_real_backend_refuses_every_call_once_closed() -> None:
    from kvmspe.kvm import Device

    kvm = Kvm()
    vm = kvm.create_vm()
    vcpu = vm.create_vcpu(0)
    # x86 has no device the VM can create without an irqchip: a Device over a
    # duplicate of the VM's descriptor stands in for one (its fd is its own).
    device = Device(vm, os.dup(vm.fd), abi.KVM_DEV_TYPE_ARM_VGIC_V3)
    vm.devices.append(device)
    kvm.close()
    for obj, calls, what in kvm_calls(kvm, vm, vcpu, device):
        assert_every_call_refused(obj, calls, what)


# --- 7. KVM_RUN under a blocked timer signal ---------------------------------------------------------

#: A child that runs a VCPU whose guest never exits, with SIGALRM blocked in the
#: running thread: on x86 the reset vector holds "jmp $"; on arm64 a VCPU
#: without memory never returns from KVM_RUN by itself (FACTS 10).
SPIN_CHILD = """
import ctypes, mmap, os, signal, sys, threading
from kvmspe.kvm import Kvm, RunTimeout, run_timer_handler
where, handler = sys.argv[1], sys.argv[2] == "handler"
def body():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    with Kvm() as kvm:
        vm = kvm.create_vm()
        if kvm.arch == "x86_64":
            mem = mmap.mmap(-1, 0x10000)
            mem[0xFFF0:0xFFF2] = b"\\xeb\\xfe"
            addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
            vm.set_user_memory_region(0, 0xFFFF0000, 0x10000, addr)
        vcpu = vm.create_vcpu(0, spe=False)
        for _ in range(2):
            try:
                vcpu.run(timeout=0.2)
                print("returned", flush=True)
            except RunTimeout:
                print("RunTimeout", flush=True)
    print("still blocked", signal.SIGALRM in signal.pthread_sigmask(signal.SIG_BLOCK, ()), flush=True)
    print("pending", signal.SIGALRM in signal.sigpending(), flush=True)
if where == "main":
    body()
elif handler:
    with run_timer_handler():
        t = threading.Thread(target=body); t.start(); t.join(30)
else:
    t = threading.Thread(target=body); t.start(); t.join(30)
"""


@needs_kvm
@pytest.mark.skipif(
    os.uname().machine not in ("x86_64", "aarch64"), reason="a spinning guest needs x86_64 or arm64"
)
@pytest.mark.parametrize(("where", "handler"), [("main", "none"), ("thread", "none"), ("thread", "handler")])
def test_run_is_bounded_when_the_thread_blocks_the_timer_signal(where: str, handler: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", SPIN_CHILD, where, handler],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("KVM_RUN was not ended: the child still ran after 30 s")
    STATS[f"blocked SIGALRM, {where} thread: exit {done.returncode}"] += 1
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["RunTimeout", "RunTimeout", "still blocked True", "pending False"]


def test_blocked_timer_signal_is_unblocked_for_kvm_run_only(tmp_path: Path) -> None:
    import signal
    import threading

    from kvm_fake import RUN, Recorder, make_kvm

    set_signal_mask = 0x4004AE8B  # _IOW(KVMIO, 0x8b, struct kvm_signal_mask): 4 bytes
    rec = Recorder(tmp_path)
    seen: list[Any] = []

    def body() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGUSR1})
        with make_kvm(rec, tmp_path, arch="x86_64") as kvm:
            vcpu = kvm.create_vm().create_vcpu(0)
            rec.calls.clear()
            vcpu.run(timeout=1.0)
        seen.append(signal.pthread_sigmask(signal.SIG_BLOCK, ()))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    calls = [(c.request, c.arg) for c in rec.calls if c.request in (set_signal_mask, RUN)]
    sigset = 1 << (signal.SIGUSR1 - 1)  # SIGUSR1 stays blocked in KVM_RUN, SIGALRM does not
    assert calls == [
        (set_signal_mask, (8).to_bytes(4, sys.byteorder) + sigset.to_bytes(8, "little")),
        (RUN, 0),
        (set_signal_mask, 0),
    ]
    assert signal.SIGALRM in seen[0] and signal.SIGUSR1 in seen[0]


# --- 6. threads ----------------------------------------------------------------------------------


@contextlib.contextmanager
def fast_thread_switches() -> Iterator[None]:
    """Switch threads as often as Python can, so that races show up."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def run_threads(target: Callable[[int], None], count: int) -> list[BaseException]:
    """``target(i)`` in ``count`` threads started together; the exceptions they raised."""
    import threading

    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def body(i: int) -> None:
        try:
            start.wait(30)
            target(i)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    with fast_thread_switches():
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread did not end within 60 s"
    return errors


@pytest.mark.parametrize("round_", range(3))
def test_model_vm_driven_by_one_thread_per_vcpu_ends_as_a_serial_order_would(round_: int) -> None:
    g = abi.KVM_ARM_VCPU_SPE_CTRL
    host = model.Host(spus=[model.Spu(8)], memlock_limit=None)
    vm = host.create_vm()
    vcpus = [vm.create_vcpu(i) for i in range(8)]
    for vcpu in vcpus:
        vcpu.set_device_attr(g, abi.KVM_ARM_VCPU_SPE_IRQ, 21)
        vcpu.set_device_attr(g, abi.KVM_ARM_VCPU_SPE_SPU, 8)
        vcpu.set_device_attr(g, abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE, 1 << 20)
        vcpu.set_device_attr(g, abi.KVM_ARM_VCPU_SPE_INIT, None)
    alone: list[int] = []
    pinned: dict[int, set[int]] = {i: set() for i in range(8)}

    def drive(i: int) -> None:
        vcpu = vcpus[i]
        for _ in range(60):
            vcpu.enable_buffer(i << 20, 1 << 20)
            assert vcpu.run().reason == host.assumptions.idle_exit
            pinned[i].add(vcpu.pinned_bytes)
            vcpu.disable_buffer()
            vcpu.run()
            assert vcpu.pinned_bytes == 0

    # What one VCPU pins on its own, run serially in a fresh VM.
    ref_host = model.Host(spus=[model.Spu(8)], memlock_limit=None)
    ref = ref_host.create_vm().create_vcpu(0)
    for attr, value in ((abi.KVM_ARM_VCPU_SPE_IRQ, 21), (abi.KVM_ARM_VCPU_SPE_SPU, 8)):
        ref.set_device_attr(g, attr, value)
    ref.set_device_attr(g, abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE, 1 << 20)
    ref.set_device_attr(g, abi.KVM_ARM_VCPU_SPE_INIT, None)
    ref.enable_buffer(0, 1 << 20)
    ref.run()
    alone.append(ref.pinned_bytes)

    errors = run_threads(drive, len(vcpus))
    STATS[f"model threads: {len(errors)} errors"] += 1
    assert errors == [], errors[:3]
    assert all(p == {alone[0]} for p in pinned.values()), pinned
    # Every buffer disabled and re-entered: nothing pinned, nothing locked.
    assert host.locked_bytes == 0
    assert vm.pinned.pages == 0 and all(v.pinned_bytes == 0 for v in vcpus)


def test_model_vcpus_created_by_many_threads_with_default_ids_get_distinct_ids() -> None:
    vm = model.Host(spus=[model.Spu(8)]).create_vm()
    made: list[int] = []

    def create(i: int) -> None:
        for _ in range(20):
            made.append(vm.create_vcpu().index)

    assert run_threads(create, 8) == []
    assert sorted(made) == list(range(160))


@needs_kvm
def test_real_vcpus_created_by_many_threads_with_default_ids_get_distinct_ids() -> None:
    with Kvm() as kvm:
        vm = kvm.create_vm()
        made: list[int] = []

        def create(i: int) -> None:
            for _ in range(4):
                made.append(vm.create_vcpu(spe=False).index)

        errors = run_threads(create, 8)
        STATS[f"real default ids: {len(errors)} errors"] += 1
        assert errors == [], errors[:3]
        assert sorted(made) == list(range(32))


# --- 2. files while being written --------------------------------------------------------------

#: ``kvmspe vectors --out DIR`` with a signal sent to itself at one moment of
#: the write: in the middle of writing the first or second file, or just before
#: the first or second rename.
SIGNAL_CHILD = """
import os, signal, sys
from kvmspe import cli
out, sig, moment = sys.argv[1], getattr(signal, sys.argv[2]), sys.argv[3]
count = {"write": 0, "rename": 0}
real_write, real_replace = os.write, os.replace
def write(fd, data):
    if fd > 2:
        count["write"] += 1
        if moment == f"write {count['write']}":
            done = real_write(fd, data[: len(data) // 2])
            os.kill(os.getpid(), sig)
            return done
    return real_write(fd, data)
def replace(a, b):
    count["rename"] += 1
    if moment == f"rename {count['rename']}":
        os.kill(os.getpid(), sig)
    return real_replace(a, b)
os.write, os.replace = write, replace
sys.exit(cli.main(["vectors", "--out", out]))
"""
OLD = b'{"old": true}\n'


@pytest.mark.parametrize("moment", ["write 1", "write 2", "rename 1", "rename 2"])
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_while_vectors_are_written_leaves_all_old_or_all_new_and_no_temporary(
    tmp_path: Path, signame: str, moment: str
) -> None:
    import signal

    from kvmspe.export import vectors

    out = tmp_path / "v"
    out.mkdir()
    names = sorted([vectors.CODEC_FILE, vectors.SCENARIO_FILE])
    for name in names:
        (out / name).write_bytes(OLD)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_CHILD, str(out), signame, moment],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    STATS[f"{signame} at {moment}: exit {done.returncode}"] += 1
    assert "Traceback" not in done.stderr, done.stderr
    sig = getattr(signal, signame)
    assert done.returncode == (130 if sig == signal.SIGINT else -sig), (done.returncode, done.stderr)
    assert sorted(p.name for p in out.iterdir()) == names, "a temporary file was left behind"
    old = [(out / name).read_bytes() == OLD for name in names]
    assert old in ([True, True], [False, False]), f"one old file and one new: {old}"


def test_a_symbolic_link_to_itself_is_refused_and_stays_a_link(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib (kvmspe[plot])")
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop.name)
    code, out, err = run_cli("plan", "--vcpus", "2", "--plot", str(loop))
    assert_refused(code, err, "a symbolic link that loops")
    assert loop.is_symlink() and os.readlink(loop) == loop.name
    assert [p.name for p in tmp_path.iterdir()] == ["loop.png"]


PERMISSION_CHILD = """
import os, sys
from kvmspe import files
target = sys.argv[1]
if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
try:
    files.replace_whole([(target, lambda f: f.write(b"new"))])
    print("replaced")
except OSError as exc:
    print(type(exc).__name__, exc.errno)
"""


def test_a_file_the_user_may_not_write_is_not_replaced_through_its_writable_directory() -> None:
    import errno
    import shutil
    import tempfile

    # World-writable, under /tmp: the unprivileged child may create and rename there.
    folder = Path(tempfile.mkdtemp(prefix="kvmspe-perm-", dir="/tmp"))
    try:
        folder.chmod(0o1777)
        target = folder / "pinned.png"
        target.write_bytes(b"old")
        target.chmod(0o444)
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        done = subprocess.run(
            [sys.executable, "-c", PERMISSION_CHILD, str(target)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["PermissionError", str(errno.EACCES)]
        assert target.read_bytes() == b"old" and [p.name for p in folder.iterdir()] == ["pinned.png"]
    finally:
        shutil.rmtree(folder)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another owner needs root")
def test_a_replaced_file_keeps_its_owner_group_and_mode(tmp_path: Path) -> None:
    from kvmspe import files

    target = tmp_path / "pinned.png"
    target.write_bytes(b"old")
    os.chown(target, 65534, 65534)
    target.chmod(0o640)
    files.replace_whole([(target, lambda f: f.write(b"new"))])
    st = target.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777, target.read_bytes()) == (65534, 65534, 0o640, b"new")


def test_a_file_with_other_hard_links_is_refused(tmp_path: Path) -> None:
    from kvmspe import files

    target = tmp_path / "pinned.png"
    target.write_bytes(b"old")
    os.link(target, tmp_path / "other.png")
    with pytest.raises(OSError, match="hard links"):
        files.replace_whole([(target, lambda f: f.write(b"new"))])
    assert target.read_bytes() == b"old" and (tmp_path / "other.png").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.png", "pinned.png"]


# --- 8. a sysfs snapshot too large in all --------------------------------------------------------


def limited_memory() -> None:
    """In the child: at most 1 GiB of address space, as a careful operator would allow."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.parametrize("command", [["probe", "--json"], ["probe"], ["plan", "--json"]])
def test_many_spe_units_each_claiming_every_cpu_are_refused_in_one_line(
    fixture_copy: Path, spe0: Path, command: list[str]
) -> None:
    """Every file is small and within its limits; only the whole is not a host."""
    devices = spe0.parent
    for i in range(2, 2000):
        d = devices / f"arm_spe_{i}"
        d.mkdir()
        (d / "type").write_text(f"{10 + i}\n")
        (d / "cpumask").write_text("0-8191\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-m", "kvmspe", *command, "--fixture", str(fixture_copy)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        preexec_fn=limited_memory,
    )
    STATS[f"huge snapshot, {' '.join(command)}: exit {done.returncode}"] += 1
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr, done.stderr[-500:]
    assert len(done.stdout) < 64 << 10, f"{len(done.stdout)} bytes written"
    if command[0] == "probe":
        assert done.returncode == 1 and done.stderr == ""  # the answer: this host cannot run SPE guests
        if "--json" in command:
            host = json.loads(done.stdout)["host"]
            assert host["spe_instances"] == []
            reason = host["spe_instances_reason"]
        else:
            reason = next(line for line in done.stdout.splitlines() if line.startswith("SPE units"))
        assert "budget" in reason and "\n" not in reason, reason
    else:
        assert done.returncode == 2, done.stderr
        assert_refused(done.returncode, done.stderr, "budget")


# --- 3. the exports and the values kvmspe accepts ---------------------------------------------------

#: kvmspe's assumed number -> the name the exports give it.
EXPORTED = {
    "spe_feature_bit": "KVM_ARM_VCPU_SPE",
    "cap_arm_spe": "KVM_CAP_ARM_SPE",
    "exit_rlimit": "KVM_EXIT_RLIMIT",
}
#: The widest range each could have (its field), from which kvmspe refuses what upstream takes.
FIELD = {
    "spe_feature_bit": (0, 32 * 7 - 1),
    "cap_arm_spe": (0, (1 << 31) - 1),
    "exit_rlimit": (0, (1 << 32) - 1),
}


def accepted(name: str, value: int) -> bool:
    try:
        abi.check_assumed(name, value)
    except ValueError:
        return False
    return True


def library_range(name: str) -> tuple[int, int]:
    """The lowest and highest number kvmspe accepts for ``name``, found by asking it."""
    lo, hi = FIELD[name]
    first = next(v for v in range(lo, hi + 1) if accepted(name, v))
    last = next(v for v in range(hi + 1, 0, -1) if accepted(name, v))
    return first, last


def samples(name: str) -> tuple[list[int], list[int]]:
    """Numbers kvmspe accepts (its extremes and one between) and ones it refuses (around them)."""
    first, last = library_range(name)
    good = [first, (first + last) // 2, last]
    bad = [first - 1, last + 1, 0]
    assert all(accepted(name, v) for v in good) and not any(accepted(name, v) for v in bad)
    return good, bad


def test_the_numbers_kvmspe_accepts_form_one_range() -> None:
    """So that an export can state them as one: nothing refused between the extremes."""
    from kvmspe.abi import upstream
    from kvmspe.assumptions import DEFAULT

    taken = {
        "spe_feature_bit": set(upstream.ARM64_VCPU_FEATURES),
        "cap_arm_spe": set(upstream.CAPS),
        "exit_rlimit": {*upstream.EXITS, DEFAULT.idle_exit},
    }
    for name in EXPORTED:
        first, last = library_range(name)
        assert not any(accepted(name, v) for v in range(FIELD[name][0], first))
        assert all(not first <= v <= last for v in taken[name]), name
        assert all(accepted(name, v) for v in range(first, min(last, first + 4096) + 1))


def c_compiles(tmp_path: Path, text: str, *flags: str) -> subprocess.CompletedProcess[str]:
    from test_export import CFLAGS, _need_gcc

    src = tmp_path / "probe.c"
    src.write_text(text)
    return subprocess.run(
        [_need_gcc(), *CFLAGS, "-fsyntax-only", *flags, str(src)], capture_output=True, text=True, timeout=120
    )


def rust_compiles(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    from test_export import _need_rustc

    from kvmspe.export import rust_module

    (tmp_path / "kvmspe.rs").write_text(rust_module.render())
    cmd = [_need_rustc(), "--edition", "2021", "--crate-type", "lib", "-D", "warnings", "kvmspe.rs"]
    return subprocess.run(
        [*cmd, "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, **env},
    )


def header_user(tmp_path: Path) -> str:
    from kvmspe.export import c_header

    (tmp_path / "kvmspe.h").write_text(c_header.render())
    return '#include "kvmspe.h"\nint main(void) { return 0; }\n'


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_every_number_kvmspe_accepts_builds_with_the_c_header_and_refused_ones_do_not(
    tmp_path: Path, name: str
) -> None:
    good, bad = samples(name)
    user = header_user(tmp_path)
    macro = EXPORTED[name]
    for v in good:
        for spelling in (str(v), hex(v)):
            done = c_compiles(tmp_path, user, f"-D{macro}={spelling}")
            assert done.returncode == 0, (v, done.stderr)
    for v in bad:
        done = c_compiles(tmp_path, user, f"-D{macro}={v}")
        assert done.returncode != 0 and macro in done.stderr and "#error" in done.stderr, (v, done.stderr)


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_every_number_kvmspe_accepts_builds_with_the_rust_module_and_refused_ones_do_not(
    tmp_path: Path, name: str
) -> None:
    good, bad = samples(name)
    var = EXPORTED[name]
    for v in good:
        for spelling in (str(v), hex(v)):
            done = rust_compiles(tmp_path, {var: spelling})
            assert done.returncode == 0, (v, spelling, done.stderr[-800:])
    for v in bad[:2]:
        done = rust_compiles(tmp_path, {var: str(v)})
        assert done.returncode != 0 and var in done.stderr, (v, done.stderr[-800:])


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_a_number_given_to_kvmspe_builds_in_every_export(tmp_path: Path, name: str) -> None:
    from kvmspe.export import c_header, c_selftest

    good, _ = samples(name)
    for v in (good[0], good[-1]):
        abi.set_assumed(**{name: v})
        try:
            header, selftest = c_header.render(), c_selftest.render()
            done = rust_compiles(tmp_path, {})
        finally:
            abi.set_assumed(**{name: None})
        assert done.returncode == 0, (v, done.stderr[-800:])
        (tmp_path / "kvmspe.h").write_text(header)
        for text in ('#include "kvmspe.h"\nint main(void) { return 0; }\n', selftest):
            done = c_compiles(tmp_path, text, "-O2")
            assert done.returncode == 0, (v, done.stderr[-800:])


@pytest.fixture(scope="module")
def selftest_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_export import CFLAGS, _need_gcc

    from kvmspe.export import c_selftest

    folder = tmp_path_factory.mktemp("selftest")
    (folder / "selftest.c").write_text(c_selftest.render())
    exe = folder / "selftest"
    done = subprocess.run(
        [_need_gcc(), *CFLAGS, "-O2", str(folder / "selftest.c"), "-o", str(exe)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return exe


@pytest.mark.parametrize(
    ("name", "option"), [("spe_feature_bit", "--spe-feature-bit"), ("exit_rlimit", "--exit-rlimit")]
)
def test_the_c_selftest_takes_at_run_time_what_kvmspe_accepts_and_nothing_else(
    selftest_exe: Path, name: str, option: str
) -> None:
    good, bad = samples(name)
    for v in bad:
        done = subprocess.run(
            [str(selftest_exe), option, str(v), "--list"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2 and option in done.stderr, (v, done.returncode, done.stderr)
    for v in good:
        done = subprocess.run(
            [str(selftest_exe), option, str(v), "--list"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (v, done.stderr)


# --- 4. library arguments -----------------------------------------------------------------------

BRING_UP: dict[str, Any] = {"vcpus": 1, "irq": 21, "max_buffer_size": 4 << 20}
#: (argument, bad value) for vmm.bring_up; every one is refused before any VM exists.
BAD_BRING_UP = [
    ("vcpus", None),
    ("vcpus", "4"),
    ("vcpus", 0),
    ("irq", None),
    ("irq", "21"),
    ("irq", 1.5),
    ("irq", 1 << 31),
    ("spu", "x"),
    ("spu", 8.0),
    ("max_buffer_size", None),
    ("max_buffer_size", "4M"),
    ("max_buffer_size", -1),
    ("max_buffer_size", True),
    ("raise_memlock", "yes"),
    ("raise_memlock", None),
    ("raise_memlock", 1),
    ("case", 5),
    ("case", "most"),
    ("enable_buffer", -1),
    ("enable_buffer", "4K"),
    ("enable_buffer", True),
    ("enable_buffer", 4097),
]


def model_choice() -> Any:
    from kvmspe import vmm

    return vmm.choose_backend("model", profile="default-4k", memlock_limit=None)


@pytest.mark.parametrize(("name", "value"), BAD_BRING_UP, ids=repr)
def test_bring_up_refuses_a_bad_argument_by_name_before_anything_is_created(name: str, value: Any) -> None:
    from kvmspe import vmm

    choice = model_choice()
    with pytest.raises(InvalidArgumentError) as info:
        vmm.bring_up(choice, **{**BRING_UP, name: value})
    STATS["bad library argument: InvalidArgumentError"] += 1
    assert name in str(info.value) and "accepted" in str(info.value), str(info.value)
    assert "\n" not in str(info.value)
    assert choice.host.vms == [], "a VM was created before the argument was refused"


@pytest.mark.parametrize("choice", [None, "model", "kvm", 0, object()], ids=repr)
def test_bring_up_refuses_a_choice_that_is_not_a_backend_choice(choice: Any) -> None:
    from kvmspe import vmm

    with pytest.raises(InvalidArgumentError, match="choice.*accepted"):
        vmm.bring_up(choice, **BRING_UP)


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        (("nope",), {}, "backend"),
        (("KVM",), {}, "backend"),
        (("Model",), {}, "backend"),
        ((None,), {}, "backend"),
        ((5,), {}, "backend"),
        (("model",), {"profile": 5}, "profile"),
        (("auto",), {"profile": "no-such-profile"}, "profile"),
        (("model",), {"memlock_limit": "x"}, "memlock_limit"),
        (("model",), {"memlock_limit": -1}, "memlock_limit"),
        (("model",), {"memlock_limit": 4096.0}, "memlock_limit"),
        (("auto",), {"locked": -1}, "locked"),
        (("auto",), {"locked": None}, "locked"),
    ],
    ids=repr,
)
def test_choose_backend_refuses_a_bad_argument_by_name_before_probing(
    monkeypatch: pytest.MonkeyPatch, args: tuple[Any, ...], kwargs: dict[str, Any], name: str
) -> None:
    from kvmspe import vmm
    from kvmspe.host import discovery

    def probed(*a: object, **k: object) -> None:
        raise AssertionError("the host was probed before the argument was refused")

    monkeypatch.setattr(discovery, "discover", probed)
    with pytest.raises(InvalidArgumentError) as info:
        vmm.choose_backend(*args, **kwargs)
    STATS["bad library argument: InvalidArgumentError"] += 1
    assert name in str(info.value) and "accepted" in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("vcpu", None),
        ("vcpu", "vcpu0"),
        ("irq", None),
        ("irq", "21"),
        ("spu", None),
        ("spu", 2.5),
        ("max_buffer_size", None),
        ("max_buffer_size", "4M"),
        ("max_buffer_size", True),
        ("max_buffer_size", 1 << 64),
    ],
    ids=repr,
)
def test_configure_spe_refuses_a_bad_argument_by_name_before_any_call(name: str, value: Any) -> None:
    from kvmspe import vmm

    calls: list[str] = []
    inner = model.Host(spus=[model.Spu(8)]).create_vm().create_vcpu()

    class Counting:
        index = inner.index

        def has_device_attr(self, group: int, attr: int) -> bool:
            calls.append("has")
            return inner.has_device_attr(group, attr)

        def set_device_attr(self, group: int, attr: int, value: object) -> None:
            calls.append("set")
            inner.set_device_attr(group, attr, value)

    vcpu = Counting()
    args: dict[str, Any] = {"vcpu": vcpu, "irq": 21, "spu": 8, "max_buffer_size": 4096, name: value}
    with pytest.raises(InvalidArgumentError) as info:
        vmm.configure_spe(args.pop("vcpu"), **args)
    STATS["bad library argument: InvalidArgumentError"] += 1
    assert name in str(info.value) and "accepted" in str(info.value), str(info.value)
    assert calls == []


# --- also: the command line's own rules -----------------------------------------------------------


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``kvmspe ARGV`` in this process: (exit status, stdout, stderr)."""
    from kvmspe import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: Any = cli.main(list(argv))
        except SystemExit as exc:
            code = exc.code
    return int(code or 0), out.getvalue(), err.getvalue()


def assert_refused(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvmspe: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "option",
    [["--profile", "16k"], ["--memlock", "64M"], ["--locked", "0"], ["--locked", "1M"]],
    ids=" ".join,
)
def test_configure_on_the_real_kernel_refuses_options_only_the_model_uses(option: list[str]) -> None:
    code, out, err = run_cli("configure", "--backend", "kvm", *option)
    assert_refused(code, err, option[0], "only for the model")
    assert out == ""


def test_a_bad_enable_buffer_is_named_as_the_option() -> None:
    code, _, err = run_cli("configure", "--backend", "model", "--enable-buffer", "4097")
    assert_refused(code, err, "--enable-buffer 0x1001", "multiple of 4 KiB")


def test_the_c_header_before_linux_kvm_h_stops_with_an_error_that_says_what_to_do(tmp_path: Path) -> None:
    if not Path("/usr/include/linux/kvm.h").exists():
        reason = "no <linux/kvm.h> here (Debian: linux-libc-dev)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    user = header_user(tmp_path)  # writes kvmspe.h
    after = "#include <linux/kvm.h>\n" + user
    before = user.replace('#include "kvmspe.h"\n', '#include "kvmspe.h"\n#include <linux/kvm.h>\n')
    alone = user.replace(
        "return 0;", "return KVM_DEV_TYPE_ARM_VGIC_V3 == 7 && KVM_DEV_TYPE_ARM_VGIC_V2 == 5 ? 0 : 1;"
    )
    assert c_compiles(tmp_path, after).returncode == 0
    assert c_compiles(tmp_path, alone, "-pedantic").returncode == 0
    done = c_compiles(tmp_path, before)
    assert done.returncode != 0
    assert "include_linux_kvm_h_before_kvmspe_h" in done.stderr and "numeric constant" not in done.stderr


def test_explain_says_init_takes_no_value_as_every_other_source_does() -> None:
    from kvmspe.export import vectors

    code, out, err = run_cli("explain", "KVM_ARM_VCPU_SPE_INIT")
    assert code == 0 and err == ""
    assert "takes no value" in out.splitlines()[0] and "int" not in out.splitlines()[0]
    code, out, _ = run_cli("explain", "KVM_ARM_VCPU_SPE_INIT", "--json")
    assert json.loads(out)["value_type"] == "none" == vectors._value_type("KVM_ARM_VCPU_SPE_INIT")
    info = abi.attr_info(abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_INIT)
    assert info is not None and info.value is None


@needs_kvm
@pytest.mark.skipif(
    os.uname().machine in ("aarch64", "arm64"), reason="on arm64 the vGIC is this host's own device"
)
def test_the_vgic_on_another_architecture_is_called_an_arm64_device() -> None:
    with Kvm() as kvm:
        vm = kvm.create_vm()
        vm.create_vcpu(0, spe=False)
        with pytest.raises(KvmError) as info:
            vm.create_vgic_v3()
    assert "arm64 device" in str(info.value) and kvm.arch in str(info.value)
    assert "GICv2" not in str(info.value)


#: ``python -m kvmspe encode 4M``, with SIGINT sent to itself as the command line
#: module is found, i.e. while ``python -m kvmspe`` is still importing it.
IMPORT_SIGINT_CHILD = """
import os, runpy, signal, sys
target = sys.argv[1]
class Interrupting:
    def find_spec(self, name, path=None, target=None):
        if name == globals()["target"]:
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Interrupting())
sys.argv = ["kvmspe", "encode", "4M"]
runpy.run_module("kvmspe", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("module", ["kvmspe.cli", "kvmspe.units", "kvmspe.validation"])
def test_sigint_while_python_m_kvmspe_imports_the_command_line_is_one_line(module: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_SIGINT_CHILD, module],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    STATS[f"SIGINT importing {module}: exit {done.returncode}"] += 1
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "kvmspe: interrupted\n")


# --- figures -----------------------------------------------------------------------------------


def test_report_figures() -> None:
    """Print what this module ran (visible with -s)."""
    print(f"\nrobust env: {dict(sorted(STATS.items()))}")
    if STATS["runs"]:  # the module's other tests ran first (file order)
        assert not any("exit 120" in key for key in STATS), STATS
