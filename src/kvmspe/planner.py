"""Plan a VM's SPE max buffer size and the RLIMIT_MEMLOCK its VMM needs.

:func:`plan` takes what an operator knows (VCPUs, a wanted size, the host
page size, the SPU's own limit, the guest's granule and levels, memory the
VMM locks already) and returns a :class:`Plan`. ``Plan.to_dict()`` has these
keys, stable across versions:

``vcpus``, ``page_size``, ``spu_limit``, ``granule``, ``levels``, ``va_bits``
    the inputs, with levels/VA bits filled in (a 48-bit VA when not given).
``requested``
    the size asked for (None: the largest the SPU allows).
``size``
    the value to set as KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE, in bytes.
``max_buff_size_field``, ``guest_pmbidr``
    its PMBIDR_EL1.MaxBuffSize encoding, and PMBIDR_EL1 with only that
    field set (KVM copies the SPU's other fields).
``warnings``
    one sentence per adjustment made to the request.
``pinned``
    ``{"best"|"typical"|"worst": {"per_vcpu", "per_vm", "assumptions"}}``:
    host bytes pinned while every VCPU has a buffer of ``size`` enabled.
    None when ``size`` is 0 (no limit: pinning is bounded only by guest RAM).
``locked_already``, ``held_at_set``
    memory the VMM has locked already, and what setting the size keeps
    locked (non-zero only with ``set_time_charge_mode="held"``).
``memlock_limit``
    the RLIMIT_MEMLOCK to give the VMM: locked_already + held_at_set + the
    worst-case per-VM pinning; None means RLIM_INFINITY.

Rounding the safe way: a size is a cap, so it is rounded *down* to the
nearest size that is representable and a multiple of the host page size,
and clamped to the SPU's limit; rounding down to 0 would mean "no limit",
so such a size is rounded *up* instead. Every adjustment warns. With
``max_buffer_size=None`` the plan takes the SPU's limit (rounded down to a
page multiple); when the SPU has no limit it takes 0 ("no limit", as the
SPU itself) and warns that the memory to lock cannot be bounded.

The three cases are placements a model guest can realise
(:class:`kvmspe.arch.stage1.Stage1`), and :mod:`kvmspe.model.kernel` pins exactly as
many bytes for them (tested):

* best: block mappings, contiguous layout, one translation tree shared by
  every VCPU, buffers back to back from VA 0;
* typical: page mappings, otherwise as best (a Linux guest's vmalloc'ed
  buffers, with its kernel page tables shared by all CPUs);
* worst: page mappings, scattered layout (every table and data page in a
  host page of its own), one tree per VCPU, each buffer starting one guest
  page below a boundary of the largest table span, so it straddles every
  level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .arch import maxbuf
from .arch.registers import PMBIDR_EL1
from .arch.stage1 import Stage1, check_granule
from .model.assumptions import DEFAULT, Assumptions
from .validation import U64_MAX, check_int

__all__ = ["PINNING_CASES", "RLIM_FINITE_MAX", "Plan", "Placement", "Sweep", "placements", "plan", "sweep"]

#: The pinning cases, in the order reported.
PINNING_CASES = ("best", "typical", "worst")

_CASE_TEXT = {
    "best": "block mappings; tables and data contiguous in guest-physical memory; all VCPUs"
    " share one translation tree; buffers back to back from VA 0",
    "typical": "page mappings; tables and data contiguous in guest-physical memory; all VCPUs"
    " share one translation tree; buffers back to back from VA 0",
    "worst": "page mappings; every table and data page in a host page of its own; one"
    " translation tree per VCPU; each buffer one guest page below a boundary of every level",
}
#: The largest number of VCPUs accepted (KVM's arm64 limit is far lower).
MAX_VCPUS = 1 << 16


@dataclass(frozen=True)
class Placement:
    """Where one VCPU's buffer sits in a case: its VA and stage-1."""

    vcpu: int
    base: int
    size: int
    stage1: Stage1


def _stage1(case: str, granule: int, levels: int | None, tree: int) -> Stage1:
    if case == "best":
        return Stage1(granule, levels, blocks=True, layout="contiguous")
    if case == "typical":
        return Stage1(granule, levels, blocks=False, layout="contiguous")
    return Stage1(granule, levels, blocks=False, layout="scattered", tree=tree)


def _worst_base(s1: Stage1, size: int) -> int:
    """One guest page below the largest table-span boundary that leaves room for the buffer."""
    for depth in range(s1.depth - 1, 0, -1):
        boundary = s1.span(depth)
        if boundary - s1.granule + size <= s1.region_size:
            return boundary - s1.granule
    return 0


def placements(
    case: str, vcpus: int, size: int, *, granule: int = 4096, levels: int | None = None
) -> list[Placement]:
    """The buffers of ``case`` for ``vcpus`` VCPUs (what a model run enables)."""
    if case not in PINNING_CASES:
        raise ValueError(f"case {case!r} is unknown; accepted: {', '.join(PINNING_CASES)}")
    _int("vcpus", vcpus, 1, MAX_VCPUS)
    _int("size", size, 1)
    out = []
    for i in range(vcpus):
        s1 = _stage1(case, granule, levels, tree=i)
        base = _worst_base(s1, size) if case == "worst" else i * size
        out.append(Placement(i, base, size, s1))
    return out


@dataclass
class Plan:
    """The result of :func:`plan`; see the module docstring for the keys of :meth:`to_dict`."""

    vcpus: int
    requested: int | None
    size: int
    page_size: int
    spu_limit: int
    granule: int
    levels: int
    va_bits: int
    locked_already: int
    held_at_set: int
    pinned: dict[str, dict[str, Any]]
    memlock_limit: int | None
    warnings: list[str] = field(default_factory=list)

    @property
    def max_buff_size_field(self) -> int:
        return maxbuf.encode(self.size)

    @property
    def guest_pmbidr(self) -> int:
        return PMBIDR_EL1.encode(MaxBuffSize=self.max_buff_size_field)

    def to_dict(self) -> dict[str, Any]:
        return {
            "vcpus": self.vcpus,
            "requested": self.requested,
            "size": self.size,
            "max_buff_size_field": self.max_buff_size_field,
            "guest_pmbidr": self.guest_pmbidr,
            "page_size": self.page_size,
            "spu_limit": self.spu_limit,
            "granule": self.granule,
            "levels": self.levels,
            "va_bits": self.va_bits,
            "warnings": list(self.warnings),
            "pinned": {case: dict(v) for case, v in self.pinned.items()},
            "locked_already": self.locked_already,
            "held_at_set": self.held_at_set,
            "memlock_limit": self.memlock_limit,
        }


#: The largest finite RLIMIT_MEMLOCK the kernel holds: rlim_t is a u64 and
#: 2**64-1 is RLIM_INFINITY.
RLIM_FINITE_MAX = U64_MAX - 1


def _int(name: str, value: object, lo: int, hi: int = U64_MAX) -> int:
    return check_int(name, value, lo, hi)


def _choose_size(requested: int | None, page: int, spu_limit: int, warnings: list[str]) -> int:
    cap = maxbuf.round_down(spu_limit, page) if spu_limit else 0
    if spu_limit and cap == 0:
        raise ValueError(
            f"the SPU limit {spu_limit:#x} is below the host page size {page:#x}: no max buffer size"
            " is accepted on this host"
        )
    if spu_limit and cap != spu_limit:
        warnings.append(f"the SPU limit {spu_limit:#x} is not a multiple of the page size; using {cap:#x}")
    if requested is None:
        if not spu_limit:
            warnings.append(
                "the SPU has no limit, so the size is 0 (no limit): the memory the guest can pin is"
                " bounded only by its RAM; give a size to bound it"
            )
        return cap
    if requested == 0:
        if spu_limit:
            warnings.append(f"0 (no limit) is refused when the SPU has a limit; using the limit {cap:#x}")
            return cap
        warnings.append("0 means no limit: the memory the guest can pin is bounded only by its RAM")
        return 0
    if spu_limit and requested > cap:
        warnings.append(f"{requested:#x} is above the SPU limit; clamped to {cap:#x}")
        return cap
    size = maxbuf.round_down(min(requested, maxbuf.LARGEST), page)
    if size == 0:
        size = maxbuf.round_up(requested, page)
        warnings.append(
            f"{requested:#x} rounds down to 0, which means no limit; rounded up to {size:#x} instead"
        )
    elif size != requested:
        warnings.append(
            f"{requested:#x} is not a representable multiple of the page size; rounded down to {size:#x}"
        )
    return size


def plan(
    vcpus: int,
    max_buffer_size: int | None,
    *,
    page_size: int = 4096,
    spu_limit: int = 0,
    granule: int = 4096,
    levels: int | None = None,
    locked_already: int = 0,
    assumptions: Assumptions = DEFAULT,
) -> Plan:
    """Plan the max buffer size and RLIMIT_MEMLOCK (see the module docstring).

    Raises ValueError with a one-line message for input outside what is accepted.
    """
    _int("vcpus", vcpus, 1, MAX_VCPUS)
    if max_buffer_size is not None:
        _int("max_buffer_size", max_buffer_size, 0, U64_MAX)
    maxbuf.check_page_size(page_size)
    check_granule(granule)
    _int("spu_limit", spu_limit, 0)
    if not maxbuf.is_representable(spu_limit):
        raise ValueError(
            f"the SPU limit {spu_limit:#x} is not a MaxBuffSize size; accepted: representable sizes"
        )
    if levels is not None:
        _int("levels", levels, 1, 5)
    _int("locked_already", locked_already, 0)
    shape = Stage1(granule, levels)
    assert shape.levels is not None and shape.va_bits is not None
    warnings: list[str] = []
    size = _choose_size(max_buffer_size, page_size, spu_limit, warnings)
    pinned: dict[str, dict[str, Any]] = {}
    if size:
        if vcpus * size > shape.region_size:
            raise ValueError(
                f"{vcpus} buffers of {size:#x} bytes do not fit a {shape.va_bits}-bit guest VA space;"
                " accepted: more levels, or a smaller size"
            )
        for case in PINNING_CASES:
            one = placements(case, 1, size, granule=granule, levels=levels)[0]
            per_vcpu = one.stage1.footprint(one.base, one.base + size, page_size).bytes
            if case == "worst":
                per_vm = vcpus * per_vcpu
            else:
                # Back-to-back buffers in one tree pin the union of their pages, which is
                # what one buffer spanning them all pins.
                per_vm = one.stage1.footprint(0, vcpus * size, page_size).bytes
            pinned[case] = {"per_vcpu": per_vcpu, "per_vm": per_vm, "assumptions": _CASE_TEXT[case]}
    else:
        for case in PINNING_CASES:
            pinned[case] = {"per_vcpu": None, "per_vm": None, "assumptions": _CASE_TEXT[case]}
    held = size if assumptions.set_time_charge_mode == "held" else 0
    worst = pinned["worst"]["per_vm"]
    memlock = None if worst is None else locked_already + held + worst
    if memlock is not None and memlock > RLIM_FINITE_MAX:
        raise ValueError(
            f"the RLIMIT_MEMLOCK needed, {locked_already:#x} locked already + {held + worst:#x} for SPE,"
            f" is more than the kernel can hold (a finite limit is at most {RLIM_FINITE_MAX:#x});"
            " accepted: less memory locked already, fewer VCPUs or a smaller size"
        )
    return Plan(
        vcpus,
        max_buffer_size,
        size,
        page_size,
        spu_limit,
        granule,
        shape.levels,
        shape.va_bits,
        locked_already,
        held,
        pinned,
        memlock,
        warnings,
    )


@dataclass(frozen=True)
class Sweep:
    """Pinned memory per VM against the max buffer size: ``sizes`` and, for
    each pinning case, ``per_vm[case][i]`` the bytes pinned at ``sizes[i]``."""

    sizes: list[int]
    per_vm: dict[str, list[int]]


def sweep(
    vcpus: int,
    *,
    page_size: int = 4096,
    granule: int = 4096,
    levels: int | None = None,
    locked_already: int = 0,
    up_to: int = 64 << 20,
    assumptions: Assumptions = DEFAULT,
) -> Sweep:
    """:func:`plan` at every power-of-two multiple of ``page_size`` up to
    ``up_to`` (and the largest size MaxBuffSize encodes), no SPU limit.

    Raises ValueError as :func:`plan` does.
    """
    top = min(_int("up_to", up_to, 0), maxbuf.LARGEST)
    sizes = [s for s in (page_size << k for k in range(64)) if s <= top]
    per_vm: dict[str, list[int]] = {case: [] for case in PINNING_CASES}
    for size in sizes:
        p = plan(
            vcpus,
            size,
            page_size=page_size,
            spu_limit=0,
            granule=granule,
            levels=levels,
            locked_already=locked_already,
            assumptions=assumptions,
        )
        for case in PINNING_CASES:
            per_vm[case].append(p.pinned[case]["per_vm"])
    return Sweep(sizes, per_vm)
