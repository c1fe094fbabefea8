"""VCPU affinity: the policy (which CPUs each VCPU gets) and pinning a real thread."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvmspe.affinity import (
    AffinityError,
    describe_cpus,
    overcommit,
    pin_thread,
    thread_cpus,
    vcpu_affinity,
)
from kvmspe.errors import InvalidArgumentError
from kvmspe.host.profiles import PROFILES


def _spu_cpus(profile: str, spu: int) -> tuple[int, ...]:
    return next(s.cpus for s in PROFILES[profile].spus if s.id == spu)


def test_big_little_vcpus_on_the_big_spu_get_cpus_4_to_7() -> None:
    assert vcpu_affinity(4, 11, _spu_cpus("big-little", 11)) == [(4, 5, 6, 7)] * 4
    assert vcpu_affinity(2, 10, _spu_cpus("big-little", 10)) == [(0, 1, 2, 3)] * 2


def test_more_vcpus_than_the_spu_has_cpus_is_overcommit_refused_only_when_strict() -> None:
    cpus = _spu_cpus("big-little", 11)
    assert vcpu_affinity(8, 11, cpus) == [(4, 5, 6, 7)] * 8
    cost = overcommit(8, 11, cpus)
    assert cost is not None and "\n" not in cost
    assert "8 VCPUs on SPU 11" in cost and "time-share those 4 CPUs" in cost and "8 buffers" in cost
    assert overcommit(4, 11, cpus) is None and overcommit(8, 11, ()) is None
    with pytest.raises(AffinityError) as info:
        vcpu_affinity(8, 11, cpus, strict=True)
    text = str(info.value)
    assert "8 VCPUs on SPU 11" in text and "CPUs 4-7" in text and "at most 4" in text
    assert "\n" not in text
    assert vcpu_affinity(4, 11, cpus, strict=True) == [(4, 5, 6, 7)] * 4
    with pytest.raises(InvalidArgumentError):
        vcpu_affinity(4, 11, cpus, strict=1)  # type: ignore[arg-type]


def test_unknown_cpumask_gives_nothing_to_pin() -> None:
    assert vcpu_affinity(3, 10, ()) == [(), (), ()]


@given(st.integers(1, 64), st.sets(st.integers(0, 255), min_size=1, max_size=64))
def test_every_vcpu_gets_exactly_the_spus_cpus_or_a_strict_refusal(vcpus: int, cpus: set[int]) -> None:
    assert vcpu_affinity(vcpus, 10, cpus) == [tuple(sorted(cpus))] * vcpus
    assert (overcommit(vcpus, 10, cpus) is not None) == (vcpus > len(cpus))
    if vcpus > len(cpus):
        with pytest.raises(AffinityError):
            vcpu_affinity(vcpus, 10, cpus, strict=True)
    else:
        assert vcpu_affinity(vcpus, 10, cpus, strict=True) == [tuple(sorted(cpus))] * vcpus


def test_pin_thread_really_changes_the_threads_affinity_on_this_machine() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    target = frozenset(allowed[-1:])
    seen: dict[str, object] = {}

    def vcpu_thread() -> None:
        seen["before"] = pin_thread(target)
        seen["pinned"] = thread_cpus()
        seen["kernel"] = frozenset(os.sched_getaffinity(0))

    main_before = thread_cpus()
    t = threading.Thread(target=vcpu_thread)
    t.start()
    t.join(10)
    assert not t.is_alive()
    assert seen["before"] == main_before
    assert seen["pinned"] == seen["kernel"] == target
    # sched_setaffinity(0, ...) is per thread: the main thread keeps its set.
    assert thread_cpus() == main_before
    if len(allowed) < 2:
        pytest.skip(f"this process may use only CPU {allowed[0]}: no narrower set to pin a thread to")
    assert target < main_before  # the thread's set really changed


def test_pin_thread_to_no_cpu_or_an_absent_cpu_is_refused() -> None:
    with pytest.raises(AffinityError, match="not known"):
        pin_thread(())
    absent = max(os.sched_getaffinity(0)) + 4096
    before = thread_cpus()
    with pytest.raises(AffinityError, match="cannot pin"):
        pin_thread({absent})
    assert thread_cpus() == before


def test_a_cpu_set_is_described_by_list_and_count() -> None:
    assert describe_cpus((4, 5, 6, 7)) == "CPUs 4-7 (4 CPUs)"
    assert describe_cpus(iter([3])) == "CPUs 3 (1 CPU)"
    assert describe_cpus([0, 2, 1, 8, 8]) == "CPUs 0-2,8 (4 CPUs)"


_NOT_CPU_SETS = [
    [True],
    [False, 2],
    [1.0],
    [-1],
    [1 << 70],
    [8192],
    ["1"],
    "01",
    b"\x01",
    5,
    None,
    1.5,
]


@pytest.mark.parametrize("cpus", _NOT_CPU_SETS, ids=repr)
def test_what_is_not_a_set_of_cpu_numbers_is_refused_as_documented_and_pins_nothing(cpus: Any) -> None:
    before = thread_cpus()
    with pytest.raises(InvalidArgumentError):
        pin_thread(cpus)
    assert thread_cpus() == before  # in particular True is not CPU 1
    with pytest.raises(InvalidArgumentError):
        vcpu_affinity(1, 10, cpus)
    with pytest.raises(InvalidArgumentError):
        describe_cpus(cpus)


@pytest.mark.parametrize("spu", [True, "10", 10.0, None])
def test_an_spu_that_is_not_an_int_is_refused(spu: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="spu"):
        vcpu_affinity(1, spu, (0,))
