"""VCPU affinity: the host CPUs each SPE VCPU may run on, and pinning a thread there.

The reference patch leaves this to userspace, as ``KVM_ARM_VCPU_PMU_V3_SET_PMU``
does: a VCPU must run only on physical CPUs that have its SPU. An SPU's CPUs
are its perf PMU's ``cpumask`` in sysfs (``arm_spe_N/cpumask``); on a
big.LITTLE host each SPU covers one cluster.

Policy (:func:`vcpu_affinity`): every VCPU of the SPU may run on every CPU of
that SPU (the kernel's requirement, nothing narrower). More VCPUs on an SPU
than :data:`VCPUS_PER_SPU_CPU` times its CPUs is overcommit, which hosts run
routinely and the kernel takes: the VCPUs time-share those CPUs, while each
still pins its own buffer, so the extra VCPUs cost locked memory without
adding profiling at any one moment. :func:`overcommit` says so, as a
warning; only strict placement (``strict=True``, the CLI's
``--strict-placement``), which gives each VCPU a CPU of its own, refuses it.
That bound is kvmspe's policy [assumed], not a rule of the kernel. An SPU
whose CPUs are not known gives no CPU set; callers say they cannot pin
rather than guess.

:func:`pin_thread` applies one VCPU's CPU set to the calling thread
(``sched_setaffinity`` on Linux applies to one thread, which is what a VMM's
VCPU thread needs) and returns the previous set so it can be restored.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .errors import InvalidArgumentError, KvmspeError
from .host.discovery import MAX_CPUS, format_cpulist
from .validation import check_int

__all__ = [
    "VCPUS_PER_SPU_CPU",
    "AffinityError",
    "describe_cpus",
    "overcommit",
    "pin_thread",
    "thread_cpus",
    "vcpu_affinity",
]

#: How many VCPUs of one VM an SPU's CPU carries before it is overcommit
#: [assumed: kvmspe's policy, one VCPU per physical CPU, so that every VCPU can
#: profile at once]; strict placement refuses more.
VCPUS_PER_SPU_CPU = 1


class AffinityError(KvmspeError, ValueError):
    """More VCPUs than an SPU's CPUs, or a CPU set the OS refused."""


def _cpu_set(cpus: Iterable[int]) -> frozenset[int]:
    """``cpus`` as a set of CPU numbers Linux can have (ints 0..MAX_CPUS-1, not bools).

    Raises :class:`~kvmspe.errors.InvalidArgumentError` for anything else,
    a non-iterable included, so that no TypeError or OverflowError of
    ``sched_setaffinity`` reaches the caller, and no ``True`` pins to CPU 1.
    """
    if isinstance(cpus, str | bytes) or not isinstance(cpus, Iterable):
        raise InvalidArgumentError(
            f"CPUs must be an iterable of CPU numbers, got {type(cpus).__name__};"
            f" accepted: ints 0..{MAX_CPUS - 1}, e.g. (4, 5, 6, 7)"
        )
    return frozenset(check_int("CPU", c, 0, MAX_CPUS - 1) for c in cpus)


def describe_cpus(cpus: Iterable[int]) -> str:
    """A CPU set for people, list and count: ``CPUs 4-7 (4 CPUs)``, ``CPUs 3 (1 CPU)``.

    Raises :class:`~kvmspe.errors.InvalidArgumentError` for what is not a set of CPU numbers.
    """
    unique = _cpu_set(cpus)
    n = len(unique)
    return f"CPUs {format_cpulist(unique)} ({n} CPU{'' if n == 1 else 's'})"


def overcommit(vcpus: int, spu: int, spu_cpus: Iterable[int]) -> str | None:
    """What running ``vcpus`` VCPUs on SPU ``spu`` costs when they are more than
    :data:`VCPUS_PER_SPU_CPU` times its CPUs (one line), else None (also when the
    SPU's CPUs are not known). Raises as :func:`vcpu_affinity` for bad arguments."""
    check_int("vcpus", vcpus, 1, 1 << 16)
    check_int("spu", spu, None, None)
    cpus = tuple(sorted(_cpu_set(spu_cpus)))
    most = VCPUS_PER_SPU_CPU * len(cpus)
    if not cpus or vcpus <= most:
        return None
    return (
        f"{vcpus} VCPUs on SPU {spu}, which only {describe_cpus(cpus)} have: a VCPU runs only on a CPU"
        f" with its SPU, so the {vcpus} VCPUs time-share those {len(cpus)} CPUs (at most {most}"
        f" profile at once), and every VCPU still pins its own buffer, {vcpus} buffers in all"
    )


def vcpu_affinity(
    vcpus: int, spu: int, spu_cpus: Iterable[int], *, strict: bool = False
) -> list[tuple[int, ...]]:
    """The host CPUs each of ``vcpus`` VCPUs on SPU ``spu`` may run on.

    Every VCPU gets all of ``spu_cpus``, however many VCPUs there are
    (:func:`overcommit` says what more VCPUs than CPUs cost). An empty
    ``spu_cpus`` (the SPU's cpumask is not known) gives an empty tuple per
    VCPU: nothing to pin to. With ``strict`` (each VCPU a CPU of its own),
    raises :class:`AffinityError` when ``vcpus`` exceeds
    :data:`VCPUS_PER_SPU_CPU` times the SPU's CPUs. Raises
    :class:`~kvmspe.errors.InvalidArgumentError` (a ValueError) for a
    ``vcpus`` below 1, an ``spu`` that is not an int, ``spu_cpus`` that
    are not CPU numbers Linux can have, or a ``strict`` that is not a bool.
    """
    if not isinstance(strict, bool):
        raise InvalidArgumentError(f"strict must be True or False, got {strict!r}")
    cost = overcommit(vcpus, spu, spu_cpus)
    cpus = tuple(sorted(_cpu_set(spu_cpus)))
    if strict and cost is not None:
        raise AffinityError(
            f"{vcpus} VCPUs on SPU {spu}, which only {describe_cpus(cpus)} have: strict placement gives"
            f" each VCPU a CPU of its own; accepted: at most {VCPUS_PER_SPU_CPU * len(cpus)} VCPUs on"
            " this SPU, or overcommit without --strict-placement"
        )
    return [cpus] * vcpus


def thread_cpus() -> frozenset[int]:
    """The CPUs the calling thread may run on now."""
    return frozenset(os.sched_getaffinity(0))


def pin_thread(cpus: Iterable[int]) -> frozenset[int]:
    """Restrict the calling thread to ``cpus``; returns the set it had before.

    Raises :class:`AffinityError` when the set is empty or the OS refuses it
    (e.g. none of those CPUs is online or allowed to this process), and
    :class:`~kvmspe.errors.InvalidArgumentError` (before any change) for
    what is not CPU numbers Linux can have: a bool, float, negative or huge
    number, a non-iterable.
    """
    wanted = _cpu_set(cpus)
    if not wanted:
        raise AffinityError("no CPU to pin to: the SPU's CPUs are not known")
    before = thread_cpus()
    try:
        os.sched_setaffinity(0, wanted)
    except OSError as exc:
        raise AffinityError(
            f"cannot pin to CPUs {format_cpulist(wanted)}: {exc.strerror or exc}; this process may use"
            f" CPUs {format_cpulist(before)}"
        ) from None
    return before
