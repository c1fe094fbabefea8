"""The one timer that bounds KVM_RUN: a SIGALRM after a time limit, repeated until the run is over.

An arm64 VCPU without guest code or memory never returns from KVM_RUN by
itself; a signal ends the call (EINTR, KVM_EXIT_INTR). :func:`alarm` is that
signal for every bounded run, the real :meth:`kvmspe.kvm.Vcpu.run` and the
conformance runner's stand-ins alike: ``setitimer`` in the main thread, a
timer thread sending ``pthread_kill`` elsewhere. :func:`run_timer_handler`
gives the threads the Python SIGALRM handler that ``pthread_kill`` needs
(only the main thread can install one), and :class:`RunTimeout` is what a
run ended by the timer raises.
"""

from __future__ import annotations

import errno
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import KvmError

__all__ = ["RUN_TIMEOUT", "RunTimeout", "alarm", "run_timer_handler", "threaded_runs"]

#: A SIGALRM handler: ``handler(signum, frame)``.
Handler = Callable[[int, Any], None]

#: How long :meth:`~kvmspe.kvm.Vcpu.run` lets KVM_RUN take by default (seconds).
RUN_TIMEOUT = 1.0
#: After the first timer signal, how often it is repeated until KVM_RUN has
#: returned (a signal that lands just before the ioctl starts is not lost).
_RUN_TICK = 0.05


class RunTimeout(KvmError):
    """KVM_RUN did not return within its time limit and was ended by a timer
    signal (the kernel then reports KVM_EXIT_INTR). ``errno`` is ETIMEDOUT,
    ``seconds`` the limit. The VCPU did enter the guest."""

    def __init__(self, seconds: float):
        super().__init__(
            errno.ETIMEDOUT,
            f"KVM_RUN did not return within {seconds:g} s and was ended by a timer signal"
            " (a VCPU without guest code or memory never returns by itself)",
            ioctl="KVM_RUN",
        )
        self.seconds = seconds


_NO_HANDLER = (signal.SIG_DFL, signal.SIG_IGN, None)

#: Bounded runs under way in threads other than the main one, each with a
#: timer thread that may still send SIGALRM (see :func:`run_timer_handler`).
_threaded_runs = 0
_threaded_runs_lock = threading.Lock()


def threaded_runs() -> int:
    """How many bounded :meth:`~kvmspe.kvm.Vcpu.run` calls are under way outside the main thread."""
    with _threaded_runs_lock:
        return _threaded_runs


def _on_alarm(signum: int, frame: object) -> None:
    """SIGALRM while KVM_RUN is bounded: nothing to do but interrupt it."""


@contextmanager
def alarm(
    seconds: float, *, thread_directed: bool = False, on_signal: Handler | None = None
) -> Iterator[None]:
    """SIGALRM to this thread after ``seconds``, then every :data:`_RUN_TICK`,
    until the block ends; the previous handler and timer are restored.

    ``thread_directed``: the thread blocks SIGALRM outside KVM_RUN, so the
    signal must go to it alone (``pthread_kill``, from the main thread too:
    ``setitimer`` signals the process, which any other thread may take), and
    it never reaches a handler, so none is needed.

    ``on_signal`` is the handler the main thread's timer installs meanwhile
    (default: one that does nothing, which is enough to interrupt a system
    call; a handler that raises gets a stand-in written in Python out of its
    run). Elsewhere the handler already installed is the one that runs."""
    if threading.current_thread() is threading.main_thread() and not thread_directed:
        previous = signal.signal(signal.SIGALRM, on_signal or _on_alarm)
        old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds, _RUN_TICK)
        start = time.monotonic()
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if old_delay > 0:
                left = max(old_delay - (time.monotonic() - start), 1e-3)
                signal.setitimer(signal.ITIMER_REAL, left, old_interval)
        return
    if not thread_directed and signal.getsignal(signal.SIGALRM) in _NO_HANDLER:
        raise KvmError(
            errno.EINVAL,
            "cannot bound KVM_RUN outside the main thread: SIGALRM has no Python handler"
            " (install one in the main thread, or pass timeout=None)",
            ioctl="KVM_RUN",
        )
    global _threaded_runs
    target = threading.get_ident()
    done = threading.Event()

    def ring() -> None:
        if done.wait(seconds):
            return
        while not done.is_set():
            signal.pthread_kill(target, signal.SIGALRM)
            done.wait(_RUN_TICK)

    ringer = threading.Thread(target=ring, name="kvmspe-run-timer", daemon=True)
    with _threaded_runs_lock:
        _threaded_runs += 1
    try:
        ringer.start()
        yield
    finally:
        done.set()
        if ringer.ident is not None:
            ringer.join()
        with _threaded_runs_lock:
            _threaded_runs -= 1


@contextmanager
def run_timer_handler() -> Iterator[None]:
    """For the block, a Python SIGALRM handler, so that :meth:`~kvmspe.kvm.Vcpu.run` can
    bound KVM_RUN in threads other than the main one (it interrupts them with
    ``pthread_kill``, which needs one; the main thread uses its own timer).

    Called in the main thread where SIGALRM is at its default or ignored, it
    installs a handler that does nothing and puts the old disposition back on
    the way out; a handler already there is left alone. Elsewhere Python
    cannot install handlers, so it does nothing, and a bounded run in another
    thread then refuses as :meth:`~kvmspe.kvm.Vcpu.run` documents. Join the threads that
    run VCPUs before the block ends: if a bounded run is still under way in
    another thread then, the handler it installed stays (it does nothing), as
    putting the default back would let that run's timer signal kill the process.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGALRM)
    if previous not in (signal.SIG_DFL, signal.SIG_IGN):
        yield
        return
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        yield
    finally:
        if threaded_runs() == 0:
            signal.signal(signal.SIGALRM, previous)
