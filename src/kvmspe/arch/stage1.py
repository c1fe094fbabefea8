"""The guest's stage-1 translation, as far as pinning the SPE buffer needs it.

KVM pins the host pages behind the guest's profiling buffer and behind every
stage-1 table page that translates it (the reference patch's documentation,
v6 patch 29). How many that is depends on the guest: its translation
granule, how many levels it walks, whether it maps memory with blocks, and
where its table and data pages sit in guest-physical memory. :class:`Stage1` says all of that as data, and
:meth:`Stage1.footprint` turns a buffer ``[lo, hi)`` into the host pages it
needs, by interval arithmetic per level: the cost does not depend on the
buffer's size.

Vocabulary. A table at *depth* ``d`` (1 = last level, ``levels`` = the root)
covers ``span(d) = granule << (d * bits_per_level)`` bytes of VA; its Arm
lookup level is ``4 - d`` (level 3 is the last, the root of a 4 KiB, 4-level
walk is level 0). A data page is one granule of the buffer.

Where pages sit (``layout``):

* ``"contiguous"``: the buffer's guest-physical address has the same offset
  within a host page as its VA, and the tables of one level sit next to
  each other in VA order, each level's run starting on a host-page boundary.
  Small guest pages on large host pages then share host pages.
* ``"scattered"``: every table page and every data page lands in a host page
  of its own, the worst case. It differs from contiguous only when the
  granule is smaller than the host page.

Both layouts map a guest range to one host-page interval, so a footprint is
a handful of intervals, keyed by a *space* (which tree, which VA half, data
or which level). Two VCPUs with equal :class:`Stage1` share one translation
tree (as the kernel's page tables are shared by all CPUs of a Linux guest):
pages behind the same VA, and table pages translating the same VA, are the
same memory and are pinned once. Give ``tree`` distinct values to model
separate trees.

Block mappings follow the architecture without FEAT_LPA/LPA2: 4 KiB granule
blocks at levels 1 and 2 (1 GiB, 2 MiB), 16 KiB at level 2 (32 MiB), 64 KiB
at level 2 (512 MiB). With ``blocks=True`` the guest uses the largest block
wherever an aligned block-sized chunk holds no hole (``unmapped``).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal

from ..errors import InvalidArgumentError
from ..validation import check_int
from .maxbuf import check_page_size

__all__ = [
    "BLOCK_LEVELS",
    "Footprint",
    "GRANULES",
    "Layout",
    "Stage1",
    "check_granule",
    "chunks",
    "level_range",
]

#: Translation granules of AArch64 (bytes).
GRANULES = (4096, 16384, 65536)
#: Lookup levels whose descriptors may be blocks, per granule [arch, without LPA/LPA2].
BLOCK_LEVELS: dict[int, tuple[int, ...]] = {4096: (1, 2), 16384: (2,), 65536: (2,)}
#: Largest VA size this model accepts (FEAT_LVA / LPA2).
MAX_VA_BITS = 52
_MIN_VA_BITS = 25
_U64 = 1 << 64

Layout = Literal["contiguous", "scattered"]
LAYOUTS: tuple[Layout, ...] = ("contiguous", "scattered")


def chunks(lo: int, hi: int, size: int) -> tuple[int, int]:
    """Indices ``[first, end)`` of the ``size``-aligned chunks that ``[lo, hi)`` touches."""
    return lo // size, -(-hi // size)


def check_granule(granule: object) -> int:
    """``granule`` when it is an AArch64 translation granule (4, 16 or 64 KiB) given as
    an int, else :class:`~kvmspe.errors.InvalidArgumentError` (a ValueError)."""
    if type(granule) is not int or granule not in GRANULES:
        accepted = ", ".join(str(g) for g in GRANULES)
        raise InvalidArgumentError(f"granule {granule!r} is not an AArch64 granule; accepted: {accepted}")
    return granule


@dataclass(frozen=True)
class Footprint:
    """What one buffer needs pinned: host-page intervals per space.

    ``intervals`` holds ``(space, first_host_page, end_host_page)``, merged
    within each space. ``data_pages`` and ``table_pages`` (by Arm level)
    count guest pages, for reports; the host cost is in the intervals.
    """

    page_size: int
    intervals: tuple[tuple[Hashable, int, int], ...]
    data_pages: int
    table_pages: dict[int, int] = field(default_factory=dict)

    @property
    def host_pages(self) -> int:
        return sum(end - start for _, start, end in self.intervals)

    @property
    def bytes(self) -> int:
        """Host bytes pinned for this buffer alone."""
        return self.host_pages * self.page_size


def level_range(granule: int) -> tuple[int, int]:
    """The fewest and most stage-1 levels a guest with ``granule`` walks, for a VA
    of 25 to 52 bits (4 KiB: 2..5, 16 KiB: 1..4, 64 KiB: 1..3)."""
    shift = granule.bit_length() - 1
    bits = shift - 3
    lowest = -(-(_MIN_VA_BITS - shift) // bits)
    highest = -(-(MAX_VA_BITS - shift) // bits)
    return lowest, highest


@dataclass(frozen=True)
class Stage1:
    """How a guest maps its buffer at stage 1 (see the module docstring).

    Give ``levels`` or ``va_bits`` (or both, consistent); neither means a
    48-bit VA. ``unmapped`` lists ``(va, size)`` ranges with no translation.
    """

    granule: int = 4096
    levels: int | None = None
    va_bits: int | None = None
    blocks: bool = False
    layout: Layout = "contiguous"
    unmapped: tuple[tuple[int, int], ...] = ()
    tree: int = 0

    def __post_init__(self) -> None:
        check_granule(self.granule)
        if not isinstance(self.layout, str) or self.layout not in LAYOUTS:
            raise InvalidArgumentError(f"layout {self.layout!r} is unknown; accepted: contiguous, scattered")
        shift = self.granule.bit_length() - 1
        bits = shift - 3
        levels, va_bits = self.levels, self.va_bits
        if levels is not None:
            check_int("levels", levels, 1, 5)
        if va_bits is not None:
            check_int("va_bits", va_bits, _MIN_VA_BITS, MAX_VA_BITS)
        if not isinstance(self.blocks, bool):
            raise InvalidArgumentError(f"blocks must be True or False, got {self.blocks!r}")
        walks = level_range(self.granule)
        if va_bits is None and levels is not None and not walks[0] <= levels <= walks[1]:
            # Only the level count was given: say which counts this granule walks.
            raise InvalidArgumentError(
                f"a guest with a {self.granule // 1024} KiB granule does not walk {levels}"
                f" level{'s' if levels != 1 else ''} of stage-1 tables; accepted: {walks[0]}..{walks[1]}"
            )
        if va_bits is None:
            va_bits = 48 if levels is None else min(shift + bits * levels, MAX_VA_BITS)
        needed = -(-(va_bits - shift) // bits)
        if levels is None:
            levels = needed
        if levels != needed:
            raise InvalidArgumentError(
                f"{levels} levels do not fit a {va_bits}-bit VA with a {self.granule}-byte granule;"
                f" accepted: {needed} levels for {va_bits} bits"
            )
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "va_bits", va_bits)
        holes = []
        for hole in self.unmapped:
            if not (isinstance(hole, tuple) and len(hole) == 2 and all(type(x) is int for x in hole)):
                raise InvalidArgumentError(f"unmapped entries are (va, size) int pairs, got {hole!r}")
            va, size = hole
            if not (0 <= va < _U64 and 0 < size <= _U64 - va):
                raise InvalidArgumentError(
                    f"unmapped range {hole!r} is not inside the 64-bit VA space with size > 0"
                )
            holes.append((va, size))
        object.__setattr__(self, "unmapped", tuple(sorted(holes)))
        check_int("tree", self.tree, None, None)

    # -- geometry --------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Number of levels walked (``levels`` after defaulting)."""
        assert self.levels is not None
        return self.levels

    @property
    def bits_per_level(self) -> int:
        return self.granule.bit_length() - 4

    def span(self, depth: int) -> int:
        """Bytes of VA covered by one table at ``depth`` (0: one page)."""
        return self.granule << (depth * self.bits_per_level)

    @staticmethod
    def level_of(depth: int) -> int:
        """The Arm lookup level of a table at ``depth``."""
        return 4 - depth

    @property
    def region_size(self) -> int:
        assert self.va_bits is not None
        return 1 << self.va_bits

    def block_sizes(self) -> tuple[int, ...]:
        """Sizes of the block mappings this guest uses, smallest first."""
        if not self.blocks:
            return ()
        # A level-k descriptor covers span(3 - k); the table holding it must exist.
        return tuple(
            self.span(3 - k) for k in sorted(BLOCK_LEVELS[self.granule], reverse=True) if 4 - k <= self.depth
        )

    def region(self, lo: int, hi: int) -> int | None:
        """Which VA half translates ``[lo, hi)``: 0 (TTBR0), 1 (TTBR1), or None."""
        size = self.region_size
        if 0 <= lo < hi <= size:
            return 0
        if _U64 - size <= lo < hi <= _U64:
            return 1
        return None

    def hole_in(self, lo: int, hi: int) -> tuple[int, int] | None:
        """The first unmapped range that ``[lo, hi)`` overlaps, or None."""
        for va, size in self.unmapped:
            if va < hi and lo < va + size:
                return va, size
        return None

    def translates(self, lo: int, hi: int) -> bool:
        """True when every address of ``[lo, hi)`` has a stage-1 translation."""
        return lo < hi and self.region(lo, hi) is not None and self.hole_in(lo, hi) is None

    # -- footprint ---------------------------------------------------------------------

    def _table_ranges(self, lo: int, hi: int, depth: int, base: int) -> list[tuple[int, int]]:
        """Sub-ranges of ``[lo, hi)`` (offsets from ``base``, the start of the VA
        half) that are translated through tables at ``depth``.

        An address needs a table at ``depth`` unless a block at least as big
        as that table's span maps it; blocks nest, so only the smallest such
        block size matters, and it maps every aligned chunk without a hole.
        """
        span = self.span(depth)
        sizes = [s for s in self.block_sizes() if s >= span]
        if not sizes:
            return [(lo, hi)]
        block = sizes[0]
        out: list[tuple[int, int]] = []
        for va, size in self.unmapped:
            va -= base
            a = max(lo, va // block * block)
            b = min(hi, -(-(va + size) // block) * block)
            if a >= b:
                continue
            if out and a <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], b))
            else:
                out.append((a, b))
        return out

    def _host(self, start: int, end: int, page_size: int) -> tuple[int, int]:
        """Host-page interval behind guest range ``[start, end)`` of one space."""
        if self.layout == "scattered" and self.granule < page_size:
            return chunks(start, end, self.granule)
        return chunks(start, end, page_size)

    def footprint(self, lo: int, hi: int, page_size: int) -> Footprint:
        """Host pages to pin for a buffer at VA ``[lo, hi)`` on a host with ``page_size``.

        Raises ValueError when the range has no translation (see :meth:`translates`),
        or for arguments that are not ints in range.
        """
        check_int("lo", lo, 0, _U64 - 1)
        check_int("hi", hi, 0, _U64)
        check_int("page_size", page_size, 1)
        check_page_size(page_size)
        region = self.region(lo, hi)
        if region is None or not self.translates(lo, hi):
            raise InvalidArgumentError(f"[{lo:#x}, {hi:#x}) has no stage-1 translation in this guest")
        base = 0 if region == 0 else _U64 - self.region_size
        a, b = lo - base, hi - base
        spaces: list[tuple[Hashable, int, int]] = []
        start, end = self._host(a, b, page_size)
        spaces.append(((self, region, "data"), start, end))
        g0, g1 = chunks(a, b, self.granule)
        tables: dict[int, int] = {}
        for depth in range(1, self.depth + 1):
            span = self.span(depth)
            merged: list[tuple[int, int]] = []
            count = 0
            for ra, rb in self._table_ranges(a, b, depth, base):
                c0, c1 = chunks(ra, rb, span)
                count += c1 - c0
                h0, h1 = self._host(c0 * self.granule, c1 * self.granule, page_size)
                if merged and h0 <= merged[-1][1]:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], h1))
                else:
                    merged.append((h0, h1))
            if count:
                tables[self.level_of(depth)] = count
            spaces.extend(((self, region, depth), h0, h1) for h0, h1 in merged)
        return Footprint(page_size, tuple(spaces), g1 - g0, tables)
