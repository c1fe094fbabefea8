"""The shim against a VMM that does what VMMs do: threads, forks, execs, closing
every descriptor, dup2 over its own files, timer signals, bad pointers; and the
run and its model server against odd commands, environments and clients.

The C programs are ``tests/shim/hostile_vmm.c`` (one scenario per run, each
step printed as ``NAME ret errno``) and ``tests/shim/own_preload.c`` (a VMM's
own preloaded library). They need this machine's x86 KVM, as ``test_shim.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmspe.host.profiles import PROFILES
from kvmspe.shim import build, protocol
from kvmspe.shim.server import ModelServer, Numbers

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
X86 = Numbers(None, None, 0x10000, True)


def _need_cc() -> str:
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    return cc


def _kvm_x86() -> None:
    if os.uname().machine != "x86_64":
        pytest.skip("the hostile VMM of these tests is x86 (arm64 runs the shim in the testbed)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm on this machine")


@pytest.fixture(scope="module")
def public() -> Iterator[Path]:
    """A directory every user can read: the shim and the programs, for the non-root runs."""
    path = Path(tempfile.mkdtemp(prefix="kvmspe-shim-hostile-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def lib(public: Path) -> Path:
    _need_cc()
    out = build.build(public / "libkvmspe-shim.so")
    out.chmod(0o755)
    return out


@pytest.fixture(scope="module")
def vmm(public: Path) -> Path:
    cc = _need_cc()
    out = public / "hostile_vmm"
    src = ROOT / "tests" / "shim" / "hostile_vmm.c"
    flags = ["-Wall", "-Wextra", "-Werror", "-O2", "-pthread"]
    subprocess.run([cc, *flags, "-o", str(out), str(src)], check=True, timeout=120)
    return out


def _run(
    lib: Path, tmp: Path, *args: str, **kw: Any
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    transcript = tmp / "transcript.json"
    cmd = [sys.executable, "-m", "kvmspe", "shim", "run", "--lib", str(lib), "--json"]
    cmd += ["--transcript", str(transcript), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=kw.pop("env", ENV), timeout=120, **kw)
    assert "Traceback" not in done.stderr, done.stderr
    doc = json.loads(transcript.read_text()) if transcript.exists() else {}
    return done, doc


def _steps(out: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def _scenario(
    lib: Path, vmm: Path, tmp: Path, name: str, *args: str
) -> tuple[dict[str, str], dict[str, Any]]:
    _kvm_x86()
    done, doc = _run(lib, tmp, *args, "--", str(vmm), name)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return _steps(done.stdout), doc


def _calls(doc: dict[str, Any], call: str) -> list[dict[str, Any]]:
    return [c for c in doc["calls"] if c["call"] == call]


# -- descriptors ----------------------------------------------------------------------------


def test_dup2_of_a_vcpu_onto_itself_changes_nothing(lib: Path, vmm: Path, tmp_path: Path) -> None:
    steps, doc = _scenario(lib, vmm, tmp_path, "dup2_self")
    assert steps["dup2_self"] == "0 -" and steps["set_spu"] == "0 -"
    # The VCPU's descriptor still refers to the VM: the model must not destroy it.
    assert not _calls(doc, "destroy")


def test_a_failed_dup2_or_dup3_leaves_the_vcpu_the_models(lib: Path, vmm: Path, tmp_path: Path) -> None:
    steps, doc = _scenario(lib, vmm, tmp_path, "dup_fails")
    assert steps["dup2_badfd"] == "-1 EBADF" and steps["dup3_badflags"] == "-1 EINVAL"
    assert steps["set_spu"] == "0 -"  # the model's answer, not the x86 kernel's ENXIO
    assert [c["result"] for c in _calls(doc, "SET")] == ["ok"]


def test_another_file_over_a_vcpu_and_an_f_dupfd_copy(lib: Path, vmm: Path, tmp_path: Path) -> None:
    steps, doc = _scenario(lib, vmm, tmp_path, "dup_over")
    assert steps["has_on_replaced"] == "-1 ENOTTY"  # /dev/null's answer: the kernel's
    assert steps["set_spu_on_copy"] == "0 -"
    assert [c["result"] for c in _calls(doc, "SET")] == ["ok"] and not _calls(doc, "HAS")


def test_closing_every_descriptor_then_going_on(lib: Path, vmm: Path, tmp_path: Path) -> None:
    steps, doc = _scenario(lib, vmm, tmp_path, "close_all")
    assert steps["set_spu"] == "0 -" and steps["set_spu_after"] == "0 -"
    assert [c["value"] for c in _calls(doc, "SET")] == [10, 11]
    assert len(_calls(doc, "destroy")) == 1


def test_closing_the_shims_socket_keeps_the_vms(lib: Path, vmm: Path, tmp_path: Path) -> None:
    steps, doc = _scenario(lib, vmm, tmp_path, "close_socket")
    # The shim connects again; the model keeps this program's VM and its SPU.
    assert steps["get_spu"] == "0 -" and steps["spu"] == "10"
    assert not _calls(doc, "destroy")


@pytest.mark.parametrize("how", ["close_range", "close_range_raw"])
def test_close_range_then_the_processs_own_socket_and_pipe(
    lib: Path, vmm: Path, tmp_path: Path, how: str
) -> None:
    steps, doc = _scenario(lib, vmm, tmp_path, how)
    # The shim's socket number now names the process's own socket: nothing of
    # the shim's may be written there, and the shim must not close it.
    assert steps["own_socket_untouched"] == "0 -"
    assert steps["own_socket_open"] == "0 -" and steps["own_pipe_open"] == "0 -"
    assert steps["set_spu_after"] == "0 -"
    assert [c["value"] for c in _calls(doc, "SET")] == [10, 11]
    if how == "close_range":
        assert len(_calls(doc, "destroy")) == 1  # close_range ended the first VM


@pytest.mark.parametrize("how", ["fork", "clone", "vfork"])
def test_a_child_cannot_touch_the_parents_vm(lib: Path, vmm: Path, tmp_path: Path, how: str) -> None:
    steps, doc = _scenario(lib, vmm, tmp_path, how)
    # fork and a raw clone: the child's call is the kernel's (EIO, another
    # process's VM); its closes do not end the parent's VM.
    assert steps["child"] == "0 -"
    assert steps["set_max"] == "0 -"
    assert [c["result"] for c in _calls(doc, "SET")] == ["ok", "ok"]
    assert not _calls(doc, "destroy")


def test_a_vmm_that_execs_itself_starts_afresh(lib: Path, vmm: Path, tmp_path: Path) -> None:
    _kvm_x86()
    done, doc = _run(lib, tmp_path, "--guest", "0@1=enable:2M", "--", str(vmm), "exec")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 6
    # The old image's VM went with its descriptors (O_CLOEXEC): its pinned
    # buffer does not count against the new image's RLIMIT_MEMLOCK.
    assert lines[:3] == lines[3:]
    assert lines[0] == "spe_setup 0 -"
    assert [c["vm"] for c in _calls(doc, "destroy")] == [1]


# -- threads and signals -----------------------------------------------------------------


def test_threads_each_get_their_own_vms_answers(lib: Path, vmm: Path, tmp_path: Path) -> None:
    steps, doc = _scenario(lib, vmm, tmp_path, "threads")
    assert steps["wrong_answers"] == "0 -"
    assert len(_calls(doc, "KVM_CREATE_VM")) == 4 and len(_calls(doc, "KVM_CREATE_VCPU")) == 4


def test_timer_signals_during_every_exchange(lib: Path, vmm: Path, tmp_path: Path) -> None:
    steps, doc = _scenario(lib, vmm, tmp_path, "signals")
    assert steps["wrong_answers"] == "0 -" and steps["interrupted"] == "0 -"
    assert len(_calls(doc, "GET")) == 3000


def test_a_signal_handler_that_copies_and_closes_a_vcpu(lib: Path, vmm: Path, tmp_path: Path) -> None:
    _kvm_x86()
    # dup and close are async-signal-safe: a handler may call them while its
    # thread is inside the shim's exchange with the model (a deadlock, once).
    # A deadlock never ends; the limit is wide because a loaded machine makes
    # each of the loop's 6000 exchanges with the model slow, not wrong.
    done, doc = _run(lib, tmp_path, "--timeout", "90", "--", str(vmm), "handler_closes")
    assert done.returncode == 0, (done.returncode, done.stdout)
    steps = _steps(done.stdout)
    assert steps["wrong_answers"] == "0 -" and steps["interrupted"] == "0 -"
    assert not _calls(doc, "destroy")


def test_timer_signals_while_the_shim_waits_to_connect(vmm: Path, lib: Path) -> None:
    _kvm_x86()
    server = _server()
    # The model's listen backlog is full: the shim's connect() waits, and the
    # timer interrupts it, until the server starts accepting.
    waiting = []
    try:
        while True:
            c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            c.setblocking(False)
            try:
                c.connect(server.path)
            except BlockingIOError:
                c.close()
                break
            waiting.append(c)
        env = dict(ENV, LD_PRELOAD=str(lib), KVMSPE_SHIM_SOCKET=server.path)
        proc = subprocess.Popen(
            [str(vmm), "signals"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        time.sleep(0.5)
        with server:
            out, err = proc.communicate(timeout=60)
    finally:
        for c in waiting:
            c.close()
        server.close()
    assert proc.returncode == 0, err
    assert _steps(out) == {"set_spu": "0 -", "wrong_answers": "0 -", "interrupted": "0 -"}, err
    assert not err


def test_the_spe_capability_is_answered_on_kvm_and_vm_fds_only(lib: Path, vmm: Path, tmp_path: Path) -> None:
    _kvm_x86()
    done, doc = _run(lib, tmp_path, "--cap", "1000", "--", str(vmm), "check_extension", "1000")
    assert done.returncode == 0, done.stderr
    steps = _steps(done.stdout)
    assert steps["on_kvm"] == "1 -" and steps["on_vm"] == "1 -"
    # The kernel's own answers: KVM_CHECK_EXTENSION is not a VCPU's ioctl, nor /dev/null's.
    assert steps["on_vcpu"] == "-1 EINVAL" and steps["on_null"] == "-1 ENOTTY"
    assert steps["on_closed"] == "-1 EBADF"
    assert len(_calls(doc, "KVM_CHECK_EXTENSION")) == 2


# -- pointers and values --------------------------------------------------------------------


def test_a_bad_pointer_to_the_struct_itself_is_efault(lib: Path, vmm: Path, tmp_path: Path) -> None:
    steps, doc = _scenario(lib, vmm, tmp_path, "bad_arg")
    for step in ("set_null", "get_low", "has_kernel_addr", "has_straddling"):
        assert steps[step] == "-1 EFAULT", step
    assert not _calls(doc, "SET") and not _calls(doc, "HAS")


def test_values_at_the_edges_of_their_c_types(lib: Path, vmm: Path, tmp_path: Path) -> None:
    steps, doc = _scenario(lib, vmm, tmp_path, "edges")
    assert steps["set_irq_minus1"] == "-1 EINVAL" and steps["set_irq_intmin"] == "-1 EINVAL"
    assert steps["set_spu_minus1"] == "-1 ENXIO"
    assert steps["set_max_u64max"] == "-1 EINVAL" and steps["set_max_topbit"] == "-1 EDOM"
    assert steps["has_unknown"] == "-1 ENXIO"
    assert steps["set_unknown_u64max"] == "-1 ENXIO" and steps["get_unknown_u64max"] == "-1 ENXIO"
    values = [c["value"] for c in _calls(doc, "SET")][:3]
    assert values == [-1, -(1 << 31), -1]  # an int, read as the C type holds it
    rules = {c["rule"] for c in _calls(doc, "HAS")}
    assert rules == {"known-attribute"}
    # An attribute the group does not have: the shim read no value, so none is shown.
    unknown = [c for c in _calls(doc, "SET") if c["target"].startswith("KVM_ARM_VCPU_SPE_CTRL attribute")]
    assert [(c["value"], c["result"], c["rule"]) for c in unknown] == [(None, "ENXIO", "known-attribute")]


# -- the environment ------------------------------------------------------------------------


def _raw_vmm(public: Path) -> Path:
    out = public / "raw_vmm"
    if not out.exists():
        cc = _need_cc()
        src = ROOT / "tests" / "shim" / "raw_vmm.c"
        subprocess.run([cc, "-O2", "-o", str(out), str(src)], check=True, timeout=120)
    return out


@pytest.mark.parametrize("socket_path", [None, "/" + "x" * 200])
def test_without_a_model_the_shim_changes_nothing(lib: Path, public: Path, socket_path: str | None) -> None:
    _kvm_x86()
    raw = _raw_vmm(public)
    env = {k: v for k, v in os.environ.items() if k != "KVMSPE_SHIM_SOCKET"}
    plain = subprocess.run([str(raw)], capture_output=True, text=True, env=env, timeout=60)
    if socket_path is not None:
        env["KVMSPE_SHIM_SOCKET"] = socket_path
    shimmed = subprocess.run(
        [str(raw)], capture_output=True, text=True, env=dict(env, LD_PRELOAD=str(lib)), timeout=60
    )
    assert (shimmed.returncode, shimmed.stdout) == (plain.returncode, plain.stdout) == (7, plain.stdout)
    assert "set_max -1 ENXIO" in plain.stdout  # x86's own answer
    said = shimmed.stderr.splitlines()
    assert said == ([] if socket_path is None else [said[0]]) and (
        socket_path is None or "too long" in said[0]
    )


def test_the_commands_own_ld_preload_still_works(lib: Path, public: Path, tmp_path: Path) -> None:
    _kvm_x86()
    own = public / "own_preload.so"
    src = ROOT / "tests" / "shim" / "own_preload.c"
    subprocess.run([_need_cc(), "-shared", "-fPIC", "-o", str(own), str(src)], check=True, timeout=120)
    log = tmp_path / "own.log"
    env = dict(ENV, LD_PRELOAD=str(own), OWN_PRELOAD_LOG=str(log))
    done, doc = _run(lib, tmp_path, "--", str(_raw_vmm(public)), env=env)
    assert done.returncode == 7, done.stderr
    # The launcher was started with it too (by this test); the command has it;
    # the helper that sets up the mount namespace does not.
    assert log.read_text().splitlines() == [Path(sys.executable).resolve().name, "raw_vmm"]
    assert _calls(doc, "SET")


def test_not_root_the_command_runs_and_sysfs_is_the_hosts(lib: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as another user")
    drop = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    base = [sys.executable, "-m", "kvmspe", "shim", "run", "--lib", str(lib), "--json"]
    env = dict(ENV, HOME="/nonexistent")
    done = subprocess.run([*drop, *base, "--", "true"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    notes = json.loads(done.stdout)["notes"]
    assert any("is the host's own (not root)" in n for n in notes)
    missing = [*drop, *base, "--", "/nonexistent/vmm"]
    done = subprocess.run(missing, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 127, done.stderr  # as root, and as a shell says
    assert "Traceback" not in done.stderr


def test_root_without_cap_sys_admin_still_runs_the_command(lib: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop CAP_SYS_ADMIN (as in a container)")
    marker = tmp_path / "ran"
    base = [sys.executable, "-m", "kvmspe", "shim", "run", "--lib", str(lib), "--json"]
    cmd = ["setpriv", "--bounding-set", "-sys_admin", *base, "--", "touch", str(marker)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    assert marker.exists()
    notes = json.loads(done.stdout)["notes"]
    assert any("is the host's own (unshare failed: Operation not permitted)" in n for n in notes), notes


def test_a_command_that_is_not_found_is_127(lib: Path, tmp_path: Path) -> None:
    done, doc = _run(lib, tmp_path, "--", "/nonexistent/vmm")
    assert done.returncode == 127


def _lingering(tag: str) -> list[int]:
    """The processes running ``sleep TAG``."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if pid.isdecimal() and cmdline.split(b"\0")[:2] == [b"sleep", tag.encode()]:
            found.append(int(pid))
    return found


def test_timeout_ends_the_commands_children_too(lib: Path, tmp_path: Path) -> None:
    tag = "24.321"
    start = time.monotonic()
    try:
        done, doc = _run(lib, tmp_path, "--timeout", "1", "--", "sh", "-c", f"sleep {tag} & sleep {tag}")
    finally:
        left = _lingering(tag)
        for pid in left:
            os.kill(pid, 9)
    assert done.returncode == 124 and doc["timed_out"]
    assert time.monotonic() - start < 15  # nothing held the output pipe open
    assert not left


def test_a_run_leaves_no_directory_behind(lib: Path, tmp_path: Path) -> None:
    done, _ = _run(lib, tmp_path, "--", "true", env=dict(ENV, TMPDIR=str(tmp_path)))
    assert done.returncode == 0
    # As root the run also puts the SPE units it shows in sysfs there.
    assert not list(tmp_path.glob("kvmspe-shim-*"))


def test_a_transcript_that_cannot_be_written_is_refused_before_the_run(lib: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    done, _ = _run(lib, tmp_path, "--transcript", "/proc/no-such-dir-entry.json", "--", "touch", str(marker))
    assert done.returncode == 2 and "--transcript" in done.stderr
    assert not marker.exists()


def test_a_transcript_through_a_symlink_writes_its_target(lib: Path, tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    link = tmp_path / "link.json"
    link.symlink_to(target)
    cmd = [sys.executable, "-m", "kvmspe", "shim", "run", "--lib", str(lib), "--json"]
    done = subprocess.run([*cmd, "--transcript", str(link), "--", "true"], env=ENV, timeout=120)
    assert done.returncode == 0
    assert link.is_symlink() and json.loads(target.read_text())["status"] == 0


@pytest.mark.parametrize("through_a_link", [False, True], ids=["fifo", "link-to-fifo"])
def test_a_transcript_to_a_fifo_is_written_into_it_not_over_it(
    lib: Path, tmp_path: Path, through_a_link: bool
) -> None:
    # As a device (/dev/stderr, /dev/null) is: a file renamed over it would replace the node.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    given = fifo
    if through_a_link:
        given = tmp_path / "link"
        given.symlink_to(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    cmd = [sys.executable, "-m", "kvmspe", "shim", "run", "--lib", str(lib), "--json"]
    try:
        done = subprocess.run([*cmd, "--transcript", str(given), "--", "true"], env=ENV, timeout=60)
    finally:
        if reader.is_alive():  # nothing opened it for writing: let the reader go
            with open(fifo, "w"):
                pass
        reader.join(10)
    assert done.returncode == 0
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and given.exists()
    assert got and json.loads(got[0])["status"] == 0


def test_a_shim_path_ld_preload_cannot_name_is_refused(lib: Path, tmp_path: Path) -> None:
    odd = tmp_path / "a dir" / "lib.so"
    odd.parent.mkdir()
    shutil.copyfile(lib, odd)
    done, _ = _run(odd, tmp_path, "--", "true")
    assert done.returncode == 2 and "LD_PRELOAD" in done.stderr


# -- the model server -----------------------------------------------------------------------


def _server() -> ModelServer:
    return ModelServer(PROFILES["big-little"].host, X86)


def _client(server: ModelServer) -> socket.socket:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    c.settimeout(5)
    c.connect(server.path)
    return c


@pytest.mark.parametrize(
    "message",
    [
        b'{"a": ' + b"[" * 100000,
        b'{"op": "guest", "fd": 1e400, "what": "state"}',
        b'{"op": "guest", "fd": [], "what": "state"}',
        b'{"op": "guest", "fd": 3, "what": "state"}',
    ],
    ids=["nested-100000-deep", "fd-infinite", "fd-a-list", "fd-unknown"],
)
def test_a_hostile_json_message_is_refused_and_the_server_lives(message: bytes) -> None:
    with _server() as server:
        with _client(server) as c:
            c.send(message)
            assert "error" in json.loads(c.recv(65536))
        with _client(server) as c:
            c.send(protocol.REQUEST.pack(protocol.OP["hello"], 0, 0, 0, 0, 0, 0, 0, 0, 0))
            assert len(c.recv(65536)) == len(protocol.CONFIG) * 8
        assert server.error is None


def test_a_malformed_binary_message_drops_that_client_only() -> None:
    with _server() as server:
        with _client(server) as bad:
            bad.send(b"\x01" * 10)
            assert bad.recv(100) == b""
        with _client(server) as c:
            c.send(protocol.REQUEST.pack(99, 0, 0, 0, 0, 0, 0, 0, 0, 0))  # an unknown op
            assert protocol.RESPONSE.unpack(c.recv(100))[1] == protocol.ACTION["pass"]
        assert server.error is None


def test_the_server_gone_mid_run_leaves_the_vmm_to_the_kernel(lib: Path, vmm: Path) -> None:
    _kvm_x86()
    with _server() as server:
        env = dict(ENV, LD_PRELOAD=str(lib), KVMSPE_SHIM_SOCKET=server.path)
        proc = subprocess.Popen(
            [str(vmm), "server_gone"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None and proc.stdout.readline() == "set_spu 0 -\n"
        server.close()
        out, err = proc.communicate("go\n", timeout=30)
    assert proc.returncode == 0
    assert out == "set_spu_after -1 ENXIO\n"  # x86's own answer
    assert "lost the model" in err


def test_a_client_that_never_reads_its_answers_does_not_stall_the_others() -> None:
    hello = protocol.REQUEST.pack(protocol.OP["hello"], 0, 0, 0, 0, 0, 0, 0, 0, 0)
    with _server() as server, _client(server) as flood:
        flood.setblocking(False)
        end = time.monotonic() + 2
        while time.monotonic() < end:  # until the server's answers to it fill its queue
            try:
                flood.send(hello)
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:  # the server let it go: as good
                break
        with _client(server) as c:
            c.send(hello)
            assert len(c.recv(65536)) == len(protocol.CONFIG) * 8
        assert server.error is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_run_ended_by_a_signal_ends_the_command_and_leaves_nothing(
    lib: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    tag = f"25.{int(sig)}17"
    env = dict(ENV, TMPDIR=str(tmp_path))
    cmd = [sys.executable, "-m", "kvmspe", "shim", "run", "--lib", str(lib), "--", "sleep", tag]
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 30
        while not _lingering(tag) and time.monotonic() < end:
            time.sleep(0.05)
        assert _lingering(tag), "the command did not start"
        run.send_signal(sig)
        assert run.wait(15) == 128 + int(sig)
    finally:
        run.kill()
        run.wait()
        left = _lingering(tag)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert not left  # the command went with the run
    assert not list(tmp_path.glob("kvmspe-shim-*"))  # and so did the model's socket
