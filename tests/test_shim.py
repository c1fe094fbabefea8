"""The shim: kvmspe's model in front of this machine's real KVM, through LD_PRELOAD.

The x86 tests run a C program that knows nothing of kvmspe (``tests/shim/raw_vmm.c``,
raw ioctls) and kvmspe's own real backend under ``kvmspe shim run``, and check what
the program got, what the transcript says, and that every other ioctl reached the
kernel. The arm64 SPE path runs in the testbed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kvmspe import abi
from kvmspe.host.profiles import PROFILES
from kvmspe.shim import build, launch, protocol, script
from kvmspe.shim.server import Numbers

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
IN_CI = os.environ.get("CI") == "true"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if IN_CI:
            pytest.fail(f"{tool} is missing in CI (tests/export/setup-tools.sh installs it)")
        pytest.skip(f"{tool} is not installed")
    return path


def _kvm_x86() -> None:
    if os.uname().machine != "x86_64":
        pytest.skip("the raw VMM of these tests is x86 (arm64 runs the shim in the testbed)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm on this machine")


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _need("cc")
    return build.build(tmp_path_factory.mktemp("shim") / "libkvmspe-shim.so")


@pytest.fixture(scope="module")
def raw_vmm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = _need("cc")
    out = tmp_path_factory.mktemp("vmm") / "raw_vmm"
    src = ROOT / "tests" / "shim" / "raw_vmm.c"
    subprocess.run(
        [cc, "-Wall", "-Wextra", "-Werror", "-O2", "-o", str(out), str(src)], check=True, timeout=120
    )
    return out


def _shim_run(lib: Path, tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    transcript = tmp / "transcript.json"
    cmd = [sys.executable, "-m", "kvmspe", "shim", "run", "--lib", str(lib), "--json"]
    cmd += ["--transcript", str(transcript), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    return done, json.loads(transcript.read_text())


# -- the protocol: C and Python agree ------------------------------------------------------


def _c_enum(name: str) -> list[str]:
    body = re.search(rf"enum {name} \{{(.*?)\}};", build.source(), re.S)
    assert body is not None, name
    return [e.strip() for e in body.group(1).split(",") if e.strip()]


def test_the_c_enums_follow_the_protocol_tables() -> None:
    assert [e.removeprefix("OP_").lower() for e in _c_enum("ks_op")] == list(protocol.OPS)
    assert [e.removeprefix("ACT_").lower() for e in _c_enum("ks_action")] == list(protocol.ACTIONS)
    cfg = [e.removeprefix("CFG_").lower() for e in _c_enum("ks_cfg")]
    assert cfg[-1] == "n"
    names = [c.removeprefix("ioctl_") for c in protocol.CONFIG]
    assert cfg[:-1] == names
    assert protocol.REQUEST.size == 64 and protocol.RESPONSE.size == 32


def test_the_shim_builds_for_arm64_with_debians_cross_compiler(tmp_path: Path) -> None:
    _need("aarch64-linux-gnu-gcc")
    out = build.build(tmp_path / "arm64.so", "aarch64-linux-gnu-gcc")
    assert out.read_bytes()[:4] == b"\x7fELF"
    assert out.read_bytes()[18] == 183  # e_machine EM_AARCH64


def test_build_without_a_compiler_says_so(tmp_path: Path) -> None:
    with pytest.raises(build.ShimBuildError, match="no C compiler"):
        build.build(tmp_path / "x.so", "no-such-cc-here")
    assert not (tmp_path / "x.so").exists()


# -- scripts ------------------------------------------------------------------------------------


def test_faults_and_guest_actions_are_read_as_documented() -> None:
    f = script.parse_fault("set:max_buffer_size@3=ERANGE")
    assert (f.call, f.attr, f.nth, f.errno) == ("set", abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE, 3, 34)
    r = script.parse_fault("run@1=rlimit:8M")
    assert (r.call, r.nth, r.rlimit_excess) == ("run", 1, 8 << 20)
    assert script.parse_fault("has:KVM_ARM_VCPU_SPE_IRQ=ENXIO").nth is None
    g = script.parse_guest("0@2=enable:4M:0x0")
    assert (g.vcpu, g.entry, g.op, g.size, g.base) == (0, 2, "enable", 4 << 20, 0)
    assert script.parse_guest("all@1=enable:64K").base_for(3) == 3 * 65536


@pytest.mark.parametrize(
    "spec",
    [
        "set@1=ERANGE",
        "set:nope=ERANGE",
        "run@0=EINVAL",
        "run=EBOGUS",
        "get:irq=rlimit:4K",
        "run=rlimit:0",
        "x=E",
    ],
)
def test_a_bad_fault_is_one_line_and_exit_2(spec: str) -> None:
    with pytest.raises(script.ScriptError):
        script.parse_fault(spec)
    done = subprocess.run(
        [sys.executable, "-m", "kvmspe", "shim", "run", "--fail", spec, "--", "true"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize("args", [["--exit", "42"], ["--cap", "208"], ["--"], []])
def test_upstream_numbers_and_no_command_are_refused(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "kvmspe", "shim", "run", *args]
    if args and args[0] != "--":
        cmd += ["--", "true"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=60)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


# -- a VMM that knows nothing of kvmspe --------------------------------------------------------


def test_a_raw_vmm_gets_the_models_answers_and_the_kernels(lib: Path, raw_vmm: Path, tmp_path: Path) -> None:
    _kvm_x86()
    done, doc = _shim_run(lib, tmp_path, "--fail", "set:max_buffer_size@4=ERANGE", "--", str(raw_vmm))
    assert done.returncode == 7, done.stderr  # the command's own status
    steps = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert steps["has_max"] == "0 -"
    assert steps["set_max_before_spu"] == "-1 ENODEV"
    assert steps["set_max_bad_addr"] == "-1 EFAULT"
    assert steps["set_max"] == "0 -"
    assert steps["set_max_again"] == "-1 ERANGE"  # injected: the model would accept the same value
    assert steps["get_max_bad_addr"] == "-1 EFAULT"
    assert steps["got"] == "0x400000"
    # Not the SPE group: the kernel answered (x86 has the TSC offset attribute).
    assert steps["mmap_size"] == "0 -" and steps["has_tsc_offset"] == "0 -"
    # The closed VCPU's fd number, reused for /dev/null, is /dev/null's: the kernel says ENOTTY.
    assert steps["reused"] == "1" and steps["has_max_on_reused"] == "-1 ENOTTY"
    calls = doc["calls"]
    assert isinstance(calls, list)
    rows = [(c["call"], c["target"], c["result"], c["rule"], c["injected"]) for c in calls]
    assert ("SET", "KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE", "ENODEV", "spu-assigned", None) in rows
    assert ("SET", "KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE", "EFAULT", "readable-pointer", None) in rows
    assert ("SET", "KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE", "ERANGE", "", "set:max_buffer_size@4=ERANGE") in rows
    assert ("GET", "KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE", "0x400000", "", None) in rows
    # Nothing of the TSC attribute, nor of the reused fd, reached the model.
    assert not any(c["target"].startswith("KVM_ARM_VCPU_SPE_CTRL attribute") for c in calls)
    assert sum(c["call"] == "HAS" for c in calls) == 1
    assert doc["status"] == 7


def test_the_human_transcript_names_the_rule(lib: Path, raw_vmm: Path) -> None:
    _kvm_x86()
    cmd = [sys.executable, "-m", "kvmspe", "shim", "run", "--lib", str(lib), "--", str(raw_vmm)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 7
    want = (
        "SET KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE=0x400000 on VCPU 0 -> ENODEV (spu-assigned: no SPU is"
        " assigned to the VM; set KVM_ARM_VCPU_SPE_SPU first)"
    )
    assert want in done.stdout.splitlines()


def test_a_signal_ends_the_command_with_128_plus_n(lib: Path, tmp_path: Path) -> None:
    done, doc = _shim_run(lib, tmp_path, "--", "sh", "-c", "kill -TERM $$")
    assert done.returncode == 128 + 15 and doc["status"] == 143


def test_the_run_leaves_no_thread_socket_or_directory(lib: Path) -> None:
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    before, dirs = threading.active_count(), set(tmp.glob("kvmspe-shim-*"))
    result = launch.run(
        ["true"], lib=lib, host=PROFILES["big-little"].host(), numbers=Numbers(None, None, 0x10000, True)
    )
    assert result.status == 0 and result.transcript == []
    assert threading.active_count() == before
    # Not the socket's directory, nor the sysfs view made in it when run as root.
    assert set(tmp.glob("kvmspe-shim-*")) == dirs


# -- kvmspe's own real backend -------------------------------------------------------------------


def test_conformance_on_the_real_backend_runs_the_spe_cases(lib: Path, tmp_path: Path) -> None:
    _kvm_x86()
    cmd = ["--", sys.executable, "-m", "kvmspe", "conformance", "--backend", "kvm", "--json"]
    done, doc = _shim_run(lib, tmp_path, *cmd)
    assert done.returncode == 0, done.stdout[-2000:]
    report = json.loads(done.stdout)
    results = report["results"]
    assert not [r for r in results if r["status"] == "failed"]
    passed = [r for r in results if r["status"] == "passed"]
    # The SPE cases ran: far more than the 18 no-SPE ones of a plain x86 KVM.
    assert len(passed) > 100
    allowed = (
        "host has SPE: the no-SPE cases",
        "host page size",
        "without the SPE feature",
        "RLIMIT_MEMLOCK",
    )
    odd = [r for r in results if r["status"] == "skipped" and not any(a in r["reason"] for a in allowed)]
    assert not odd
    assert any(c["call"] == "guest" for c in doc["calls"])  # the guest cases were scripted
    assert not [n for n in doc["notes"] if "model failed" in n]


def test_configure_on_the_real_backend_raises_and_reenters(lib: Path, tmp_path: Path) -> None:
    _kvm_x86()
    cmd = "ulimit -Sl 64; exec python3 -m kvmspe configure --backend kvm --vcpus 2 --max-buffer-size 1M"
    cmd += " --enable-buffer --raise-memlock --case best"
    done, doc = _shim_run(lib, tmp_path, "--", "sh", "-c", cmd)
    assert done.returncode == 0, done.stdout
    out = done.stdout
    assert "done: SPE is configured on every VCPU" in out
    assert "FAIL vcpu 1: KVM_RUN  (KVM_EXIT_RLIMIT: RLIMIT_MEMLOCK exceeded by 8 KiB (0x2000))" in out
    assert "by the excess KVM_EXIT_RLIMIT reported" in out
    rlimit = [c for c in doc["calls"] if c["result"].startswith("exit KVM_EXIT_RLIMIT")]
    assert len(rlimit) == 1 and rlimit[0]["vcpu"] == 1


def _doc_block() -> list[str]:
    text = (ROOT / "docs" / "shim.md").read_text()
    start = text.index("<!-- not replayed: tests/test_shim.py replays it")
    body = text[text.index("```console\n", start) + len("```console\n") :]
    return body[: body.index("```")].splitlines()


def test_the_run_shown_in_docs_shim_md_is_what_it_prints(tmp_path: Path) -> None:
    _kvm_x86()
    _need("cc")
    if os.geteuid() != 0:
        pytest.skip("the page shows a run as root (the model's SPE units in a private mount namespace)")
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    kvmspe = f'kvmspe() {{ PYTHONPATH={ROOT / "src"} {sys.executable} -m kvmspe "$@"; }}'
    lines = _doc_block()
    commands = [i for i, line in enumerate(lines) if line.startswith("$ ")]
    for n, i in enumerate(commands):
        end = commands[n + 1] if n + 1 < len(commands) else len(lines)
        want = lines[i + 1 : end]
        status = 0
        if want and want[-1].startswith("[exit status "):
            status = int(want.pop()[len("[exit status ") : -1])
        done = subprocess.run(
            ["bash", "-c", f"{kvmspe}\n{lines[i][2:]} 2>&1"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert (done.returncode, done.stdout.splitlines()) == (status, want), lines[i]


def test_a_failure_of_the_model_answers_eio_and_is_reported(
    lib: Path, raw_vmm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _kvm_x86()
    from kvmspe.shim import server

    def broken(self: server.ModelServer, proc: object, call: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setitem(server._HANDLERS, protocol.OP["has_attr"], broken)
    out = Path(raw_vmm).parent / "out.txt"
    with out.open("w") as sink:
        monkeypatch.setattr(sys, "stdout", sink)
        result = launch.run(
            [str(raw_vmm)],
            lib=lib,
            host=PROFILES["big-little"].host(),
            numbers=Numbers(None, None, 0x10000, True),
        )
    assert result.status == 7
    assert any("model failed" in n and "RuntimeError: a bug" in n for n in result.notes)
    eio = [e for e in result.transcript if e.result == "EIO"]
    assert len(eio) == 1 and eio[0].call == "has_attr"


def test_a_one_shot_timer_that_rings_during_the_models_answer_still_ends_kvm_run(
    lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _kvm_x86()
    cc = _need("cc")
    exe = tmp_path / "oneshot_vmm"
    src = ROOT / "tests" / "shim" / "oneshot_vmm.c"
    subprocess.run(
        [cc, "-Wall", "-Wextra", "-Werror", "-O2", "-o", str(exe), str(src)], check=True, timeout=120
    )
    from kvmspe.shim import server

    answer = server._HANDLERS[protocol.OP["run"]]

    def slow(self: server.ModelServer, proc: Any, call: Any) -> None:
        time.sleep(0.5)  # the program's timer (200 ms) rings while the model answers
        answer(self, proc, call)

    monkeypatch.setitem(server._HANDLERS, protocol.OP["run"], slow)
    out = tmp_path / "out.txt"
    with out.open("w") as sink:
        result = launch.run(
            ["sh", "-c", f"exec {exe} > {sink.name}"],
            lib=lib,
            host=PROFILES["big-little"].host(),
            numbers=Numbers(None, None, 0x10000, True),
            timeout=20,
        )
    assert not result.timed_out, "KVM_RUN never returned: the timer's signal was lost to it"
    assert result.status == 0
    assert out.read_text() == "run -1 EINTR\n"


@pytest.mark.parametrize(
    ("redirect", "want"),
    [(">&-", "it is closed"), (">/dev/full", "No space left on device")],
)
def test_a_transcript_that_cannot_be_shown_is_one_line_and_exit_2(
    lib: Path, redirect: str, want: str
) -> None:
    cmd = f"{sys.executable} -m kvmspe shim run --lib {lib} -- true {redirect}"
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"kvmspe: error: cannot write the answer to standard output: {want}"]


def test_a_transcript_target_that_is_not_a_file_is_refused_before_the_run(lib: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for target in (str(tmp_path), str(tmp_path / "missing" / "t.json"), "/proc/t.json"):
        cmd = [sys.executable, "-m", "kvmspe", "shim", "run", "--lib", str(lib), "--transcript", target]
        done = subprocess.run(
            [*cmd, "--", "touch", str(marker)], capture_output=True, text=True, env=ENV, timeout=60
        )
        assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
        assert not marker.exists()
