"""kvmspe in hostile surroundings, round two: standard output closed, full or
without a reader; objects used after close; library arguments of the wrong
kind; KVM_RUN under a blocked timer signal; threads; signals while files are
written; a sysfs snapshot too large in all; exports and the values kvmspe accepts.

Every subprocess here is bounded by a timeout. ``STATS`` counts the runs and
how they ended; the figures are printed at the end of the module (``-s``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

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


# --- figures -----------------------------------------------------------------------------------


def test_report_figures() -> None:
    """Print what this module ran (visible with -s)."""
    print(f"\nrobust env: {dict(sorted(STATS.items()))}")
    if STATS["runs"]:  # the module's other tests ran first (file order)
        assert not any("exit 120" in key for key in STATS), STATS
