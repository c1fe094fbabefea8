"""Plan a VM's SPE max buffer size and the RLIMIT_MEMLOCK its VMM needs.

:func:`plan` takes what an operator knows (VCPUs, a wanted size, the host
page size, the SPU's own limit, the guest's granule and levels, memory the
VMM locks already), or a :class:`PlanHost` to take the page size and the
SPU's limit from, and returns a :class:`Plan`. ``plan`` and ``kvmspe
configure`` share their defaults (:data:`DEFAULT_VCPUS`,
:data:`DEFAULT_MAX_BUFFER_SIZE`, :data:`DEFAULT_CASE`). ``Plan.to_dict()``
has these keys, stable across versions:

``vcpus``, ``page_size``, ``spu_limit``, ``granule``, ``levels``, ``va_bits``
    the inputs, with levels/VA bits filled in (a 48-bit VA when not given).
``host``, ``spu``, ``vcpu_cpus``
    the host planned for (:meth:`PlanHost.to_dict`: ``source``,
    ``page_size``, ``spus`` each ``{id, max_buffer_size, cpus}``), the SPU
    chosen, and for each VCPU the host CPUs it may run on
    (:func:`kvmspe.affinity.vcpu_affinity`); None when planned without a
    host. More VCPUs than the SPU has CPUs is overcommit: every VCPU gets
    all of them, and a warning says what it costs.
``requested``
    the size asked for (None: the SPU's limit).
``size``
    the value to set as KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE, in bytes.
``max_buff_size_field``, ``guest_pmbidr``
    its PMBIDR_EL1.MaxBuffSize encoding, and PMBIDR_EL1 with only that
    field set (KVM copies the SPU's other fields).
``warnings``
    one sentence per adjustment made to the request, and per problem seen.
``pinned``
    ``{"best"|"typical"|"worst": {...}}``, host bytes pinned while every
    VCPU has a buffer of ``size`` enabled: ``per_vcpu`` (one VCPU's buffer
    alone), ``per_vm`` (all of them), its split ``data`` + ``tables`` (=
    ``per_vm``), ``table_pages`` (guest stage-1 table pages behind the
    buffers), ``amplification`` (``per_vm`` / the buffers' bytes),
    ``one_more_vcpu`` (what a plan for one more VCPU pins more; None when
    no more fit), ``why`` (one sentence, from these numbers) and
    ``assumptions``. Every number is None when ``size`` is 0 (no limit:
    pinning is bounded only by guest RAM).
``case``
    which case ``memlock_limit`` takes (worst by default).
``locked_already``, ``held_at_set``
    memory the VMM has locked already, and what setting the size keeps
    locked (non-zero only with ``set_time_charge_mode="held"``).
``memlock_limit``, ``memlock_limit_kib``
    the RLIMIT_MEMLOCK to give the VMM: locked_already + held_at_set + the
    case's per-VM pinning, in bytes and in KiB rounded up; None means
    RLIM_INFINITY.
``paste``
    :func:`memlock_settings` of ``memlock_limit``: ``systemd``, ``ulimit``
    (None above the 2**54 - 1 KiB bash takes), ``libvirt`` (None when
    unlimited, or from 2**53 - 1 KiB, which libvirt reads as unlimited),
    ``prlimit``, ``pam_limits_soft`` and ``pam_limits_hard`` (None where
    ``ulimit`` is), ``docker`` and ``podman`` (None above 2**63 - 1 bytes) lines.

The data/table split. ``data`` is the host pages behind the buffers,
``tables`` the host pages behind the stage-1 table pages that translate
them and are not behind a buffer: a host page holding both would be pinned
once and counted once, under ``data``. The modelled layouts never share a
host page between data and tables (each kind starts a host page of its
own, see :mod:`kvmspe.arch.stage1`), so here ``tables`` is exactly the
table pages' host pages.

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
  host page of its own), one tree per VCPU, each buffer starting 4 KiB (the
  finest step of its limit, PMBLIMITR_EL1.LIMIT) below a boundary of the
  largest table span, so it straddles every level and, on large host pages,
  one host page more.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .arch import maxbuf
from .arch.registers import PMBIDR_EL1
from .arch.stage1 import Footprint, Stage1, check_granule
from .assumptions import DEFAULT, Assumptions
from .errors import InvalidArgumentError
from .units import format_size
from .validation import U64_MAX, check_int

if TYPE_CHECKING:
    from .host.discovery import HostInfo
    from .model.kernel import Host, Spu

__all__ = [
    "DEFAULT_CASE",
    "DEFAULT_MAX_BUFFER_SIZE",
    "DEFAULT_VCPUS",
    "PINNING_CASES",
    "CONTAINER_ULIMIT_MAX",
    "LIBVIRT_UNLIMITED_KIB",
    "RLIM_FINITE_MAX",
    "ULIMIT_KIB_MAX",
    "USER_PLACEHOLDER",
    "Plan",
    "PlanHost",
    "Placement",
    "Sweep",
    "check_case",
    "check_limits_user",
    "memlock_settings",
    "placements",
    "plan",
    "sweep",
]

#: The pinning cases, in the order reported.
PINNING_CASES = ("best", "typical", "worst")

#: Defaults shared by ``kvmspe plan`` and ``kvmspe configure`` (and :func:`plan`,
#: :func:`kvmspe.vmm.bring_up`): one VCPU, a 4 MiB max buffer size (clamped to
#: the SPU's limit), and the worst case for RLIMIT_MEMLOCK, the only case that
#: bounds what any guest can pin.
DEFAULT_VCPUS = 1
DEFAULT_MAX_BUFFER_SIZE = 4 << 20
DEFAULT_CASE = "worst"

_CASE_TEXT = {
    "best": "block mappings; tables and data contiguous in guest-physical memory; all VCPUs"
    " share one translation tree; buffers back to back from VA 0",
    "typical": "page mappings; tables and data contiguous in guest-physical memory; all VCPUs"
    " share one translation tree; buffers back to back from VA 0",
    "worst": "page mappings; every table and data page in a host page of its own; one"
    " translation tree per VCPU; each buffer 4 KiB below a boundary of every level",
}
#: The largest number of VCPUs accepted (KVM's arm64 limit is far lower).
MAX_VCPUS = 1 << 16


def check_case(case: object) -> str:
    """``case`` when it is one of :data:`PINNING_CASES`, else a one-line
    :class:`~kvmspe.errors.InvalidArgumentError` (a ValueError)."""
    if not isinstance(case, str) or case not in PINNING_CASES:
        raise InvalidArgumentError(f"case {case!r} is unknown; accepted: {', '.join(PINNING_CASES)}")
    return case


# --- the host planned for ------------------------------------------------------------------


@dataclass(frozen=True)
class PlanHost:
    """The host a plan is for: where it comes from (one phrase), page size, SPE units.

    Build one with :meth:`from_profile`, :meth:`from_fixture` or
    :meth:`configured` (the host ``kvmspe configure`` would use).
    """

    source: str
    page_size: int
    spus: tuple[Spu, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "page_size": self.page_size, "spus": [s.to_dict() for s in self.spus]}

    def spu(self, spu_id: int | None) -> Spu | None:
        """SPU ``spu_id`` (None: the first, as configure takes), None on a host without SPE.

        Raises ValueError naming the SPUs there are when ``spu_id`` is not one of them.
        """
        if spu_id is None:
            return self.spus[0] if self.spus else None
        for s in self.spus:
            if s.id == spu_id:
                return s
        there = ", ".join(str(s.id) for s in self.spus) or "none (this host has no SPE unit)"
        raise InvalidArgumentError(f"SPU {spu_id} is not on this host ({self.source}); accepted: {there}")

    @classmethod
    def from_model(cls, host: Host, source: str) -> PlanHost:
        """The page size and SPUs of a model host."""
        return cls(source, host.page_size, tuple(host.spus))

    @classmethod
    def from_profile(cls, name: str) -> PlanHost:
        """A built-in model profile (:data:`kvmspe.host.profiles.PROFILES`); ValueError for another name."""
        from .host import profiles

        if not isinstance(name, str):
            known = ", ".join(profiles.PROFILES)
            raise InvalidArgumentError(f"profile {name!r} is not a profile name; accepted: {known}")

        return cls.from_model(profiles.model_host(name), f"profile {name!r}")

    @classmethod
    def from_info(cls, info: HostInfo, source: str) -> PlanHost:
        """A discovered host, modelled as :func:`kvmspe.host.profiles.model_host` does."""
        from .host import profiles

        return cls.from_model(profiles.model_host(info), source)

    @classmethod
    def from_fixture(cls, name: str) -> PlanHost:
        """A shipped sysfs/procfs snapshot (or a directory laid out as one), as ``probe --fixture``.

        A snapshot holds no page size: this machine's is used, and the source says so.
        A snapshot too large to be a host's is refused (InvalidArgumentError).
        """
        from .host import discovery

        roots = discovery.fixture_roots(name)
        info = discovery.discover(sysfs_root=roots["sysfs_root"], procfs_root=roots["procfs_root"])
        reason = info.spe_instances_reason or ""
        if reason.startswith(discovery.SNAPSHOT_REFUSED):
            raise InvalidArgumentError(f"fixture {name!r}: {reason}")
        source = f"fixture {name!r} (its SPE units; this machine's {format_size(info.page_size)} pages)"
        return cls.from_info(info, source)

    @classmethod
    def configured(cls) -> PlanHost:
        """The host ``kvmspe configure`` would use: this host's SPE units when sysfs
        shows some, else the model :func:`kvmspe.host.profiles.fallback_host` picks."""
        from .host import discovery, profiles

        info = discovery.discover()
        host, why = profiles.fallback_host(info)
        return cls.from_model(host, f"the host configure would use, {why}")


# --- where the buffers sit --------------------------------------------------------------------


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


#: The finest step a guest can move its buffer's end by: PMBLIMITR_EL1.LIMIT is
#: bits [63:12], so the limit address is 4 KiB aligned whatever the granule.
BUFFER_STEP = 4096


def _worst_base(s1: Stage1, size: int) -> int:
    """:data:`BUFFER_STEP` below the largest table-span boundary that leaves room for the buffer.

    Not one guest page below: with a 16 or 64 KiB granule a buffer of up to a
    granule would then sit inside one page, while one starting 4 KiB below
    the boundary straddles it, and pins a table page more at every level
    (and, on host pages above 4 KiB, one host page of data more).
    """
    for depth in range(s1.depth - 1, 0, -1):
        boundary = s1.span(depth)
        if boundary - BUFFER_STEP + size <= s1.region_size:
            return boundary - BUFFER_STEP
    return 0


def placements(
    case: str, vcpus: int, size: int, *, granule: int = 4096, levels: int | None = None
) -> list[Placement]:
    """The buffers of ``case`` for ``vcpus`` VCPUs (what a model run enables)."""
    check_case(case)
    _int("vcpus", vcpus, 1, MAX_VCPUS)
    _int("size", size, 1)
    out = []
    for i in range(vcpus):
        s1 = _stage1(case, granule, levels, tree=i)
        base = _worst_base(s1, size) if case == "worst" else i * size
        out.append(Placement(i, base, size, s1))
    return out


# --- what the buffers pin ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Pinned:
    """Host bytes pinned by ``vcpus`` buffers in one case, split data / tables."""

    data: int
    tables: int
    table_pages: int
    levels: tuple[int, ...]

    @property
    def total(self) -> int:
        return self.data + self.tables


def _split(fp: Footprint, times: int) -> _Pinned:
    data = sum(end - start for space, start, end in fp.intervals if _is_data(space)) * fp.page_size
    return _Pinned(
        times * data,
        times * (fp.bytes - data),
        times * sum(fp.table_pages.values()),
        tuple(sorted(fp.table_pages)),
    )


def _is_data(space: object) -> bool:
    return isinstance(space, tuple) and space[-1] == "data"


def _pinned(case: str, vcpus: int, size: int, page: int, granule: int, levels: int | None) -> _Pinned:
    one = placements(case, 1, size, granule=granule, levels=levels)[0]
    if case == "worst":
        # One tree per VCPU, each buffer placed alike: every VCPU pins as much as the first.
        return _split(one.stage1.footprint(one.base, one.base + size, page), vcpus)
    # Back-to-back buffers in one tree pin the union of their pages, which is
    # what one buffer spanning them all pins.
    return _split(one.stage1.footprint(0, vcpus * size, page), 1)


def _levels_text(levels: Sequence[int]) -> str:
    if not levels:
        return "no level"
    if len(levels) == 1:
        return f"level {levels[0]}"
    return f"levels {levels[0]}-{levels[-1]}"


def _ratio(x: float) -> str:
    """``x16`` or ``x1.25``: a factor without trailing zeros."""
    return f"x{x:.4f}".rstrip("0").rstrip(".")


def _why(case: str, vcpus: int, size: int, page: int, granule: int, p: _Pinned) -> str:
    """One sentence: why ``case`` pins ``p.total`` for ``vcpus`` buffers of ``size``, from the numbers."""
    buffers = vcpus * size
    head = f"x{p.total / buffers:.4f} ({format_size(p.total)} for {format_size(buffers)} of buffers)"
    if p.data > buffers and granule < page:
        data = (
            f"each {format_size(granule)} guest page of a scattered buffer can sit in a"
            f" {format_size(page)} host page of its own, pinned whole ({_ratio(p.data / buffers)} for data)"
        )
        touched = p.data // vcpus // page  # guest pages per buffer, one host page each
        if case == "worst" and touched * granule > size:
            data += (
                f"; starting {format_size(BUFFER_STEP)} below a guest page boundary, a buffer"
                f" touches {touched} guest pages, not {-(-size // granule)}"
            )
    elif p.data > buffers:
        data = (
            f"a buffer starting {format_size(BUFFER_STEP)} below a host page boundary touches one"
            f" {format_size(page)} host page more than its size, pinned whole ({_ratio(p.data / buffers)}"
            " for data)"
        )
    else:
        data = "the buffers' pages are pinned as they are (x1 for data)"
    if case == "worst":
        per = p.table_pages // vcpus
        tables = (
            f"each VCPU's own {per} stage-1 table page{'s' if per != 1 else ''}"
            f" ({_levels_text(p.levels)}) pin {format_size(p.tables // vcpus)} more"
        )
    else:
        n = p.table_pages
        who = "the VCPUs share" if vcpus > 1 else "the VCPU uses"
        tables = (
            f"the {n} stage-1 table page{'s' if n != 1 else ''} {who} ({_levels_text(p.levels)})"
            f" pin {format_size(p.tables)} more"
        )
    return f"{head}: {data}, and {tables}"


@dataclass(frozen=True, kw_only=True)
class CasePinning:
    """What the VM's buffers pin in one placement case.

    ``per_vcpu`` is one VCPU's buffer alone, ``per_vm`` all of them (``data`` + ``tables``
    bytes, ``table_pages`` stage-1 table pages), ``amplification`` ``per_vm`` over the
    buffers' bytes, ``one_more_vcpu`` what a VCPU more would add (None where it would not
    fit), ``why`` the sentence behind the figure and ``assumptions`` the case's own.
    """

    per_vcpu: int
    per_vm: int
    data: int
    tables: int
    table_pages: int
    amplification: float
    one_more_vcpu: int | None
    why: str
    assumptions: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _unbounded_case(case: str) -> dict[str, Any]:
    """A case's entry in :meth:`Plan.to_dict` when no size bounds the buffers: no figures."""
    return {**dict.fromkeys(f.name for f in dataclasses.fields(CasePinning)), "assumptions": _CASE_TEXT[case]}


def _case_pinning(case: str, vcpus: int, size: int, page: int, granule: int, shape: Stage1) -> CasePinning:
    """``case``'s figures for ``vcpus`` buffers of ``size`` bytes (size > 0) in guest tables ``shape``."""
    one = placements(case, 1, size, granule=granule, levels=shape.levels)[0]
    vm = _pinned(case, vcpus, size, page, granule, shape.levels)
    more = None
    if vcpus < MAX_VCPUS and (vcpus + 1) * size <= shape.region_size:
        more = _pinned(case, vcpus + 1, size, page, granule, shape.levels).total - vm.total
    return CasePinning(
        per_vcpu=one.stage1.footprint(one.base, one.base + size, page).bytes,
        per_vm=vm.total,
        data=vm.data,
        tables=vm.tables,
        table_pages=vm.table_pages,
        amplification=vm.total / (vcpus * size),
        one_more_vcpu=more,
        why=_why(case, vcpus, size, page, granule, vm),
        assumptions=_CASE_TEXT[case],
    )


@dataclass(kw_only=True)
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
    #: Each case's figures, in PINNING_CASES order; empty when no size bounds the buffers.
    pinned: dict[str, CasePinning]
    memlock_limit: int | None
    warnings: list[str] = field(default_factory=list)
    case: str = DEFAULT_CASE
    host: PlanHost | None = None
    spu: int | None = None
    vcpu_cpus: list[tuple[int, ...]] | None = None

    @property
    def max_buff_size_field(self) -> int:
        return maxbuf.encode(self.size)

    @property
    def guest_pmbidr(self) -> int:
        return PMBIDR_EL1.encode(MaxBuffSize=self.max_buff_size_field)

    @property
    def memlock_limit_kib(self) -> int | None:
        """``memlock_limit`` in KiB, rounded up (never below the bytes); None: unlimited."""
        return None if self.memlock_limit is None else -(-self.memlock_limit // 1024)

    @property
    def paste(self) -> dict[str, str | None]:
        """:func:`memlock_settings` of ``memlock_limit``."""
        return memlock_settings(self.memlock_limit)

    def to_dict(self) -> dict[str, Any]:
        return {
            "vcpus": self.vcpus,
            "host": None if self.host is None else self.host.to_dict(),
            "spu": self.spu,
            "vcpu_cpus": None if self.vcpu_cpus is None else [list(c) for c in self.vcpu_cpus],
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
            "pinned": {
                case: self.pinned[case].to_dict() if case in self.pinned else _unbounded_case(case)
                for case in PINNING_CASES
            },
            "case": self.case,
            "locked_already": self.locked_already,
            "held_at_set": self.held_at_set,
            "memlock_limit": self.memlock_limit,
            "memlock_limit_kib": self.memlock_limit_kib,
            "paste": self.paste,
        }


#: The largest finite RLIMIT_MEMLOCK the kernel holds: rlim_t is a u64 and
#: 2**64-1 is RLIM_INFINITY.
RLIM_FINITE_MAX = U64_MAX - 1
#: The largest ``ulimit -l`` value bash accepts: it multiplies the KiB by 1024
#: in rlim_t and refuses a product that overflows ("limit out of range",
#: measured with bash 5.2), so at most (2**64 - 1) // 1024 KiB.
ULIMIT_KIB_MAX = U64_MAX // 1024
#: The largest ``--ulimit memlock=`` value docker and podman take: both parse it
#: as a signed 64-bit integer (their shared go-units parser), -1 meaning unlimited.
CONTAINER_ULIMIT_MAX = (1 << 63) - 1
#: The user a limits.conf line is for when none is given: a placeholder, like ``PID``.
USER_PLACEHOLDER = "USER"
#: libvirt's VIR_DOMAIN_MEMORY_PARAM_UNLIMITED (KiB, INT64_MAX >> 10, from its
#: public header libvirt-domain.h): a ``hard_limit`` of this many KiB means no
#: limit, and the range libvirt documents for it ends there, so the largest
#: finite value is one less.
LIBVIRT_UNLIMITED_KIB = (1 << 53) - 1


def check_limits_user(user: object) -> str:
    """``user`` when it can be the first field of a limits.conf line (a user name, ``@group``,
    ``*``, ...): non-empty, without whitespace, ``#`` or control characters; else ValueError."""
    accepted = "accepted: a user name, @group or *, without spaces or '#'"
    if not isinstance(user, str) or not user:
        raise InvalidArgumentError(f"bad limits.conf user {user!r}: empty; {accepted}")
    if any(c.isspace() or c == "#" or ord(c) < 0x20 or c == "\x7f" for c in user):
        raise InvalidArgumentError(f"bad limits.conf user {user!r}: {accepted}")
    return user


def memlock_settings(limit: int | None, user: str = USER_PLACEHOLDER) -> dict[str, str | None]:
    """RLIMIT_MEMLOCK ``limit`` (bytes; None: unlimited) as lines to paste, each in its own unit.

    ``systemd``: ``LimitMEMLOCK=`` for a unit's [Service] section (bytes);
    ``ulimit``: the shell's ``ulimit -l`` (KiB, rounded up so it is never
    below ``limit``; None when that is more than :data:`ULIMIT_KIB_MAX`,
    which bash refuses); ``libvirt``: ``<memtune><hard_limit unit='KiB'>``
    (KiB rounded up; libvirt's hard_limit caps all of the QEMU process's
    memory, so ``limit`` must already include guest RAM and QEMU's own; None
    when unlimited, as libvirt has no finite value for that, and when the
    KiB reach :data:`LIBVIRT_UNLIMITED_KIB`, which libvirt reads as no
    limit); ``prlimit``: util-linux's command for a running VMM, soft = hard
    = ``limit`` (bytes); ``pam_limits_soft`` and ``pam_limits_hard``: the two
    ``/etc/security/limits.conf`` lines for ``user`` (pam_limits reads
    memlock in KiB, rounded up here; None where ``ulimit`` is, as the KiB are
    multiplied by 1024 in 64 bits there too); ``docker`` and ``podman``: the
    ``--ulimit memlock=SOFT:HARD`` option of ``run`` (bytes, soft = hard; -1
    is unlimited; None above :data:`CONTAINER_ULIMIT_MAX`). A None line has
    no value that tool takes.
    """
    check_limits_user(user)
    if limit is None:
        return {
            "systemd": "LimitMEMLOCK=infinity",
            "ulimit": "ulimit -l unlimited",
            "libvirt": None,
            "prlimit": "prlimit --memlock=unlimited:unlimited --pid PID",
            "pam_limits_soft": f"{user} soft memlock unlimited",
            "pam_limits_hard": f"{user} hard memlock unlimited",
            "docker": "--ulimit memlock=-1:-1",
            "podman": "--ulimit memlock=-1:-1",
        }
    _int("limit", limit, 0, RLIM_FINITE_MAX)
    kib = -(-limit // 1024)
    container = f"--ulimit memlock={limit}:{limit}" if limit <= CONTAINER_ULIMIT_MAX else None
    return {
        "systemd": f"LimitMEMLOCK={limit}",
        "ulimit": f"ulimit -l {kib}" if kib <= ULIMIT_KIB_MAX else None,
        "libvirt": (
            f"<memtune><hard_limit unit='KiB'>{kib}</hard_limit></memtune>"
            if kib < LIBVIRT_UNLIMITED_KIB
            else None
        ),
        "prlimit": f"prlimit --memlock={limit}:{limit} --pid PID",
        "pam_limits_soft": f"{user} soft memlock {kib}" if kib <= ULIMIT_KIB_MAX else None,
        "pam_limits_hard": f"{user} hard memlock {kib}" if kib <= ULIMIT_KIB_MAX else None,
        "docker": container,
        "podman": container,
    }


def _int(name: str, value: object, lo: int, hi: int = U64_MAX) -> int:
    return check_int(name, value, lo, hi)


def _choose_size(requested: int | None, page: int, spu_limit: int, warnings: list[str]) -> int:
    cap = maxbuf.round_down(spu_limit, page) if spu_limit else 0
    if spu_limit and cap == 0:
        raise InvalidArgumentError(
            f"the SPU limit {format_size(spu_limit)} is below the host page size {format_size(page)}:"
            " no max buffer size is accepted on this host"
        )
    if spu_limit and cap != spu_limit:
        warnings.append(
            f"the SPU limit {format_size(spu_limit)} is not a multiple of the page size;"
            f" using {format_size(cap)}"
        )
    if requested is None:
        if not spu_limit:
            warnings.append(
                "the SPU has no limit, so the size is 0 (no limit): the memory the guest can pin is"
                " bounded only by its RAM; give a size to bound it"
            )
        return cap
    if requested == 0:
        if spu_limit:
            warnings.append(
                f"0 (no limit) is refused when the SPU has a limit; using the limit {format_size(cap)}"
            )
            return cap
        warnings.append("0 means no limit: the memory the guest can pin is bounded only by its RAM")
        return 0
    if spu_limit and requested > cap:
        warnings.append(f"{format_size(requested)} is above the SPU limit; clamped to {format_size(cap)}")
        return cap
    size = maxbuf.round_down(min(requested, maxbuf.LARGEST), page)
    if size == 0:
        size = maxbuf.round_up(requested, page)
        warnings.append(
            f"{format_size(requested)} rounds down to 0, which means no limit; rounded up to"
            f" {format_size(size)} instead"
        )
    elif size != requested:
        warnings.append(
            f"{format_size(requested)} is not a representable multiple of the page size; rounded"
            f" down to {format_size(size)}"
        )
    return size


def _host_inputs(
    host: PlanHost | None, spu: int | None, vcpus: int, page_size: int | None, spu_limit: int | None
) -> tuple[int, int, Spu | None, list[tuple[int, ...]] | None, list[str]]:
    """Page size, SPU limit, the SPU and each VCPU's CPUs, from ``host`` unless given
    (InvalidArgumentError for a page size or SPU limit the architecture cannot have)."""
    page, limit, chosen, cpus, notes = _host_values(host, spu, vcpus, page_size, spu_limit)
    maxbuf.check_page_size(page)
    if not maxbuf.is_representable(limit):
        raise InvalidArgumentError(
            f"the SPU limit {format_size(limit)} is not a MaxBuffSize size; accepted: representable"
            " sizes (kvmspe sizes lists them)"
        )
    return page, limit, chosen, cpus, notes


def _host_values(
    host: PlanHost | None, spu: int | None, vcpus: int, page_size: int | None, spu_limit: int | None
) -> tuple[int, int, Spu | None, list[tuple[int, ...]] | None, list[str]]:
    notes: list[str] = []
    if host is None:
        if spu is not None:
            raise InvalidArgumentError("an SPU is chosen on a host; accepted: spu=None without a host")
        return (4096 if page_size is None else page_size), (spu_limit or 0), None, None, notes
    chosen = host.spu(spu)
    page = host.page_size if page_size is None else page_size
    if chosen is None:
        notes.append(f"the host ({host.source}) has no SPE unit: configure would stop at the SPU")
        return page, (spu_limit or 0), None, None, notes
    limit = chosen.max_buffer_size if spu_limit is None else spu_limit
    from .affinity import overcommit, vcpu_affinity

    cpus: list[tuple[int, ...]] | None = vcpu_affinity(vcpus, chosen.id, chosen.cpus)
    cost = overcommit(vcpus, chosen.id, chosen.cpus)
    if cost is not None:
        notes.append(f"{cost} (configure runs them; with --strict-placement it stops here)")
    if cpus is not None and not chosen.cpus:
        notes.append(f"SPU {chosen.id}'s CPUs are not known: no VCPU can be pinned to them")
    return page, limit, chosen, cpus, notes


def _check_plan_arguments(
    vcpus: object,
    max_buffer_size: object,
    page_size: object,
    spu_limit: object,
    granule: object,
    levels: object,
    locked_already: object,
    case: object,
    host: object,
    spu: object,
) -> None:
    """:func:`plan`'s arguments, each checked on its own (InvalidArgumentError naming it)."""
    _int("vcpus", vcpus, 1, MAX_VCPUS)
    check_case(case)
    if max_buffer_size is not None:
        _int("max_buffer_size", max_buffer_size, 0, U64_MAX)
    if page_size is not None:
        maxbuf.check_page_size(page_size)
    check_granule(granule)
    if spu_limit is not None:
        _int("spu_limit", spu_limit, 0)
    if levels is not None:
        _int("levels", levels, 1, 5)
    _int("locked_already", locked_already, 0)
    if spu is not None:
        _int("spu", spu, 0, (1 << 31) - 1)  # an int perf type: True is not SPU 1
    if host is not None and not isinstance(host, PlanHost):
        raise InvalidArgumentError(f"host {host!r} is not a PlanHost; accepted: a PlanHost, or None")


def _memlock_needed(locked_already: int, held: int, pinned: int) -> int:
    """The RLIMIT_MEMLOCK a VM needs: what is locked already, what the set holds, what its buffers pin."""
    needed = locked_already + held + pinned
    if needed > RLIM_FINITE_MAX:
        raise InvalidArgumentError(
            f"the RLIMIT_MEMLOCK needed, {format_size(locked_already)} locked already +"
            f" {format_size(held + pinned)} for SPE, is more than the kernel can hold (a finite"
            f" limit is at most {format_size(RLIM_FINITE_MAX)});"
            " accepted: less memory locked already, fewer VCPUs or a smaller size"
        )
    return needed


def plan(
    vcpus: int = DEFAULT_VCPUS,
    max_buffer_size: int | None = DEFAULT_MAX_BUFFER_SIZE,
    *,
    page_size: int | None = None,
    spu_limit: int | None = None,
    granule: int = 4096,
    levels: int | None = None,
    locked_already: int = 0,
    case: str = DEFAULT_CASE,
    host: PlanHost | None = None,
    spu: int | None = None,
    assumptions: Assumptions = DEFAULT,
) -> Plan:
    """Plan the max buffer size and RLIMIT_MEMLOCK (see the module docstring).

    ``max_buffer_size`` None takes the SPU's limit. ``page_size`` and
    ``spu_limit`` default to ``host``'s (its page size, the limit of SPU
    ``spu``, the first SPU when None), or without a host to 4 KiB and no
    limit. ``case`` picks which case ``memlock_limit`` covers.

    Raises ValueError with a one-line message for input outside what is accepted.
    """
    _check_plan_arguments(
        vcpus, max_buffer_size, page_size, spu_limit, granule, levels, locked_already, case, host, spu
    )
    page, limit, chosen, vcpu_cpus, notes = _host_inputs(host, spu, vcpus, page_size, spu_limit)
    shape = Stage1(granule, levels)
    assert shape.levels is not None and shape.va_bits is not None
    warnings: list[str] = []
    size = _choose_size(max_buffer_size, page, limit, warnings)
    warnings += notes
    if size and vcpus * size > shape.region_size:
        raise InvalidArgumentError(
            f"{vcpus} buffers of {format_size(size)} do not fit a {shape.va_bits}-bit guest VA space;"
            " accepted: more levels, or a smaller size"
        )
    # No size (0: no limit) bounds nothing: no case has figures.
    pinned = {name: _case_pinning(name, vcpus, size, page, granule, shape) for name in PINNING_CASES if size}
    held = size if assumptions.set_time_charge_mode == "held" else 0
    memlock = _memlock_needed(locked_already, held, pinned[case].per_vm) if size else None
    return Plan(
        vcpus=vcpus,
        requested=max_buffer_size,
        size=size,
        page_size=page,
        spu_limit=limit,
        granule=granule,
        levels=shape.levels,
        va_bits=shape.va_bits,
        locked_already=locked_already,
        held_at_set=held,
        pinned=pinned,
        memlock_limit=memlock,
        warnings=warnings,
        case=case,
        host=host,
        spu=None if chosen is None else chosen.id,
        vcpu_cpus=vcpu_cpus,
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
    ``up_to`` (and the largest size MaxBuffSize encodes), no SPU limit,
    leaving out sizes whose ``vcpus`` buffers do not fit the guest's VA space.

    Raises ValueError as :func:`plan` does.
    """
    _int("vcpus", vcpus, 1, MAX_VCPUS)
    maxbuf.check_page_size(page_size)
    region = Stage1(check_granule(granule), levels).region_size
    top = min(_int("up_to", up_to, 0), maxbuf.LARGEST, region // vcpus)
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
            per_vm[case].append(p.pinned[case].per_vm)
    return Sweep(sizes, per_vm)
