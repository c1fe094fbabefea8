"""The VCPU fd: the SPE device attributes (the hot path), KVM_RUN bounded by the run timer, ``kvm_run``.

:class:`Vcpu`'s ``set_device_attr``, ``get_device_attr``,
``has_device_attr`` and ``run`` behave like :class:`kvmspe.model.kernel.Vcpu`:
same names, same errors (:class:`~kvmspe.errors.KvmError`, an ``OSError``
carrying the kernel's errno and what it means for the attribute).

The device-attribute calls are the hot path. ``struct kvm_device_attr``
carries only a pointer (``addr``) to the value, and the kernel writes a GET
result through that pointer, not into the struct; so each VCPU keeps one
24-byte struct and one 8-byte value buffer whose address never changes,
fills them with ``pack_into`` and hands the struct to ``ioctl`` as a mutable
buffer. No struct is built and no buffer allocated per call.

KVM_RUN is mapped (``kvm_run``, its size asked of ``/dev/kvm`` once) at the
first run and bounded by :func:`kvmspe.kvm.timer.alarm`.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import struct
import time
from typing import TYPE_CHECKING, Any, cast

from .. import abi
from ..errors import ClosedError, InvalidArgumentError, KvmError
from ..validation import U32_MAX, U64_MAX, check_int, is_int
from .device import ATTR_NAMES as _NAMES
from .device import GET as _GET
from .device import HAS as _HAS
from .device import SET as _SET
from .fd import Owned, closed_ioctl, fail, retry
from .timer import RUN_TIMEOUT, RunTimeout, alarm

if TYPE_CHECKING:
    from .vm import Vm

__all__ = ["DEFAULT_VALUE", "VALUE_STRUCTS", "Vcpu"]

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
_EINTR = errno.EINTR


class Vcpu(Owned):
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
            raise InvalidArgumentError(f"a device attribute value is at most 8 bytes, got {value.size}")
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
    #
    # Each method issues its ioctl itself, in the same few lines, rather than
    # through a shared helper: one Python call less per call. ValueError is
    # fcntl's refusal of the fd -1 of a closed VCPU; any other failure goes
    # to _again (EINTR retried, else the explained KvmError).

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
            self._ioctl(self.fd, _HAS, self._attr)
        except ValueError:
            raise self._closed_error(_NAMES[_HAS], group, attr) from None
        except OSError as exc:
            try:
                self._again(exc, _HAS, self._attr, "has", group, attr)
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
            raise InvalidArgumentError(f"addr must be None or kvmspe.abi.BAD_ADDRESS, got {addr!r}")
        try:
            self._ioctl(self.fd, _GET, buf)
        except ValueError:
            raise self._closed_error(_NAMES[_GET], group, attr) from None
        except OSError as exc:
            self._again(exc, _GET, buf, "get", group, attr)
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
        try:
            self._ioctl(self.fd, _SET, buf)
        except ValueError:
            raise self._closed_error(_NAMES[_SET], group, attr) from None
        except OSError as exc:
            self._again(exc, _SET, buf, "set", group, attr)

    def _refuse(self, group: int, attr: int, fmt: struct.Struct, value: object) -> None:
        info = abi.attr_info(group, attr)
        if info is not None:
            abi.check_value(info, value)  # type: ignore[arg-type]
        bits = fmt.size * 8
        signed = fmt.format[-1].islower()
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        ctype = f"{'' if signed else 'u'}int{bits}"
        raise InvalidArgumentError(
            f"group {group} attribute {attr} takes a {ctype} ({lo}..{hi}), got {value!r}"
        )

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
            raise InvalidArgumentError(
                f"timeout must be a number of seconds in (0, 1e6) or None, got {timeout!r}"
            )
        run = self._run
        if run is None:
            size = self.vm.kvm.vcpu_mmap_size()
            try:
                run = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError as exc:
                why = f"cannot map the kvm_run area: {os.strerror(exc.errno or 0)}"
                raise fail(exc, "mmap", why) from None
            self._run = run
        try:
            if timeout is None:
                retry(self._ioctl, self.fd, abi.KVM_RUN, 0)
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
            with alarm(seconds, thread_directed=blocked):
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
            retry(self._ioctl, self.fd, abi.KVM_SET_SIGNAL_MASK, arg)
        except OSError as exc:
            why = (
                "cannot bound KVM_RUN: this thread blocks SIGALRM, and KVM_SET_SIGNAL_MASK, which"
                f" would unblock it inside KVM_RUN only, failed: {os.strerror(exc.errno or 0)}"
            )
            raise fail(exc, "KVM_SET_SIGNAL_MASK", why) from None

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
        from . import guest

        self._check_open(f"guest {what}")
        return guest.request(self.fd, what, **args)

    def enable_buffer(self, base: int, size: int, unmapped: tuple[tuple[int, int], ...] = ()) -> None:
        """The guest enables a ``size``-byte buffer at VA ``base``; the next
        :meth:`run` has KVM handle it. Only under kvmspe's shim, whose model
        is the guest (:class:`kvmspe.kvm.guest.GuestUnavailable` elsewhere);
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
        self._ioctl = closed_ioctl
        self._close_fd()
        if self in self.vm.vcpus:
            self.vm.vcpus.remove(self)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.fd}"
        return f"Vcpu(index={self.index}, {state}, spe={self.spe})"
