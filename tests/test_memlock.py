"""RLIMIT_MEMLOCK control on real child processes."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmspe.host import memlock
from kvmspe.host.memlock import MemlockPermissionError

MiB = 1 << 20
INF = resource.RLIM_INFINITY
CAP_SYS_RESOURCE = 24


def _has_cap_sys_resource() -> bool:
    """Whether this process may raise hard limits (CAP_SYS_RESOURCE in CapEff)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


PRIVILEGED = _has_cap_sys_resource()
NO_CAP = "this process lacks CAP_SYS_RESOURCE (even as root here), so it cannot raise a hard limit"


@pytest.fixture
def child() -> Iterator[int]:
    """A sleeping child process whose limits the tests change."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def _set(pid: int, soft: int, hard: int) -> None:
    resource.prlimit(pid, resource.RLIMIT_MEMLOCK, (soft, hard))


def test_status_of_this_process_matches_getrlimit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    s = memlock.status()
    assert s.pid == os.getpid()
    assert s.soft == (None if soft == INF else soft)
    assert s.hard == (None if hard == INF else hard)
    assert s.vm_lck >= 0


def test_status_of_a_child_reads_its_limits(child: int) -> None:
    _set(child, 2 * MiB, 4 * MiB)
    s = memlock.status(child)
    assert (s.soft, s.hard, s.vm_lck) == (2 * MiB, 4 * MiB, 0)


def test_status_reports_unlimited_as_none(child: int) -> None:
    if not PRIVILEGED:
        pytest.skip(NO_CAP)
    _set(child, INF, INF)
    assert (memlock.status(child).soft, memlock.status(child).hard) == (None, None)


def test_status_from_a_fake_procfs(tmp_path: Path) -> None:
    d = tmp_path / "42"
    d.mkdir()
    (d / "limits").write_text(
        "Limit                     Soft Limit           Hard Limit           Units\n"
        "Max locked memory         65536                unlimited            bytes\n"
    )
    (d / "status").write_text("Name:\tvmm\nVmLck:\t    1028 kB\n")
    s = memlock.status(42, procfs_root=str(tmp_path))
    assert (s.soft, s.hard, s.vm_lck) == (65536, None, 1028 * 1024)


def test_status_of_a_missing_process() -> None:
    with pytest.raises(ProcessLookupError):
        memlock.status(1, procfs_root="/nonexistent")


def test_raise_soft_within_hard(child: int) -> None:
    _set(child, MiB, 8 * MiB)
    s = memlock.raise_limit(4 * MiB, child)
    assert (s.soft, s.hard) == (4 * MiB, 8 * MiB)
    assert resource.prlimit(child, resource.RLIMIT_MEMLOCK) == (4 * MiB, 8 * MiB)


def test_never_lowers(child: int) -> None:
    _set(child, 8 * MiB, 8 * MiB)
    s = memlock.raise_limit(MiB, child, hard=True)
    assert (s.soft, s.hard) == (8 * MiB, 8 * MiB)


def test_above_hard_needs_hard_true(child: int) -> None:
    _set(child, MiB, 2 * MiB)
    with pytest.raises(MemlockPermissionError, match="hard one is asked for"):
        memlock.raise_limit(4 * MiB, child)
    assert resource.prlimit(child, resource.RLIMIT_MEMLOCK) == (MiB, 2 * MiB)


def test_privileged_raise_of_the_hard_limit(child: int) -> None:
    if not PRIVILEGED:
        pytest.skip(NO_CAP)
    _set(child, MiB, 2 * MiB)
    s = memlock.raise_limit(4 * MiB, child, hard=True)
    assert (s.soft, s.hard) == (4 * MiB, 4 * MiB)


def test_raise_of_the_hard_limit_without_the_capability_is_refused(child: int) -> None:
    if PRIVILEGED:
        pytest.skip("this process has CAP_SYS_RESOURCE; the child that drops privilege covers refusal")
    _set(child, MiB, 2 * MiB)
    with pytest.raises(MemlockPermissionError, match="CAP_SYS_RESOURCE"):
        memlock.raise_limit(4 * MiB, child, hard=True)
    assert resource.prlimit(child, resource.RLIMIT_MEMLOCK) == (MiB, 2 * MiB)


def test_unprivileged_raise_of_the_hard_limit_is_refused() -> None:
    """A child drops to nobody, then asks to raise its own hard limit."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another user; as a normal user the refusal is the default path")
    code = textwrap.dedent(
        """
        import os, resource, sys
        from kvmspe.host import memlock
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (1 << 20, 2 << 20))
        os.setgid(65534)
        os.setuid(65534)
        try:
            memlock.raise_limit(4 << 20, hard=True)
        except memlock.MemlockPermissionError as exc:
            print("refused:", exc)
            sys.exit(0)
        sys.exit(1)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "CAP_SYS_RESOURCE" in done.stdout and "\n" not in done.stdout.strip()


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="nbytes"):
        memlock.raise_limit(-1)
    with pytest.raises(ValueError, match="pid"):
        memlock.status(0)


def test_room_above_locked_sets_the_soft_limit_and_restores_it() -> None:
    before = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    hard = before[1]
    with memlock.room_above_locked(64 << 10) as set_room:
        locked = memlock.status().vm_lck
        want = locked + (64 << 10)
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        assert resource.getrlimit(resource.RLIMIT_MEMLOCK) == (want, hard)
        set_room(0)
        floor = locked if hard == resource.RLIM_INFINITY else min(locked, hard)
        assert resource.getrlimit(resource.RLIMIT_MEMLOCK)[0] == floor
    assert resource.getrlimit(resource.RLIMIT_MEMLOCK) == before
