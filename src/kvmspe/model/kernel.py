"""The reference model of the kernel side of the SPE VCPU attributes.

A :class:`Host` has a page size, SPE instances (:class:`Spu`) and an
RLIMIT_MEMLOCK; it creates :class:`Vm` objects, which create :class:`Vcpu`
objects with the same methods as the real backend's VCPU
(:mod:`kvmspe.kvm`): ``set_device_attr``, ``get_device_attr``,
``has_device_attr`` and ``run``. Errors are :class:`~kvmspe.errors.KvmError`
(an ``OSError``) with the kernel's errno. Which errno, and in what order, is
decided only in :mod:`kvmspe.model.rules`; this module keeps state: the VM's SPU,
max buffer size, SPE interrupt and in-kernel irqchip (on by default, as every
arm64 VMM makes one), the VCPU features its first VCPU fixed, and per VCPU its
interrupt and whether KVM_ARM_VCPU_SPE_INIT succeeded (which KVM_RUN needs).
Bad input to the model itself (a VCPU id, a byte count, a value outside an
attribute's C type) is a ValueError before any check.

The run phase: the modelled guest programs its buffer on a VCPU
(``guest_write`` / ``enable_buffer``) and describes its stage-1 translation
(``guest_map``, a :class:`kvmspe.arch.stage1.Stage1`); the next ``run()`` handles
the enable. Its outcomes are not errnos but guest-visible events and exits:

1. limit - pointer above a non-zero MaxBuffSize: a buffer management event,
   PMBSR_EL1 EC=BUF, BSC=0x4, S=1; nothing is pinned [seed, arch];
2. a buffer address without a stage-1 translation: PMBSR_EL1 EC=FAULT_S1,
   S=1; nothing is pinned [series 29];
3. otherwise the host pages behind the buffer and its table pages are
   pinned (:mod:`kvmspe.model.pinning`, each page once per VM) and charged
   against RLIMIT_MEMLOCK; when they do not fit, ``run()`` returns
   KVM_EXIT_RLIMIT with the excess in bytes and pins nothing; the next
   ``run()`` retries [series 32, 33].

Threads: a VMM drives each VCPU from a thread of its own. Every call on a
host, its VMs and VCPUs takes the host's lock (reentrant), so calls from
many threads end as if made one after the other, in some order.

Misaligned pointers and limits, empty buffers and when a disable unpins
follow :class:`kvmspe.assumptions.Assumptions`. Disabling unpins; the
host's ``vm_lck`` (VmLck) keeps its peak until the last VM is destroyed.
"""

from __future__ import annotations

import errno
import functools
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from .. import abi
from ..arch import maxbuf
from ..arch.registers import (
    PMBIDR_EL1,
    PMBLIMITR_EL1,
    PMBSR_BSC_SIZE,
    PMBSR_EC_BUF,
    PMBSR_EC_FAULT_S1,
    PMBSR_EL1,
    REGISTERS,
)
from ..arch.stage1 import Stage1
from ..assumptions import DEFAULT, Assumptions
from ..errors import ClosedError, InvalidArgumentError, KvmError, RegisterError
from ..validation import U64_MAX, is_int
from .pinning import Interval, PinnedPages
from .rules import RULES, Call, Check, Outcome, RuleSet, first_outcome

__all__ = ["Host", "Spu", "Vcpu", "Vm"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _serialised(method: Callable[Concatenate[Any, _P], _R]) -> Callable[Concatenate[Any, _P], _R]:
    """The method under its host's lock: one call at a time per modelled host,
    so VCPU threads end as some serial order of their calls would."""

    def locked(self: Any, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            return method(self, *args, **kwargs)

    functools.update_wrapper(locked, method)
    return locked


class Spu:
    """One SPE instance of the host, as KVM sees it: the one SPU type of kvmspe.

    ``id`` is the number userspace passes to KVM_ARM_VCPU_SPE_SPU (the perf
    PMU type, an assumption). Give either ``max_buffer_size`` (bytes, must be
    representable; 0 = no limit) or a raw ``pmbidr``. ``cpus`` are the CPUs
    that have this SPU. A value: immutable, equal to another with the same
    id, PMBIDR_EL1 and CPUs, so profiles, the planner and the model share it.
    """

    __slots__ = ("cpus", "id", "pmbidr")
    id: int  # noqa: A003 - the kernel's name
    pmbidr: int
    cpus: tuple[int, ...]

    def __init__(
        self,
        id: int,  # noqa: A002 - the kernel's name
        max_buffer_size: int | None = None,
        *,
        pmbidr: int | None = None,
        align: int = 0,
        cpus: Iterable[int] = (),
    ):
        if not is_int(id) or not 0 <= id < 1 << 31:
            raise InvalidArgumentError(f"SPU id must be a non-negative int, got {id!r}")
        if pmbidr is not None and max_buffer_size is not None:
            raise InvalidArgumentError("give max_buffer_size or pmbidr, not both")
        if pmbidr is None:
            pmbidr = PMBIDR_EL1.encode(ALIGN=align, MaxBuffSize=maxbuf.encode(max_buffer_size or 0))
        fields = PMBIDR_EL1.decode(pmbidr)
        if fields["P"]:
            raise InvalidArgumentError(
                f"PMBIDR_EL1 {pmbidr:#x} has P=1: the buffer is owned by a higher exception"
                " level, and Linux's SPE driver does not use such a unit"
            )
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "pmbidr", pmbidr)
        object.__setattr__(self, "cpus", tuple(sorted(set(cpus))))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"an Spu is immutable: cannot set {name}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Spu):
            return NotImplemented
        return (self.id, self.pmbidr, self.cpus) == (other.id, other.pmbidr, other.cpus)

    def __hash__(self) -> int:
        return hash((self.id, self.pmbidr, self.cpus))

    def to_dict(self) -> dict[str, Any]:
        """id, max_buffer_size (bytes; 0: no limit) and cpus, as JSON reports show an SPU."""
        return {"id": self.id, "max_buffer_size": self.max_buffer_size, "cpus": list(self.cpus)}

    @property
    def max_buffer_size(self) -> int:
        """The SPU's own limit in bytes; 0 means no limit."""
        return maxbuf.decode(PMBIDR_EL1.get(self.pmbidr, "MaxBuffSize"))

    @property
    def align(self) -> int:
        """Required buffer alignment in bytes (1 << PMBIDR_EL1.ALIGN)."""
        return 1 << PMBIDR_EL1.get(self.pmbidr, "ALIGN")

    def __repr__(self) -> str:
        return f"Spu(id={self.id}, pmbidr={self.pmbidr:#x})"


class Host:
    """A modelled arm64 host: page size, SPE instances, the VMM's RLIMIT_MEMLOCK.

    ``memlock_limit=None`` is unlimited. ``locked`` is memory the VMM process
    has locked already (for example guest RAM locked with mlock). ``spus=[]``
    is a host without SPE. Both numbers are bytes the kernel holds in 64 bits
    (rlim_t, and the locked-page count times the page size): an int from 0 to
    2**64 - 1; anything else is refused with ValueError.
    """

    def __init__(
        self,
        page_size: int = 4096,
        spus: Iterable[Spu] = (),
        memlock_limit: int | None = None,
        *,
        locked: int = 0,
        rules: RuleSet = RULES,
        assumptions: Assumptions = DEFAULT,
    ):
        maxbuf.check_page_size(page_size)
        self.page_size = page_size
        self.spus = tuple(spus)
        odd = [s for s in self.spus if not isinstance(s, Spu)]
        if odd:
            raise InvalidArgumentError(f"spus takes kvmspe.model.kernel.Spu objects, got {odd[0]!r}")
        ids = [s.id for s in self.spus]
        if len(set(ids)) != len(ids):
            raise InvalidArgumentError(f"SPU ids must be unique, got {ids}")
        self.memlock_limit = _limit(memlock_limit)
        self.locked_bytes = _bytes("locked", locked)
        if not isinstance(rules, RuleSet):
            raise InvalidArgumentError(
                f"rules must be a kvmspe.model.rules.RuleSet, got {type(rules).__name__}"
            )
        if not isinstance(assumptions, Assumptions):
            raise InvalidArgumentError(
                f"assumptions must be a kvmspe.assumptions.Assumptions, got {type(assumptions).__name__}"
            )
        #: Historical maximum of locked memory (VmLck as KVM keeps it).
        self.vm_lck = locked
        self.rules = rules
        self.assumptions = assumptions
        self.vms: list[Vm] = []
        #: Serialises the calls of every thread on this host, its VMs and VCPUs.
        self._lock = threading.RLock()

    def spu(self, spu_id: object) -> Spu | None:
        """The SPU with this id, or None."""
        return next((s for s in self.spus if s.id == spu_id), None)

    def memlock_room(self) -> int | None:
        """Bytes that may still be locked under the limit (None: unlimited)."""
        if self.memlock_limit is None:
            return None
        return max(0, self.memlock_limit - self.locked_bytes)

    @_serialised
    def set_memlock_limit(self, limit: int | None) -> None:
        """Change RLIMIT_MEMLOCK (as setrlimit in the VMM would); None: unlimited."""
        self.memlock_limit = _limit(limit)

    @_serialised
    def lock(self, nbytes: int) -> None:
        """Account ``nbytes`` more locked memory (the caller checked the limit)."""
        self.locked_bytes += nbytes
        self.vm_lck = max(self.vm_lck, self.locked_bytes)

    @_serialised
    def unlock(self, nbytes: int) -> None:
        """Release ``nbytes``; ``vm_lck`` keeps its peak."""
        self.locked_bytes -= nbytes

    @_serialised
    def create_vm(self, *, irqchip: bool = True) -> Vm:
        """KVM_CREATE_VM, with an in-kernel irqchip unless ``irqchip=False``.

        Every arm64 VMM gives its VM a vGIC, created and initialised after
        the VCPUs and before their interrupts are set; the model's irqchip is
        that vGIC, ready whenever a call needs it. ``irqchip=False`` is a VM
        without one, where the SPE interrupt and INIT answer ENXIO.
        """
        if not isinstance(irqchip, bool):
            raise InvalidArgumentError(f"irqchip must be True or False, got {irqchip!r}")
        vm = Vm(self, irqchip=irqchip)
        self.vms.append(vm)
        return vm


def _bytes(name: str, value: object, accepted: str = "") -> int:
    """``value`` as a byte count the kernel can hold (0..2**64-1), or ValueError."""
    if not is_int(value) or not 0 <= value <= U64_MAX:
        raise InvalidArgumentError(
            f"{name} takes {accepted}a number of bytes from 0 to 2**64-1, got {value!r}"
        )
    return value


def _limit(value: object) -> int | None:
    """An RLIMIT_MEMLOCK value: None (unlimited) or an rlim_t byte count."""
    return None if value is None else _bytes("memlock_limit", value, "None (unlimited) or ")


class Vm:
    """A modelled VM: the per-VM SPE state (SPU, max buffer size, IRQ), its
    irqchip and the VCPU features its first VCPU fixed."""

    def __init__(self, host: Host, *, irqchip: bool = True):
        self.host = host
        self._lock = host._lock
        self.irqchip = irqchip
        self.vcpus: list[Vcpu] = []
        #: VCPU ids ever created: KVM never frees one (EEXIST on reuse).
        self.used_ids: set[int] = set()
        #: Whether the VM's VCPUs have the SPE feature, fixed by the first
        #: KVM_ARM_VCPU_INIT (None before it).
        self.spe_feature: bool | None = None
        self.spu: Spu | None = None
        #: None until set; 0 is a real value ("no limit").
        self.max_buffer_size: int | None = None
        #: The PPI every SPE VCPU of the VM uses, once one VCPU has set it.
        self.irq: int | None = None
        self.has_run = False
        self.held_bytes = 0
        self.closed = False
        #: Host pages pinned for the guests' SPE buffers, each page once.
        self.pinned = PinnedPages()

    @_serialised
    def create_vcpu(self, index: int | None = None, *, spe: bool = True) -> Vcpu:
        """KVM_CREATE_VCPU + KVM_ARM_VCPU_INIT, with or without the SPE feature.

        ``index`` is the VCPU id (the next free one when omitted), as for the
        real backend's ``create_vcpu``: an int from 0 to 2**64-1 (the
        ioctl's unsigned long); ids from ``Assumptions.max_vcpu_ids`` up
        answer EINVAL, as KVM_CREATE_VCPU does. The VCPU features are per VM:
        a VCPU whose SPE feature differs from the VM's first VCPU's answers
        EINVAL at KVM_ARM_VCPU_INIT, and its id stays used (measured on
        Linux 7.2 arm64).
        """
        if self.closed:
            raise ClosedError("Vm", "KVM_CREATE_VCPU")
        if index is None:
            index = next(i for i in range(len(self.used_ids) + 1) if i not in self.used_ids)
        if not is_int(index) or not 0 <= index <= U64_MAX:
            raise InvalidArgumentError(f"VCPU index takes an int from 0 to 2**64-1, got {index!r}")
        if not isinstance(spe, bool):
            raise InvalidArgumentError(f"spe must be True or False, got {spe!r}")
        limit = self.host.assumptions.max_vcpu_ids
        if index >= limit:
            raise KvmError(
                errno.EINVAL,
                f"VCPU id {index} is not below KVM_MAX_VCPU_IDS ({limit})",
                ioctl="KVM_CREATE_VCPU",
            )
        # KVM_CREATE_VCPU refuses a new VCPU (EBUSY) before it looks the id up (EEXIST).
        if self.has_run:
            raise KvmError(errno.EBUSY, "VCPUs cannot be added once the VM has run", ioctl="KVM_CREATE_VCPU")
        if index in self.used_ids:
            raise KvmError(errno.EEXIST, f"VCPU {index} exists already", ioctl="KVM_CREATE_VCPU")
        self.used_ids.add(index)
        if self.spe_feature is not None and spe != self.spe_feature:
            have = "with" if self.spe_feature else "without"
            raise KvmError(
                errno.EINVAL,
                f"the VM's VCPUs were initialised {have} the SPE feature; every VCPU of a VM has the"
                " same features",
                ioctl="KVM_ARM_VCPU_INIT",
            )
        self.spe_feature = spe
        vcpu = Vcpu(self, index, spe)
        self.vcpus.append(vcpu)
        return vcpu

    @_serialised
    def close(self) -> None:
        """Destroy the VM: everything it pinned or holds is released, and its
        VCPUs are closed with it. Safe to call twice."""
        if self.closed:
            return
        for vcpu in self.vcpus:
            vcpu.release()
            vcpu.closed = True
        self.host.unlock(self.held_bytes)
        self.held_bytes = 0
        self.closed = True
        self.host.vms.remove(self)
        if not self.host.vms:
            # VmLck is per process; with no VM left, the peak is what is locked.
            self.host.vm_lck = self.host.locked_bytes

    def __enter__(self) -> Vm:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Vcpu:
    """A modelled VCPU with the real backend's methods.

    Once it, or its VM, is closed, every method raises
    :class:`~kvmspe.errors.ClosedError`, as the real backend's VCPU does.
    """

    #: Guest-writable buffer registers.
    GUEST_REGISTERS = ("PMBPTR_EL1", "PMBLIMITR_EL1", "PMBSR_EL1")

    def __init__(self, vm: Vm, index: int, spe: bool):
        self.vm = vm
        self._lock = vm._lock
        self.index = index
        self.spe = spe
        self.irq: int | None = None
        #: KVM_ARM_VCPU_SPE_INIT succeeded on this VCPU.
        self.initialised = False
        self._regs = dict.fromkeys(self.GUEST_REGISTERS, 0)
        self.stage1: Stage1 | None = None
        #: The buffer is enabled by the guest but not pinned yet (handled by run()).
        self.pending = False
        #: What this VCPU holds pinned (host-page intervals), empty when none.
        self._pinned: tuple[Interval, ...] = ()
        self._pinned_bytes = 0
        #: The outcome of the last check run on this VCPU's calls (see ``_decide``).
        self.decided: Outcome | None = None
        self.closed = False

    @_serialised
    def close(self) -> None:
        """Close this VCPU's handle. Safe to call twice. KVM frees a VCPU only
        with its VM: what it pinned stays pinned until the VM is closed."""
        self.closed = True

    def _check_open(self, call: str, group: int | None = None, attr: int | None = None) -> None:
        if self.closed:
            raise ClosedError("Vcpu", call, group=group, attr=attr)

    # -- device attributes ---------------------------------------------------------

    def _decide(self, checks: tuple[Check, ...], call: Call, ioctl: str, group: int) -> bool:
        """Run checks; raise on an errno, return True on an early success.

        ``decided`` keeps the outcome (None when no check had anything to
        say), so a caller can tell which rule answered a call.
        """
        outcome = self.decided = first_outcome(checks, call)
        if outcome is None:
            return False
        if outcome.code == 0:
            return True
        raise KvmError(
            outcome.code, outcome.message, ioctl=ioctl, group=group, attr=call.attr, rule=outcome.rule
        )

    def _group(self, group: int, attr: int, ioctl: str) -> abi.AttrInfo:
        if group != abi.KVM_ARM_VCPU_SPE_CTRL:
            raise KvmError(
                errno.ENXIO,
                f"the model implements only KVM_ARM_VCPU_SPE_CTRL ({abi.KVM_ARM_VCPU_SPE_CTRL}),"
                f" not group {group}",
                ioctl=ioctl,
                group=group,
                attr=attr,
            )
        self._decide(self.vm.host.rules.group, Call(self, attr), ioctl, group)
        info = abi.attr_info(group, attr)
        assert info is not None
        return info

    @_serialised
    def set_device_attr(self, group: int, attr: int, value: object) -> None:
        """KVM_SET_DEVICE_ATTR with ``value`` behind ``addr``.

        ``value`` is an int, or :data:`kvmspe.abi.BAD_ADDRESS` for an
        unreadable pointer; None for KVM_ARM_VCPU_SPE_INIT, which reads no
        value (so BAD_ADDRESS changes nothing for it). A value that does not
        fit the attribute's C type is refused with ValueError before any
        check, as the real backend must.
        """
        ioctl = "KVM_SET_DEVICE_ATTR"
        self._check_open(ioctl, group, attr)
        info = abi.attr_info(group, attr)
        if info is not None and value is not abi.BAD_ADDRESS:
            abi.check_value(info, value)  # type: ignore[arg-type]
        info = self._group(group, attr, ioctl)
        call = Call(self, attr, value)
        if self._decide(self.vm.host.rules.set[attr], call, ioctl, group):
            return
        if attr == abi.KVM_ARM_VCPU_SPE_INIT:
            self.initialised = True
            return
        assert isinstance(value, int)
        if attr == abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE:
            self.vm.max_buffer_size = value
            if self.vm.host.assumptions.set_time_charge_mode == "held":
                self.vm.held_bytes += value
                self.vm.host.lock(value)
        elif attr == abi.KVM_ARM_VCPU_SPE_SPU:
            self.vm.spu = self.vm.host.spu(value)
        elif attr == abi.KVM_ARM_VCPU_SPE_IRQ:
            self.irq = value
            self.vm.irq = value

    @_serialised
    def get_device_attr(self, group: int, attr: int, addr: object = None) -> int:
        """KVM_GET_DEVICE_ATTR; ``addr=BAD_ADDRESS`` makes the write fail (EFAULT)."""
        ioctl = "KVM_GET_DEVICE_ATTR"
        self._check_open(ioctl, group, attr)
        self._group(group, attr, ioctl)
        self._decide(self.vm.host.rules.get[attr], Call(self, attr), ioctl, group)
        if addr is abi.BAD_ADDRESS:
            raise KvmError(
                errno.EFAULT,
                "the value could not be written to kvm_device_attr.addr",
                ioctl=ioctl,
                group=group,
                attr=attr,
            )
        if attr == abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE:
            assert self.vm.max_buffer_size is not None
            return self.vm.max_buffer_size
        if attr == abi.KVM_ARM_VCPU_SPE_SPU:
            assert self.vm.spu is not None
            return self.vm.spu.id
        assert attr == abi.KVM_ARM_VCPU_SPE_IRQ and self.irq is not None
        return self.irq

    @_serialised
    def has_device_attr(self, group: int, attr: int) -> bool:
        """KVM_HAS_DEVICE_ATTR: True for the SPE attributes where SPE is usable.

        A VCPU without the SPE feature answers False [assumed, as the PMU does].
        """
        self._check_open("KVM_HAS_DEVICE_ATTR", group, attr)
        try:
            self._group(group, attr, "KVM_HAS_DEVICE_ATTR")
        except KvmError:
            return False
        return True

    # -- running ----------------------------------------------------------------------

    @property
    def guest_pmbidr(self) -> int | None:
        """PMBIDR_EL1 as the guest reads it (KVM traps the read), or None
        before the VM has both an SPU and a max buffer size."""
        spu, size = self.vm.spu, self.vm.max_buffer_size
        if not self.spe or spu is None or size is None:
            return None
        value = spu.pmbidr & ~PMBIDR_EL1.field("MaxBuffSize").mask
        return value | PMBIDR_EL1.encode(MaxBuffSize=maxbuf.encode(size))

    @_serialised
    def run(self) -> abi.Exit:
        """KVM_RUN: the first entry fixes the VM's configuration; a pending
        buffer enable is handled (see the module docstring)."""
        self._check_open("KVM_RUN")
        self._decide(self.vm.host.rules.run, Call(self), "KVM_RUN", abi.KVM_ARM_VCPU_SPE_CTRL)
        self.vm.has_run = True
        assumptions = self.vm.host.assumptions
        if not self.enabled and self._pinned:
            self._unpin()
        if self.pending:
            excess = self._handle_enable()
            if excess is not None:
                return abi.Exit(abi.ASSUMED.exit_rlimit, rlimit_excess=excess)
        return abi.Exit(assumptions.idle_exit)

    @_serialised
    def release(self) -> None:
        """Drop everything this VCPU pinned (VCPU or VM destruction)."""
        self._unpin()
        self.pending = False

    # -- the guest's side of the buffer -------------------------------------------------

    @property
    def enabled(self) -> bool:
        """PMBLIMITR_EL1.E as the guest last wrote it."""
        return bool(self._regs["PMBLIMITR_EL1"] & 1)

    @property
    def pointer(self) -> int:
        """The buffer's current write pointer (PMBPTR_EL1)."""
        return self._regs["PMBPTR_EL1"]

    @property
    def limit(self) -> int:
        """The first address after the buffer (PMBLIMITR_EL1.LIMIT:Zeros(12))."""
        return PMBLIMITR_EL1.get(self._regs["PMBLIMITR_EL1"], "LIMIT") << 12

    @property
    def pinned_bytes(self) -> int:
        """Host bytes behind this VCPU's buffer and its table pages while pinned.

        Pages shared with another VCPU count here too; the host charges them once.
        """
        return self._pinned_bytes

    @_serialised
    def guest_write(self, reg: str, value: int) -> None:
        """The guest writes a buffer register (KVM traps and emulates it).

        ``reg`` is PMBPTR_EL1, PMBLIMITR_EL1 or PMBSR_EL1; ``value`` a 64-bit
        register value. RES0 bits are ignored, as hardware does. Setting
        PMBLIMITR_EL1.E to 1 enables the buffer: the next ``run()`` pins it.
        Disabling it, or moving the buffer, unpins.
        """
        self._check_open("guest_write")
        if reg not in self.GUEST_REGISTERS:
            raise InvalidArgumentError(
                f"the guest cannot write {reg!r}; accepted: {', '.join(self.GUEST_REGISTERS)}"
            )
        if not is_int(value) or not 0 <= value < 1 << 64:
            raise InvalidArgumentError(f"{reg} takes a 64-bit value (0..2**64-1), got {value!r}")
        assumptions = self.vm.host.assumptions
        register = REGISTERS[reg]
        value &= ~register.res0_mask
        if reg == "PMBPTR_EL1" and assumptions.pmbptr_low_bits == "res0":
            align = self._pmbidr_align()
            value &= ~((1 << align) - 1)
        if reg == "PMBLIMITR_EL1":
            low = assumptions.smallest_granule - 1
            value &= ~(low & ~0xFFF)
        self._regs[reg] = value
        if reg == "PMBSR_EL1":
            # Clearing S resumes profiling: an enabled buffer is handled again.
            self.pending = self.enabled and not self._stopped and not self._pinned
            return
        # A new pointer or limit, or E=0: what is pinned no longer matches the buffer.
        if self._pinned and assumptions.disable_unpins_at_write:
            self._unpin()
        self.pending = self.enabled and not self._stopped

    @_serialised
    def guest_read(self, reg: str) -> int:
        """The value the guest reads; PMBIDR_EL1 as KVM advertises it."""
        self._check_open("guest_read")
        if reg == "PMBIDR_EL1":
            pmbidr = self.guest_pmbidr
            if pmbidr is None:
                raise RegisterError(
                    f"VCPU {self.index} has no guest PMBIDR_EL1 yet: it needs the SPE feature, an SPU"
                    " and a max buffer size"
                )
            return pmbidr
        if reg not in self.GUEST_REGISTERS:
            accepted = ", ".join(("PMBIDR_EL1", *self.GUEST_REGISTERS))
            raise InvalidArgumentError(f"the guest cannot read {reg!r} here; accepted: {accepted}")
        return self._regs[reg]

    @_serialised
    def guest_map(self, stage1: Stage1 | None) -> None:
        """Describe the guest's stage-1 translation for this VCPU's buffer
        (None: no translation at all)."""
        self._check_open("guest_map")
        if stage1 is not None and not isinstance(stage1, Stage1):
            raise InvalidArgumentError(f"guest_map takes a kvmspe.arch.stage1.Stage1 or None, got {stage1!r}")
        if stage1 != self.stage1 and self._pinned:
            self._unpin()
            self.pending = self.enabled and not self._stopped
        self.stage1 = stage1

    @_serialised
    def enable_buffer(self, base: int, size: int, stage1: Stage1 | None = None) -> None:
        """The guest programs a ``size``-byte buffer at VA ``base`` and enables it.

        ``stage1`` replaces the VCPU's stage-1 description; when neither was
        given, the default :class:`Stage1` is used. PMBLIMITR_EL1 holds the
        limit in bits [63:12], so ``base + size`` must be 4 KiB aligned.
        """
        self._check_open("enable_buffer")
        for name, v in (("base", base), ("size", size)):
            if not is_int(v) or v < 0:
                raise InvalidArgumentError(f"buffer {name} must be a non-negative int, got {v!r}")
        end = base + size
        if end >= 1 << 64 or end % 4096:
            raise InvalidArgumentError(
                f"buffer end {end:#x} cannot be a PMBLIMITR_EL1.LIMIT: it must be 4 KiB aligned and"
                " below 2**64"
            )
        if stage1 is not None or self.stage1 is None:
            self.guest_map(stage1 if stage1 is not None else Stage1())
        self.guest_write("PMBLIMITR_EL1", 0)
        self.guest_write("PMBSR_EL1", 0)
        self.guest_write("PMBPTR_EL1", base)
        self.guest_write("PMBLIMITR_EL1", PMBLIMITR_EL1.encode(LIMIT=end >> 12, E=1))

    @_serialised
    def disable_buffer(self) -> None:
        """The guest clears PMBLIMITR_EL1.E."""
        self._check_open("disable_buffer")
        self.guest_write("PMBLIMITR_EL1", self._regs["PMBLIMITR_EL1"] & ~1)

    @property
    def _stopped(self) -> bool:
        """PMBSR_EL1.S: a management event stopped profiling."""
        return bool(PMBSR_EL1.get(self._regs["PMBSR_EL1"], "S"))

    def _pmbidr_align(self) -> int:
        spu = self.vm.spu
        return 0 if spu is None else PMBIDR_EL1.get(spu.pmbidr, "ALIGN")

    def _event(self, ec: int, mss: int) -> None:
        """A buffer management event: PMBSR_EL1 records it, profiling stops."""
        self._regs["PMBSR_EL1"] = PMBSR_EL1.encode(EC=ec, S=1, MSS=mss)
        self.pending = False

    def _handle_enable(self) -> int | None:
        """Pin the enabled buffer; return the excess in bytes when over RLIMIT_MEMLOCK."""
        host = self.vm.host
        self._unpin()  # a buffer moved while pinned (disable_unpins_at_write=False)
        lo, hi = self.pointer, self.limit
        if hi <= lo:
            self._event(PMBSR_EC_BUF, host.assumptions.empty_buffer_bsc)
            return None
        max_size = self.vm.max_buffer_size
        if max_size and hi - lo > max_size:
            self._event(PMBSR_EC_BUF, PMBSR_BSC_SIZE)
            return None
        stage1 = self.stage1
        if stage1 is None or not stage1.translates(lo, hi):
            level = 3 if stage1 is not None and stage1.region(lo, hi) is not None else 0
            if stage1 is not None and level == 0:
                level = max(stage1.level_of(stage1.depth), 0)
            self._event(PMBSR_EC_FAULT_S1, host.assumptions.stage1_fault_fsc | level)
            return None
        footprint = stage1.footprint(lo, hi, host.page_size)
        new = self.vm.pinned.new_pages(footprint.intervals) * host.page_size
        room = host.memlock_room()
        if room is not None and new > room:
            return new - room
        added = self.vm.pinned.pin(footprint.intervals) * host.page_size
        host.lock(added)
        self._pinned = footprint.intervals
        self._pinned_bytes = footprint.bytes
        self.pending = False
        return None

    def _unpin(self) -> None:
        if not self._pinned:
            return
        freed = self.vm.pinned.unpin(self._pinned) * self.vm.host.page_size
        self.vm.host.unlock(freed)
        self._pinned = ()
        self._pinned_bytes = 0
