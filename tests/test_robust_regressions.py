"""One regression test per failure found by attacking kvmspe as a hostile or
careless user would: wrong ioctls after a refused argument, stale value bytes,
a hang on an assumed exit number, '--' as an option's value, descriptors closed
twice or leaked, files half written, fixtures that hang or eat memory,
exceptions outside the documented ones, bad values accepted, and messages that
contradict themselves or name arguments the command line does not have.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import io
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kvmspe import abi, cli, planner
from kvmspe.arch import maxbuf
from kvmspe.arch.stage1 import Stage1
from kvmspe.errors import KvmError
from kvmspe.export import vectors
from kvmspe.host import discovery, memlock
from kvmspe.kvm import Kvm

HAVE_KVM = os.access("/dev/kvm", os.R_OK | os.W_OK)
needs_kvm = pytest.mark.skipif(not HAVE_KVM, reason="/dev/kvm is missing or not usable here")
SRC = Path(__file__).resolve().parent.parent / "src"


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``kvmspe ARGV`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: Any = cli.main(list(argv))
        except SystemExit as exc:  # argparse's own exits
            code = exc.code
    return int(code or 0), out.getvalue(), err.getvalue()


def assert_usage_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvmspe: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


# --- 1. a refused argument must not leave the cached struct half rewritten ------------------


class AttrRecorder:
    """An ioctl that answers KVM_HAS/GET_DEVICE_ATTR for (group 0, attr 0) only, as x86 does."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.count = 0

    def __call__(self, fd: int, request: int, arg: Any) -> int:
        if request in (abi.KVM_CREATE_VM, abi.KVM_CREATE_VCPU):
            self.count += 1
            return os.open(self.tmp / f"fd{self.count}", os.O_RDWR | os.O_CREAT, 0o600)
        if request in (abi.KVM_HAS_DEVICE_ATTR, abi.KVM_GET_DEVICE_ATTR, abi.KVM_SET_DEVICE_ATTR):
            _, group, attr, addr = abi.DEVICE_ATTR.unpack(bytes(arg))
            if (group, attr) != (0, 0):
                raise OSError(errno.ENXIO, os.strerror(errno.ENXIO))
            if request == abi.KVM_GET_DEVICE_ATTR:
                ctypes.memmove(addr, (23).to_bytes(4, sys.byteorder), 4)  # an int, 4 bytes
        return 0


@pytest.fixture
def fake_vcpu(tmp_path: Path) -> Iterator[Any]:
    (tmp_path / "kvm").touch()
    with Kvm(str(tmp_path / "kvm"), ioctl=AttrRecorder(tmp_path), arch="x86_64") as kvm:
        yield kvm.create_vm().create_vcpu(0)


@pytest.mark.parametrize(
    "group, attr", [(5, -1), (0, 2**64), (None, 0), ("2", 0), (2.0, 0), (0, 2.0), (-1, 0), (2**32, 0)]
)
def test_1_refused_attribute_leaves_the_next_call_correct(fake_vcpu: Any, group: Any, attr: Any) -> None:
    assert fake_vcpu.has_device_attr(0, 0) is True
    with pytest.raises(ValueError):
        fake_vcpu.has_device_attr(group, attr)
    assert fake_vcpu.has_device_attr(0, 0) is True
    assert fake_vcpu.get_device_attr(0, 0) == 23


# --- 2. a GET never shows bytes of an earlier call -----------------------------------------


def test_2_narrow_value_reads_back_without_stale_upper_bytes(fake_vcpu: Any) -> None:
    fake_vcpu.set_device_attr(0, 0, 0x1_0000_0000 | 17)  # a u64 fills all 8 bytes
    assert fake_vcpu.get_device_attr(0, 0) == 23  # not 0x100000017


# --- 3. an assumed exit number equal to the model's idle exit must not hang -----------------


def test_3_rlimit_exit_equal_to_an_upstream_exit_is_refused_at_once() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC), "KVMSPE_EXIT_RLIMIT": "10"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvmspe",
            "configure",
            "--backend",
            "model",
            "--profile",
            "default-4k",
            "--enable-buffer",
            "--raise-memlock",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert_usage_error(done.returncode, done.stderr, "KVMSPE_EXIT_RLIMIT", "KVM_EXIT_INTR")


# --- 4. '--' as an option's value ---------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["sizes", "--to=--"],
        ["sizes", "--limit=--"],
        ["configure", "--vcpus=--"],
        ["configure", "--memlock=--"],
        ["configure", "--locked=--"],
        ["configure", "--profile=--"],
        ["vectors", "--out=--"],
        ["configure", "--backend=--"],
        ["configure", "--enable-buffer=--"],
        ["plan", "--vcpus", "1", "--plot=--"],
        ["probe", "--fixture=--"],
    ],
)
def test_4_double_dash_as_a_value_is_refused(argv: list[str]) -> None:
    code, out, err = run_cli(*argv)
    assert_usage_error(code, err, "'--'")
    assert out == ""


# --- 5. a close interrupted after os.close must not close a reused descriptor --------------


@needs_kvm
def test_5_close_interrupted_after_os_close_never_closes_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    kvm = Kvm()
    vcpu = kvm.create_vm().create_vcpu(0)
    target = vcpu.fd
    real_close = os.close
    state = {"armed": True}

    def close_then_interrupt(fd: int) -> None:
        real_close(fd)
        if fd == target and state["armed"]:
            state["armed"] = False
            raise KeyboardInterrupt  # SIGINT right after the descriptor was closed

    monkeypatch.setattr(os, "close", close_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        vcpu.close()
    monkeypatch.setattr(os, "close", real_close)
    reused = os.open("/dev/null", os.O_RDONLY)
    try:
        assert reused == target  # the lowest free number comes back
        kvm.close()
        os.fstat(reused)  # still open: kvm.close() did not close it a second time
    finally:
        real_close(reused)


def test_5_sigint_during_configure_exits_130_without_traceback() -> None:
    # In-process: a KeyboardInterrupt anywhere in a command, parsing included.
    from kvmspe import cli as cli_mod

    def interrupt(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_mod, "build_parser", interrupt)
        code, _, err = run_cli("configure")
    assert code == 130 and err == "kvmspe: interrupted\n"


def test_5_sigint_while_a_lazily_imported_module_defines_a_dataclass_exits_130() -> None:
    """Python 3.11 hands a KeyboardInterrupt raised during class creation on as a
    RuntimeError (``Error calling __set_name__``); seen when SIGINT hit the first
    import of the stage-1 module. It is still an interrupt: exit 130, one line."""
    from dataclasses import dataclass, field

    from kvmspe import cli as cli_mod

    class Interrupting:
        def __set_name__(self, owner: type, name: str) -> None:
            raise KeyboardInterrupt

    def define_a_class(*_: object, **__: object) -> None:
        @dataclass
        class Late:
            x: int = field(default=0)
            hook = Interrupting()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_mod, "build_parser", define_a_class)
        code, _, err = run_cli("configure")
    assert code == 130 and err == "kvmspe: interrupted\n"


def test_5_a_runtime_error_that_is_not_an_interrupt_is_not_hidden() -> None:
    from kvmspe import cli as cli_mod

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a bug")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_mod, "build_parser", broken)
        with pytest.raises(RuntimeError, match="a bug"):
            cli_mod.main(["configure"])


# --- 6. a documented ValueError of a command is an exit-2 one-liner ------------------------


def test_6_library_value_error_from_a_command_is_one_line_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise ValueError("KVMSPE_EXIT_RLIMIT='x': not an integer;\naccepted: 0..4294967295")

    monkeypatch.setattr(vectors, "write", refuse)
    code, _, err = run_cli("vectors", "--out", "somewhere")
    assert_usage_error(code, err, "KVMSPE_EXIT_RLIMIT")


def test_6_bad_environment_value_is_one_line_exit_2() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC), "KVMSPE_EXIT_RLIMIT": "banana"}
    probe = subprocess.run(
        [sys.executable, "-c", "import kvmspe.abi"], env=env, capture_output=True, timeout=30
    )
    assert probe.returncode == 0, "importing kvmspe.abi must not read the environment"
    done = subprocess.run(
        [sys.executable, "-m", "kvmspe", "configure", "--enable-buffer"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert_usage_error(done.returncode, done.stderr, "KVMSPE_EXIT_RLIMIT")


# --- 7. output files: atomic, all or none, no empty name -----------------------------------


def test_7_failed_second_file_leaves_the_old_files_untouched(tmp_path: Path) -> None:
    vectors.write(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    calls = {"n": 0}

    def full_on_second(fd: int, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            os.write(fd, data[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.write(fd, data)

    with pytest.raises(OSError):
        vectors.write(tmp_path, writer=full_on_second)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_7_empty_out_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("vectors", "--out", "")
    assert_usage_error(code, err, "--out")
    assert list(tmp_path.iterdir()) == []


# --- 8. fixtures: bounded, named, never the real host by accident --------------------------


def test_8_fifo_type_does_not_hang(fixture_copy: Path, spe0: Path) -> None:
    (spe0 / "type").unlink()
    os.mkfifo(spe0 / "type")
    spes, _ = discovery.read_spe_instances(str(fixture_copy / "sys"))
    assert spes[0].type is None
    assert any("type" in p and "FIFO" in p for p in spes[0].problems)


def test_8_type_linked_to_dev_zero_is_refused(fixture_copy: Path, spe0: Path) -> None:
    (spe0 / "type").unlink()
    (spe0 / "type").symlink_to("/dev/zero")
    spes, _ = discovery.read_spe_instances(str(fixture_copy / "sys"))
    assert spes[0].type is None and any("character device" in p for p in spes[0].problems)


def test_8_huge_cpumask_is_refused_without_building_it(fixture_copy: Path, spe0: Path) -> None:
    (spe0 / "cpumask").write_text("0-400000000\n")
    spes, _ = discovery.read_spe_instances(str(fixture_copy / "sys"))
    assert spes[0].cpus == [] and any("cpumask" in p for p in spes[0].problems)


def test_8_bad_max_buff_size_is_named_and_the_probe_goes_on(fixture_copy: Path, spe0: Path) -> None:
    (spe0 / "caps" / "max_buff_size").write_text("-1\n")
    code, out, err = run_cli("probe", "--fixture", str(fixture_copy))
    assert code == 1 and "Traceback" not in err, err
    spes, _ = discovery.read_spe_instances(str(fixture_copy / "sys"))
    assert any(p.startswith("caps/max_buff_size") for p in spes[0].problems)
    assert spes[0].max_buff_size is None


@pytest.mark.parametrize("name", ["", " ", "../no-such-fixture", "a\0b", "/nonexistent", "/dev", "sparc"])
def test_8_empty_or_unknown_fixture_is_refused(name: str) -> None:
    code, _, err = run_cli("probe", "--fixture", name)
    assert_usage_error(code, err, "fixture")


# --- 9. only documented exceptions ---------------------------------------------------------


@needs_kvm
@pytest.mark.parametrize(
    "call",
    [
        lambda kvm: kvm.create_vm(2**64),
        lambda kvm: kvm.check_extension(2**64),
        lambda kvm: kvm.create_vm().create_vcpu(2**40),
        lambda kvm: kvm.create_vm().set_user_memory_region(0, 0, 4096, -1),
    ],
)
def test_9_real_backend_refuses_with_value_error(call: Any) -> None:
    with Kvm() as kvm:
        with pytest.raises(ValueError):
            call(kvm)


@pytest.mark.parametrize(
    "call",
    [
        lambda: memlock.raise_limit(2**63, hard=True),
        lambda: maxbuf.step_at("4K"),  # type: ignore[arg-type]
        lambda: Stage1(Decimal(4096)),  # type: ignore[arg-type]
    ],
)
def test_9_library_refuses_with_value_error(call: Any) -> None:
    with pytest.raises(ValueError):
        call()


# --- 10. bad values refused ------------------------------------------------------------------


def test_10_float_page_size_is_refused() -> None:
    with pytest.raises(ValueError):
        maxbuf.check_page_size(4096.0)
    with pytest.raises(ValueError):
        planner.plan(1, 4 << 20, page_size=4096.0)  # type: ignore[arg-type]


def test_10_locked_beyond_u64_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="kernel can hold"):
        planner.plan(1, 4 << 20, locked_already=2**64 - 1)
    code, _, err = run_cli("plan", "--vcpus", "1", "--max-buffer-size", "4M", "--locked", str(2**64 - 1))
    assert_usage_error(code, err, "kernel can hold")


# --- 11. dropped objects release their descriptors -------------------------------------------


@needs_kvm
def test_11_dropped_kvm_vm_vcpu_release_their_fds() -> None:
    gc.collect()
    before = fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(100):
            kvm = Kvm()
            vm = kvm.create_vm()
            vm.create_vcpu(0)
            del kvm, vm
        gc.collect()
    assert fds() - before == set()
    assert sum(issubclass(w.category, ResourceWarning) for w in caught) == 300


# --- 12. messages that agree with themselves and name only what the CLI has -----------------


def test_12_vcpu_count_messages_state_one_range() -> None:
    _, _, word = run_cli("configure", "--vcpus", "four")
    _, _, zero = run_cli("configure", "--vcpus", "0")
    assert "1..512" in word and "1..512" in zero


def test_12_level_messages_state_the_accepted_levels() -> None:
    _, _, six = run_cli("plan", "--vcpus", "1", "--levels", "6")
    _, _, one = run_cli("plan", "--vcpus", "1", "--levels", "1")
    assert "1..5" in six
    assert "2..5" in one and "va_bits" not in one


def test_12_comma_is_not_called_a_fraction() -> None:
    code, _, err = run_cli("encode", "4,096")
    assert_usage_error(code, err, "comma")
    assert "fraction" not in err


def test_12_no_library_only_arguments_in_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(memlock.MemlockPermissionError) as info:
        hard = memlock.status().hard
        if hard is None:
            pytest.skip("RLIMIT_MEMLOCK hard limit is unlimited here: nothing is above it")
        memlock.raise_limit(hard + 4096)
    assert "hard=True" not in str(info.value)
    for levels in ("1", "5"):
        _, _, err = run_cli("plan", "--vcpus", "1", "--granule", "64K", "--levels", levels)
        assert "va_bits" not in err and "levels/" not in err


@needs_kvm
def test_a_closed_vcpu_says_so_and_touches_no_descriptor() -> None:
    with Kvm() as kvm:
        vcpu = kvm.create_vm().create_vcpu(0)
        vcpu.close()
        assert vcpu.fd == -1
        with pytest.raises(KvmError, match="closed"):
            vcpu.get_device_attr(0, 0)


@needs_kvm
def test_calls_on_closed_kvm_and_vm_say_closed() -> None:
    kvm = Kvm()
    vm = kvm.create_vm()
    kvm.close()
    with pytest.raises(KvmError, match="Vm has been closed"):
        vm.create_vcpu(0)
    with pytest.raises(KvmError, match="Kvm has been closed"):
        kvm.create_vm()
