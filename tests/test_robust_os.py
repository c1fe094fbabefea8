"""kvmspe against its environment: SIGINT at random points, file descriptors
around error paths and dropped objects, a full disk under ``vectors --out``,
and sysfs snapshots built to hang or exhaust the reader.

Every subprocess here is bounded by a timeout. ``STATS`` counts the runs and
how they ended; the figures are printed at the end of the module (``-s``).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmspe import cli
from kvmspe.errors import KvmError
from kvmspe.export import vectors
from kvmspe.host import discovery
from kvmspe.kvm import Kvm

STATS: Counter[str] = Counter()
SRC = Path(__file__).resolve().parent.parent / "src"
HAVE_KVM = os.access("/dev/kvm", os.R_OK | os.W_OK)
needs_kvm = pytest.mark.skipif(not HAVE_KVM, reason="/dev/kvm is missing or not usable here")

# The console script's own shape (sys.exit(main())), with a line on stdout once
# kvmspe is imported, so the signal lands in kvmspe and not in Python's start-up
# (nor in the few bytecodes between that line and main(): the delay is >= 2 ms).
CHILD = (
    "import sys, kvmspe.cli as c; sys.argv = ['kvmspe', *sys.argv[1:]];"
    " sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.exit(c.main())"
)

SLOW_COMMANDS = [
    ["conformance"],
    ["conformance", "--backend", "kvm"],
    [
        "configure",
        "--profile",
        "server-128",
        "--vcpus",
        "128",
        "--enable-buffer",
        "--raise-memlock",
        "--json",
    ],
    ["configure", "--backend", "kvm", "--vcpus", "64"],
    ["sizes", "--limit", "0", "--json"],
    ["plan", "--vcpus", "64", "--max-buffer-size", "1G", "--page-size", "64K"],
    ["probe", "--json"],
    ["vectors", "--out", "VECTORS"],
]


def fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: Any = cli.main(list(argv))
        except SystemExit as exc:
            code = exc.code
    return int(code or 0), out.getvalue(), err.getvalue()


# --- SIGINT ----------------------------------------------------------------------------------


def interrupted_run(argv: list[str], delay: float, cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = [str(cwd / "vectors") if a == "VECTORS" else a for a in argv]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 30)
        assert ready, "the child did not start within 30 s"
        assert child.stdout.readline() == "ready\n"
        time.sleep(delay)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    return subprocess.CompletedProcess(argv, child.returncode, out, err)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.sampled_from(SLOW_COMMANDS), delay=st.floats(0.002, 0.12))
def test_sigint_at_a_random_point_exits_130_without_traceback(
    tmp_path: Path, argv: list[str], delay: float
) -> None:
    if "kvm" in argv and not HAVE_KVM:
        return
    done = interrupted_run(argv, delay, tmp_path)
    STATS["sigint runs"] += 1
    STATS[f"sigint exit {done.returncode}"] += 1
    assert "Traceback" not in done.stderr, (argv, delay, done.stderr)
    assert "Bad file descriptor" not in done.stderr + done.stdout, (argv, delay, done.stderr)
    # Finished before the signal (the answer given, a late SIGINT ignored), or interrupted.
    assert done.returncode in (0, 1, 130), (argv, delay, done.returncode, done.stderr)
    if done.returncode == 130:
        assert done.stderr.splitlines()[-1:] == ["kvmspe: interrupted"], done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr
    vectors_dir = tmp_path / "vectors"
    if vectors_dir.exists():  # all or nothing, and no temporary file left behind
        names = sorted(p.name for p in vectors_dir.iterdir())
        assert names in ([], [vectors.CODEC_FILE, vectors.SCENARIO_FILE]), names
        for name in names:
            json.loads((vectors_dir / name).read_text())
        shutil.rmtree(vectors_dir)


# --- file descriptors --------------------------------------------------------------------------


@needs_kvm
def test_100_dropped_kvm_vm_vcpu_do_not_keep_300_fds() -> None:
    gc.collect()
    before = fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(100):
            kvm = Kvm()
            kvm.create_vm().create_vcpu(0)
            del kvm
        left_before_collect = len(fds() - before)
        gc.collect()
    STATS["fds left by 100 drops before gc.collect"] = left_before_collect
    assert left_before_collect < 300  # the collector's own passes already released most
    assert fds() - before == set()
    assert sum(issubclass(w.category, ResourceWarning) for w in caught) == 300
    assert all("unclosed" in str(w.message) for w in caught)


@needs_kvm
def test_error_paths_leave_no_fd_behind() -> None:
    gc.collect()
    before = fds()
    for _ in range(50):
        with pytest.raises(KvmError):
            Kvm("/nonexistent/kvm")
        with Kvm() as kvm:
            with pytest.raises(KvmError):
                kvm.create_vm(0x7FFF_FFFF)  # a machine type x86 refuses
            vm = kvm.create_vm()
            vm.create_vcpu(0)
            with pytest.raises(KvmError):
                vm.create_vcpu(0)  # EEXIST
            with pytest.raises(ValueError):
                vm.create_vcpu(-1)
            with pytest.raises(KvmError):
                vm.create_device(0xFFFF)
        for argv in (
            ["configure", "--backend", "kvm"],
            ["probe"],
            ["conformance", "--backend", "kvm"],
            ["configure", "--vcpus", "0"],
        ):
            code, _, err = run_cli(*argv)
            assert code in (0, 1, 2) and "Traceback" not in err
        STATS["fd error-path rounds"] += 1
    gc.collect()
    assert fds() - before == set()


@needs_kvm
def test_closing_twice_and_in_any_order_is_harmless() -> None:
    before = fds()
    kvm = Kvm()
    vm = kvm.create_vm()
    vcpu = vm.create_vcpu(0)
    vcpu.close()
    vcpu.close()
    kvm.close()
    vm.close()
    kvm.close()
    assert fds() - before == set()
    assert (kvm.fd, vm.fd, vcpu.fd) == (-1, -1, -1)


# --- a full disk -------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (too small for the scenario vectors), or skip saying why not."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        why = done.stderr.strip()
        pytest.skip(f"cannot mount a small tmpfs here ({why}); the injected writer test covers it")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)


def test_full_disk_leaves_old_files_and_no_temporary(small_disk: Path) -> None:
    out = small_disk / "vectors"
    out.mkdir()
    (out / vectors.CODEC_FILE).write_text("old codec\n")
    code, stdout, err = run_cli("vectors", "--out", str(out))
    STATS["full-disk runs"] += 1
    assert code == 2 and "Traceback" not in err
    assert len(err.splitlines()) == 1 and "No space left" in err, err
    assert sorted(p.name for p in out.iterdir()) == [vectors.CODEC_FILE]
    assert (out / vectors.CODEC_FILE).read_text() == "old codec\n"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fail_at=st.integers(0, 3_000_000), code=st.sampled_from([errno.ENOSPC, errno.EIO, errno.EDQUOT]))
def test_a_write_failing_anywhere_changes_nothing(tmp_path: Path, fail_at: int, code: int) -> None:
    out = tmp_path / "v"
    vectors.write(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    written = {"n": 0}

    def writer(fd: int, data: bytes) -> None:
        room = fail_at - written["n"]
        if room < len(data):
            os.write(fd, data[: max(room, 0)])
            raise OSError(code, os.strerror(code))
        os.write(fd, data)
        written["n"] += len(data)

    try:
        vectors.write(out, writer=writer)
        STATS["injected writes completed"] += 1
    except OSError as exc:
        assert exc.errno == code
        STATS["injected writes failed"] += 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # same bytes either way


# --- hostile sysfs snapshots -------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        "fifo-caps",
        "big-type",
        "zero-link-cpumask",
        "dir-type",
        "many-caps",
        "unicode-type",
        "binary-caps",
        "huge-cpu",
        "dangling-link",
        "fifo-status",
        "huge-vmlck",
    ],
)
def test_hostile_snapshot_is_read_without_hang_or_traceback(
    fixture_copy: Path, spe0: Path, damage: str
) -> None:
    host, d = fixture_copy, spe0
    if damage == "fifo-caps":
        os.mkfifo(d / "caps" / "max_buff_size")
    elif damage == "big-type":
        (d / "type").write_bytes(b"7" * (2 << 20))
    elif damage == "zero-link-cpumask":
        (d / "cpumask").unlink()
        (d / "cpumask").symlink_to("/dev/zero")
    elif damage == "dir-type":
        (d / "type").unlink()
        (d / "type").mkdir()
    elif damage == "many-caps":
        for i in range(discovery.MAX_DIR_ENTRIES + 1):
            (d / "caps" / f"c{i}").write_text("1\n")
    elif damage == "unicode-type":
        (d / "type").write_text("٤٢\n")
    elif damage == "binary-caps":
        (d / "caps" / "arch_inst").write_bytes(b"\xff\x00\x80")
    elif damage == "huge-cpu":
        (d / "cpumask").write_text("0-3,99999999999999999999\n")
    elif damage == "dangling-link":
        (d / "type").unlink()
        (d / "type").symlink_to(host / "nowhere")
    elif damage == "fifo-status":
        status = host / "proc" / "self" / "status"
        status.unlink()
        os.mkfifo(status)
    elif damage == "huge-vmlck":
        (host / "proc" / "self" / "status").write_text("VmLck:\t" + "9" * 5000 + " kB\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-m", "kvmspe", "probe", "--fixture", str(host), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    STATS["hostile snapshots"] += 1
    assert done.returncode == 1, done.stderr  # this host cannot run SPE guests: a "no", not a crash
    assert "Traceback" not in done.stderr and done.stderr == ""
    doc = json.loads(done.stdout)
    problems = [p for inst in doc["host"]["spe_instances"] for p in inst["problems"]]
    if damage.startswith(
        (
            "fifo-caps",
            "big-type",
            "zero-link",
            "dir-type",
            "many",
            "unicode",
            "binary",
            "huge-cpu",
            "dangling",
        )
    ):
        assert problems, damage
    else:
        assert doc["host"]["vm_lck"] is None and doc["host"]["vm_lck_reason"]


def test_a_snapshot_too_large_in_all_is_refused_in_one_line(fixture_copy: Path, spe0: Path) -> None:
    host, devices = fixture_copy, spe0.parent
    for i in range(2, 120):  # 118 more instances, each with a 60 KiB format file
        d = devices / f"arm_spe_{i}"
        (d / "format").mkdir(parents=True)
        (d / "caps").mkdir()
        (d / "type").write_text(f"{10 + i}\n")
        (d / "cpumask").write_text("0\n")
        (d / "format" / "big").write_text("x" * (60 << 10))
    spes, reason = discovery.read_spe_instances(str(host / "sys"))
    assert spes == []
    assert reason is not None and reason.startswith(discovery.SNAPSHOT_REFUSED) and "\n" not in reason
    assert "120 arm_spe_N PMUs" in reason and "budget of 4 MiB" in reason


def test_report_figures() -> None:
    print(f"\nrobust os: {dict(sorted(STATS.items()))}")
