"""Model hosts: built-in profiles, and a modelled copy of a discovered host.

Every command needs a host to model, including on machines without SPE.
:data:`PROFILES` names a few typical arm64 hosts; :func:`model_host` turns
one of them, or a :class:`~kvmspe.host.discovery.HostInfo` from
:func:`~kvmspe.host.discovery.discover`, into a :class:`kvmspe.model.kernel.Host`.

From a discovered host [assumed mapping, see :func:`model_host`]:

* page size: the host's page size;
* one SPU per ``arm_spe_N`` instance, ``id`` = its perf PMU ``type`` (the
  number KVM_ARM_VCPU_SPE_SPU is assumed to take), ``cpus`` = its cpumask;
* the SPU's limit: ``caps/max_buff_size`` read as a size in bytes (0 or
  absent: no limit). The file comes from a proposed perf driver patch whose
  unit is not stated where we can see it; a value with no exact
  MaxBuffSize encoding is rounded down to one, as hardware can only hold
  encodable sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import maxbuf
from ..errors import InvalidArgumentError
from ..model.kernel import Host, Spu
from .discovery import HostInfo

__all__ = [
    "DEFAULT_PROFILE",
    "PROFILES",
    "Profile",
    "TYPICAL_SPE_TYPE",
    "fallback_host",
    "model_host",
    "profile_for_page_size",
    "spus_from_info",
]

#: The perf PMU type the profiles give their SPUs: a typical dynamic type
#: (perf hands out numbers after its fixed ones; SPE instances often get ~10).
TYPICAL_SPE_TYPE = 10


@dataclass(frozen=True)
class Profile:
    """A named model host: page size and SPUs, with a one-line description."""

    name: str
    description: str
    page_size: int
    spus: tuple[Spu, ...]

    def host(self, memlock_limit: int | None = None, locked: int = 0) -> Host:
        """A fresh :class:`kvmspe.model.kernel.Host` with this profile."""
        return Host(self.page_size, self.spus, memlock_limit, locked=locked)


_CPUS_0_3 = (0, 1, 2, 3)

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "default-4k",
            "4 KiB pages, one SPE unit (perf type 10, CPUs 0-3) with no buffer size limit",
            4096,
            (Spu(TYPICAL_SPE_TYPE, 0, cpus=_CPUS_0_3),),
        ),
        Profile(
            "16k",
            "16 KiB pages, one SPE unit (perf type 10, CPUs 0-3) with no buffer size limit",
            16384,
            (Spu(TYPICAL_SPE_TYPE, 0, cpus=_CPUS_0_3),),
        ),
        Profile(
            "64k",
            "64 KiB pages, one SPE unit (perf type 10, CPUs 0-3) with no buffer size limit",
            65536,
            (Spu(TYPICAL_SPE_TYPE, 0, cpus=_CPUS_0_3),),
        ),
        Profile(
            "limited-spu",
            "4 KiB pages, one SPE unit (perf type 10, CPUs 0-3) whose MaxBuffSize limits buffers to 4 MiB",
            4096,
            (Spu(TYPICAL_SPE_TYPE, 4 << 20, cpus=_CPUS_0_3),),
        ),
        Profile(
            "server-128",
            "4 KiB pages, one SPE unit (perf type 10) on all 128 CPUs (0-127) with no buffer size limit,"
            " as a homogeneous two-socket server shows one arm_spe_0 for every core",
            4096,
            (Spu(TYPICAL_SPE_TYPE, 0, cpus=range(128)),),
        ),
        Profile(
            "big-little",
            "4 KiB pages, two SPE units: type 10 on CPUs 0-3 unlimited, type 11 on CPUs 4-7 limited to 4 MiB",
            4096,
            (
                Spu(TYPICAL_SPE_TYPE, 0, cpus=_CPUS_0_3),
                Spu(TYPICAL_SPE_TYPE + 1, 4 << 20, cpus=(4, 5, 6, 7)),
            ),
        ),
    )
}

DEFAULT_PROFILE = "default-4k"


def spus_from_info(info: HostInfo) -> list[Spu]:
    """One model SPU per discovered SPE instance whose perf type could be read.

    The limit is ``caps/max_buff_size`` read as bytes [assumed], rounded down
    to an encodable size; 0 or absent means no limit.
    """
    spus = []
    for inst in info.spe_instances:
        if inst.type is None:
            continue
        limit = inst.max_buff_size or 0
        if limit and not maxbuf.is_representable(limit):
            limit = maxbuf.round_down(limit) or maxbuf.round_up(limit)
        spus.append(Spu(inst.type, limit, cpus=inst.cpus))
    return spus


def model_host(
    source: str | HostInfo = DEFAULT_PROFILE,
    *,
    memlock_limit: int | None = None,
    locked: int = 0,
) -> Host:
    """A model :class:`~kvmspe.model.kernel.Host` from a profile name or a discovered host.

    ``memlock_limit`` (bytes; None: unlimited) and ``locked`` (bytes already
    locked by the VMM) are the modelled process's RLIMIT_MEMLOCK and locked
    memory; to model this process, pass ``info.memlock_soft`` and
    ``info.vm_lck``. A discovered host without SPE instances gives a host
    without SPUs, on which every SPE call answers ENXIO, as the real one does.
    """
    if isinstance(source, HostInfo):
        maxbuf.check_page_size(source.page_size, "the discovered page size")
        return Host(source.page_size, spus_from_info(source), memlock_limit, locked=locked)
    profile = PROFILES.get(source)
    if profile is None:
        raise InvalidArgumentError(f"unknown host profile {source!r}; known: {', '.join(PROFILES)}")
    return profile.host(memlock_limit, locked)


def profile_for_page_size(page_size: int) -> str:
    """The built-in profile with one unlimited SPE unit and ``page_size``
    pages (``default-4k``, ``16k`` or ``64k``); ValueError for another size."""
    for name in (DEFAULT_PROFILE, "16k", "64k"):
        if PROFILES[name].page_size == page_size:
            return name
    accepted = ", ".join(str(p) for p in maxbuf.PAGE_SIZES)
    raise InvalidArgumentError(f"no profile for a {page_size}-byte page size; accepted: {accepted}")


def fallback_host(
    info: HostInfo | None, *, memlock_limit: int | None = None, locked: int = 0
) -> tuple[Host, str]:
    """The model host to use when the real kernel cannot run SPE guests, and why.

    The host itself as far as it can be modelled: its SPE units and page
    size when sysfs shows SPE units; on an arm64 host without any (e.g. under
    a hypervisor that does not pass SPE through), its page size with the
    profile of that page size (one unlimited SPE unit); elsewhere (not
    arm64, or not probed) :data:`DEFAULT_PROFILE`.
    """
    if info is not None and info.spe_instances:
        return model_host(info, memlock_limit=memlock_limit, locked=locked), "modelling this host's SPE units"
    if info is not None and info.arch == "aarch64" and info.page_size in maxbuf.PAGE_SIZES:
        name = profile_for_page_size(info.page_size)
        why = (
            f"modelling this host's {info.page_size // 1024} KiB pages with profile {name!r}"
            " (the host shows no SPE unit)"
        )
        return PROFILES[name].host(memlock_limit, locked), why
    host = model_host(DEFAULT_PROFILE, memlock_limit=memlock_limit, locked=locked)
    return host, f"modelling the default profile {DEFAULT_PROFILE!r}"
