"""kvmspe benchmarks: every figure against a baseline measured in the same run.

Usage: ``python3 bench/run.py [--rounds N] [--calls N] [--json]``

Sections (see bench/README.md for what each figure means):

* ioctl: KVM_HAS/GET/SET_DEVICE_ATTR per call through :mod:`kvmspe.kvm` and
  through a bare ``fcntl.ioctl`` loop, against bench/ioctl_loop.c built with
  the system compiler; C and Python rounds interleaved.
* cli: wall time of ``kvmspe encode 4M`` against ``python3 -c pass``.
* codec: ns per call of the MaxBuffSize codec, and the time to list every size.
* model: the 512 VCPU x 4 GiB model scale (bench/model_scale.py) and the
  conformance suite on the model.

Every figure is the median of N rounds, with min and max; a ratio is the
median of per-round ratios. The machine is assumed noisy: rounds are
interleaved with their baseline so that drift hits both alike.
"""

from __future__ import annotations

import argparse
import array
import fcntl
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
try:
    import kvmspe  # noqa: F401
except ImportError:  # not installed: run from the source tree
    sys.path.insert(0, str(ROOT / "src"))

from kvmspe import abi  # noqa: E402
from kvmspe.arch import maxbuf  # noqa: E402

__all__ = ["Row", "main"]

#: The speed targets each figure is held to.
IOCTL_TARGET = 1.10
#: kvmspe.kvm against a bare fcntl.ioctl on the same VCPU fd: the cost of its Python side.
BARE_TARGET = 1.05
CLI_TARGET = 1.3
#: The fewest rounds a target is judged on.
MIN_ROUNDS = 15

GROUP, ATTR = abi.KVM_VCPU_TSC_CTRL, abi.KVM_VCPU_TSC_OFFSET
CALLS = ("has", "get", "set")


@dataclass
class Row:
    """One figure: samples of one measurement, and optionally its baseline ratio."""

    section: str
    name: str
    unit: str
    samples: list[float] = field(default_factory=list)
    baseline: str | None = None
    ratios: list[float] = field(default_factory=list)
    target: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def met(self) -> bool | None:
        """Whether the target is met: on the ratio where there is a baseline, else on the median."""
        if self.target is None or not self.samples:
            return None
        figure = self.ratio if self.baseline is not None else statistics.median(self.samples)
        return None if figure is None else figure <= self.target

    def as_dict(self) -> dict[str, Any]:
        s = self.samples
        return {
            "section": self.section,
            "name": self.name,
            "unit": self.unit,
            "rounds": len(s),
            "median": statistics.median(s) if s else None,
            "min": min(s) if s else None,
            "max": max(s) if s else None,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "ratio_min": min(self.ratios) if self.ratios else None,
            "ratio_max": max(self.ratios) if self.ratios else None,
            "target": self.target,
            "met": self.met,
            "note": self.note,
        }


def skipped(section: str, name: str, reason: str) -> Row:
    return Row(section, name, "", note=f"not measured: {reason}")


# --- machine --------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, cores, kernel and Python: the line printed above the table."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# --- ioctl: C, bare fcntl.ioctl, kvmspe.kvm ----------------------------------------


def build_c() -> Path:
    """Build bench/ioctl_loop.c with the system compiler into bench/build/."""
    cc = os.environ.get("CC") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (cc) on PATH")
    out = BENCH / "build" / "ioctl_loop"
    out.parent.mkdir(exist_ok=True)
    subprocess.run([cc, "-O2", "-o", str(out), str(BENCH / "ioctl_loop.c")], check=True)
    return out


class CLoop:
    """The C program as a co-process: one line in (a call count), one round out."""

    def __init__(self, exe: Path) -> None:
        self.proc = subprocess.Popen(
            [str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def round(self, calls: int) -> dict[str, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{calls}\n")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"ioctl_loop stopped (exit {self.proc.wait()})")
        words = line.split()
        return {words[i]: float(words[i + 1]) for i in range(0, len(words), 2)}

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


class BareLoop:
    """The same ioctls through fcntl.ioctl, struct and buffers built once: the
    least any Python caller pays per call.

    ``vcpu_fd`` is the VCPU to call (kvmspe's, so that both loops time the very
    same VCPU); without it the loop makes a VM and VCPU of its own."""

    def __init__(self, vcpu_fd: int | None = None) -> None:
        self.owned: list[int] = []
        if vcpu_fd is None:
            kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
            vm = fcntl.ioctl(kvm, abi.KVM_CREATE_VM, 0)
            vcpu_fd = fcntl.ioctl(vm, abi.KVM_CREATE_VCPU, 0)
            self.owned = [vcpu_fd, vm, kvm]
        self.vcpu = vcpu_fd
        self.value = array.array("Q", [0])
        addr = self.value.buffer_info()[0]
        self.attr = bytearray(abi.DEVICE_ATTR.pack(0, GROUP, ATTR, addr))
        fcntl.ioctl(self.vcpu, abi.KVM_GET_DEVICE_ATTR, self.attr)

    def round(self, calls: int) -> dict[str, float]:
        ioctl, fd, da, value = fcntl.ioctl, self.vcpu, self.attr, self.value
        has, get, set_ = abi.KVM_HAS_DEVICE_ATTR, abi.KVM_GET_DEVICE_ATTR, abi.KVM_SET_DEVICE_ATTR
        clock = time.perf_counter_ns
        r = range(calls)
        t0 = clock()
        for _ in r:
            ioctl(fd, has, da)
        t1 = clock()
        for _ in r:
            ioctl(fd, get, da)
            value[0]
        t2 = clock()
        for _ in r:
            ioctl(fd, set_, da)
        t3 = clock()
        return {"has": (t1 - t0) / calls, "get": (t2 - t1) / calls, "set": (t3 - t2) / calls}

    def close(self) -> None:
        for fd in self.owned:
            os.close(fd)


class KvmspeLoop:
    """The same ioctls through the public VCPU methods of kvmspe.kvm."""

    def __init__(self) -> None:
        from kvmspe.kvm import Kvm

        self.kvm = Kvm()
        self.kvm.__enter__()
        self.vm = self.kvm.create_vm()
        self.vcpu = self.vm.create_vcpu(0)
        self.start = self.vcpu.get_device_attr(GROUP, ATTR)

    def round(self, calls: int) -> dict[str, float]:
        vcpu, g, a, v = self.vcpu, GROUP, ATTR, self.start
        has, get, set_ = vcpu.has_device_attr, vcpu.get_device_attr, vcpu.set_device_attr
        clock = time.perf_counter_ns
        r = range(calls)
        t0 = clock()
        for _ in r:
            has(g, a)
        t1 = clock()
        for _ in r:
            get(g, a)
        t2 = clock()
        for _ in r:
            set_(g, a, v)
        t3 = clock()
        return {"has": (t1 - t0) / calls, "get": (t2 - t1) / calls, "set": (t3 - t2) / calls}

    def close(self) -> None:
        self.kvm.__exit__(None, None, None)


def bench_ioctl(rounds: int, calls: int) -> list[Row]:
    """C round, then each Python loop, then C again...; a Python round is
    compared with the mean of the C rounds on either side of it."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return [skipped("ioctl", "KVM_*_DEVICE_ATTR", "/dev/kvm is missing or not usable")]
    try:
        exe = build_c()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        return [skipped("ioctl", "KVM_*_DEVICE_ATTR", f"cannot build bench/ioctl_loop.c: {exc}")]
    # C and Python on one CPU: they take turns, and neither gains from the
    # other CPU's state (on a nested host the cost of a VCPU ioctl differs
    # between CPUs and with migrations).
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(cpus)})
    try:
        return _bench_ioctl(exe, rounds, calls)
    finally:
        os.sched_setaffinity(0, cpus)


def _bench_ioctl(exe: Path, rounds: int, calls: int) -> list[Row]:
    names = {"c": "C ioctl_loop", "bare": "bare fcntl.ioctl", "kvmspe": "kvmspe.kvm Vcpu"}
    c = CLoop(exe)
    notes: dict[str, str] = {}
    kvmspe: KvmspeLoop | None = None
    try:
        kvmspe = KvmspeLoop()
    except ImportError as exc:
        notes["kvmspe"] = f"kvmspe.kvm not available ({exc})"
    except OSError as exc:
        notes["kvmspe"] = f"kvmspe.kvm failed: {exc}"
    # Bare and kvmspe call the same VCPU fd: only the Python side differs.
    loops: dict[str, Any] = {"bare": BareLoop(kvmspe.vcpu.fileno() if kvmspe is not None else None)}
    if kvmspe is not None:
        loops["kvmspe"] = kvmspe
    try:
        # One round of each, discarded: page faults, caches, CPU frequency.
        c.round(calls)
        for loop in loops.values():
            loop.round(calls)
        c_runs = [c.round(calls)]
        py_runs: dict[str, list[dict[str, float]]] = {k: [] for k in loops}
        for _ in range(rounds):
            for key, loop in loops.items():
                py_runs[key].append(loop.round(calls))
            c_runs.append(c.round(calls))
    finally:
        c.close()
        for loop in loops.values():
            loop.close()
    rows: list[Row] = []
    for call in CALLS:
        # C has one more round than Python: it brackets every Python round.
        rows.append(Row("ioctl", f"{names['c']} {call}", "ns/call", [r[call] for r in c_runs[1:]]))
        for key in ("bare", "kvmspe"):
            name = f"{names[key]} {call}"
            if key not in py_runs:
                rows.append(skipped("ioctl", name, notes[key]))
                continue
            samples = [r[call] for r in py_runs[key]]
            ratios = [s / ((c_runs[i][call] + c_runs[i + 1][call]) / 2) for i, s in enumerate(samples)]
            target = IOCTL_TARGET if key == "kvmspe" else None
            note = "reference: the least a Python caller pays" if key == "bare" else ""
            rows.append(Row("ioctl", name, "ns/call", samples, names["c"], ratios, target, note))
        if "kvmspe" in py_runs:
            # Each kvmspe round against the bare round just before it, on the same fd.
            samples = [r[call] for r in py_runs["kvmspe"]]
            ratios = [s / b[call] for s, b in zip(samples, py_runs["bare"], strict=True)]
            name = f"{names['kvmspe']} {call} vs bare"
            rows.append(Row("ioctl", name, "ns/call", samples, names["bare"], ratios, BARE_TARGET))
    return rows


# --- where kvmspe.kvm spends its per-call time ------------------------------------


def _fake_ioctl(fd: int, request: int, arg: object) -> int:
    """A system call that costs nothing: only the Python side is left to time."""
    if request == abi.KVM_CREATE_VM or request == abi.KVM_CREATE_VCPU:
        return os.open(os.devnull, os.O_RDONLY)
    return 0


def _loops(vcpu: Any, fd: int, n: int) -> dict[str, Callable[[], None]]:
    """One loop per piece of per-call work; each runs ``n`` times.

    The pieces are those of the hot path in kvmspe.kvm: a bound method call,
    the check that the struct already names (group, attr), one access to
    the typed view of the value buffer, and the try around the ioctl.
    """
    import ctypes

    fake, has_req = _fake_ioctl, abi.KVM_HAS_DEVICE_ATTR
    buf = bytearray(abi.DEVICE_ATTR.size)
    view = memoryview((ctypes.c_uint64 * 1)()).cast("B").cast("Q")
    g, a, r = GROUP, ATTR, range(n)

    class Empty:
        sel_group, sel_attr = GROUP, ATTR

        def m(self, group: int, attr: int) -> None:
            pass

    holder = Empty()
    method = holder.m
    has, get, set_ = vcpu.has_device_attr, vcpu.get_device_attr, vcpu.set_device_attr

    def empty_loop() -> None:
        for _ in r:
            pass

    def bare() -> None:
        for _ in r:
            fake(fd, has_req, buf)

    def vcpu_has() -> None:
        for _ in r:
            has(g, a)

    def vcpu_get() -> None:
        for _ in r:
            get(g, a)

    def vcpu_set() -> None:
        for _ in r:
            set_(g, a, 5)

    def method_call() -> None:
        for _ in r:
            method(g, a)

    def selection_check() -> None:
        for _ in r:
            if g != holder.sel_group or a != holder.sel_attr:
                pass

    def view_read() -> None:
        for _ in r:
            view[0]

    def view_write() -> None:
        for _ in r:
            view[0] = 5

    def try_around() -> None:
        for _ in r:
            try:
                fake(fd, has_req, buf)
            except OSError:
                pass

    return {
        "empty loop": empty_loop,
        "fake ioctl call": bare,
        "Vcpu.has_device_attr": vcpu_has,
        "Vcpu.get_device_attr": vcpu_get,
        "Vcpu.set_device_attr": vcpu_set,
        "bound method call, 2 args": method_call,
        "same (group, attr) as last call?": selection_check,
        "typed view read (GET)": view_read,
        "typed view write (SET)": view_write,
        "try around the ioctl": try_around,
    }


def bench_kvm_own_work(rounds: int) -> list[Row]:
    """The Python work of each kvmspe.kvm call, with the system call replaced
    by a no-op (``Kvm(ioctl=...)``): each method against a bare loop calling
    the same no-op, and the pieces such a method is made of."""
    try:
        from kvmspe.kvm import Kvm
    except ImportError as exc:
        return [skipped("kvm own work", "kvmspe.kvm own work", f"kvmspe.kvm not available ({exc})")]
    n = 50_000
    with Kvm(os.devnull, ioctl=_fake_ioctl, arch="x86_64") as kvm:
        vcpu = kvm.create_vm().create_vcpu(0)
        loops = _loops(vcpu, vcpu.fd, n)
        runs: dict[str, list[float]] = {name: [] for name in loops}
        for _ in range(rounds + 1):  # the first round is a warm-up
            for name, loop in loops.items():
                t0 = time.perf_counter_ns()
                loop()
                runs[name].append((time.perf_counter_ns() - t0) / n)
    runs = {name: samples[1:] for name, samples in runs.items()}
    empty = runs.pop("empty loop")
    bare = runs.pop("fake ioctl call")
    rows = []
    for name, samples in runs.items():
        # A method, or a piece wrapping the ioctl: beyond a bare call of the
        # same no-op ioctl. Any other piece: beyond the empty loop.
        if name.startswith("Vcpu."):
            base, what = bare, "beyond a bare ioctl call"
        elif name.startswith("try around"):
            base, what = bare, ""
        else:
            base, what = empty, ""
        # Less the base's median, not its same-round sample: two noisy
        # samples subtracted could even go negative.
        own = [s - statistics.median(base) for s in samples]
        rows.append(Row("kvm own work", name, "ns/call", own, note=what))
    return rows


# --- CLI start-up ------------------------------------------------------------------


#: Python as installed by default: it caches bytecode (an environment with
#: PYTHONDONTWRITEBYTECODE set would recompile kvmspe at every start).
CLI_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def wall_ns(argv: list[str]) -> float:
    t0 = time.perf_counter_ns()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=CLI_ENV)
    t1 = time.perf_counter_ns()
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{' '.join(argv[-3:])} exited {done.returncode}: {err[-1] if err else ''}")
    return float(t1 - t0)


def bench_cli(rounds: int) -> list[Row]:
    """python3 -c pass, python3 -m kvmspe encode 4M, kvmspe encode 4M, interleaved.

    Both use this interpreter and the script installed beside it, not a PATH
    shim (pyenv's shims are shell scripts that cost more than Python itself).
    """
    base = [sys.executable, "-c", "pass"]
    script = Path(sysconfig.get_path("scripts")) / "kvmspe"
    cases = {"python3 -m kvmspe encode 4M": [sys.executable, "-m", "kvmspe", "encode", "4M"]}
    rows: list[Row] = []
    if script.exists():
        cases["kvmspe encode 4M"] = [str(script), "encode", "4M"]
    else:
        rows.append(
            skipped("cli", "kvmspe encode 4M", "the kvmspe script is not installed (pip install -e .)")
        )
    runnable: dict[str, list[str]] = {}
    for name, argv in cases.items():
        try:
            wall_ns(argv)  # warm-up, and a check that it works at all
            runnable[name] = argv
        except RuntimeError as exc:
            rows.append(skipped("cli", name, str(exc)))
    wall_ns(base)
    base_runs: list[float] = []
    runs: dict[str, list[float]] = {n: [] for n in runnable}
    for _ in range(rounds):
        base_runs.append(wall_ns(base))
        for name, argv in runnable.items():
            runs[name].append(wall_ns(argv))
    to_ms = 1e-6
    rows.insert(0, Row("cli", "python3 -c pass", "ms", [b * to_ms for b in base_runs]))
    rows.extend(bench_cli_clean(rounds))
    for name, samples in runs.items():
        ratios = [s / b for s, b in zip(samples, base_runs, strict=True)]
        rows.append(
            Row("cli", name, "ms", [s * to_ms for s in samples], "python3 -c pass", ratios, CLI_TARGET)
        )
    return rows


def bench_cli_clean(rounds: int) -> list[Row]:
    """The same from a fresh virtual environment of this interpreter (no
    site-packages, no .pth files; kvmspe found through PYTHONPATH): what a
    machine without extra site-packages sees, whatever this one's site costs."""
    import venv

    env_dir = BENCH / "build" / "clean-venv"
    python = env_dir / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(env_dir)
    env = {**CLI_ENV, "PYTHONPATH": str(ROOT / "src")}
    base = [str(python), "-c", "pass"]
    argv = [str(python), "-m", "kvmspe", "encode", "4M"]

    def wall(cmd: list[str]) -> float:
        t0 = time.perf_counter_ns()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
        return (time.perf_counter_ns() - t0) * 1e-6

    try:
        wall(base), wall(argv)
    except subprocess.CalledProcessError as exc:
        return [skipped("cli", "clean venv: python -m kvmspe encode 4M", f"exited {exc.returncode}")]
    base_runs, runs = [], []
    for _ in range(rounds):
        base_runs.append(wall(base))
        runs.append(wall(argv))
    ratios = [s / b for s, b in zip(runs, base_runs, strict=True)]
    return [
        Row("cli", "clean venv: python -c pass", "ms", base_runs),
        Row(
            "cli",
            "clean venv: python -m kvmspe encode 4M",
            "ms",
            runs,
            "clean venv: python -c pass",
            ratios,
            CLI_TARGET,
        ),
    ]


# --- codec ---------------------------------------------------------------------------


def per_call(fn: Callable[[int], object], inputs: list[int], repeat: int) -> float:
    """ns per call of ``fn`` over ``inputs``, ``repeat`` times over."""
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in range(repeat):
        for x in inputs:
            fn(x)
    return (clock() - t0) / (repeat * len(inputs))


def _noop(x: int) -> int:
    return x


def bench_codec(rounds: int) -> list[Row]:
    """Codec calls over a spread of inputs, against a call of a no-op function
    (the loop and call overhead every row includes)."""
    fields = list(range(0, maxbuf.FIELD_MAX + 1, 17))
    sizes = [maxbuf.decode(f) for f in fields]
    # Any u64 up to LARGEST: mostly not representable, spread over every band.
    arbitrary = [(s * 7 + 12345) % maxbuf.LARGEST for s in sizes]
    repeat = 20
    cases: dict[str, tuple[Callable[[int], object], list[int]]] = {
        "no-op Python call": (_noop, sizes),
        "encode": (maxbuf.encode, sizes),
        "decode": (maxbuf.decode, fields),
        "is_representable": (maxbuf.is_representable, arbitrary),
        "round_down": (maxbuf.round_down, arbitrary),
        "round_up": (maxbuf.round_up, arbitrary),
    }
    runs: dict[str, list[float]] = {n: [] for n in cases}
    listing: list[float] = []
    for _ in range(rounds + 1):  # the first round is a warm-up
        for name, (fn, inputs) in cases.items():
            runs[name].append(per_call(fn, inputs, repeat))
        t0 = time.perf_counter_ns()
        count = sum(1 for _ in maxbuf.sizes())
        listing.append((time.perf_counter_ns() - t0) * 1e-6)
    base = runs.pop("no-op Python call")[1:]
    rows = [Row("codec", "no-op Python call", "ns/call", base)]
    for name, samples in runs.items():
        ratios = [s / b for s, b in zip(samples[1:], base, strict=True)]
        rows.append(Row("codec", name, "ns/call", samples[1:], "no-op Python call", ratios))
    rows.append(Row("codec", f"list every size: sizes() ({count} sizes)", "ms", listing[1:]))
    return rows


# --- model ---------------------------------------------------------------------------


#: Issue target for the model at scale: "well under a second".
MODEL_SCALE_TARGET_MS = 1000.0


def bench_model_scale(rounds: int) -> list[Row]:
    """Rows from bench/model_scale.measure() (seconds), shown in ms."""
    try:
        import model_scale  # type: ignore[import-not-found]
    except ImportError as exc:
        return [skipped("model", "model scale", f"bench/model_scale.py not available ({exc})")]
    rows = []
    for item in model_scale.measure(rounds):
        scale = 1000.0 if item.get("unit") == "s" else 1.0
        unit = "ms" if scale != 1.0 else str(item.get("unit", ""))
        samples = [float(x) * scale for x in item.get("samples", [])]
        if not samples:
            samples = [float(item[k]) * scale for k in ("min", "median", "max") if item.get(k) is not None]
        name = str(item.get("name", "model scale"))
        target = MODEL_SCALE_TARGET_MS if name.startswith("model 512") and unit == "ms" else None
        rows.append(Row("model", name, unit, samples, target=target, note=str(item.get("note", ""))))
    return rows


def bench_conformance(rounds: int) -> list[Row]:
    """Wall time of the whole conformance suite on the model (and, for
    reference, on /dev/kvm, where the cases that need SPE are skipped)."""
    try:
        from kvmspe.conformance import runner as conformance
    except ImportError as exc:
        return [
            skipped(
                "model", "conformance suite on the model", f"kvmspe.conformance.runner not available ({exc})"
            )
        ]
    backends = ["model"]
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        backends.append("kvm")
    rows = []
    for backend in backends:
        samples = []
        for _ in range(rounds + 1):  # the first round is a warm-up
            t0 = time.perf_counter_ns()
            report = conformance.run(backend)
            samples.append((time.perf_counter_ns() - t0) * 1e-6)
        counts = ", ".join(f"{report.count(s)} {s}" for s in ("passed", "failed", "skipped"))
        where = "the model" if backend == "model" else "/dev/kvm"
        rows.append(Row("model", f"conformance suite on {where}", "ms", samples[1:], note=counts))
    return rows


# --- output ---------------------------------------------------------------------------


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def table(rows: Iterable[Row]) -> str:
    header = ("figure", "unit", "median", "min", "max", "ratio", "baseline", "target", "result")
    lines = []
    for row in rows:
        d = row.as_dict()
        result = {True: "met", False: "MISSED", None: ""}[row.met]
        if not row.samples:
            lines.append((row.name, "", "", "", "", "", "", "", row.note))
            continue
        target = (
            (f"<= {row.target:.2f}x" if row.baseline else f"<= {row.target:g} {row.unit}")
            if row.target
            else ""
        )
        ratio = f"{fmt(row.ratio)}x" if row.ratio is not None else ""
        lines.append(
            (
                row.name,
                row.unit,
                fmt(d["median"]),
                fmt(d["min"]),
                fmt(d["max"]),
                ratio,
                row.baseline or "",
                target,
                result + (f" ({row.note})" if row.note else ""),
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=True)]
    out = []
    for i, line in enumerate([header, *lines]):
        cells = [
            str(c).ljust(w) if j in (0, 1, 6, 7, 8) else str(c).rjust(w)
            for j, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="kvmspe benchmarks (see bench/README.md)")
    parser.add_argument(
        "--rounds", type=int, default=21, help="rounds per figure (default 21; targets need >= 15)"
    )
    parser.add_argument("--calls", type=int, default=20000, help="ioctl calls per round (default 20000)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls must be positive integers")
    started = time.perf_counter()
    rows = [
        *bench_ioctl(args.rounds, args.calls),
        *bench_kvm_own_work(args.rounds),
        *bench_cli(args.rounds),
        *bench_codec(args.rounds),
        *bench_model_scale(args.rounds),
        *bench_conformance(args.rounds),
    ]
    elapsed = time.perf_counter() - started
    if args.rounds < MIN_ROUNDS:
        for row in rows:
            if row.target is not None:
                row.note = (row.note + "; " if row.note else "") + f"only {args.rounds} rounds"
    info = machine()
    if args.json:
        json.dump(
            {
                "machine": info,
                "rounds": args.rounds,
                "calls": args.calls,
                "seconds": elapsed,
                "rows": [r.as_dict() for r in rows],
            },
            sys.stdout,
            indent=2,
        )
        print()
        return 0
    print(
        f"{info['cpu']}, {info['cores']} cores, {info['arch']}, Linux {info['kernel']}, "
        f"Python {info['python']}; {args.rounds} rounds, {args.calls} ioctl calls per round, "
        f"{elapsed:.0f} s"
    )
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
