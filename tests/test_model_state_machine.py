"""A random state machine over the model's configuration phase: every step's errno is one the
oracle (:mod:`model_oracle`) or the documented rules allow.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, rule
from model_oracle import (
    ATTRS,
    GROUP_ERRNOS,
    INIT,
    IRQ,
    LARGEST,
    MAX,
    SPE,
    SPU,
    U64_MAX,
    VALUED,
    MiB,
    expected_set_max,
    outcome,
)

from kvmspe import abi
from kvmspe.arch import maxbuf
from kvmspe.errors import KvmError, errno_name
from kvmspe.model.kernel import Host, Spu, Vcpu, Vm

# --- the state machine --------------------------------------------------------------------------------

INTERESTING_SIZES = (
    0, 4096, 0x4000, 0x10000, 0x1001, 0x1FF000, 2 * MiB, 0x201000, 3 * MiB, 4 * MiB, 0x401000, 0x402000,
    0x410000, 8 * MiB, 0x801000, 16 * MiB, LARGEST, LARGEST + 4096, U64_MAX - 4095, U64_MAX,
)  # fmt: skip
SPU_LIMITS = (0, 0, 2 * MiB, 4 * MiB, 16 * MiB, LARGEST)

#: No encoding, but aligned to every page size: a band whose step exceeds 64 KiB, off by 64 KiB multiples.
aligned_unrepresentable = st.builds(
    lambda f, k: maxbuf.decode(f) + 0x10000 * k, st.integers(0x1000, maxbuf.FIELD_MAX), st.integers(1, 3)
)
sizes = st.one_of(
    st.sampled_from(INTERESTING_SIZES),
    st.builds(maxbuf.decode, st.integers(0, maxbuf.FIELD_MAX)),  # representable
    aligned_unrepresentable,
    aligned_unrepresentable,
    st.builds(lambda f, d: maxbuf.decode(f) + d, st.integers(0, maxbuf.FIELD_MAX), st.integers(1, 4095)),
    st.integers(0, U64_MAX),
)
irqs = st.sampled_from((15, 16, 20, 23, 31, 32, 0, -1)) | st.integers(-(1 << 31), (1 << 31) - 1)
spu_ids = st.sampled_from((8, 9, 10, 7, -1))
#: Values outside each attribute's C type (__u64 for MAX, int for IRQ and SPU, none for INIT).
BAD_VALUES = {
    MAX: (-1, 1 << 64, True, 1.0, None),
    IRQ: (-(1 << 31) - 1, 1 << 31, False, 23.0, None),
    SPU: (-(1 << 31) - 1, 1 << 31, True, 8.0, None),
    INIT: (0, 1, -1, 3.0, "x"),
}
PPIS = range(16, 32)


@dataclass
class SHost:
    host: Host
    limits: dict[int, int]


@dataclass
class SVm:
    """The oracle's own record of a VM, kept from the rules as documented."""

    vm: Vm
    host: SHost
    irqchip: bool = True
    #: The SPE feature of the VM's VCPUs, fixed by the first one.
    spe: bool | None = None
    spu: int | None = None
    max: int | None = None
    irq: int | None = None
    ran: bool = False
    frozen: object = None
    vcpus: list[SVcpu] = field(default_factory=list)
    used_ids: set[int] = field(default_factory=set)

    def snapshot(self) -> object:
        return (
            None if self.vm.spu is None else self.vm.spu.id,
            self.vm.max_buffer_size,
            self.vm.irq,
            [(v.irq, v.initialised) for v in self.vm.vcpus],
        )


@dataclass
class SVcpu:
    vcpu: Vcpu
    vm: SVm
    spe: bool
    irq: int | None = None
    initialised: bool = False
    ran: bool = False


def documented(call: str, attr: int) -> set[int]:
    """Errnos the docs list for ``call`` on ``attr``, the group-level ones, and ENOMEM."""
    info = abi.ATTRS.get((SPE, attr))
    listed = set(info.errnos[call]) if info is not None else set()
    return listed | GROUP_ERRNOS | {errno.ENOMEM}


class ConfigMachine(RuleBasedStateMachine):
    """Random configuration sequences on several hosts, VMs and VCPUs."""

    vcpus = Bundle("vcpus")

    def __init__(self) -> None:
        super().__init__()
        self.all_vms: list[SVm] = []

    # -- building: every new host or VM comes with one VCPU ---------------------------------------

    def add_vcpu(self, vm: SVm, spe: bool) -> SVcpu | None:
        """KVM_CREATE_VCPU + KVM_ARM_VCPU_INIT; None when the oracle says it fails."""
        index = next(i for i in range(len(vm.used_ids) + 1) if i not in vm.used_ids)
        if vm.ran:
            want = errno.EBUSY
        elif vm.spe is not None and vm.spe != spe:
            want = errno.EINVAL  # features are per VM (measured on Linux 7.2); the id is used
            vm.used_ids.add(index)
        else:
            want = 0
        try:
            vcpu = vm.vm.create_vcpu(spe=spe)
        except KvmError as exc:
            assert exc.errno == want != 0, str(exc)
            return None
        assert want == 0 and vcpu.index == index
        vm.used_ids.add(index)
        vm.spe = spe
        svcpu = SVcpu(vcpu, vm, spe)
        vm.vcpus.append(svcpu)
        return svcpu

    def add_vm(self, host: SHost, *, spe: bool = True, irqchip: bool = True) -> SVcpu:
        svm = SVm(host.host.create_vm(irqchip=irqchip), host, irqchip)
        self.all_vms.append(svm)
        first = self.add_vcpu(svm, spe)
        assert first is not None
        return first

    @initialize(
        target=vcpus,
        page=st.sampled_from(maxbuf.PAGE_SIZES),
        limit=st.sampled_from(SPU_LIMITS),
        memlock=st.sampled_from((None, None, 3 * MiB, 16 * MiB)),
        assign=st.booleans(),
    )
    def first_host(self, page: int, limit: int, memlock: int | None, assign: bool) -> SVcpu:
        v = self.add_vm(SHost(Host(page, [Spu(8, limit)], memlock), {8: limit}))
        if assign:
            self.do_set(v, SPU, 8)
        return v

    @rule(
        target=vcpus,
        page=st.sampled_from(maxbuf.PAGE_SIZES),
        limits=st.lists(st.sampled_from(SPU_LIMITS), max_size=2),
        memlock=st.sampled_from((None, None, 0, 3 * MiB, 16 * MiB)),
        locked=st.sampled_from((0, 0, MiB)),
    )
    def new_host(self, page: int, limits: list[int], memlock: int | None, locked: int) -> SVcpu:
        spus = {8 + i: lim for i, lim in enumerate(limits)}
        host = Host(page, [Spu(i, lim) for i, lim in spus.items()], memlock, locked=locked)
        return self.add_vm(SHost(host, spus))

    @rule(
        target=vcpus,
        v=vcpus,
        configure=st.booleans(),
        spe=st.sampled_from((True, True, False)),
        irqchip=st.sampled_from((True, True, False)),
    )
    def new_vm(self, v: SVcpu, configure: bool, spe: bool, irqchip: bool) -> SVcpu:
        new = self.add_vm(v.vm.host, spe=spe, irqchip=irqchip)
        if configure:
            self.configure(new)
        return new

    @rule(target=vcpus, v=vcpus, spe=st.sampled_from((True, True, False)))
    def new_vcpu(self, v: SVcpu, spe: bool) -> object:
        made = self.add_vcpu(v.vm, spe)
        return multiple() if made is None else made

    @rule(v=vcpus)
    def configure(self, v: SVcpu) -> None:
        """What a VMM does: SPU 8, PPI 23 (each may fail, and is checked)."""
        self.do_set(v, SPU, 8)
        self.do_set(v, IRQ, 23)

    @rule(v=vcpus)
    def configure_and_init(self, v: SVcpu) -> None:
        """The whole sequence: SPU 8, PPI 23, the VM's size or 2 MiB, INIT."""
        self.configure(v)
        self.do_set(v, MAX, v.vm.max if v.vm.max is not None else 2 * MiB)
        self.do_set(v, INIT, None)

    # -- the oracle's view --------------------------------------------------------------------------

    def group_errno(self, v: SVcpu, attr: int) -> int:
        if not v.vm.host.limits:
            return errno.ENXIO
        if not v.spe:
            return errno.ENODEV
        if attr not in ATTRS:
            return errno.ENXIO
        return 0

    def expect_set(self, v: SVcpu, attr: int, value: object) -> int:
        vm = v.vm
        bad = value is abi.BAD_ADDRESS
        if attr == MAX:
            host = vm.host.host
            room = None if host.memlock_limit is None else max(0, host.memlock_limit - host.locked_bytes)
            return expected_set_max(
                host_has_spe=bool(vm.host.limits),
                vcpu_spe=v.spe,
                bad_address=bad,
                ran=vm.ran,
                page=host.page_size,
                spu_limit=None if vm.spu is None else vm.host.limits[vm.spu],
                current=vm.max,
                room=room,
                value=0 if bad else value,  # type: ignore[arg-type]
            )
        code = self.group_errno(v, attr)
        if code:
            return code
        if attr == IRQ:
            # RFC v4/v5: no irqchip, then (as the PMU) after run, then set once;
            # only then is the value read, and it must be the VM's one PPI.
            if not vm.irqchip:
                return errno.ENXIO
            if vm.ran or v.irq is not None:
                return errno.EBUSY
            if bad:
                return errno.EFAULT
            if value not in PPIS or (vm.irq is not None and vm.irq != value):
                return errno.EINVAL
            return 0
        if attr == INIT:
            # Takes no value: a bad pointer changes nothing.
            if vm.ran or v.initialised:
                return errno.EBUSY
            if not vm.irqchip or v.irq is None or vm.spu is None or vm.max is None:
                return errno.ENXIO
            return 0
        # SPU: the value is read first; an unknown id is ENXIO whatever the state (as SET_PMU).
        if bad:
            return errno.EFAULT
        if value not in vm.host.limits:
            return errno.ENXIO
        if vm.ran:
            return errno.EBUSY
        return errno.EINVAL if vm.spu is not None and vm.spu != value else 0

    def do_set(self, v: SVcpu, attr: int, value: object) -> None:
        want = self.expect_set(v, attr, value)
        got = outcome(v.vcpu.set_device_attr, SPE, attr, value)
        event(f"set {abi.ATTRS[(SPE, attr)].name} -> {errno_name(got) if got else 'ok'}")
        assert got == want, (attr, value, got, want)
        assert got in documented("set", attr) | {0}
        if got:
            return
        if attr == INIT:
            v.initialised = True
            return
        assert isinstance(value, int)
        if attr == MAX:
            assert v.vm.max in (None, value)  # the VM's value never changes once set
            v.vm.max = value
        elif attr == SPU:
            v.vm.spu = value
        else:
            v.irq = v.vm.irq = value

    # -- calls ----------------------------------------------------------------------------------------

    @rule(v=vcpus, size=sizes)
    def set_max(self, v: SVcpu, size: int) -> None:
        self.do_set(v, MAX, size)

    @rule(v=vcpus)
    def set_max_again(self, v: SVcpu) -> None:
        """Repeat the VM's value (or a fresh one) through this VCPU."""
        self.do_set(v, MAX, v.vm.max if v.vm.max is not None else 4 * MiB)

    @rule(v=vcpus, irq=irqs)
    def set_irq(self, v: SVcpu, irq: int) -> None:
        self.do_set(v, IRQ, irq)

    @rule(v=vcpus)
    def set_irq_again(self, v: SVcpu) -> None:
        """The VM's PPI again (or 23): EBUSY on a VCPU that has one, even the same."""
        self.do_set(v, IRQ, v.vm.irq if v.vm.irq is not None else 23)

    @rule(v=vcpus, spu=spu_ids)
    def set_spu(self, v: SVcpu, spu: int) -> None:
        self.do_set(v, SPU, spu)

    @rule(v=vcpus, bad=st.booleans())
    def set_init(self, v: SVcpu, bad: bool) -> None:
        self.do_set(v, INIT, abi.BAD_ADDRESS if bad else None)

    @rule(v=vcpus, attr=st.sampled_from(VALUED))
    def set_bad_address(self, v: SVcpu, attr: int) -> None:
        self.do_set(v, attr, abi.BAD_ADDRESS)

    @rule(v=vcpus, attr=st.sampled_from(ATTRS), pick=st.integers(0, 4))
    def set_outside_c_type(self, v: SVcpu, attr: int, pick: int) -> None:
        value = BAD_VALUES[attr][pick]
        before = v.vm.snapshot()
        try:
            v.vcpu.set_device_attr(SPE, attr, value)
        except KvmError as exc:  # pragma: no cover - reported by the assert
            raise AssertionError(f"{value!r} reached the checks: {exc}") from exc
        except ValueError:
            pass
        else:
            raise AssertionError(f"{value!r} was accepted")
        assert v.vm.snapshot() == before

    @rule(v=vcpus, attr=st.sampled_from((4, 5, 255, 1 << 32)))
    def unknown_attr(self, v: SVcpu, attr: int) -> None:
        want = self.group_errno(v, attr)
        assert outcome(v.vcpu.set_device_attr, SPE, attr, 0) == want
        assert outcome(v.vcpu.get_device_attr, SPE, attr) == want
        assert v.vcpu.has_device_attr(SPE, attr) is False

    @rule(v=vcpus, attr=st.sampled_from(ATTRS), bad=st.booleans())
    def get(self, v: SVcpu, attr: int, bad: bool) -> None:
        want = self.group_errno(v, attr)
        value = {MAX: v.vm.max, SPU: v.vm.spu, IRQ: v.irq, INIT: None}[attr]
        if not want and value is None:
            want = errno.EINVAL if attr == MAX else errno.ENXIO
        if not want and bad:
            want = errno.EFAULT
        try:
            got = v.vcpu.get_device_attr(SPE, attr, abi.BAD_ADDRESS if bad else None)
        except KvmError as exc:
            assert exc.errno == want, str(exc)
            assert exc.errno in documented("get", attr)
        else:
            assert want == 0 and got == value

    @rule(v=vcpus, attr=st.sampled_from(ATTRS))
    def has(self, v: SVcpu, attr: int) -> None:
        assert v.vcpu.has_device_attr(SPE, attr) is (self.group_errno(v, attr) == 0)

    @rule(v=vcpus)
    def run(self, v: SVcpu) -> None:
        vm = v.vm
        ready = not v.spe or v.initialised
        try:
            exit_ = v.vcpu.run()
        except KvmError as exc:
            assert exc.errno == errno.EINVAL and not ready, str(exc)
            assert exc.errno in abi.RUN_ERRNOS
            return
        assert ready and isinstance(exit_, abi.Exit)
        v.ran = True
        if not vm.ran:
            vm.ran = True
            vm.frozen = vm.snapshot()

    @rule(v=vcpus, limit=st.sampled_from((None, 0, MiB, 4 * MiB, 1 << 40)))
    def change_memlock(self, v: SVcpu, limit: int | None) -> None:
        v.vm.host.host.set_memlock_limit(limit)

    # -- invariants -----------------------------------------------------------------------------------

    @invariant()
    def model_matches_shadow(self) -> None:
        for svm in self.all_vms:
            vm = svm.vm
            assert vm.has_run is svm.ran
            assert vm.irqchip is svm.irqchip
            assert vm.spe_feature is svm.spe
            assert vm.max_buffer_size == svm.max
            assert (None if vm.spu is None else vm.spu.id) == svm.spu
            assert vm.irq == svm.irq
            assert vm.used_ids == svm.used_ids
            assert [v.vcpu for v in svm.vcpus] == vm.vcpus
            for sv in svm.vcpus:
                assert sv.vcpu.irq == sv.irq
                assert sv.vcpu.initialised is sv.initialised

    @invariant()
    def one_ppi_per_vm(self) -> None:
        """Every VCPU's SPE interrupt is the VM's, a PPI, set only with an irqchip."""
        for svm in self.all_vms:
            irqs = {sv.vcpu.irq for sv in svm.vcpus} - {None}
            assert irqs <= {svm.vm.irq}
            assert svm.vm.irq is None or (svm.vm.irq in PPIS and svm.irqchip)

    @invariant()
    def features_are_the_vms(self) -> None:
        for svm in self.all_vms:
            assert {sv.vcpu.spe for sv in svm.vcpus} <= {svm.spe}

    @invariant()
    def initialised_means_ready(self) -> None:
        """INIT succeeded only with an irqchip, this VCPU's IRQ, the VM's SPU and size;
        a run VCPU with SPE was initialised; a run VM with SPE has its SPU and size."""
        for svm in self.all_vms:
            for sv in svm.vcpus:
                if sv.vcpu.initialised:
                    assert svm.irqchip and sv.irq is not None
                    assert svm.spu is not None and svm.max is not None
                if sv.ran and sv.spe:
                    assert sv.vcpu.initialised
            if svm.ran and svm.spe:
                assert svm.spu is not None and svm.max is not None and svm.irqchip

    @invariant()
    def nothing_changes_after_run(self) -> None:
        for svm in self.all_vms:
            if svm.ran:
                assert svm.snapshot() == svm.frozen

    @invariant()
    def guest_pmbidr_carries_the_vm_value(self) -> None:
        for svm in self.all_vms:
            for sv in svm.vcpus:
                pmbidr = sv.vcpu.guest_pmbidr
                if not sv.spe or svm.spu is None or svm.max is None:
                    assert pmbidr is None
                    continue
                assert svm.vm.spu is not None
                assert pmbidr == svm.vm.spu.pmbidr & ~(0xFFFF << 32) | maxbuf.encode(svm.max) << 32


ConfigMachine.TestCase.settings = settings(stateful_step_count=50, max_examples=100)
test_config_state_machine = ConfigMachine.TestCase
