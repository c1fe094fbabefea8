"""Stage-1 geometry and footprints: interval arithmetic against page-by-page counting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmspe.arch.stage1 import Stage1
from kvmspe.model.pinning import PinnedPages, RefIntervals

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def test_default_is_4k_granule_4_levels_48_bits_pages_contiguous() -> None:
    s = Stage1()
    assert (s.granule, s.levels, s.va_bits, s.blocks, s.layout) == (4096, 4, 48, False, "contiguous")
    assert s == Stage1(levels=4) == Stage1(va_bits=48)


@pytest.mark.parametrize(
    ("granule", "va_bits", "levels"),
    [
        (4096, 48, 4),
        (4096, 39, 3),
        (4096, 52, 5),
        (16384, 48, 4),
        (16384, 47, 3),
        (65536, 48, 3),
        (65536, 42, 2),
    ],
)
def test_levels_follow_from_va_bits(granule: int, va_bits: int, levels: int) -> None:
    assert Stage1(granule, va_bits=va_bits).levels == levels


@pytest.mark.parametrize(
    "kwargs",
    [{"granule": 8192}, {"layout": "packed"}, {"levels": 3, "va_bits": 48}, {"va_bits": 60}, {"levels": 0}],
)
def test_bad_descriptions_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="accepted"):
        Stage1(**kwargs)  # type: ignore[arg-type]


def test_a_4gib_buffer_with_pages_needs_2048_last_level_tables() -> None:
    f = Stage1().footprint(0, 4 * GiB, 4096)
    assert f.table_pages == {3: 2048, 2: 4, 1: 1, 0: 1}
    assert f.bytes == 4 * GiB + (2048 + 4 + 1 + 1) * 4096


def test_blocks_remove_the_levels_below_the_largest_block() -> None:
    f = Stage1(blocks=True).footprint(0, 4 * GiB, 4096)
    assert f.table_pages == {1: 1, 0: 1}


def test_a_hole_brings_back_the_tables_around_it() -> None:
    s = Stage1(blocks=True, unmapped=((5 * GiB, 4096),))
    f = s.footprint(4 * GiB, 5 * GiB, 4096)  # the 1 GiB chunk before the hole is still a block
    assert f.table_pages == {1: 1, 0: 1}
    f = s.footprint(5 * GiB + 4096, 5 * GiB + 4 * MiB, 4096)
    # The hole's 1 GiB and 2 MiB chunks cannot be blocks: level 2 and one level-3 table appear.
    assert f.table_pages == {3: 1, 2: 1, 1: 1, 0: 1}


def test_translation_checks_range_and_holes() -> None:
    s = Stage1(unmapped=((GiB, 4096),))
    assert s.translates(0, GiB)
    assert not s.translates(GiB - 4096, GiB + 4096)
    assert not s.translates(1 << 48, (1 << 48) + 4096)
    assert s.translates((1 << 64) - (1 << 20), 1 << 64)  # the upper (TTBR1) half
    with pytest.raises(ValueError, match="no stage-1 translation"):
        s.footprint(GiB, GiB + 4096, 4096)


def test_scattered_small_granule_costs_a_host_page_per_guest_page() -> None:
    contiguous = Stage1(layout="contiguous").footprint(0, 64 * KiB, 65536)
    scattered = Stage1(layout="scattered").footprint(0, 64 * KiB, 65536)
    assert contiguous.bytes == 64 * KiB + 4 * 64 * KiB  # data, then one host page per level
    assert scattered.bytes == 16 * 64 * KiB + 4 * 64 * KiB


def _brute(s: Stage1, lo: int, hi: int, page: int) -> int:
    """Host pages by visiting every guest page (small ranges only)."""
    pinned: set[tuple[str | int, int]] = set()
    g = s.granule
    blocks = s.block_sizes()
    for gp in range(lo // g, -(-hi // g)):
        va = gp * g
        a, b = max(lo, va), min(hi, va + g)
        if s.layout == "scattered" and g < page:
            pinned.add(("data", gp))
        else:
            pinned.update(("data", h) for h in range(a // page, -(-b // page)))
        for depth in range(1, s.depth + 1):
            span = s.span(depth)
            sizes = [z for z in blocks if z >= span]
            if sizes and s.hole_in(va // sizes[0] * sizes[0], va // sizes[0] * sizes[0] + sizes[0]) is None:
                continue
            t = va // span
            if s.layout == "scattered" and g < page:
                pinned.add((depth, t))
            else:
                pinned.update((depth, h) for h in range(t * g // page, -(-(t + 1) * g // page)))
    return len(pinned) * page


@settings(max_examples=150, deadline=None)
@given(
    granule=st.sampled_from([4096, 16384, 65536]),
    page=st.sampled_from([4096, 16384, 65536]),
    levels=st.sampled_from([None, 2, 3]),
    blocks=st.booleans(),
    layout=st.sampled_from(["contiguous", "scattered"]),
    lo_pages=st.integers(0, 3000),
    n_pages=st.integers(1, 700),
    hole=st.none() | st.integers(0, 4000),
)
def test_footprint_matches_page_by_page_count(
    granule: int,
    page: int,
    levels: int | None,
    blocks: bool,
    layout: str,
    lo_pages: int,
    n_pages: int,
    hole: int | None,
) -> None:
    unit = 4096
    lo, hi = lo_pages * unit, (lo_pages + n_pages) * unit
    unmapped = () if hole is None or lo <= hole * unit < hi else ((hole * unit, unit),)
    s = Stage1(granule, levels, blocks=blocks, layout=layout, unmapped=unmapped)  # type: ignore[arg-type]
    if not s.translates(lo, hi):
        return
    assert s.footprint(lo, hi, page).bytes == _brute(s, lo, hi, page)


def test_refintervals_count_each_page_once_and_free_on_last_unpin() -> None:
    r = RefIntervals()
    assert r.add(0, 10, +1) == 10
    assert r.add(5, 15, +1) == 5
    assert r.held == 15 and r.uncovered(0, 20) == 5
    assert r.add(0, 10, -1) == 5
    assert r.held == 10
    assert r.add(5, 15, -1) == 10
    assert r.held == 0 and r.points == []
    with pytest.raises(ValueError):
        r.add(0, 1, -1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 20)), min_size=1, max_size=12))
def test_pinned_pages_match_a_multiset(spans: list[tuple[int, int]]) -> None:
    p = PinnedPages()
    counts: dict[int, int] = {}
    for a, n in spans:
        new = p.new_pages([("s", a, a + n)])
        assert p.pin([("s", a, a + n)]) == new == sum(1 for x in range(a, a + n) if not counts.get(x))
        for x in range(a, a + n):
            counts[x] = counts.get(x, 0) + 1
        assert p.pages == sum(1 for c in counts.values() if c)
    for a, n in spans:
        p.unpin([("s", a, a + n)])
    assert p.pages == 0
