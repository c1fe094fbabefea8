"""``kvmspe status`` against real processes of this machine that hold KVM VMs and locked memory.

The tests share child processes (a module fixture) that open ``/dev/kvm``,
create a VM (KVM_CREATE_VM) and VCPUs (KVM_CREATE_VCPU), set their
RLIMIT_MEMLOCK and ``mlock`` a known number of bytes, so their VmLck is
known exactly: one near its limit (64 KiB of headroom under a 1 MiB soft
limit), one far from it (3.5 MiB under 4 MiB), and one that stays root. The first two give
themselves to the user nobody (and stay dumpable), so an inspector running as
nobody may read their fds but not the root one's: that is the process "the
caller cannot inspect", measured by the kernel's own permission check on
``/proc/PID/fd``. Every child ends itself after 300 s at the latest (an
alarm) and is killed if the test process dies (PR_SET_PDEATHSIG), ends
at once when its stdin closes, and is reaped by the fixture.
The tests need /dev/kvm (else they skip, saying so); those with the
nobody inspector also need root to make the children.
"""

from __future__ import annotations

import functools
import json
import os
import re
import resource
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_cli import assert_bad_input, kvmspe

from kvmspe import metrics, prometheus
from kvmspe.host import kvmprocs, memlock
from kvmspe.status import Threshold, parse_threshold, report

ROOT = Path(__file__).resolve().parent.parent
KiB, MiB = 1 << 10, 1 << 20
NOBODY = 65534
TIMEOUT = 60

_CHILD = textwrap.dedent(
    """
    import ctypes, fcntl, mmap, os, resource, signal, sys
    name, vcpus, lock, soft, hard, drop = sys.argv[1:]
    signal.alarm(300)  # bounded whatever happens to the parent
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME: /proc/PID/comm
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = fcntl.ioctl(kvm, 0xAE01, 0)  # KVM_CREATE_VM
    fds = [fcntl.ioctl(vm, 0xAE41, i) for i in range(int(vcpus))]  # KVM_CREATE_VCPU
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (int(soft), int(hard)))
    if drop == "1":
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: a uid change clears it, which hides /proc/PID/fd
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG, after the uid change (which clears it)
    if os.getppid() == 1:
        sys.exit("the parent is gone")
    buf = mmap.mmap(-1, max(int(lock), 4096))
    if int(lock):
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        if libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(int(lock))) != 0:
            sys.exit("mlock: " + os.strerror(ctypes.get_errno()))
    print("ready", flush=True)
    sys.stdin.read()
    """
)


@dataclass(frozen=True)
class Child:
    """A child holding one VM with ``vcpus`` VCPUs and ``locked`` bytes mlocked."""

    pid: int
    name: str
    vcpus: int
    locked: int
    soft: int
    hard: int
    uid: int


def _need_kvm() -> None:
    if not os.path.exists("/dev/kvm"):
        pytest.skip("no /dev/kvm on this machine: the children cannot create KVM VMs")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is not readable and writable by this user: the children cannot create VMs")


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: a child the caller cannot inspect is made by staying root while it drops")


def _start(name: str, vcpus: int, locked: int, soft: int, hard: int, drop: bool) -> subprocess.Popen[str]:
    args = [name, str(vcpus), str(locked), str(soft), str(hard), "1" if drop else "0"]
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _reap(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def children() -> Iterator[dict[str, Child]]:
    """near (64 KiB of headroom), far (3.5 MiB) and, as root, root (not inspectable by nobody)."""
    _need_kvm()
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    if hard != resource.RLIM_INFINITY and hard < 8 * MiB:
        pytest.skip(f"the hard RLIMIT_MEMLOCK here is {hard} bytes: the children need 8 MiB")
    drop = os.geteuid() == 0
    specs = {
        "near": ("vmm-near", 2, 960 * KiB, 1 * MiB, 1 * MiB, drop),
        "far": ("vmm-far", 4, 512 * KiB, 4 * MiB, 8 * MiB, drop),
    }
    if drop:
        specs["root"] = ("vmm-root", 1, 256 * KiB, 2 * MiB, 2 * MiB, False)
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for key, spec in specs.items():
            procs[key] = _start(*spec)
        found: dict[str, Child] = {}
        for key, proc in procs.items():
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line != "ready\n":
                _reap(proc)
                assert proc.stderr is not None
                pytest.fail(f"child {key} did not start: {line!r} {proc.stderr.read()!r}")
            name, vcpus, locked, soft, hard, dropped = specs[key]
            found[key] = Child(proc.pid, name, vcpus, locked, soft, hard, NOBODY if dropped else os.geteuid())
        yield found
    finally:
        for proc in procs.values():
            _reap(proc)


def _as_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@functools.cache
def nobodys_python() -> str:
    """A Python 3.11+ that nobody may run (this one may sit in root's home), else a skip."""
    for candidate in dict.fromkeys([sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"]):
        try:
            done = subprocess.run(
                [candidate, "-c", "import sys, kvmspe; sys.exit(sys.version_info < (3, 11))"],
                capture_output=True,
                timeout=TIMEOUT,
                cwd="/",
                env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                preexec_fn=_as_nobody,
            )
        except OSError:
            continue
        if done.returncode == 0:
            return candidate
    pytest.skip("no Python 3.11+ here that the user nobody may run with this checkout")


def run(*args: str, nobody: bool = False) -> subprocess.CompletedProcess[str]:
    """``kvmspe ARGS`` from this checkout, as this user or as nobody."""
    if not nobody:
        return kvmspe(*args)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [nobodys_python(), "-m", "kvmspe", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        cwd="/",
        preexec_fn=_as_nobody,
    )


def pid_args(*kids: Child) -> list[str]:
    return [a for k in kids for a in ("--pid", str(k.pid))]


# --- the library, on the real children ---------------------------------------------------------------


def test_scan_counts_each_childs_vm_and_vcpus_and_reads_its_vmlck_and_limits(
    children: dict[str, Child],
) -> None:
    found = {p.pid: p for p in kvmprocs.scan(k.pid for k in children.values()).processes}
    for k in children.values():
        p = found[k.pid]
        assert p.command == k.name
        assert (p.fds.vms, p.fds.vcpus, p.fds.dev_kvm) == (1, k.vcpus, 1)
        assert p.memlock == memlock.MemlockStatus(k.pid, k.soft, k.hard, k.locked)


def test_scan_of_the_whole_host_finds_every_child(children: dict[str, Child]) -> None:
    pids = {p.pid for p in kvmprocs.scan().processes}
    assert {k.pid for k in children.values()} <= pids


def test_report_puts_the_near_child_past_the_threshold_and_the_far_one_not(
    children: dict[str, Child],
) -> None:
    near, far = children["near"], children["far"]
    rep = report(kvmprocs.scan([near.pid, far.pid]), Threshold(percent=10))
    by_pid = {s.process.pid: s for s in rep.processes}
    assert by_pid[near.pid].headroom == 64 * KiB
    assert by_pid[near.pid].threshold_bytes == MiB // 10
    assert by_pid[near.pid].past_threshold
    assert by_pid[far.pid].headroom == 4 * MiB - 512 * KiB
    assert not by_pid[far.pid].past_threshold
    assert [s.process.pid for s in rep.past_threshold] == [near.pid]
    # A byte threshold: 32 KiB is below the near child's 64 KiB of headroom.
    assert not report(kvmprocs.scan([near.pid]), Threshold(nbytes=32 * KiB)).past_threshold


def test_a_pid_without_kvm_fds_is_reported_and_a_missing_pid_refused() -> None:
    scan = kvmprocs.scan([os.getpid()])
    assert scan.processes == [] and scan.without_kvm == [os.getpid()]
    with pytest.raises(ProcessLookupError, match="no process"):
        kvmprocs.scan([(1 << 31) - 1])


def test_link_targets_are_classified_as_the_kernel_names_them() -> None:
    assert kvmprocs.classify_link("anon_inode:kvm-vm") == "vm"
    assert kvmprocs.classify_link("anon_inode:kvm-vcpu:17") == "vcpu"
    assert kvmprocs.classify_link("anon_inode:kvm-arm-vgic-v3") == "other"
    assert kvmprocs.classify_link("/dev/kvm") == "dev_kvm"
    assert kvmprocs.classify_link("anon_inode:[eventfd]") is None
    assert kvmprocs.classify_link("/dev/kvm (deleted)") is None


# --- the command line ----------------------------------------------------------------------------------


def test_human_output_shows_each_child_and_exits_1_for_the_near_one(children: dict[str, Child]) -> None:
    near, far = children["near"], children["far"]
    r = run("status", *pid_args(near, far))
    assert r.returncode == 1, r.stderr
    assert r.stderr == ""
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.startswith("  ")}
    assert rows[str(near.pid)][1:6] == ["vmm-near", "1", "2", "960", "KiB"]
    assert rows[str(far.pid)][1:6] == ["vmm-far", "1", "4", "512", "KiB"]
    warning = f"warning: pid {near.pid} (vmm-near): headroom 64 KiB is below 10% of its 1 MiB soft limit;"
    assert warning in r.stdout
    assert f"warning: pid {far.pid}" not in r.stdout
    assert r.stdout.splitlines()[-1] == f"answer: 1 process is past the threshold (pid {near.pid})"


def test_the_far_child_alone_exits_0_and_a_size_threshold_is_honoured(children: dict[str, Child]) -> None:
    near, far = children["near"], children["far"]
    assert run("status", *pid_args(far)).returncode == 0
    assert run("status", *pid_args(near), "--warn-below", "32K").returncode == 0
    assert run("status", *pid_args(near), "--warn-below", "65K").returncode == 1
    assert run("status", *pid_args(far), "--warn-below", "90%").returncode == 1


def test_json_has_the_documented_keys_and_the_childrens_figures(children: dict[str, Child]) -> None:
    near, far = children["near"], children["far"]
    r = run("status", *pid_args(near, far), "--json")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert list(doc) == [
        "warn_below",
        "scanned",
        "processes",
        "past_threshold",
        "uninspectable",
        "without_kvm",
    ]
    assert doc["warn_below"] == {"bytes": None, "percent": 10.0}
    assert doc["past_threshold"] == [near.pid]
    got = {p["pid"]: p for p in doc["processes"]}
    assert got[near.pid] == {
        "pid": near.pid,
        "command": "vmm-near",
        "vms": 1,
        "vcpus": 2,
        "dev_kvm": 1,
        "other_kvm_fds": 0,
        "vm_lck": 960 * KiB,
        "memlock_soft": MiB,
        "memlock_hard": MiB,
        "unlimited": False,
        "headroom": 64 * KiB,
        "headroom_percent": 6.25,
        "threshold_bytes": MiB // 10,
        "past_threshold": True,
        "problem": None,
    }
    assert got[far.pid]["headroom"] == 3584 * KiB and got[far.pid]["past_threshold"] is False


def _samples(text: str) -> dict[tuple[str, str], float]:
    """(metric name, pid label) -> value, parsed by the Prometheus client library."""
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, s.labels.get("pid", ""))] = s.value
    return out


def test_prometheus_text_parses_and_carries_the_childrens_figures(children: dict[str, Child]) -> None:
    near, far = children["near"], children["far"]
    r = run("status", *pid_args(near, far), "--prometheus")
    assert r.returncode == 1, r.stderr
    names = [f.name for f in text_string_to_metric_families(r.stdout)]
    assert set(names) >= set(metrics.STATUS_METRICS)
    got = _samples(r.stdout)
    for k, pinned in ((near, 960 * KiB), (far, 512 * KiB)):
        p = str(k.pid)
        assert got[("kvmspe_locked_memory_bytes", p)] == pinned
        assert got[("kvmspe_vms", p)] == 1
        assert got[("kvmspe_vcpus", p)] == k.vcpus
        assert got[("kvmspe_memlock_soft_limit_bytes", p)] == k.soft
        assert got[("kvmspe_memlock_hard_limit_bytes", p)] == k.hard
        assert got[("kvmspe_memlock_headroom_bytes", p)] == k.soft - pinned
    assert got[("kvmspe_memlock_past_threshold", str(near.pid))] == 1
    assert got[("kvmspe_memlock_past_threshold", str(far.pid))] == 0
    assert got[("kvmspe_processes_scanned", "")] == 2
    for line in r.stdout.splitlines():
        if line.startswith("kvmspe_vms{"):
            assert re.fullmatch(r'kvmspe_vms\{pid="\d+",command="vmm-(near|far)"\} 1', line), line


def test_as_nobody_the_root_child_is_listed_as_not_inspectable(children: dict[str, Child]) -> None:
    """The kernel refuses nobody /proc/PID/fd of a root process: status lists it, it does not drop it."""
    _need_root()
    near, far, root = children["near"], children["far"], children["root"]
    r = run("status", *pid_args(near, far, root), nobody=True)
    assert r.returncode == 1, r.stderr
    assert f"not inspected, /proc/PID/fd unreadable (Permission denied): {root.pid} (vmm-root)" in r.stdout
    assert f"{near.pid}  vmm-near" in r.stdout
    doc = json.loads(run("status", *pid_args(near, far, root), "--json", nobody=True).stdout)
    assert doc["uninspectable"] == [{"pid": root.pid, "command": "vmm-root", "reason": "Permission denied"}]
    assert {p["pid"] for p in doc["processes"]} == {near.pid, far.pid}
    prom = run("status", *pid_args(near, far, root), "--prometheus", nobody=True).stdout
    assert _samples(prom)[("kvmspe_processes_uninspectable", "")] == 1
    # Root, by contrast, sees into all three.
    doc = json.loads(run("status", *pid_args(near, far, root), "--json").stdout)
    assert doc["uninspectable"] == [] and len(doc["processes"]) == 3


def test_whole_host_scan_as_nobody_lists_what_it_cannot_see(children: dict[str, Child]) -> None:
    _need_root()
    doc = json.loads(run("status", "--json", nobody=True).stdout)
    assert children["root"].pid in {u["pid"] for u in doc["uninspectable"]}
    assert {children["near"].pid, children["far"].pid} <= {p["pid"] for p in doc["processes"]}


# --- the textfile ------------------------------------------------------------------------------------


def test_textfile_is_written_whole_by_rename_and_leaves_nothing_else(
    children: dict[str, Child], tmp_path: Path
) -> None:
    near, far = children["near"], children["far"]
    target = tmp_path / "kvmspe.prom"
    target.write_text("# old\n")
    before = target.stat().st_ino
    with open(target) as old_reader:
        r = run("status", *pid_args(near, far), "--textfile", str(tmp_path))
        # The old file was replaced, not rewritten: an open reader still sees it whole.
        assert old_reader.read() == "# old\n"
    assert r.returncode == 1, r.stderr
    assert r.stdout.splitlines()[-1] == f"wrote {target}"
    assert target.stat().st_ino != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kvmspe.prom"]
    got = _samples(target.read_text())
    assert got[("kvmspe_locked_memory_bytes", str(near.pid))] == 960 * KiB


def test_a_reader_never_sees_half_a_textfile(children: dict[str, Child], tmp_path: Path) -> None:
    """Five writes while a thread reads the file without pause: every read parses whole."""
    far = children["far"]
    target = tmp_path / "kvmspe.prom"
    stop = threading.Event()
    reads: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                reads.append(target.read_text())
            except FileNotFoundError:
                pass

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(5):
            assert run("status", *pid_args(far), "--textfile", str(tmp_path)).returncode == 0
    finally:
        stop.set()
        t.join(timeout=TIMEOUT)
    assert reads
    for text in reads:
        last = "kvmspe_memlock_past_threshold{" + f'pid="{far.pid}",command="vmm-far"' + "} 0\n"
        assert text.endswith(last)
        list(text_string_to_metric_families(text))


def test_textfile_goes_with_json_and_with_prometheus_on_stdout(
    children: dict[str, Child], tmp_path: Path
) -> None:
    far = children["far"]
    target = tmp_path / "kvmspe.prom"
    r = run("status", *pid_args(far), "--json", "--textfile", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["textfile"] == str(target)
    r = run("status", *pid_args(far), "--prometheus", "--textfile", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout == target.read_text()  # the same exposition text, and no "wrote" line in it
    assert _samples(r.stdout)[("kvmspe_vcpus", str(far.pid))] == 4


def test_textfile_needs_a_directory_and_a_fifo_target_is_refused(tmp_path: Path) -> None:
    assert_bad_input(run("status", "--textfile", str(tmp_path / "missing")), "is not a directory")
    os.mkfifo(tmp_path / "kvmspe.prom")
    assert_bad_input(run("status", "--textfile", str(tmp_path)), "is not a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kvmspe.prom"]


# --- bad input and odd outputs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--warn-below", "101%"], "above 100%"),
        (["--warn-below", "-1%"], "not a percentage"),
        (["--warn-below", "1.5M"], "fractions are not accepted"),
        (["--warn-below", "ten"], "or a percentage"),
        (["--pid", "0"], "smaller than 1"),
        (["--pid", "2147483647"], "no process 2147483647"),
        (["--json", "--prometheus"], "one output format"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    assert_bad_input(run("status", *args), needle)


def test_thresholds_parse_as_documented() -> None:
    assert parse_threshold("10%") == Threshold(percent=10.0)
    assert parse_threshold(" 2.5% ") == Threshold(percent=2.5)
    assert parse_threshold("64M") == Threshold(nbytes=64 * MiB)
    assert parse_threshold("0") == Threshold(nbytes=0)
    for bad in ("", "%", "1e3%", "0x10%", "10 %x", "100.5%"):
        with pytest.raises(ValueError):
            parse_threshold(bad)


@pytest.mark.parametrize("fmt", [[], ["--json"], ["--prometheus"]])
def test_closed_stdout_a_full_device_and_an_early_reader_give_no_traceback(
    children: dict[str, Child], fmt: list[str]
) -> None:
    args = ["status", *pid_args(children["far"]), *fmt]
    script = 'python3 -m kvmspe "$@" >&-; echo "closed $?" >&2; python3 -m kvmspe "$@" >/dev/full'
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run(["bash", "-c", script, "kvmspe", *args], capture_output=True, text=True, env=env)
    assert "Traceback" not in r.stderr
    # The CLI's convention (docs/cli.md): a lost answer is one line and exit 2.
    assert "closed 2" in r.stderr
    assert r.returncode == 2 and "No space left on device" in r.stderr.splitlines()[-1]
    early = 'python3 -m kvmspe "$@" | head -c1 >/dev/null; echo "rc ${PIPESTATUS[0]}"'
    head = subprocess.run(["bash", "-c", early, "x", *args], capture_output=True, text=True, env=env)
    assert (head.stdout, head.stderr) == ("rc 0\n", "")


# --- the exposition format itself -----------------------------------------------------------------------


def test_label_values_and_help_are_escaped_as_the_format_says() -> None:
    fam = prometheus.MetricFamily("kvmspe_test", "help with \\ and\nnewline")
    fam.add(1, [("command", 'a"b\\c\nd')])
    fam.add(float("inf"), [("command", "é")])
    text = prometheus.render([fam])
    assert text.splitlines()[0] == "# HELP kvmspe_test help with \\\\ and\\nnewline"
    assert 'kvmspe_test{command="a\\"b\\\\c\\nd"} 1' in text
    parsed = list(text_string_to_metric_families(text))
    assert parsed[0].documentation == "help with \\ and\nnewline"
    assert [s.labels["command"] for s in parsed[0].samples] == ['a"b\\c\nd', "é"]
    assert parsed[0].samples[1].value == float("inf")


def test_bad_metric_and_label_names_are_refused() -> None:
    with pytest.raises(ValueError, match="metric name"):
        prometheus.MetricFamily("1abc", "x")
    with pytest.raises(ValueError, match="metric type"):
        prometheus.MetricFamily("abc", "x", "histogram")
    fam = prometheus.MetricFamily("abc", "x")
    for bad in ("a-b", "__x", ""):
        with pytest.raises(ValueError):
            fam.add(1, [(bad, "v")])


def test_a_process_named_with_quotes_and_non_ascii_bytes_is_scanned_and_escaped() -> None:
    """A name is any bytes but NUL: the scan reads it, the exposition escapes it, the parser gets it back."""
    _need_kvm()
    proc = _start('q"\\é', 1, 0, 4 * MiB, 4 * MiB, False)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        r = run("status", "--pid", str(proc.pid), "--prometheus")
        assert r.returncode == 0, r.stderr
        fams = {f.name: f for f in text_string_to_metric_families(r.stdout)}
        assert fams["kvmspe_vms"].samples[0].labels["command"] == 'q"\\é'
        assert run("status", "--pid", str(proc.pid)).returncode == 0
    finally:
        _reap(proc)


def test_probe_prometheus_on_the_fixture_parses_with_each_unit() -> None:
    r = run("probe", "--fixture", "arm64-big-little", "--prometheus")
    assert r.returncode == 1, r.stderr  # the fixture's KVM is this machine's: no SPE
    fams = {f.name: f for f in text_string_to_metric_families(r.stdout)}
    assert set(fams) == set(metrics.PROBE_METRICS)
    cpus = {s.labels["unit"]: s.value for s in fams["kvmspe_spe_unit_cpus"].samples}
    assert cpus == {"arm_spe_0": 4, "arm_spe_1": 4}
    limits = {s.labels["unit"]: s.value for s in fams["kvmspe_spe_unit_max_buffer_size_bytes"].samples}
    assert limits == {"arm_spe_1": 4 * MiB}
    assert fams["kvmspe_spe_units"].samples[0].value == 2


# --- the examples of docs/cli.md ---------------------------------------------------------------------

#: The pids docs/cli.md shows for the children near, far and root.
DOC_PIDS = {"near": 41001, "far": 41002, "root": 41003}


def _doc_blocks() -> list[list[tuple[str, list[str], int]]]:
    """The console blocks of docs/cli.md that say this file checks them: (command, output, status)."""
    lines = (ROOT / "docs" / "cli.md").read_text().splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if "tests/test_status.py" not in line or not line.startswith("<!-- not replayed:"):
            continue
        assert lines[i + 1] == "```console"
        end = lines.index("```", i + 2)
        examples: list[tuple[str, list[str], int]] = []
        for text in lines[i + 2 : end]:
            if text.startswith("$ "):
                examples.append((text[2:], [], 0))
            elif text:
                examples[-1][1].append(text)
        for n, (command, out, _) in enumerate(examples):
            m = re.fullmatch(r"\[exit status (\d+)\]", out[-1]) if out else None
            if m:
                examples[n] = (command, out[:-1], int(m.group(1)))
        blocks.append(examples)
    return blocks


def test_docs_show_two_blocks_checked_here() -> None:
    blocks = _doc_blocks()
    assert [[c.split()[1] for c, _, _ in b] for b in blocks] == [["status"] * 3, ["probe"]]


def test_the_status_block_of_the_docs_is_what_the_three_children_give(children: dict[str, Child]) -> None:
    _need_root()
    real = {str(DOC_PIDS[k]): str(children[k].pid) for k in DOC_PIDS}
    for n, (command, shown, status) in enumerate(_doc_blocks()[0]):
        argv = [real.get(w, w) for w in command.split()[1:]]
        # The first example is run by an unprivileged caller, as the page says.
        r = run(*argv, nobody=n == 0)
        got = r.stdout
        for doc_pid, pid in real.items():
            got = re.sub(rf"\b{pid}\b", doc_pid, got)
        # Pids of other widths shift the table's columns: compare words, line by line.
        assert [line.split() for line in got.splitlines()] == [line.split() for line in shown], command
        assert r.returncode == status, command


def test_the_probe_block_of_the_docs_is_what_this_kind_of_host_gives() -> None:
    [(command, shown, status)] = _doc_blocks()[1]
    if os.uname().machine != "x86_64" or os.sysconf("SC_PAGE_SIZE") != 4096:
        pytest.skip("the page shows an x86_64 host with 4 KiB pages")
    _need_kvm()
    r = run(*command.split()[1:])
    assert (r.stdout.splitlines(), r.returncode) == (shown, status)


def test_probe_textfile_is_its_own_file_next_to_status(tmp_path: Path) -> None:
    """probe and status write different files, so one does not replace the other's metrics."""
    r = run("probe", "--fixture", "arm64-big-little", "--textfile", str(tmp_path))
    assert r.returncode == 1, r.stderr
    assert r.stdout.splitlines()[-1] == f"wrote {tmp_path / 'kvmspe-probe.prom'}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kvmspe-probe.prom"]
    fams = {f.name for f in text_string_to_metric_families((tmp_path / "kvmspe-probe.prom").read_text())}
    assert fams == set(metrics.PROBE_METRICS)


def test_plan_prometheus_parses_and_matches_the_plans_json() -> None:
    args = ("plan", "--profile", "big-little", "--spu", "11", "--vcpus", "4")
    doc = json.loads(run(*args, "--json").stdout)
    r = run(*args, "--prometheus")
    assert r.returncode == 0, r.stderr
    fams = {f.name: f for f in text_string_to_metric_families(r.stdout)}
    assert set(fams) == set(metrics.PLAN_METRICS)
    [size] = fams["kvmspe_plan_max_buffer_size_bytes"].samples
    assert size.value == doc["size"] and size.labels == {"vcpus": "4", "spu": "11"}
    pinned = {s.labels["case"]: s.value for s in fams["kvmspe_plan_pinned_bytes"].samples}
    assert pinned == {case: doc["pinned"][case]["per_vm"] for case in ("best", "typical", "worst")}
    [limit] = fams["kvmspe_plan_memlock_limit_bytes"].samples
    assert (limit.value, limit.labels["case"]) == (doc["memlock_limit"], "worst")
    unlimited = run("plan", "--profile", "default-4k", "--max-buffer-size", "max", "--prometheus").stdout
    [limit] = next(
        f for f in text_string_to_metric_families(unlimited) if f.name.endswith("limit_bytes")
    ).samples
    assert limit.value == float("inf")


def test_report_of_unlimited_lowered_and_unreadable_limits() -> None:
    """Limits no child here can have (this process may not raise a hard limit): built as data."""
    fds = kvmprocs.KvmFds(vms=1, vcpus=1, dev_kvm=1)
    scan = kvmprocs.KvmScan(
        processes=[
            kvmprocs.KvmProcess(10, "unlimited", fds, memlock.MemlockStatus(10, None, None, 64 * MiB)),
            kvmprocs.KvmProcess(11, "lowered", fds, memlock.MemlockStatus(11, MiB, MiB, 2 * MiB)),
            kvmprocs.KvmProcess(12, "unread", fds, None, "cannot read its RLIMIT_MEMLOCK and VmLck: x"),
        ],
        scanned=3,
    )
    rep = report(scan, Threshold(nbytes=0))
    by = {s.process.command: s for s in rep.processes}
    assert (by["unlimited"].headroom, by["unlimited"].past_threshold) == (None, False)
    assert (by["lowered"].headroom, by["lowered"].past_threshold) == (-MiB, True)
    assert (by["unread"].headroom, by["unread"].past_threshold) == (None, False)
    assert [s.process.pid for s in rep.past_threshold] == [11]
    fams = {
        f.name: f for f in text_string_to_metric_families(prometheus.render(metrics.status_families(rep)))
    }
    headroom = {s.labels["pid"]: s.value for s in fams["kvmspe_memlock_headroom_bytes"].samples}
    assert headroom == {"10": float("inf"), "11": -MiB}  # nothing for the unreadable one
    assert {s.labels["pid"] for s in fams["kvmspe_vms"].samples} == {"10", "11", "12"}
