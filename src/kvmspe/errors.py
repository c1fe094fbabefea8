"""Exception tree of kvmspe: one family for callers to catch.

* :class:`KvmspeError` is the root.
* :class:`NotRepresentableError` (a :class:`ValueError`) is raised by the
  MaxBuffSize codec for a size that has no exact encoding.
* :class:`InvalidArgumentError` (a :class:`ValueError`) is raised for an
  argument of the wrong type or outside its accepted range (see
  :mod:`kvmspe.validation`).
* :class:`RegisterError` (a :class:`ValueError`) is raised by the register
  engine for a bad field value or a set RES0 bit.
* :class:`KvmError` (an :class:`OSError`) is what both the kernel model and
  the real ``/dev/kvm`` backend raise: it keeps the kernel's errno and adds a
  sentence saying what that errno means for the attribute at hand.
* :class:`ClosedError` (a :class:`KvmError`, errno EBADF) is raised by every
  call on a ``/dev/kvm``, VM, VCPU or device object that has been closed (or
  whose parent has), in both backends, before anything else is done.

The tree is closed: the other exceptions kvmspe defines live next to what
raises them, and each is a :class:`KvmspeError` (tests/test_errors.py checks
every module), e.g. ``abi.assumed.AssumedNumberError`` and
``shim.script.ScriptError`` (also :class:`ValueError`), ``kvm.RunTimeout``
(a :class:`KvmError`), ``host.memlock.MemlockPermissionError`` (also
:class:`PermissionError`). A bad argument is an :class:`InvalidArgumentError`
or another subclass of :class:`ValueError`, so code that catches the built-in
kind goes on working.
"""

from __future__ import annotations

import errno as _errno

__all__ = [
    "ClosedError",
    "InvalidArgumentError",
    "KvmError",
    "KvmspeError",
    "NotRepresentableError",
    "RegisterError",
    "errno_name",
]


class KvmspeError(Exception):
    """Root of every error kvmspe raises on purpose."""


class NotRepresentableError(KvmspeError, ValueError):
    """A size with no exact PMBIDR_EL1.MaxBuffSize encoding.

    ``below`` and ``above`` are the nearest representable sizes (``None``
    where there is none), so a caller can offer them without re-computing.
    """

    def __init__(self, message: str, size: int, below: int | None, above: int | None):
        super().__init__(message)
        self.size = size
        self.below = below
        self.above = above


class InvalidArgumentError(KvmspeError, ValueError):
    """An argument of the wrong type (a bool, float, str...) or outside its range."""


class RegisterError(KvmspeError, ValueError):
    """A register value or field value that the field table does not allow."""


def errno_name(code: int) -> str:
    """Symbolic name of an errno (``EDOM``), or ``errno N`` when unknown."""
    return _errno.errorcode.get(code, f"errno {code}")


class KvmError(KvmspeError, OSError):
    """An ioctl answered with an errno (by the real kernel or by the model).

    ``errno`` is the kernel's errno; ``strerror`` is our explanation for the
    attribute concerned. ``str()`` gives ``"EDOM: <explanation>"``.
    ``ioctl``, ``group`` and ``attr`` say which call it was, when known;
    ``rule`` names the model's check that decided it (the model only).
    """

    def __init__(
        self,
        code: int,
        explanation: str,
        *,
        ioctl: str | None = None,
        group: int | None = None,
        attr: int | None = None,
        rule: str | None = None,
    ):
        super().__init__(code, explanation)
        self.ioctl = ioctl
        self.group = group
        self.attr = attr
        self.rule = rule

    @property
    def name(self) -> str:
        """The errno's symbolic name, e.g. ``EDOM``."""
        return errno_name(self.errno or 0)

    def __str__(self) -> str:
        return f"{self.name}: {self.strerror}"


class ClosedError(KvmError):
    """A call on an object that has been closed: ``/dev/kvm``, a VM, a VCPU or a
    device, of either backend (closing a VM closes its VCPUs and devices, closing
    ``/dev/kvm`` its VMs). ``errno`` is EBADF; ``ioctl`` names the call, and
    ``what`` the kind of object (``"Vcpu"``). Closing again is not an error."""

    def __init__(self, what: str, call: str, *, group: int | None = None, attr: int | None = None):
        super().__init__(_errno.EBADF, f"this {what} has been closed", ioctl=call, group=group, attr=attr)
        self.what = what
