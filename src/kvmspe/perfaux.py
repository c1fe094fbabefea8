"""perf in the guest: the largest SPE AUX buffer ``perf record`` can map under the VM's MaxBuffSize.

Inside an SPE guest, ``perf record -e arm_spe_N//`` maps an AUX buffer per
CPU, and the guest's SPE driver refuses one larger than the MaxBuffSize the
VM advertises (``PMBIDR_EL1.MaxBuffSize``, which the proposed perf driver
patch shows as ``caps/max_buff_size``). perf then stops with "failed to mmap
with 22 (Invalid argument)" (reported in the review of the v6 series, Jan
2026: a 4 MiB cap and ``-m,16M``). :func:`fit` finds the largest AUX size
perf may ask for with ``-m,PAGES``.

Each figure and where it comes from (:data:`FACTS`):

* perf sizes the AUX buffer as a power-of-two number of pages, at least two
  (8 KiB with 4 KiB pages); ``-m,N`` sets it. Its default is 4 MiB for a
  privileged user and 128 KiB otherwise (the review of the v6 series).
* The driver refuses an AUX buffer larger than ``caps/max_buff_size``; one
  of exactly that size is accepted (the proposed perf driver patch).
  ``0`` is "no limit" (the MaxBuffSize encoding).
* The pages perf counts are the guest's pages. A live guest's page size is
  read from the system; a snapshot does not record one, so 4 KiB is assumed
  unless given (an assumption, said in the output).
* Unless perf runs per CPU (``-a`` or ``-C``), the driver enables and
  disables the buffer at every context switch of the profiled task, and with
  the buffer pinned by KVM at each enable, per-task profiling is costly (the
  review of the v6 series).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .arch import maxbuf
from .errors import InvalidArgumentError, KvmspeError
from .units import format_size
from .validation import check_int

if TYPE_CHECKING:
    from .host.discovery import SpeInstance

__all__ = [
    "FACTS",
    "MIN_AUX_PAGES",
    "MMAP_ERROR",
    "PERF_DEFAULT_AUX",
    "NOTES",
    "AuxFit",
    "CapUnknownError",
    "fit",
    "fit_units",
    "largest_aux_pages",
]

#: perf's AUX buffer is at least this many pages.
MIN_AUX_PAGES = 2
#: perf's default AUX buffer, by who runs it.
PERF_DEFAULT_AUX = {"privileged": 4 << 20, "unprivileged": 128 << 10}
#: What perf prints when the driver refuses the AUX buffer (mmap answers EINVAL).
MMAP_ERROR = "failed to mmap with 22 (Invalid argument)"
#: Each rule this module applies, with its source.
FACTS = {
    "power_of_two_pages": ("perf sizes the AUX buffer as a power-of-two number of pages", "perf, v6 review"),
    "min_pages": (f"at least {MIN_AUX_PAGES} pages", "perf, v6 review"),
    "defaults": ("perf's default AUX buffer is 4 MiB privileged, 128 KiB otherwise", "perf, v6 review"),
    "refused_above": (
        "the SPE driver refuses an AUX buffer larger than caps/max_buff_size (mmap: EINVAL)",
        "proposed perf driver patch; v6 review",
    ),
    "no_limit": ("a max_buff_size of 0 is no limit", "MaxBuffSize encoding"),
    "per_cpu": (
        "unless perf runs per CPU, the driver enables and disables the buffer at every context switch",
        "v6 review",
    ),
    "snapshot_page_size": ("a snapshot's page size is 4 KiB unless given", "assumed"),
}


#: What every answer says, whatever the cap: how perf sizes the buffer, and per CPU vs per task.
NOTES = (
    "perf wants the AUX buffer as a power-of-two number of pages, at least 2; -m,PAGES sets it",
    "per CPU (-a, or -C CPUS) the buffer stays enabled; per task (-p, -t, or a command without -a)"
    " the driver enables and disables it at every context switch, and with KVM pinning the buffer"
    " at each enable that is costly",
)


class CapUnknownError(KvmspeError, ValueError):
    """An SPE unit whose driver has no ``caps/max_buff_size``, and no size was given for it."""


def largest_aux_pages(max_buff_size: int, page_size: int) -> int | None:
    """The largest power-of-two page count, at least :data:`MIN_AUX_PAGES`, whose bytes
    are at most ``max_buff_size``; None when not even that many pages fit.
    ``max_buff_size`` 0 (no limit) is refused: there is no largest."""
    check_int("max_buff_size", max_buff_size, 1)
    maxbuf.check_page_size(page_size, "page_size")
    pages = max_buff_size // page_size
    if pages < MIN_AUX_PAGES:
        return None
    return 1 << (pages.bit_length() - 1)


@dataclass(frozen=True)
class AuxFit:
    """The AUX buffer ``perf record -e UNIT//`` may map on one SPE unit.

    ``max_buff_size`` is the cap (0: no limit) and ``source`` where it was
    read; ``pages`` the largest ``-m,PAGES`` that fits (None when nothing
    fits, or when there is no limit).
    """

    unit: str
    max_buff_size: int
    source: str
    page_size: int
    pages: int | None

    @property
    def no_limit(self) -> bool:
        return self.max_buff_size == 0

    @property
    def aux_bytes(self) -> int | None:
        """The AUX buffer of ``-m,PAGES`` in bytes."""
        return None if self.pages is None else self.pages * self.page_size

    @property
    def refused_pages(self) -> int:
        """The smallest power-of-two page count the driver refuses."""
        if self.pages is not None:
            return self.pages * 2
        return MIN_AUX_PAGES

    @property
    def command(self) -> str | None:
        """The ``perf record`` command line, per CPU (see :data:`FACTS` ``per_cpu``)."""
        if self.no_limit:
            return f"perf record -a -e {self.unit}//"
        if self.pages is None:
            return None
        return f"perf record -a -e {self.unit}// -m,{self.pages}"

    def default_fits(self, who: str) -> bool:
        """Whether perf's default AUX buffer for ``who`` (privileged, unprivileged) is accepted."""
        return self.no_limit or PERF_DEFAULT_AUX[who] <= self.max_buff_size

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "max_buff_size": self.max_buff_size,
            "source": self.source,
            "no_limit": self.no_limit,
            "page_size": self.page_size,
            "pages": self.pages,
            "aux_bytes": self.aux_bytes,
            "command": self.command,
            "refused_from_pages": None if self.no_limit else self.refused_pages,
            "refused_from_bytes": None if self.no_limit else self.refused_pages * self.page_size,
            "default_fits": {who: self.default_fits(who) for who in PERF_DEFAULT_AUX},
        }


def fit(unit: str, max_buff_size: int, source: str, page_size: int) -> AuxFit:
    """The AUX buffer perf may ask for on ``unit`` when its driver caps buffers at
    ``max_buff_size`` (a MaxBuffSize size; 0: no limit), with pages of ``page_size``."""
    check_int("max_buff_size", max_buff_size, 0)
    if not maxbuf.is_representable(max_buff_size):
        raise InvalidArgumentError(
            f"max buffer size {max_buff_size:#x} is not a MaxBuffSize size, so no VM advertises it;"
            " 'kvmspe round SIZE' gives the nearest ones"
        )
    maxbuf.check_page_size(page_size, "page size")
    pages = None if max_buff_size == 0 else largest_aux_pages(max_buff_size, page_size)
    return AuxFit(unit, max_buff_size, source, page_size, pages)


def fit_units(
    units: Sequence[SpeInstance], page_size: int, given: int | None = None
) -> tuple[list[AuxFit], list[str]]:
    """:func:`fit` for each SPE unit, and notes on the choices made.

    A unit's cap is its ``caps/max_buff_size`` where the driver has one (it
    is what the driver enforces: a ``given`` size that differs is noted and
    not used), else ``given`` (the VM's max buffer size as the host set it).
    Raises :class:`CapUnknownError` for a unit with neither, and
    InvalidArgumentError for a ``given`` that is not a MaxBuffSize size or a
    bad ``page_size``.
    """
    if given is not None:
        fit("--max-buffer-size", given, "--max-buffer-size", page_size)  # checks it up front
    fits: list[AuxFit] = []
    notes: list[str] = []
    for unit in units:
        cap = unit.max_buff_size
        if cap is not None:
            fits.append(fit(unit.name, cap, "caps/max_buff_size", page_size))
            if given is not None and given != cap:
                notes.append(
                    f"--max-buffer-size {format_size(given)} is not used for {unit.name}: its driver"
                    f" advertises {format_size(cap)}, which is what it enforces"
                )
        elif given is not None:
            fits.append(fit(unit.name, given, "--max-buffer-size", page_size))
        else:
            raise CapUnknownError(
                f"{unit.name} has no caps/max_buff_size (the driver lacks the proposed patch), so the VM's"
                " max buffer size is not known here; accepted: --max-buffer-size SIZE, the size the host set"
                " (its 'kvmspe plan' says which)"
            )
    return fits, notes
