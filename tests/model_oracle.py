"""The kernel model's configuration phase: the oracle the tests compare it with, and helpers.

The expected errno of every MAX_BUFFER_SIZE set is computed by
:func:`expected_set_max`, written straight from the reference patch's checks
1-7 (and the documented assumptions: group-level checks first, ENOMEM after
ERANGE), not from :mod:`kvmspe.model.rules`. The tests check it on a systematic grid of
pairs of failing checks and, with the IRQ, SPU and INIT rules, on every step
of a random state machine (tests/test_model_*.py).
"""

from __future__ import annotations

import errno

import pytest

from kvmspe import abi
from kvmspe.errors import KvmError
from kvmspe.model.kernel import Host, Spu, Vcpu, Vm

SPE = abi.KVM_ARM_VCPU_SPE_CTRL
IRQ = abi.KVM_ARM_VCPU_SPE_IRQ
SPU = abi.KVM_ARM_VCPU_SPE_SPU
MAX = abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE
INIT = abi.KVM_ARM_VCPU_SPE_INIT
ATTRS = (IRQ, SPU, MAX, INIT)
VALUED = (IRQ, SPU, MAX)
U64_MAX = (1 << 64) - 1
MiB = 1 << 20
LARGEST = 1023 << 42
GROUP_ERRNOS = {errno.ENXIO, errno.ENODEV}


# --- independent oracle, from the reference patch's checks --------------------------------


def representable(size: int) -> bool:
    """The MaxBuffSize encoding (Arm DDI0601), normalised by the top bit."""
    if size < 2 * MiB:
        return size % 4096 == 0
    return size <= LARGEST and size & ((1 << (size.bit_length() - 10)) - 1) == 0


def expected_set_max(
    *,
    host_has_spe: bool,
    vcpu_spe: bool,
    bad_address: bool,
    ran: bool,
    page: int,
    spu_limit: int | None,
    current: int | None,
    room: int | None,
    value: int,
) -> int:
    """Errno (0 for success) of KVM_SET_DEVICE_ATTR(MAX_BUFFER_SIZE).

    ``spu_limit`` is None when the VM has no SPU, else the SPU's limit (0: none);
    ``current`` is the VM's value (None: unset); ``room`` is what RLIMIT_MEMLOCK
    still allows (None: unlimited).
    """
    # Group level [assumed: before checks 1-7], then reading the u64.
    if not host_has_spe:
        return errno.ENXIO
    if not vcpu_spe:
        return errno.ENODEV
    if bad_address:
        return errno.EFAULT
    # Checks 1-7, first failure wins.
    if ran:
        return errno.EBUSY
    if value % page:
        return errno.EINVAL
    if spu_limit is None:
        return errno.ENODEV
    if current is not None:
        return 0 if value == current else errno.EINVAL
    if not representable(value):
        return errno.EDOM
    if spu_limit and (value == 0 or value > spu_limit):
        return errno.ERANGE
    # Set-time accounting [series 33; placed after check 6, assumed].
    if room is not None and value > room:
        return errno.ENOMEM
    return 0


def outcome(fn: object, *args: object, **kwargs: object) -> int:
    """Errno of a model call, 0 on success."""
    try:
        fn(*args, **kwargs)  # type: ignore[operator]
    except KvmError as exc:
        assert exc.errno is not None
        return exc.errno
    return 0


def raised(code: int, fn: object, *args: object, **kwargs: object) -> KvmError:
    with pytest.raises(KvmError) as info:
        fn(*args, **kwargs)  # type: ignore[operator]
    assert info.value.errno == code, str(info.value)
    return info.value


def make(
    *,
    page: int = 4096,
    limit: int = 0,
    memlock: int | None = None,
    locked: int = 0,
    spu: bool = True,
    irq: bool = True,
) -> tuple[Host, Vm, Vcpu]:
    """A host with SPUs 8 (``limit``) and 9 (no limit), a VM and one SPE VCPU."""
    host = Host(page_size=page, spus=[Spu(8, limit), Spu(9, 0)], memlock_limit=memlock, locked=locked)
    vm = host.create_vm()
    vcpu = vm.create_vcpu(spe=True)
    if spu:
        vcpu.set_device_attr(SPE, SPU, 8)
    if irq:
        vcpu.set_device_attr(SPE, IRQ, 23)
    return host, vm, vcpu


def mark_ran(vm: Vm) -> None:
    """Put the VM in the state its first KVM_RUN leaves it in, whatever its SPE state.

    The reference patch decides check 1 (the VM has run) before checks 2-6,
    and the grid below shows that on every combination. Through the API a VM
    with SPE VCPUs runs only once they are initialised, which needs the SPU
    and the max buffer size, so some combinations (run without an SPU) cannot
    be reached that way: this sets the flag the first KVM_RUN sets.
    """
    vm.has_run = True


def init(vcpu: Vcpu) -> None:
    vcpu.set_device_attr(SPE, INIT, None)


def run_ready(vcpu: Vcpu, size: int = 4 * MiB) -> abi.Exit:
    """Set what is still unset (IRQ 23, SPU 8, ``size``), INIT, KVM_RUN."""
    if vcpu.irq is None:
        vcpu.set_device_attr(SPE, IRQ, 23)
    if vcpu.vm.spu is None:
        vcpu.set_device_attr(SPE, SPU, 8)
    if vcpu.vm.max_buffer_size is None:
        vcpu.set_device_attr(SPE, MAX, size)
    init(vcpu)
    return vcpu.run()


def plain_vcpu(host: Host | None = None) -> Vcpu:
    """A VCPU without the SPE feature, in a VM of its own (features are per VM)."""
    host = host or Host(spus=[Spu(8, 0)])
    return host.create_vm().create_vcpu(spe=False)
