"""Running a command under the shim: the model server, the environment, the SPE units it sees.

:func:`run` starts a :class:`~kvmspe.shim.server.ModelServer`, runs the
command with the shim preloaded and the numbers the series does not publish
in its environment (``KVMSPE_SPE_FEATURE_BIT``, ``KVMSPE_CAP_ARM_SPE``,
``KVMSPE_EXIT_RLIMIT``, which kvmspe's own real backend reads), waits for it
(bounded), and returns its exit status with the transcript.

The SPE units the command sees: the model host's. Run as root, the command
runs in a private mount namespace where ``/sys/bus/event_source/devices``
shows the host's own event sources plus one ``arm_spe_N`` per model SPU
(``type``, ``cpumask``, ``caps/max_buff_size``), so a VMM, kvmspe's discovery
and the C self-test read the SPU ids and limits the model answers for. Not
as root, sysfs is left as it is and :attr:`ShimRun.notes` says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KvmspeError
from ..host.discovery import format_cpulist
from ..model.kernel import Host
from .script import Fault, GuestAction
from .server import ModelServer, Numbers
from .transcript import Entry

__all__ = ["EVENT_SOURCES", "RUN_TIMEOUT", "ShimRun", "ShimRunError", "run", "sysfs_tree"]

EVENT_SOURCES = "/sys/bus/event_source/devices"
#: Seconds the command may run, unless given.
RUN_TIMEOUT = 600.0

_CLONE_NEWNS = 0x00020000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000


class ShimRunError(KvmspeError):
    """The command could not be run under the shim (not found, no mount namespace...)."""


@dataclass
class ShimRun:
    """What a shim run gave: the command's exit status (negative: killed by that
    signal), the transcript, and notes on how the run was set up."""

    status: int
    transcript: list[Entry]
    notes: list[str] = field(default_factory=list)
    timed_out: bool = False


def sysfs_tree(host: Host, root: Path, real: str = EVENT_SOURCES) -> Path:
    """A copy of ``real`` as links, with the model's SPUs as ``arm_spe_N``
    instead of the host's own; returned for a bind mount over ``real``."""
    tree = root / "event_source_devices"
    tree.mkdir()
    try:
        names = sorted(os.listdir(real))
    except OSError:
        names = []
    for name in names:
        if name.startswith("arm_spe_"):
            continue
        target = os.path.realpath(os.path.join(real, name))
        (tree / name).symlink_to(target)
    for i, spu in enumerate(host.spus):
        unit = tree / f"arm_spe_{i}"
        (unit / "caps").mkdir(parents=True)
        (unit / "type").write_text(f"{spu.id}\n")
        (unit / "cpumask").write_text(f"{format_cpulist(spu.cpus)}\n")
        (unit / "caps" / "max_buff_size").write_text(f"{spu.max_buffer_size}\n")
    return tree


def _private_mounts(tree: str) -> str | None:
    """In this process: a private mount namespace with ``tree`` over the event
    sources; what failed (None: done)."""
    libc = ctypes.CDLL(None, use_errno=True)
    private = _MS_REC | _MS_PRIVATE
    calls: tuple[tuple[str, Callable[[], int]], ...] = (
        ("unshare", lambda: int(libc.unshare(_CLONE_NEWNS))),
        ("mount --make-rprivate /", lambda: int(libc.mount(b"none", b"/", None, private, None))),
        (
            f"mount --bind over {EVENT_SOURCES}",
            lambda: int(libc.mount(tree.encode(), EVENT_SOURCES.encode(), None, _MS_BIND, None)),
        ),
    )
    for what, call in calls:
        if call() != 0:
            return f"{what} failed: {os.strerror(ctypes.get_errno())}"
    return None


def _probe(tree: str) -> None:
    """In a throwaway child: whether :func:`_private_mounts` can be done here
    (root in a container often lacks CAP_SYS_ADMIN); exit 0, or 1 saying why."""
    failed = _private_mounts(tree)
    if failed is not None:
        print(failed, flush=True)
    os._exit(0 if failed is None else 1)


def _can_show(tree: Path, env: dict[str, str]) -> str | None:
    """Why the model's SPE units cannot be shown in sysfs (None: they can)."""
    probe = [sys.executable, "-c", _PROBE, str(tree)]
    try:
        done = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no private mount namespace: {exc}"
    if done.returncode == 0:
        return None
    return done.stdout.strip() or done.stderr.strip()[-300:] or f"the probe exited {done.returncode}"


def _enter(tree: str, command: Sequence[str]) -> None:
    """In the child (a fresh Python): a private mount namespace, the tree over
    the event sources, then exec ``command`` with its own environment back.
    Exit 126/127 as a shell does."""
    env = dict(os.environ)
    for name in _HANDED:
        env.pop(name, None)
        handed = env.pop(f"KVMSPE_SHIM_{name}", None)
        if handed is not None:
            env[name] = handed
    failed = _private_mounts(tree)
    if failed is not None:
        print(f"kvmspe shim: {failed}", file=sys.stderr)
        os._exit(126)
    try:
        os.execvpe(command[0], list(command), env)
    except OSError as exc:
        print(f"kvmspe shim: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)


def _environment(lib: Path, server: ModelServer, numbers: Numbers) -> dict[str, str]:
    env = dict(os.environ)
    preload = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{lib}:{preload}" if preload else str(lib)
    env["KVMSPE_SHIM_SOCKET"] = server.path
    for var, value in (
        ("KVMSPE_SPE_FEATURE_BIT", numbers.spe_feature_bit),
        ("KVMSPE_CAP_ARM_SPE", numbers.cap_arm_spe),
        ("KVMSPE_EXIT_RLIMIT", numbers.exit_rlimit),
    ):
        if value is None:
            env.pop(var, None)
        else:
            env[var] = str(value)
    return env


def _with_model_sysfs(
    command: Sequence[str], host: Host, server: ModelServer, env: dict[str, str], notes: list[str]
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that show the command the model's SPE units in
    sysfs (a private mount namespace, root only); the plain command where that cannot be,
    with a note saying why, as it runs for a user that is not root."""
    if os.geteuid() != 0 or not os.path.isdir(EVENT_SOURCES):
        why = "not root" if os.geteuid() != 0 else f"no {EVENT_SOURCES}"
        notes.append(f"{EVENT_SOURCES} is the host's own ({why}): the model's SPE units are not shown there")
        return list(command), env
    tree = sysfs_tree(host, Path(server.path).parent)
    helper = _helper_env(env)
    failed = _can_show(tree, helper)
    if failed is not None:
        notes.append(
            f"{EVENT_SOURCES} is the host's own ({failed}): the model's SPE units are not shown there"
        )
        return list(command), env
    notes.append(f"{EVENT_SOURCES} shows the model's SPE units (a private mount namespace)")
    return [sys.executable, "-c", _ENTER, str(tree), *command], helper


def run(
    command: Sequence[str],
    *,
    lib: Path,
    host: Host,
    numbers: Numbers,
    faults: tuple[Fault, ...] = (),
    guest: tuple[GuestAction, ...] = (),
    timeout: float = RUN_TIMEOUT,
) -> ShimRun:
    """Run ``command`` under the shim ``lib`` with ``host`` as the model
    (a fresh copy per process), and return what it gave."""
    if not command:
        raise ShimRunError("no command to run: give it after --")
    if not lib.is_file():
        raise ShimRunError(f"no shim at {lib}: build it with 'kvmspe shim build' or give --lib")
    lib = lib.resolve()  # LD_PRELOAD takes a bare name for a library search, not a relative path
    if any(c in str(lib) for c in _PRELOAD_SEPARATORS):
        # ld.so splits LD_PRELOAD at these, and has no way to quote them.
        raise ShimRunError(
            f"LD_PRELOAD cannot name {str(lib)!r}: its path holds a space or a colon;"
            " put the shim where the path has neither (kvmspe shim build -o PATH, then --lib PATH)"
        )
    notes: list[str] = []

    def new_host() -> Host:
        return Host(host.page_size, host.spus, None, rules=host.rules, assumptions=host.assumptions)

    with ModelServer(new_host, numbers, faults=faults, guest=guest) as server:
        argv, env = _with_model_sysfs(command, host, server, _environment(lib, server, numbers), notes)
        with _ended_by_signals():
            status, timed_out = _wait(argv, env, timeout)
        if not server.clients:
            notes.append(
                "no process of the command reached the model: it made no KVM call, or the shim was"
                " not loaded (a statically linked program, or LD_PRELOAD refused it: see its stderr)"
            )
        for failure in server.failures:
            notes.append(f"kvmspe's model failed on a call, answered EIO: {failure}")
        if server.error is not None:
            raise ShimRunError(f"the model server failed: {type(server.error).__name__}: {server.error}")
        return ShimRun(status, list(server.transcript), notes, timed_out)


#: What ld.so splits LD_PRELOAD at.
_PRELOAD_SEPARATORS = ": \t\n"
#: The child's first step under a mount namespace (see :func:`_enter`).
_ENTER = "import sys; from kvmspe.shim.launch import _enter; _enter(sys.argv[1], sys.argv[2:])"
#: Whether the helper can set its namespace up (see :func:`_probe`).
_PROBE = "import sys; from kvmspe.shim.launch import _probe; _probe(sys.argv[1])"
#: How the helper hands the command its own LD_PRELOAD and PYTHONPATH.
_HANDED = ("LD_PRELOAD", "PYTHONPATH")


def _helper_env(env: dict[str, str]) -> dict[str, str]:
    """The helper's environment: no shim in itself, kvmspe importable; the
    command's own values of :data:`_HANDED` kept aside for :func:`_enter`."""
    helper = {k: v for k, v in env.items() if k not in _HANDED}
    for name in _HANDED:
        if name in env:
            helper[f"KVMSPE_SHIM_{name}"] = env[name]
    helper["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return helper


def _wait(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, bool]:
    try:
        proc = subprocess.Popen(argv, env=env)
    except OSError as exc:
        # As a shell says it, and as the mount-namespace helper does (:func:`_enter`).
        print(f"kvmspe shim: cannot run {argv[0]!r}: {exc.strerror}", file=sys.stderr)
        return (127 if isinstance(exc, FileNotFoundError) else 126), False
    try:
        return proc.wait(timeout), False
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        proc.wait()
        return -signal.SIGKILL, True
    except BaseException:
        _kill_tree(proc.pid)
        proc.wait()
        raise


@contextlib.contextmanager
def _ended_by_signals() -> Iterator[None]:
    """While the command runs, SIGTERM and SIGHUP end the run as SIGINT does:
    the command's process tree is killed and the model's socket removed (the
    default action would leave both behind), and the run exits 128+N. A
    signal the caller ignores (nohup) stays ignored; only the main thread
    can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ended(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    old = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            old[sig] = signal.signal(sig, ended)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _parents() -> dict[int, int]:
    """Every process's parent, from ``/proc/PID/stat`` (the field after the
    parenthesised command name, which may itself hold spaces and parentheses)."""
    parents = {}
    for name in os.listdir("/proc"):
        if not name.isdecimal():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            parents[int(name)] = int(fields[1])
    return parents


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process descended from it. Each is stopped
    first, so that none forks or is reparented while the tree is gathered;
    a child left behind would outlive the run and hold its output open."""
    stopped: set[int] = set()
    gone: set[int] = set()  # ended meanwhile, or not ours to signal (a setuid program)
    frontier = [pid]
    while frontier:
        for p in frontier:
            try:
                os.kill(p, signal.SIGSTOP)
            except OSError:
                gone.add(p)
            else:
                stopped.add(p)
        parents = _parents()
        frontier = [c for c, up in parents.items() if up in stopped and c not in stopped | gone]
    for p in stopped:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
