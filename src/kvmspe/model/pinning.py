"""The host's set of pinned pages, as reference-counted intervals.

KVM pins host pages whole, and a page wanted by two tables or two VCPUs is
pinned once: what counts against RLIMIT_MEMLOCK is the union of what every
enabled buffer needs. :class:`PinnedPages` keeps, per *space* (see
:mod:`kvmspe.arch.stage1`), a step function "page number -> how many holders",
stored as sorted breakpoints. Adding or removing an interval costs
O(log n + k) for k breakpoints inside it, never O(pages).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Hashable, Iterable

__all__ = ["Interval", "PinnedPages", "RefIntervals"]

#: ``(space, first_page, end_page)``: pages ``first..end-1`` of one space.
Interval = tuple[Hashable, int, int]


class RefIntervals:
    """Reference counts over the integers, as a step function.

    ``points[i]`` starts a run of pages with count ``counts[i]``, ending at
    ``points[i + 1]``; before ``points[0]`` and after the last point, 0.
    """

    def __init__(self) -> None:
        self.points: list[int] = []
        self.counts: list[int] = []

    def _split(self, x: int) -> int:
        """Make ``x`` a breakpoint; return its index."""
        i = bisect_left(self.points, x)
        if i < len(self.points) and self.points[i] == x:
            return i
        before = self.counts[i - 1] if i else 0
        self.points.insert(i, x)
        self.counts.insert(i, before)
        return i

    def uncovered(self, start: int, end: int) -> int:
        """Pages of ``[start, end)`` whose count is 0."""
        if start >= end:
            return 0
        free = end - start
        i = max(bisect_right(self.points, start) - 1, 0)
        while i < len(self.points) and self.points[i] < end:
            if self.counts[i]:
                nxt = self.points[i + 1] if i + 1 < len(self.points) else end
                free -= max(0, min(end, nxt) - max(start, self.points[i]))
            i += 1
        return free

    def add(self, start: int, end: int, delta: int) -> int:
        """Add ``delta`` (+1 or -1) to every page of ``[start, end)``.

        Returns how many pages changed between 0 and non-zero (newly held
        for +1, freed for -1). A count never goes below 0.
        """
        if start >= end:
            return 0
        i, j = self._split(start), self._split(end)
        changed = 0
        for k in range(i, j):
            before = self.counts[k]
            after = before + delta
            if after < 0:
                raise ValueError("unpinning pages that are not pinned")
            if (before == 0) != (after == 0):
                changed += self.points[k + 1] - self.points[k]
            self.counts[k] = after
        self._merge(max(i - 1, 0), min(j + 1, len(self.points)))
        return changed

    def _merge(self, i: int, j: int) -> None:
        """Drop breakpoints in ``[i, j)`` that do not change the count."""
        k = j - 1
        while k >= max(i, 1):
            if self.counts[k] == self.counts[k - 1]:
                del self.points[k]
                del self.counts[k]
            k -= 1
        # A leading run of zero carries no information: the count before the first point is 0.
        while self.points and self.counts[0] == 0:
            del self.points[0]
            del self.counts[0]

    @property
    def held(self) -> int:
        """Pages with a non-zero count."""
        return sum(self.points[k + 1] - self.points[k] for k in range(len(self.points) - 1) if self.counts[k])


class PinnedPages:
    """Pinned host pages of one VM: reference counts per space."""

    def __init__(self) -> None:
        self._spaces: dict[Hashable, RefIntervals] = {}

    def new_pages(self, intervals: Iterable[Interval]) -> int:
        """How many pages pinning ``intervals`` would add (they must not overlap
        each other within a space, as :class:`kvmspe.arch.stage1.Footprint` guarantees)."""
        total = 0
        for space, start, end in intervals:
            refs = self._spaces.get(space)
            total += end - start if refs is None else refs.uncovered(start, end)
        return total

    def pin(self, intervals: Iterable[Interval]) -> int:
        """Take one reference on every page of ``intervals``; return pages newly pinned."""
        total = 0
        for space, start, end in intervals:
            total += self._spaces.setdefault(space, RefIntervals()).add(start, end, +1)
        return total

    def unpin(self, intervals: Iterable[Interval]) -> int:
        """Drop one reference on every page of ``intervals``; return pages freed."""
        total = 0
        for space, start, end in intervals:
            refs = self._spaces.get(space)
            if refs is None:
                raise ValueError("unpinning pages that are not pinned")
            total += refs.add(start, end, -1)
            if not refs.points:
                del self._spaces[space]
        return total

    @property
    def pages(self) -> int:
        """Pages pinned now, each counted once."""
        return sum(refs.held for refs in self._spaces.values())
