"""The real kernel: a ``/dev/kvm`` backend with the model's VCPU interface.

:class:`Kvm` opens ``/dev/kvm``, :meth:`Kvm.create_vm` gives a :class:`Vm`,
:meth:`Vm.create_vcpu` a :class:`Vcpu` whose ``set_device_attr``,
``get_device_attr``, ``has_device_attr`` and ``run`` behave like
:class:`kvmspe.model.kernel.Vcpu`: same names, same errors
(:class:`~kvmspe.errors.KvmError`, an ``OSError`` carrying the kernel's errno
and what it means for the attribute). So one piece of VMM code runs on either.

One module per kind of file descriptor, each class re-exported here:

* :mod:`~kvmspe.kvm.fd`: owning a descriptor (``close``, ``with``,
  ``fileno``, :class:`~kvmspe.errors.ClosedError` after close), and the one
  injectable ``ioctl``;
* :mod:`~kvmspe.kvm.system`: :class:`Kvm`, the ``/dev/kvm`` fd;
* :mod:`~kvmspe.kvm.feature`: the SPE VCPU feature bit, given or probed;
* :mod:`~kvmspe.kvm.vm`: :class:`Vm`, VCPU creation and the vGIC;
* :mod:`~kvmspe.kvm.device`: :class:`Device`, a KVM_CREATE_DEVICE fd;
* :mod:`~kvmspe.kvm.vcpu`: :class:`Vcpu`, the device attributes and KVM_RUN;
* :mod:`~kvmspe.kvm.timer`: the one timer that bounds KVM_RUN.

All system calls go through one injectable function with ``fcntl.ioctl``'s
shape, ``ioctl(fd, request, arg) -> int`` where ``arg`` is an int or a
mutable buffer; tests pass a recording fake to check the exact bytes of the
arm64 paths on any machine. Interrupted calls (EINTR) are retried, except
KVM_RUN, which is bounded: :meth:`Vcpu.run` ends it with a timer signal
after ``timeout`` seconds and raises :class:`RunTimeout` (an arm64 VCPU
without guest code or memory never returns from KVM_RUN by itself); a VMM
that runs each VCPU in a thread of its own wraps them in
:func:`run_timer_handler`; a thread that blocks SIGALRM needs nothing, as
KVM_SET_SIGNAL_MASK unblocks it for the duration of KVM_RUN (QEMU's way).

VCPU ids are never reused within a VM (KVM never frees one: creating the
same id again answers EEXIST, even after its fd was closed). The SPE VCPU
feature bit is given by the user (``spe_feature_bit=``,
``KVMSPE_SPE_FEATURE_BIT``, :func:`kvmspe.abi.set_assumed`) or found by
probing (:meth:`Kvm.spe_feature`): the v6 series does not publish it, and
the bits its older revisions used are other features upstream now. When no
bit is found the backend says so and never sets a guessed bit.
"""

from __future__ import annotations

from .device import Device
from .fd import IoctlFn
from .feature import SPE_FEATURE_CANDIDATES, SpeFeature, SpeFeatureUnavailable
from .system import Kvm, normalise_arch
from .timer import RUN_TIMEOUT, RunTimeout, run_timer_handler, threaded_runs
from .vcpu import DEFAULT_VALUE, VALUE_STRUCTS, Vcpu
from .vm import VGIC_V3_DIST_BASE, VGIC_V3_REDIST_BASE, Vm

__all__ = [
    "DEFAULT_VALUE",
    "Device",
    "IoctlFn",
    "Kvm",
    "RUN_TIMEOUT",
    "RunTimeout",
    "SPE_FEATURE_CANDIDATES",
    "SpeFeature",
    "SpeFeatureUnavailable",
    "VALUE_STRUCTS",
    "VGIC_V3_DIST_BASE",
    "VGIC_V3_REDIST_BASE",
    "Vcpu",
    "Vm",
    "normalise_arch",
    "run_timer_handler",
    "threaded_runs",
]
