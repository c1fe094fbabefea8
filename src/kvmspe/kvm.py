"""The real kernel: a ``/dev/kvm`` backend with the model's VCPU interface.

:class:`Kvm` opens ``/dev/kvm``, :meth:`Kvm.create_vm` gives a :class:`Vm`,
:meth:`Vm.create_vcpu` a :class:`Vcpu` whose ``set_device_attr``,
``get_device_attr``, ``has_device_attr`` and ``run`` behave like
:class:`kvmspe.model.kernel.Vcpu`: same names, same errors
(:class:`~kvmspe.errors.KvmError`, an ``OSError`` carrying the kernel's errno
and what it means for the attribute). So one piece of VMM code runs on either.

The device-attribute calls are the hot path. ``struct kvm_device_attr``
carries only a pointer (``addr``) to the value, and the kernel writes a GET
result through that pointer, not into the struct; so each VCPU keeps one
24-byte struct and one 8-byte value buffer whose address never changes,
fills them with ``pack_into`` and hands the struct to ``ioctl`` as a mutable
buffer. No struct is built and no buffer allocated per call.

On arm64, :meth:`Vm.create_vgic_v3` and :meth:`Vm.init_vgic` give the VM an
in-kernel GICv3 (a :class:`Device`, from KVM_CREATE_DEVICE), which KVM wants
before it takes a VCPU's PMU interrupt, and which the SPE interrupt attribute
is modelled on. Create every VCPU first: KVM sizes the redistributors by the
VCPUs that exist when the vGIC is initialised.

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

import ctypes
import errno
import fcntl
import mmap
import os
import signal
import struct
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, cast

from . import abi
from .errors import ClosedError, InvalidArgumentError, KvmError
from .validation import U32_MAX, U64_MAX, check_int, is_int

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

#: x86's reset vector is 0xFFFFFFF0: the last page below 4 GiB holds it.
_X86_RESET_PAGE = 0xFFFF_F000
_HALT_PAGE = 4096

#: ``ioctl(fd, request, arg) -> int``, ``arg`` an int or a mutable buffer
#: that the call may write (``fcntl.ioctl`` with ``mutate_flag=True``).
IoctlFn = Callable[[int, int, Any], int]

#: Width of the value behind ``addr`` for attributes not in :data:`VALUE_STRUCTS`
#: (e.g. the x86 TSC offset): a ``__u64``.
DEFAULT_VALUE = abi.U64

#: group -> attr -> the value's C type, from :data:`kvmspe.abi.ATTRS`
#: (``__u64`` for the max buffer size, ``int`` for IRQ and SPU).
VALUE_STRUCTS: dict[int, dict[int, struct.Struct]] = {}
for (_group, _attr), _info in abi.ATTRS.items():
    if _info.value is not None:  # INIT takes no value: addr is not read
        VALUE_STRUCTS.setdefault(_group, {})[_attr] = _info.value

_EMPTY: dict[int, struct.Struct] = {}
#: The selection of a VCPU whose struct holds no (group, attr) yet.
_UNSELECTED = object()
#: flags is always 0; kvm_device_attr's group (__u32) and attr (__u64) are
#: adjacent, so one pack per call writes both, at group's offset.
_GROUP_ATTR = struct.Struct("=IQ")
_GROUP_ATTR_OFFSET: int = abi.kvm_device_attr.group.offset
assert abi.kvm_device_attr.attr.offset == _GROUP_ATTR_OFFSET + 4, "group and attr must be adjacent"
_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64"}
_HAS = abi.KVM_HAS_DEVICE_ATTR
_GET = abi.KVM_GET_DEVICE_ATTR
_SET = abi.KVM_SET_DEVICE_ATTR
_EINTR = errno.EINTR
_NAMES = {_HAS: "KVM_HAS_DEVICE_ATTR", _GET: "KVM_GET_DEVICE_ATTR", _SET: "KVM_SET_DEVICE_ATTR"}

#: Where :meth:`Vm.create_vgic_v3` puts the GICv3 frames unless told otherwise:
#: the distributor (64 KiB) at 128 MiB and the redistributors (128 KiB per
#: VCPU) from 128 MiB + 640 KiB up. Both are 64 KiB aligned, as KVM requires,
#: and far below the smallest guest physical address size arm64 KVM offers
#: (32 bits), so any VM can take them. The conformance VMs have no memory for
#: them to collide with; a VMM with guest RAM there passes other bases.
VGIC_V3_DIST_BASE = abi.VGIC_V3_DIST_BASE
VGIC_V3_REDIST_BASE = abi.VGIC_V3_REDIST_BASE
_VGIC_ALIGN = 64 << 10
#: The largest number ``fcntl.ioctl`` passes as an integer argument (a C int).
_IOCTL_INT_MAX = (1 << 31) - 1


def _close_dropped(fd: int, what: str) -> None:
    """Close the descriptor of an object collected without ``close()``, and say so
    with a ResourceWarning, as Python's own files do."""
    warnings.warn(f"unclosed {what} (fd {fd}): call close() or use 'with'", ResourceWarning, stacklevel=1)
    try:
        os.close(fd)
    except OSError:
        pass


def _closed_ioctl(fd: int, request: int, arg: Any) -> int:
    """What a closed VCPU calls instead of ``ioctl``: no system call, the refusal
    ``fcntl.ioctl`` gives the descriptor -1 of a closed object."""
    raise ValueError("the object has been closed")


#: How long :meth:`Vcpu.run` lets KVM_RUN take by default (seconds).
RUN_TIMEOUT = 1.0
#: After the first timer signal, how often it is repeated until KVM_RUN has
#: returned (a signal that lands just before the ioctl starts is not lost).
_RUN_TICK = 0.05

#: Candidate bits for the SPE VCPU feature when probing: KVM_ARM_VCPU_INIT
#: takes features only in features[0] (every kernel refuses a bit in
#: features[1..6]), and bits 0..8 are upstream features (kvmspe.abi.upstream).
SPE_FEATURE_CANDIDATES: tuple[int, ...] = tuple(range(9, 32))


class SpeFeatureUnavailable(KvmError):
    """No SPE VCPU feature bit is known for this kernel: none was given and
    probing found none. Raised by :meth:`Vm.create_vcpu` with ``spe=True``
    on arm64 before any ioctl (so no VCPU id is used up); ``errno`` is
    EOPNOTSUPP."""


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


@dataclass(frozen=True)
class SpeFeature:
    """The SPE VCPU feature bit of a kernel, and how it was decided.

    ``bit`` is None when the kernel has no SPE VCPU feature (as far as
    probing can tell). ``source`` is "argument", "set_assumed",
    "KVMSPE_SPE_FEATURE_BIT", "probed" or "none"; ``reason`` one line for
    people; ``tried`` each probed bit with what the kernel answered.
    """

    bit: int | None
    source: str
    reason: str
    tried: tuple[tuple[int, str], ...] = field(default_factory=tuple)

    @property
    def answers(self) -> str:
        """What the kernel answered to the probed bits, in words, e.g. ``bits
        9..31: unknown to this kernel (KVM_ARM_VCPU_INIT refuses them)``
        (empty when nothing was probed); ``tried`` has each errno."""
        return _answers(self.tried)


class _Owned:
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

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def normalise_arch(machine: str) -> str:
    """``os.uname().machine`` in the spelling KVM code uses: ``aarch64``, ``x86_64``."""
    return _ARCH_ALIASES.get(machine, machine)


def _open_reason(path: str, code: int) -> str:
    if code == errno.ENOENT:
        return f"{path} does not exist: the kernel has no KVM, or its module is not loaded"
    if code in (errno.EACCES, errno.EPERM):
        return f"no permission to open {path}: run as root or join the group that owns it"
    if code == errno.ENXIO or code == errno.ENODEV:
        return f"{path} exists but no KVM driver answers (no virtualisation support enabled?)"
    return f"cannot open {path}: {os.strerror(code)}"


def _retry(ioctl: IoctlFn, fd: int, request: int, arg: Any) -> int:
    """One ioctl, repeated while it is interrupted by a signal."""
    while True:
        try:
            return ioctl(fd, request, arg)
        except InterruptedError:
            continue


def _fail(exc: OSError, name: str, text: str | None = None) -> KvmError:
    code = exc.errno or errno.EIO
    return KvmError(code, text if text is not None else os.strerror(code), ioctl=name)


def _no_feature_reason() -> str:
    """One line: no probed bit made the SPE group answer."""
    first, last = SPE_FEATURE_CANDIDATES[0], SPE_FEATURE_CANDIDATES[-1]
    return (
        "this kernel has no SPE VCPU feature: no KVM_ARM_VCPU_INIT feature bit"
        f" ({first}..{last}) makes the KVM_ARM_VCPU_SPE_CTRL group answer;"
        " set KVMSPE_SPE_FEATURE_BIT if it has one"
    )


#: How the probe's answers read for people: what an INIT refusal means, not
#: the errno of a feature that is not SPE (``SpeFeature.tried`` keeps it).
_ANSWER_WORDS = {
    "KVM_ARM_VCPU_INIT ENOENT": "unknown to this kernel (KVM_ARM_VCPU_INIT refuses them)",
    "KVM_ARM_VCPU_INIT EINVAL": "refused by KVM_ARM_VCPU_INIT (unknown or not available here)",
}


def _answers(tried: tuple[tuple[int, str], ...]) -> str:
    """What the kernel answered to each probed bit, in words, runs of bits joined."""
    groups: dict[str, list[int]] = {}
    for bit, answer in tried:
        groups.setdefault(_ANSWER_WORDS.get(answer, answer), []).append(bit)
    parts = []
    for answer, bits in groups.items():
        if len(bits) == 1:
            span = f"bit {bits[0]}"
        elif bits == list(range(bits[0], bits[-1] + 1)):
            span = f"bits {bits[0]}..{bits[-1]}"
        else:
            span = "bits " + ",".join(map(str, bits))
        parts.append(f"{span}: {answer}")
    return "; ".join(parts)


def _feature_bits(features: tuple[int, ...] | list[int]) -> list[int]:
    return [32 * w + b for w, word in enumerate(features) for b in range(32) if word >> b & 1]


def _init_refused(code: int, bits: list[int], spe_bit: int | None) -> str | None:
    """What a KVM_ARM_VCPU_INIT errno means for the features asked for."""
    from .abi import upstream

    def show(b: int) -> str:
        name = upstream.feature_name(b)
        if b == spe_bit:
            return f"bit {b} (asked for as the SPE feature)"
        return f"bit {b} ({name})" if name else f"bit {b}"

    asked = ", ".join(show(b) for b in bits) or "no feature bit"
    if code == errno.ENOENT:
        return (
            f"the kernel does not know a VCPU feature asked for ({asked}): KVM_ARM_VCPU_INIT"
            " answers ENOENT for an unknown feature bit (Linux 6.1)"
        )
    if code == errno.EINVAL:
        return (
            f"the kernel refused the VCPU features ({asked}): an unknown feature bit (EINVAL on"
            " newer kernels), a feature this host cannot give, features that differ from the"
            " VM's other VCPUs, or a bad target"
        )
    return None


class Kvm(_Owned):
    """An open ``/dev/kvm``: API version, capabilities, VM creation.

    ``ioctl`` replaces ``fcntl.ioctl`` (for tests); ``arch`` replaces the
    host architecture (default ``os.uname().machine``), which decides whether
    VCPUs are initialised the arm64 way. ``spe_feature_bit`` gives the SPE
    VCPU feature bit (checked: not an upstream feature, fits
    ``features[7]``); without it :meth:`spe_feature` decides. Closing it
    closes its VMs too.
    """

    def __init__(
        self,
        path: str = "/dev/kvm",
        *,
        ioctl: IoctlFn | None = None,
        arch: str | None = None,
        spe_feature_bit: int | None = None,
    ):
        if spe_feature_bit is not None:
            abi.check_assumed("spe_feature_bit", spe_feature_bit)
        self._spe_bit_arg = spe_feature_bit
        self._spe_feature: SpeFeature | None = None
        self.path = path
        self.ioctl: IoctlFn = ioctl if ioctl is not None else cast(IoctlFn, fcntl.ioctl)
        self.arch = normalise_arch(arch if arch is not None else os.uname().machine)
        self.vms: list[Vm] = []
        self._mmap_size: int | None = None
        self.closed = True  # until the open succeeds
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path) or "\0" in str(path):
            raise InvalidArgumentError(f"path must be the path of /dev/kvm (a non-empty str), got {path!r}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            code = exc.errno or errno.EIO
            raise KvmError(code, _open_reason(str(path), code), ioctl="open") from None
        self._own(fd, f"Kvm({path!r})")

    def _call(self, request: int, arg: Any, name: str) -> int:
        self._check_open(name)
        try:
            return _retry(self.ioctl, self.fd, request, arg)
        except OSError as exc:
            raise _fail(exc, name) from None

    def api_version(self) -> int:
        """KVM_GET_API_VERSION (12 on every kernel since 2.6.22)."""
        return self._call(abi.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on ``/dev/kvm``: 0 when absent, else a positive value."""
        self._check_open("KVM_CHECK_EXTENSION")
        check_int("capability", cap, 0, _IOCTL_INT_MAX)
        return self._call(abi.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")

    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: bytes of the shared ``kvm_run`` area (asked once)."""
        self._check_open("KVM_GET_VCPU_MMAP_SIZE")
        if self._mmap_size is None:
            self._mmap_size = self._call(abi.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")
        return self._mmap_size

    def create_vm(self, machine_type: int = 0) -> Vm:
        """KVM_CREATE_VM (``machine_type`` 0: the default IPA size on arm64)."""
        self._check_open("KVM_CREATE_VM")
        check_int("machine_type", machine_type, 0, _IOCTL_INT_MAX)
        fd = self._call(abi.KVM_CREATE_VM, machine_type, "KVM_CREATE_VM")
        vm = Vm(self, fd)
        self.vms.append(vm)
        return vm

    def spe_feature(self) -> SpeFeature:
        """The SPE VCPU feature bit: given (argument, then
        :data:`kvmspe.abi.ASSUMED`), else probed once and remembered.

        Probing, on arm64: for each bit of :data:`SPE_FEATURE_CANDIDATES`, a
        throwaway VM with one VCPU initialised with only that bit; the bit
        counts only if KVM_ARM_VCPU_INIT accepts it AND the SPE group then
        answers KVM_HAS_DEVICE_ATTR (KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE). A
        kernel that accepts an unrelated bit (Linux 7.2 takes bit 8,
        KVM_ARM_VCPU_HAS_EL2_E2H0) answers ENXIO there, so that bit does not
        count. Unknown bits answer ENOENT (Linux 6.1) or EINVAL (newer).
        """
        self._check_open("spe_feature")
        if self._spe_feature is not None:
            return self._spe_feature
        if self._spe_bit_arg is not None:
            bit = self._spe_bit_arg
            found = SpeFeature(bit, "argument", f"bit {bit}, given as an argument")
        elif abi.ASSUMED.spe_feature_bit is not None:
            bit = abi.ASSUMED.spe_feature_bit
            source = abi.ASSUMED.source("spe_feature_bit")
            found = SpeFeature(bit, source, f"bit {bit}, given by {source}")
        else:
            found = self._probe_spe_feature()
        self._spe_feature = found
        return found

    def _probe_spe_feature(self) -> SpeFeature:
        if self.arch != "aarch64":
            return SpeFeature(None, "none", f"SPE is an arm64 feature; this host is {self.arch}")
        tried: list[tuple[int, str]] = []
        for bit in SPE_FEATURE_CANDIDATES:
            with self.create_vm() as vm:
                try:
                    vcpu = vm._create(0, spe=True, bit=bit)
                except KvmError as exc:
                    tried.append((bit, f"{exc.ioctl} {exc.name}"))
                    continue
                try:
                    answers = vcpu.has_device_attr(
                        abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE
                    )
                except KvmError as exc:
                    answer = f"accepted by KVM_ARM_VCPU_INIT, but HAS on the SPE group answers {exc.name}"
                    tried.append((bit, answer))
                    continue
                if answers:
                    reason = (
                        f"bit {bit}, probed: KVM_ARM_VCPU_INIT accepts it and the KVM_ARM_VCPU_SPE_CTRL"
                        " group then answers KVM_HAS_DEVICE_ATTR"
                    )
                    return SpeFeature(bit, "probed", reason, tuple(tried))
                tried.append((bit, "accepted by KVM_ARM_VCPU_INIT, but the SPE group answers ENXIO"))
        return SpeFeature(None, "none", _no_feature_reason(), tuple(tried))

    def close(self) -> None:
        """Close every VM created here, then ``/dev/kvm``. Safe to call twice."""
        if self.closed:
            return
        for vm in list(self.vms):
            vm.close()
        self._close_fd()


class Vm(_Owned):
    """A VM file descriptor. Closing it closes its VCPUs first."""

    def __init__(self, kvm: Kvm, fd: int):
        self.kvm = kvm
        self._own(fd, "Vm")
        self.vcpus: list[Vcpu] = []
        #: Devices from KVM_CREATE_DEVICE (closed with the VM).
        self.devices: list[Device] = []
        #: The in-kernel GICv3, once :meth:`create_vgic_v3` has made it.
        self.vgic: Device | None = None
        #: Every VCPU id created in this VM: KVM never frees one.
        self.ids_used: set[int] = set()
        #: Guest memory this object mapped (:meth:`add_halt_page`), unmapped at close.
        self._memory: list[mmap.mmap] = []
        #: Makes choosing and taking a VCPU id one step, for VCPU threads.
        self._ids_lock = threading.Lock()

    def _call(self, request: int, arg: Any, name: str, text: str | None = None) -> int:
        self._check_open(name)
        try:
            return _retry(self.kvm.ioctl, self.fd, request, arg)
        except OSError as exc:
            raise _fail(exc, name, text) from None

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM (answers for this VM's configuration)."""
        self._check_open("KVM_CHECK_EXTENSION")
        check_int("capability", cap, 0, _IOCTL_INT_MAX)
        return self._call(abi.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")

    def set_user_memory_region(
        self, slot: int, guest_phys_addr: int, memory_size: int, userspace_addr: int, flags: int = 0
    ) -> None:
        """KVM_SET_USER_MEMORY_REGION: back guest memory with process memory."""
        self._check_open("KVM_SET_USER_MEMORY_REGION")
        check_int("slot", slot, 0, U32_MAX)
        check_int("flags", flags, 0, U32_MAX)
        check_int("guest_phys_addr", guest_phys_addr, 0, U64_MAX)
        check_int("memory_size", memory_size, 0, U64_MAX)
        check_int("userspace_addr", userspace_addr, 0, U64_MAX)
        region = bytearray(
            abi.USERSPACE_MEMORY_REGION.pack(slot, flags, guest_phys_addr, memory_size, userspace_addr)
        )
        self._call(abi.KVM_SET_USER_MEMORY_REGION, region, "KVM_SET_USER_MEMORY_REGION")

    def _next_index(self) -> int:
        """The lowest VCPU id this VM has never used (KVM never frees one)."""
        used = self.ids_used
        return next(i for i in range(len(used) + 1) if i not in used)

    def create_vcpu(self, index: int | None = None, *, spe: bool = True) -> Vcpu:
        """KVM_CREATE_VCPU, and on arm64 KVM_ARM_PREFERRED_TARGET + KVM_ARM_VCPU_INIT.

        ``index`` is the VCPU id (default: the lowest id this VM has never
        used; KVM never frees an id, so a closed VCPU's id stays taken). On
        arm64 the VCPU is initialised with the preferred target and, when
        ``spe``, the SPE feature bit of :meth:`Kvm.spe_feature`; when the
        kernel has none, :class:`SpeFeatureUnavailable` is raised before any
        ioctl. On x86 there is no init step and ``spe`` is only recorded.
        """
        self._check_open("KVM_CREATE_VCPU")
        bit = None
        if spe and self.kvm.arch == "aarch64":
            feature = self.kvm.spe_feature()
            if feature.bit is None:
                why = feature.reason + (f" (probed: {feature.answers})" if feature.tried else "")
                raise SpeFeatureUnavailable(errno.EOPNOTSUPP, why, ioctl="KVM_ARM_VCPU_INIT")
            bit = feature.bit
        return self._create(index, spe=spe, bit=bit)

    def _create(self, index: int | None, *, spe: bool, bit: int | None) -> Vcpu:
        if index is not None:
            index = check_int("VCPU index", index, 0, _IOCTL_INT_MAX)
        text = None
        with self._ids_lock:  # a default id is chosen and taken at once, whatever other threads do
            if index is None:
                index = self._next_index()
            if index in self.ids_used:
                text = (
                    f"VCPU id {index} was used before in this VM: KVM never frees a VCPU id,"
                    " even after its fd is closed"
                )
            taken = text is None
            self.ids_used.add(index)
        try:
            fd = self._call(abi.KVM_CREATE_VCPU, index, "KVM_CREATE_VCPU", text)
        except KvmError as exc:
            if taken and exc.errno != errno.EEXIST:  # the kernel did not take it: free again
                with self._ids_lock:
                    self.ids_used.discard(index)
            raise
        vcpu = Vcpu(self, fd, index, spe)
        try:
            if self.kvm.arch == "aarch64":
                self._arm_init(vcpu, bit)
        except BaseException:
            vcpu.close()
            raise
        self.vcpus.append(vcpu)
        return vcpu

    def _arm_init(self, vcpu: Vcpu, bit: int | None) -> None:
        init = bytearray(abi.VCPU_INIT.size)
        self._call(abi.KVM_ARM_PREFERRED_TARGET, init, "KVM_ARM_PREFERRED_TARGET")
        target, *features = abi.VCPU_INIT.unpack(init)
        if bit is not None:
            word = bit // 32
            if word >= len(features):
                raise ValueError(f"SPE feature bit {bit} does not fit in kvm_vcpu_init.features[7]")
            features[word] |= 1 << (bit % 32)
        abi.VCPU_INIT.pack_into(init, 0, target, *features)
        vcpu.features = tuple(features)
        vcpu.target = target
        try:
            _retry(self.kvm.ioctl, vcpu.fd, abi.KVM_ARM_VCPU_INIT, init)
        except OSError as exc:
            text = _init_refused(exc.errno or 0, _feature_bits(features), bit)
            raise _fail(exc, "KVM_ARM_VCPU_INIT", text) from None

    # -- in-kernel devices --------------------------------------------------------------

    def add_halt_page(self) -> None:
        """x86: one page of HLT instructions at the reset vector (guest physical
        0xFFFFF000), so a VCPU has something to run: without memory x86
        answers KVM_RUN with ENOSPC. The page lives as long as the VM."""
        self._check_open("add_halt_page")
        if self.kvm.arch != "x86_64":
            raise InvalidArgumentError(f"the HLT page is for x86_64 VMs; this is {self.kvm.arch}")
        page = mmap.mmap(
            -1, _HALT_PAGE, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS, mmap.PROT_READ | mmap.PROT_WRITE
        )
        page.write(b"\xf4" * _HALT_PAGE)
        address = ctypes.addressof(ctypes.c_char.from_buffer(page))
        try:
            self.set_user_memory_region(0, _X86_RESET_PAGE, _HALT_PAGE, address)
        except BaseException:
            page.close()
            raise
        self._memory.append(page)

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: x86's in-kernel irqchip (PIC, IOAPIC, local
        APICs), before any VCPU exists. arm64 VMs take a vGIC instead
        (:meth:`create_vgic_v3`); kvmspe's shim takes either as the irqchip
        the SPE interrupt needs."""
        self._call(abi.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")

    def create_device(self, type_: int) -> Device:
        """KVM_CREATE_DEVICE: an in-kernel device of ``type_`` (a ``KVM_DEV_TYPE_*``)."""
        self._check_open("KVM_CREATE_DEVICE")
        check_int("device type", type_, 0, U32_MAX)
        arg = bytearray(abi.CREATE_DEVICE.pack(type_, 0, 0))
        text = None
        try:
            _retry(self.kvm.ioctl, self.fd, abi.KVM_CREATE_DEVICE, arg)
        except OSError as exc:
            if type_ == abi.KVM_DEV_TYPE_ARM_VGIC_V3:
                text = abi.VGIC_ERRNOS["create"].get(exc.errno or 0)
                if self.kvm.arch != "aarch64":
                    text = (
                        f"the vGIC (KVM_DEV_TYPE_ARM_VGIC_V3) is an arm64 device, and this host is"
                        f" {self.kvm.arch}: its KVM has no such device type"
                    )
            raise _fail(exc, "KVM_CREATE_DEVICE", text) from None
        fd: int = abi.CREATE_DEVICE.unpack(arg)[1]
        device = Device(self, fd, type_)
        self.devices.append(device)
        return device

    def create_vgic_v3(
        self, *, dist_base: int = VGIC_V3_DIST_BASE, redist_base: int = VGIC_V3_REDIST_BASE
    ) -> Device:
        """An in-kernel GICv3 for this VM, its distributor and redistributors placed.

        KVM_CREATE_DEVICE (KVM_DEV_TYPE_ARM_VGIC_V3), then KVM_SET_DEVICE_ATTR
        on the device for KVM_DEV_ARM_VGIC_GRP_ADDR: KVM_VGIC_V3_ADDR_TYPE_DIST
        at ``dist_base`` and KVM_VGIC_V3_ADDR_TYPE_REDIST at ``redist_base``
        (one 128 KiB redistributor frame per VCPU from there). Call it after
        creating every VCPU, then :meth:`init_vgic`. Bases must be 64 KiB
        aligned and the frames must not overlap (checked before any ioctl).
        If a step fails the device fd is closed; the kernel keeps the
        irqchip until the VM is closed, so use a fresh VM to try again.
        """
        self._check_open("KVM_CREATE_DEVICE")
        nr = max(len(self.vcpus), 1)
        for name, base in (("dist_base", dist_base), ("redist_base", redist_base)):
            if not is_int(base) or base < 0 or base % _VGIC_ALIGN:
                raise ValueError(f"{name} must be a 64 KiB aligned guest physical address, got {base!r}")
        dist_end = dist_base + abi.KVM_VGIC_V3_DIST_SIZE
        redist_end = redist_base + nr * abi.KVM_VGIC_V3_REDIST_SIZE
        if dist_base < redist_end and redist_base < dist_end:
            raise ValueError(
                f"the GICv3 distributor [{dist_base:#x}, {dist_end:#x}) overlaps the"
                f" redistributors of {nr} VCPU(s) [{redist_base:#x}, {redist_end:#x})"
            )
        device = self.create_device(abi.KVM_DEV_TYPE_ARM_VGIC_V3)
        try:
            device.set_device_attr(abi.KVM_DEV_ARM_VGIC_GRP_ADDR, abi.KVM_VGIC_V3_ADDR_TYPE_DIST, dist_base)
            device.set_device_attr(
                abi.KVM_DEV_ARM_VGIC_GRP_ADDR, abi.KVM_VGIC_V3_ADDR_TYPE_REDIST, redist_base
            )
        except BaseException:
            device.close()
            raise
        self.vgic = device
        return device

    def init_vgic(self) -> None:
        """KVM_DEV_ARM_VGIC_CTRL_INIT on the vGIC: KVM sets it up for the VCPUs
        that exist now (no VCPU can be added afterwards)."""
        self._check_open("KVM_SET_DEVICE_ATTR")
        if self.vgic is None or self.vgic.closed:
            raise ValueError("this VM has no vGIC: call create_vgic_v3() first")
        self.vgic.set_device_attr(abi.KVM_DEV_ARM_VGIC_GRP_CTRL, abi.KVM_DEV_ARM_VGIC_CTRL_INIT)

    def close(self) -> None:
        """Close every VCPU and device of this VM, then the VM. Safe to call twice."""
        if self.closed:
            return
        for vcpu in list(self.vcpus):
            vcpu.close()
        for device in list(self.devices):
            device.close()
        self._close_fd()
        for page in self._memory:
            page.close()
        self._memory.clear()
        if self in self.kvm.vms:
            self.kvm.vms.remove(self)


class Device(_Owned):
    """A device fd from KVM_CREATE_DEVICE (e.g. the vGIC): its attributes.

    Configuration calls, made a few times per VM, so there is no fast path:
    each call packs a fresh ``struct kvm_device_attr``. A value travels as a
    ``__u64`` behind ``addr`` (the vGIC addresses); no value means ``addr`` 0
    (KVM_DEV_ARM_VGIC_CTRL_INIT takes none).
    """

    def __init__(self, vm: Vm, fd: int, type_: int):
        self.vm = vm
        self._own(fd, f"Device(type={type_})")
        self.type = type_
        self._value = (ctypes.c_uint64 * 1)()
        #: Where the value lives while a call is made.
        self.value_addr = ctypes.addressof(self._value)

    def _explain(self, group: int, attr: int, code: int) -> str | None:
        if self.type != abi.KVM_DEV_TYPE_ARM_VGIC_V3:
            return None
        if group == abi.KVM_DEV_ARM_VGIC_GRP_ADDR:
            return abi.VGIC_ERRNOS["addr"].get(code)
        if group == abi.KVM_DEV_ARM_VGIC_GRP_CTRL and attr == abi.KVM_DEV_ARM_VGIC_CTRL_INIT:
            return abi.VGIC_ERRNOS["init"].get(code)
        return None

    def _call(self, request: int, group: int, attr: int, addr: int) -> None:
        self._check_open(_NAMES[request])
        check_int("device attribute group", group, 0, U32_MAX)
        check_int("device attribute", attr, 0, U64_MAX)
        arg = bytearray(abi.DEVICE_ATTR.pack(0, group, attr, addr))
        try:
            _retry(self.vm.kvm.ioctl, self.fd, request, arg)
        except OSError as exc:
            code = exc.errno or errno.EIO
            text = self._explain(group, attr, code) or os.strerror(code)
            raise KvmError(code, text, ioctl=_NAMES[request], group=group, attr=attr) from None

    def set_device_attr(self, group: int, attr: int, value: int | None = None) -> None:
        """KVM_SET_DEVICE_ATTR on the device, ``value`` (a u64) behind ``addr``."""
        self._check_open("KVM_SET_DEVICE_ATTR")
        if value is None:
            self._call(_SET, group, attr, 0)
            return
        if not is_int(value) or not 0 <= value < 1 << 64:
            raise ValueError(f"device attribute {group}/{attr} takes a __u64, got {value!r}")
        self._value[0] = value
        self._call(_SET, group, attr, self.value_addr)

    def has_device_attr(self, group: int, attr: int) -> bool:
        """KVM_HAS_DEVICE_ATTR on the device: False on ENXIO, other errnos raise."""
        try:
            self._call(_HAS, group, attr, 0)
        except KvmError as exc:
            if exc.errno == errno.ENXIO:
                return False
            raise
        return True

    def close(self) -> None:
        """Close the device fd. Safe to call twice."""
        if self.closed:
            return
        self._close_fd()
        if self in self.vm.devices:
            self.vm.devices.remove(self)
        if self.vm.vgic is self:
            self.vm.vgic = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.fd}"
        return f"Device(type={self.type}, {state})"


_NO_HANDLER = (signal.SIG_DFL, signal.SIG_IGN, None)

#: Bounded runs under way in threads other than the main one, each with a
#: timer thread that may still send SIGALRM (see :func:`run_timer_handler`).
_threaded_runs = 0
_threaded_runs_lock = threading.Lock()


def threaded_runs() -> int:
    """How many bounded :meth:`Vcpu.run` calls are under way outside the main thread."""
    with _threaded_runs_lock:
        return _threaded_runs


def _on_alarm(signum: int, frame: object) -> None:
    """SIGALRM while KVM_RUN is bounded: nothing to do but interrupt it."""


@contextmanager
def _alarm(seconds: float, *, thread_directed: bool = False) -> Iterator[None]:
    """SIGALRM to this thread after ``seconds``, then every :data:`_RUN_TICK`,
    until the block ends; the previous handler and timer are restored.

    ``thread_directed``: the thread blocks SIGALRM outside KVM_RUN, so the
    signal must go to it alone (``pthread_kill``, from the main thread too:
    ``setitimer`` signals the process, which any other thread may take), and
    it never reaches a handler, so none is needed."""
    if threading.current_thread() is threading.main_thread() and not thread_directed:
        previous = signal.signal(signal.SIGALRM, _on_alarm)
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
    """For the block, a Python SIGALRM handler, so that :meth:`Vcpu.run` can
    bound KVM_RUN in threads other than the main one (it interrupts them with
    ``pthread_kill``, which needs one; the main thread uses its own timer).

    Called in the main thread where SIGALRM is at its default or ignored, it
    installs a handler that does nothing and puts the old disposition back on
    the way out; a handler already there is left alone. Elsewhere Python
    cannot install handlers, so it does nothing, and a bounded run in another
    thread then refuses as :meth:`Vcpu.run` documents. Join the threads that
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


class Vcpu(_Owned):
    """A VCPU file descriptor with the model VCPU's methods.

    ``value_structs`` decides the C type behind ``addr`` per group and
    attribute (a copy of :data:`VALUE_STRUCTS`; change it with
    :meth:`set_value_struct`); anything not listed is a ``__u64``.

    One thread at a time per VCPU, as a VMM runs each VCPU in its own thread:
    the device-attribute calls share one struct and one value buffer, and a
    lock would cost the hot path more than the call itself.
    """

    def __init__(self, vm: Vm, fd: int, index: int, spe: bool):
        self.vm = vm
        self._own(fd, f"Vcpu(index={index})")
        self.index = index
        self.spe = spe
        #: kvm_vcpu_init as sent (arm64 only).
        self.target: int | None = None
        self.features: tuple[int, ...] = ()
        self.value_structs = {g: dict(a) for g, a in VALUE_STRUCTS.items()}
        self._ioctl = vm.kvm.ioctl
        # The value lives at a fixed address for the VCPU's life; the struct
        # points at it once and for all. u64-aligned, wide enough for any value.
        self._value = (ctypes.c_uint64 * 1)()
        self.value_addr = ctypes.addressof(self._value)
        self._attr = bytearray(abi.DEVICE_ATTR.pack(0, 0, 0, self.value_addr))
        # What the struct holds: no (group, attr) until the first call. A
        # sentinel, not None, so that a caller's None never matches it.
        self._sel_group: object = _UNSELECTED
        self._sel_attr: object = _UNSELECTED
        self._fmt = DEFAULT_VALUE
        self._view: memoryview[int] = memoryview(self._value).cast("B").cast("Q")
        self._run: mmap.mmap | None = None

    def set_value_struct(self, group: int, attr: int, value: struct.Struct) -> None:
        """Use ``value`` (e.g. :data:`kvmspe.abi.INT`) as the C type of ``(group, attr)``."""
        self._check_open("set_value_struct")
        check_int("device attribute group", group, 0, U32_MAX)
        check_int("device attribute", attr, 0, U64_MAX)
        if not isinstance(value, struct.Struct) or value.format[-1:] not in tuple("bBhHiIlLqQ"):
            raise InvalidArgumentError(f"the value's C type must be an integer struct.Struct, got {value!r}")
        if value.size > ctypes.sizeof(self._value):
            raise ValueError(f"a device attribute value is at most 8 bytes, got {value.size}")
        self.value_structs.setdefault(group, {})[attr] = value
        self._sel_group = self._sel_attr = _UNSELECTED  # the typed view may change

    # -- errors ---------------------------------------------------------------------------

    def _closed_error(self, ioctl: str, group: int, attr: int) -> KvmError:
        return ClosedError("Vcpu", ioctl, group=group, attr=attr)

    def _error(self, exc: OSError, call: str, ioctl: str, group: int, attr: int) -> KvmError:
        code = exc.errno or errno.EIO
        if self.closed:
            return self._closed_error(ioctl, group, attr)
        text = abi.explain(call, group, attr, code)
        if group == abi.KVM_ARM_VCPU_SPE_CTRL and code == errno.ENXIO and call != "has":
            text = self._spe_enxio(group, attr, text)
        return KvmError(code, text, ioctl=ioctl, group=group, attr=attr)

    def _spe_enxio(self, group: int, attr: int, text: str) -> str:
        """Say whether an SPE-group ENXIO means "no SPE here": ask HAS, do not guess.

        Where KVM knows the attribute, ENXIO has the attribute's own meaning
        (e.g. GET of an IRQ not yet set) and ``text`` stands.
        """
        try:
            known = self.has_device_attr(group, attr)
        except KvmError:
            known = False
        if known:
            return text
        if self.vm.kvm.arch == "aarch64" and not self.spe:
            return (
                "SPE not supported on this VCPU: it was created without the SPE feature"
                " (KVM_HAS_DEVICE_ATTR answers ENXIO for KVM_ARM_VCPU_SPE_CTRL)"
            )
        return (
            "SPE not supported on this host: its KVM does not know the KVM_ARM_VCPU_SPE_CTRL group"
            " (KVM_HAS_DEVICE_ATTR answers ENXIO)"
        )

    # -- the hot path -----------------------------------------------------------------------
    #
    # The struct already holds the (group, attr) of the previous call, and a
    # typed memoryview over the value buffer reads and writes the value with
    # the C type's range check for free; a call for the same attribute as the
    # last one does nothing but the ioctl and one view access. Everything
    # else (another attribute, BAD_ADDRESS, errors, EINTR) takes the slow path.
    #
    # The cache is keyed by the very int objects last checked (``is``, not
    # ``==``): 2.0 or True equal 2 and 1 but are not them, so they take the
    # slow path, where _select refuses them before the struct is touched.

    def _select(self, group: object, attr: object) -> None:
        """Point the struct at ``(group, attr)`` and pick the value's typed view.

        Both are checked first (group a __u32, attr a __u64); a refused pair
        leaves the struct and the selection as they were.
        """
        check_int("device attribute group", group, 0, U32_MAX)
        check_int("device attribute", attr, 0, U64_MAX)
        assert isinstance(group, int) and isinstance(attr, int)
        fmt = self.value_structs.get(group, _EMPTY).get(attr, DEFAULT_VALUE)
        view = memoryview(self._value).cast("B").cast(cast(Any, fmt.format[-1]))
        # Forget the old selection before the struct changes: if this is
        # interrupted half way, the next call selects again.
        self._sel_group = self._sel_attr = _UNSELECTED
        _GROUP_ATTR.pack_into(self._attr, _GROUP_ATTR_OFFSET, group, attr)
        self._fmt = fmt
        self._view = view
        self._sel_group, self._sel_attr = group, attr

    def _issue(self, request: int, buf: bytearray, call: str, group: int, attr: int) -> None:
        """One device-attribute ioctl on ``buf``: a closed VCPU is named, EINTR is
        retried, any other errno raises the explained :class:`KvmError`."""
        try:
            self._ioctl(self.fd, request, buf)
        except ValueError:  # fcntl refuses the fd -1 of a closed VCPU
            raise self._closed_error(_NAMES[request], group, attr) from None
        except OSError as exc:
            self._again(exc, request, buf, call, group, attr)

    def _again(self, exc: OSError, request: int, buf: bytearray, call: str, group: int, attr: int) -> None:
        """After a failed ioctl: retry while EINTR, else raise the explained error."""
        while exc.errno == _EINTR:
            try:
                self._ioctl(self.fd, request, buf)
                return
            except OSError as again:
                exc = again
        raise self._error(exc, call, _NAMES[request], group, attr) from None

    def has_device_attr(self, group: int, attr: int) -> bool:
        """KVM_HAS_DEVICE_ATTR: True if the kernel knows ``(group, attr)``,
        False on ENXIO; any other errno raises :class:`KvmError`, and a
        ``group``/``attr`` that is not a __u32/__u64 int raises ValueError."""
        if group is not self._sel_group or attr is not self._sel_attr:
            self._select(group, attr)
        try:
            self._issue(_HAS, self._attr, "has", group, attr)
        except KvmError as err:
            if err.errno == errno.ENXIO:
                return False
            raise
        return True

    def get_device_attr(self, group: int, attr: int, addr: object = None) -> int:
        """KVM_GET_DEVICE_ATTR: the value the kernel writes through ``addr``.

        ``addr=kvmspe.abi.BAD_ADDRESS`` passes an unmapped pointer, so the
        kernel's write fails (EFAULT). The value buffer is cleared first: an
        attribute narrower than its assumed width (an ``int`` read as a
        ``__u64``) then reads back zero-extended, never with bytes of an
        earlier call.
        """
        if group is not self._sel_group or attr is not self._sel_attr:
            self._select(group, attr)
        if addr is None:
            self._value[0] = 0
            buf = self._attr
        elif addr is abi.BAD_ADDRESS:
            buf = bytearray(abi.DEVICE_ATTR.pack(0, group, attr, abi.UNMAPPED_ADDRESS))
        else:
            raise ValueError(f"addr must be None or kvmspe.abi.BAD_ADDRESS, got {addr!r}")
        self._issue(_GET, buf, "get", group, attr)
        result: int = self._view[0]
        return result

    def set_device_attr(self, group: int, attr: int, value: object) -> None:
        """KVM_SET_DEVICE_ATTR with ``value`` behind ``addr``.

        ``value`` is an int of the attribute's C type, ``None`` for an
        attribute that takes no value (``addr`` 0, e.g. KVM_ARM_VCPU_SPE_INIT),
        or :data:`kvmspe.abi.BAD_ADDRESS` for a pointer the kernel cannot read
        (EFAULT). A value that does not fit is refused with ValueError before
        any ioctl, as the model does.
        """
        if group is not self._sel_group or attr is not self._sel_attr:
            self._select(group, attr)
        if type(value) is int:
            try:
                self._view[0] = value
            except (ValueError, OverflowError):
                self._refuse(group, attr, self._fmt, value)
            buf = self._attr
        elif value is None:
            buf = bytearray(abi.DEVICE_ATTR.pack(0, group, attr, 0))
        elif value is abi.BAD_ADDRESS:
            buf = bytearray(abi.DEVICE_ATTR.pack(0, group, attr, abi.UNMAPPED_ADDRESS))
        else:
            if not is_int(value):
                self._refuse(group, attr, self._fmt, value)
            self.set_device_attr(group, attr, int(cast(int, value)))
            return
        self._issue(_SET, buf, "set", group, attr)

    def _refuse(self, group: int, attr: int, fmt: struct.Struct, value: object) -> None:
        info = abi.attr_info(group, attr)
        if info is not None:
            abi.check_value(info, value)  # type: ignore[arg-type]
        bits = fmt.size * 8
        signed = fmt.format[-1].islower()
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        ctype = f"{'' if signed else 'u'}int{bits}"
        raise ValueError(f"group {group} attribute {attr} takes a {ctype} ({lo}..{hi}), got {value!r}")

    # -- running ------------------------------------------------------------------------------

    def run(self, timeout: float | None = RUN_TIMEOUT) -> abi.Exit:
        """KVM_RUN, bounded: the exit, read from ``kvm_run``.

        After ``timeout`` seconds a timer signal (SIGALRM) ends the call and
        :class:`RunTimeout` is raised; the previous SIGALRM handler and
        ITIMER_REAL timer are restored. In the main thread the timer is
        ``setitimer``; in another thread a timer thread sends SIGALRM to
        this one with ``pthread_kill``, which needs a Python SIGALRM handler
        installed (:func:`run_timer_handler`; else KvmError EINVAL, before
        KVM_RUN). A thread that blocks SIGALRM is bounded too, in any
        thread and without a handler: KVM_SET_SIGNAL_MASK unblocks it for
        KVM_RUN only, and the signal left pending is consumed, so the
        thread's mask and pending set are as they were (a SIGALRM of the
        caller's own pending then is consumed with it). ``timeout=None``
        runs unbounded; an interrupted unbounded call is retried.
        """
        self._check_open("KVM_RUN")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < 1e6
        ):
            raise ValueError(f"timeout must be a number of seconds in (0, 1e6) or None, got {timeout!r}")
        run = self._run
        if run is None:
            size = self.vm.kvm.vcpu_mmap_size()
            try:
                run = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError as exc:
                why = f"cannot map the kvm_run area: {os.strerror(exc.errno or 0)}"
                raise _fail(exc, "mmap", why) from None
            self._run = run
        try:
            if timeout is None:
                _retry(self._ioctl, self.fd, abi.KVM_RUN, 0)
            else:
                self._run_bounded(timeout)
        except KvmError:
            raise  # ours: a timeout, or a run that cannot be bounded
        except OSError as exc:
            code = exc.errno or errno.EIO
            raise KvmError(code, self._run_error(code), ioctl="KVM_RUN") from None
        reason: int = abi.U32.unpack_from(run, abi.KVM_RUN_EXIT_REASON_OFFSET)[0]
        if reason == abi.ASSUMED.exit_rlimit:
            excess: int = abi.U64.unpack_from(run, abi.KVM_RUN_RLIMIT_EXCESS_OFFSET)[0]
            return abi.Exit(reason, excess)
        return abi.Exit(reason)

    def _run_bounded(self, seconds: float) -> None:
        """One KVM_RUN under a timer signal; EINTR before the deadline is retried.

        A thread that blocks SIGALRM (as VMMs' VCPU threads often block their
        signals) would never see the timer: then, as QEMU does for its own
        signal, KVM_SET_SIGNAL_MASK gives KVM_RUN the thread's mask without
        SIGALRM, so the signal ends KVM_RUN and only KVM_RUN; back in user
        space it is blocked again, and the SIGALRM left pending is taken back
        (``sigtimedwait``) so that it reaches no one.
        """
        deadline = time.monotonic() + seconds
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
        blocked = signal.SIGALRM in mask
        if blocked:
            self._set_run_mask(mask - {signal.SIGALRM})
        try:
            with _alarm(seconds, thread_directed=blocked):
                while True:
                    try:
                        self._ioctl(self.fd, abi.KVM_RUN, 0)
                        return
                    except InterruptedError:
                        if time.monotonic() >= deadline:
                            raise RunTimeout(seconds) from None
        finally:
            if blocked:
                while signal.sigtimedwait({signal.SIGALRM}, 0) is not None:
                    pass
                self._set_run_mask(None)

    def _set_run_mask(self, signals: set[int | signal.Signals] | None) -> None:
        """KVM_SET_SIGNAL_MASK: the signal mask of this VCPU's thread while in
        KVM_RUN (``None``: none, the thread's own)."""
        if signals is None:
            arg: bytearray | int = 0
        else:
            sigset = sum(1 << (s - 1) for s in signals if 0 < s <= 8 * abi.SIGSET_BYTES)
            arg = bytearray(abi.U32.pack(abi.SIGSET_BYTES) + sigset.to_bytes(abi.SIGSET_BYTES, "little"))
        try:
            _retry(self._ioctl, self.fd, abi.KVM_SET_SIGNAL_MASK, arg)
        except OSError as exc:
            why = (
                "cannot bound KVM_RUN: this thread blocks SIGALRM, and KVM_SET_SIGNAL_MASK, which"
                f" would unblock it inside KVM_RUN only, failed: {os.strerror(exc.errno or 0)}"
            )
            raise _fail(exc, "KVM_SET_SIGNAL_MASK", why) from None

    def _run_error(self, code: int) -> str:
        """What a KVM_RUN errno means here; blames SPE only when SPE is the cause."""
        if self.vm.kvm.arch != "aarch64":
            return os.strerror(code)
        if code != errno.EINVAL:
            return abi.RUN_ERRNOS.get(code) or os.strerror(code)
        other = (
            "an enabled PMU not initialised (KVM_ARM_VCPU_PMU_V3_INIT), a missing or"
            " uninitialised vGIC, or another feature of the VCPU not set up"
        )
        try:
            spe = self.spe and self.has_device_attr(
                abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE
            )
        except KvmError:
            spe = False
        if not spe:
            return f"the VCPU is not ready to run, and not because of SPE (it has none): {other}"
        return f"{abi.RUN_ERRNOS[errno.EINVAL]}; or, not because of SPE: {other}"

    # -- the guest's side, scripted under kvmspe's shim ------------------------------------

    def _guest(self, what: str, **args: Any) -> dict[str, Any]:
        from .shim import guest

        self._check_open(f"guest {what}")
        return guest.request(self.fd, what, **args)

    def enable_buffer(self, base: int, size: int, unmapped: tuple[tuple[int, int], ...] = ()) -> None:
        """The guest enables a ``size``-byte buffer at VA ``base``; the next
        :meth:`run` has KVM handle it. Only under kvmspe's shim, whose model
        is the guest (:class:`kvmspe.shim.guest.GuestUnavailable` elsewhere);
        ``unmapped`` lists ``(va, size)`` ranges the guest does not map."""
        for name, v in (("base", base), ("size", size)):
            check_int(f"buffer {name}", v, 0, U64_MAX)
        self._guest("enable", base=base, size=size, unmapped=[list(r) for r in unmapped])

    def disable_buffer(self) -> None:
        """The guest clears PMBLIMITR_EL1.E (under kvmspe's shim only)."""
        self._guest("disable")

    def guest_read(self, reg: str) -> int:
        """A buffer register as the guest reads it (under kvmspe's shim only)."""
        value = self._guest("read", reg=reg)["value"]
        assert isinstance(value, int)
        return value

    @property
    def pinned_bytes(self) -> int:
        """Host bytes pinned for this VCPU's buffer, as the shim's model has them."""
        pinned = self._guest("state")["pinned"]
        assert isinstance(pinned, int)
        return pinned

    def close(self) -> None:
        """Unmap ``kvm_run`` and close the VCPU. Safe to call twice."""
        if self.closed:
            return
        run, self._run = self._run, None
        if run is not None:
            run.close()
        self._ioctl = _closed_ioctl
        self._close_fd()
        if self in self.vm.vcpus:
            self.vm.vcpus.remove(self)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.fd}"
        return f"Vcpu(index={self.index}, {state}, spe={self.spe})"
