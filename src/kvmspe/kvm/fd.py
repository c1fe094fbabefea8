"""Owning a descriptor: what every object of the real backend that holds an fd shares.

:class:`Owned` is the base of :class:`~kvmspe.kvm.Kvm`, :class:`~kvmspe.kvm.Vm`,
:class:`~kvmspe.kvm.Vcpu` and :class:`~kvmspe.kvm.Device`: ``close()``,
``with``, ``fileno()`` (so ``select`` and friends take the object itself), a
:class:`~kvmspe.errors.ClosedError` for any call once closed, and a
ResourceWarning when one is dropped unclosed. Beside it, the one way an
ioctl is issued (:data:`IoctlFn`, retried on EINTR by :func:`retry`) and the
one way its errno becomes a :class:`~kvmspe.errors.KvmError` (:func:`fail`).
"""

from __future__ import annotations

import errno
import os
import warnings
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from ..errors import ClosedError, KvmError

__all__ = ["IOCTL_INT_MAX", "IoctlFn", "Owned", "closed_ioctl", "fail", "retry"]

#: ``ioctl(fd, request, arg) -> int``, ``arg`` an int or a mutable buffer
#: that the call may write (``fcntl.ioctl`` with ``mutate_flag=True``).
IoctlFn = Callable[[int, int, Any], int]

#: The largest number ``fcntl.ioctl`` passes as an integer argument (a C int).
IOCTL_INT_MAX = (1 << 31) - 1


def _close_dropped(fd: int, what: str) -> None:
    """Close the descriptor of an object collected without ``close()``, and say so
    with a ResourceWarning, as Python's own files do."""
    warnings.warn(f"unclosed {what} (fd {fd}): call close() or use 'with'", ResourceWarning, stacklevel=1)
    try:
        os.close(fd)
    except OSError:
        pass


def closed_ioctl(fd: int, request: int, arg: Any) -> int:
    """What a closed VCPU calls instead of ``ioctl``: no system call, the refusal
    ``fcntl.ioctl`` gives the descriptor -1 of a closed object."""
    raise ValueError("the object has been closed")


class Owned:
    """Something that owns one file descriptor (and maybe children that own
    theirs): ``with`` closes it on the way out, and so does the garbage
    collector, with a ResourceWarning, when it is dropped unclosed.

    Closing marks the object closed and forgets its descriptor *before*
    ``os.close``: a signal arriving in between can at worst leak the
    descriptor, never let a later ``close()`` close a number the process
    has reused for something else.
    """

    fd: int
    closed: bool
    _finalizer: weakref.finalize[..., Any] | None = None

    def _own(self, fd: int, what: str) -> None:
        """Take ownership of ``fd``: it is closed when this object is collected unclosed."""
        self.fd = fd
        self.closed = False
        finalizer = weakref.finalize(self, _close_dropped, fd, what)
        # At interpreter exit the system closes every descriptor: no warning then.
        finalizer.atexit = False
        self._finalizer = finalizer

    def _close_fd(self) -> None:
        """Close this object's own descriptor, once, whatever interrupts it."""
        if self.closed:
            return
        fd = self.fd
        if self._finalizer is not None:
            self._finalizer.detach()  # idempotent: a retried close() passes here again
        self.closed = True
        self.fd = -1
        os.close(fd)

    def _check_open(self, call: str) -> None:
        """Refuse any call once closed, before anything is checked or issued."""
        if self.closed:
            raise ClosedError(type(self).__name__, call)

    def fileno(self) -> int:
        """The descriptor, as Python's files give theirs: ``select``, ``os.fstat(x.fileno())``
        and friends take the object. Once closed, :class:`~kvmspe.errors.ClosedError`."""
        if self.closed:
            raise ClosedError(type(self).__name__, "fileno")
        return self.fd

    def close(self) -> None:
        """Close the descriptor (and the children's first); each subclass says which."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def retry(ioctl: IoctlFn, fd: int, request: int, arg: Any) -> int:
    """One ioctl, repeated while it is interrupted by a signal."""
    while True:
        try:
            return ioctl(fd, request, arg)
        except InterruptedError:
            continue


def fail(exc: OSError, name: str, text: str | None = None) -> KvmError:
    """The :class:`KvmError` of a failed ioctl ``name``: its errno, and ``text`` or the errno's words."""
    code = exc.errno or errno.EIO
    return KvmError(code, text if text is not None else os.strerror(code), ioctl=name)
