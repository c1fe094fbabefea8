"""Every public function of the codec, register, stage-1, planner, memlock,
discovery, vectors and /dev/kvm layers fed wrong types and out-of-range
values: it answers, or raises one of its documented exceptions (ValueError and
its kvmspe subclasses; KvmError, an OSError, from the kernel; the memlock and
process errors memlock documents), and a refused call changes nothing.

``STATS`` counts the calls and how they ended; the figures are printed at the
end of the module (``-s``).
"""

from __future__ import annotations

import functools
import gc
import os
import resource
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmspe import planner, units, validation
from kvmspe.arch import maxbuf
from kvmspe.arch.registers import PMBIDR_EL1, REGISTERS
from kvmspe.arch.stage1 import Stage1
from kvmspe.errors import KvmError
from kvmspe.export import vectors
from kvmspe.host import discovery, memlock
from kvmspe.kvm import Kvm

STATS: Counter[str] = Counter()
HAVE_KVM = os.access("/dev/kvm", os.R_OK | os.W_OK)

#: What any argument may be: every type a careless caller passes, and ints far out of range.
GARBAGE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([-1, 0, 1, 4096, 2**31, 2**32, 2**63, 2**64 - 1, 2**64, 2**65, -(2**63)]),
    st.floats(allow_nan=True),
    st.sampled_from([4096.0, Decimal(4096), Fraction(4096, 1), Decimal("NaN"), complex(1, 0)]),
    st.text(max_size=8),
    st.sampled_from(["4K", "0x1000", "4096", "", "\x00", "٤"]),
    st.binary(max_size=8),
    st.lists(st.integers(0, 10), max_size=3),
    st.tuples(st.integers(), st.integers()),
    st.just(object()),
)
DOCUMENTED: tuple[type[BaseException], ...] = (ValueError, KvmError)


def attempt(
    name: str, call: Callable[[], object], allowed: tuple[type[BaseException], ...] = DOCUMENTED
) -> bool:
    """Run ``call``: True if it answered, False if it refused as documented; anything else fails."""
    STATS["calls"] += 1
    try:
        call()
    except allowed:
        STATS["refused"] += 1
        return False
    except BaseException as exc:  # noqa: BLE001 - the point: name what escaped
        raise AssertionError(f"{name} raised {type(exc).__name__}: {exc}") from exc
    STATS["answered"] += 1
    return True


PURE: dict[str, tuple[Callable[..., object], int]] = {
    "units.parse_size": (units.parse_size, 1),
    "units.parse_uint": (units.parse_uint, 1),
    "units.format_size": (units.format_size, 1),
    "maxbuf.decode": (maxbuf.decode, 1),
    "maxbuf.encode": (maxbuf.encode, 1),
    "maxbuf.is_representable": (maxbuf.is_representable, 1),
    "maxbuf.step_at": (maxbuf.step_at, 1),
    "maxbuf.check_page_size": (maxbuf.check_page_size, 1),
    "maxbuf.round_down": (maxbuf.round_down, 2),
    "maxbuf.round_up": (maxbuf.round_up, 2),
    "maxbuf.sizes": (lambda lo, hi: next(iter(maxbuf.sizes(lo, hi)), None), 2),
    "PMBIDR_EL1.decode": (PMBIDR_EL1.decode, 1),
    "PMBIDR_EL1.get": (PMBIDR_EL1.get, 2),
    "PMBIDR_EL1.field": (PMBIDR_EL1.field, 1),
    "PMBIDR_EL1.encode": (lambda v: PMBIDR_EL1.encode(MaxBuffSize=v), 1),
    "PMBIDR_EL1.encode(mapping)": (PMBIDR_EL1.encode, 1),
    "Stage1": (lambda g, lv: Stage1(g, lv), 2),
    "Stage1(va_bits)": (lambda g, vb: Stage1(g, va_bits=vb), 2),
    "Stage1(unmapped)": (lambda u, t: Stage1(unmapped=(u,), tree=t), 2),
    "Stage1.footprint": (lambda lo, hi: Stage1().footprint(lo, hi, 4096), 2),
    "planner.plan(vcpus, size)": (lambda n, s: planner.plan(n, s), 2),
    "planner.plan(page, granule)": (lambda p, g: planner.plan(1, 4 << 20, page_size=p, granule=g), 2),
    "planner.plan(spu_limit, levels)": (lambda lim, lv: planner.plan(1, None, spu_limit=lim, levels=lv), 2),
    "planner.plan(locked)": (lambda lk: planner.plan(2, 4 << 20, locked_already=lk), 1),
    "planner.placements": (lambda n, s: planner.placements("worst", n, s), 2),
    "validation.check_int": (lambda v: validation.check_int("x", v, -5, 10), 1),
    "discovery.parse_cpulist": (discovery.parse_cpulist, 1),
    "discovery.fixture_roots": (discovery.fixture_roots, 1),
}


@pytest.mark.parametrize("name", sorted(PURE))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=st.lists(GARBAGE, min_size=2, max_size=2))
def test_pure_functions_raise_only_documented_errors(name: str, args: list[Any]) -> None:
    fn, arity = PURE[name]
    attempt(name, lambda: fn(*args[:arity]))


@settings(max_examples=200, deadline=None)
@given(value=GARBAGE, name=GARBAGE)
def test_every_register_refuses_garbage_as_documented(value: Any, name: Any) -> None:
    for reg in REGISTERS.values():
        fields = {name: value} if isinstance(name, str) else value
        attempt(f"{reg.name}.decode", functools.partial(reg.decode, value))
        attempt(f"{reg.name}.get", functools.partial(reg.get, value, name))
        attempt(f"{reg.name}.encode", functools.partial(reg.encode, fields))


@settings(max_examples=150, deadline=None)
@given(nbytes=GARBAGE, pid=GARBAGE, hard=GARBAGE)
def test_memlock_refuses_garbage_and_never_changes_the_limit(nbytes: Any, pid: Any, hard: Any) -> None:
    before = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    # Only this process (pid None or our own) may be changed; only refusals are wanted here.
    if type(nbytes) is int and 0 <= nbytes <= before[0]:
        nbytes = -1  # a valid value at or below the limit would answer (and change nothing)
    if pid is not None and type(pid) is int and pid > 0:
        pid = os.getpid()
    allowed = (ValueError, memlock.MemlockPermissionError, ProcessLookupError)
    answered = attempt("memlock.raise_limit", lambda: memlock.raise_limit(nbytes, pid, hard=hard), allowed)
    if not answered:
        assert resource.getrlimit(resource.RLIMIT_MEMLOCK) == before
    else:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, before)
    attempt("memlock.status", lambda: memlock.status(pid), allowed)


@settings(max_examples=80, deadline=None)
@given(root=GARBAGE, pid=GARBAGE)
def test_discovery_readers_refuse_garbage(root: Any, pid: Any) -> None:
    if isinstance(root, str) and (root.startswith("/") or ".." in root):
        root = "no-such-root"
    attempt("read_spe_instances", lambda: discovery.read_spe_instances(root))
    attempt("read_vm_lck", lambda: discovery.read_vm_lck(root, pid))


@settings(max_examples=60, deadline=None)
@given(out=GARBAGE)
def test_vectors_write_refuses_garbage_and_writes_nothing(out: Any) -> None:
    if isinstance(out, str) and out.strip() and "\0" not in out:
        out = ""  # a real name would be written: the file tests cover that
    with tempfile.TemporaryDirectory() as tmp:
        old = os.getcwd()
        os.chdir(tmp)
        try:
            assert not attempt("vectors.write", lambda: vectors.write(out), (ValueError,))
            assert os.listdir(tmp) == []
        finally:
            os.chdir(old)


# --- the /dev/kvm backend ------------------------------------------------------------------


@pytest.fixture(scope="module")
def vcpu() -> Iterator[Any]:
    if not HAVE_KVM:
        pytest.skip("/dev/kvm is missing or not usable here")
    with Kvm() as kvm:
        yield kvm.create_vm().create_vcpu(0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(group=GARBAGE, attr=GARBAGE, value=GARBAGE)
def test_vcpu_attribute_calls_refuse_garbage_and_keep_the_struct(
    vcpu: Any, group: Any, attr: Any, value: Any
) -> None:
    attempt("has_device_attr", lambda: vcpu.has_device_attr(group, attr))
    attempt("get_device_attr", lambda: vcpu.get_device_attr(group, attr))
    attempt("set_device_attr", lambda: vcpu.set_device_attr(group, attr, value))
    attempt("get_device_attr(addr)", lambda: vcpu.get_device_attr(0, 0, value))
    attempt("set_value_struct", lambda: vcpu.set_value_struct(group, attr, value))
    # Whatever was refused, the struct still says what the next call asks:
    # x86 knows KVM_VCPU_TSC_CTRL/KVM_VCPU_TSC_OFFSET (0/0) and not the SPE group.
    assert vcpu.has_device_attr(0, 0) is True
    assert vcpu.has_device_attr(3, 2) is False
    vcpu.get_device_attr(0, 0)


@pytest.mark.skipif(not HAVE_KVM, reason="/dev/kvm is missing or not usable here")
@settings(max_examples=80, deadline=None)
@given(a=GARBAGE, b=GARBAGE)
def test_kvm_and_vm_refuse_garbage_without_leaking(a: Any, b: Any) -> None:
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    with Kvm() as kvm:
        attempt("Kvm.check_extension", lambda: kvm.check_extension(a))
        if not (type(a) is int and a == 0):
            attempt("Kvm.create_vm", lambda: kvm.create_vm(a).close())
        with kvm.create_vm() as vm:
            attempt("Vm.check_extension", lambda: vm.check_extension(b))
            if not attempt("Vm.create_vcpu", lambda: vm.create_vcpu(a)):
                assert vm.vcpus == []  # a refused VCPU leaves nothing behind
            attempt("Vm.set_user_memory_region", lambda: vm.set_user_memory_region(a, 0, 0, b))
            attempt("Vm.create_device", lambda: vm.create_device(a).close())
    attempt("Kvm(path)", lambda: Kvm(a).close())
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before


def test_report_figures() -> None:
    print(f"\nrobust library: {dict(sorted(STATS.items()))}")
    if STATS["calls"]:
        assert STATS["refused"] > 0 and STATS["answered"] > 0
