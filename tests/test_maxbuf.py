"""The MaxBuffSize codec against an independent reading of Arm DDI0601 PMBIDR_EL1.MaxBuffSize.

The oracles here are written from the facts, not from the module: the list of
all representable sizes is built from the decode formula directly, and
representability is also decided by "normalising by the top bit" (a size is
representable iff it is a multiple of 4 KiB below 2 MiB, or it is at most
1023 << 42 and has no set bit below its top ten bits).
"""

from __future__ import annotations

import bisect
import itertools

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

import kvmspe
from kvmspe.arch import maxbuf
from kvmspe.errors import NotRepresentableError

U64_MAX = (1 << 64) - 1
MIB2 = 1 << 21
ORACLE_LARGEST = 1023 << 42

#: Every representable size, in field order, straight from the decode formula.
ALL = [m * 4096 for m in range(512)] + [(512 + m) << (e + 11) for e in range(1, 32) for m in range(512)]
ALL_SET = frozenset(ALL)


def oracle_representable(size: object) -> bool:
    """Independent test: normalise by the top bit."""
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= U64_MAX:
        return False
    if size < MIB2:
        return size % 4096 == 0
    if size > ORACLE_LARGEST:
        return False
    low_bits = size.bit_length() - 10
    return size & ((1 << low_bits) - 1) == 0


def oracle_neighbours(size: int) -> tuple[int | None, int | None]:
    """Nearest representable sizes strictly below and strictly above ``size``."""
    i = bisect.bisect_left(ALL, size)
    below = ALL[i - 1] if i > 0 else None
    j = bisect.bisect_right(ALL, size)
    above = ALL[j] if j < len(ALL) else None
    return below, above


def oracle_round_down(size: int, page: int) -> int:
    i = bisect.bisect_right(ALL, size) - 1
    while ALL[i] % page:
        i -= 1
    return ALL[i]


def oracle_round_up(size: int, page: int) -> int | None:
    i = bisect.bisect_left(ALL, size)
    while i < len(ALL) and ALL[i] % page:
        i += 1
    return ALL[i] if i < len(ALL) else None


# Sizes biased toward the interesting places: representable sizes and their
# close neighbours, band edges, and the whole u64 range.
near_representable = st.builds(
    lambda s, d: min(max(s + d, 0), U64_MAX),
    st.sampled_from(ALL),
    st.integers(-(1 << 13), 1 << 13) | st.sampled_from([-1, 1, -4096, 4096]),
)
band_edges = st.builds(
    lambda k, d: min(max((1 << k) + d, 0), U64_MAX), st.integers(12, 64), st.integers(-4097, 4097)
)
u64 = st.integers(0, U64_MAX) | near_representable | band_edges
outside_u64 = st.integers(max_value=-1) | st.integers(min_value=1 << 64)
not_ints = st.none() | st.floats() | st.text(max_size=4) | st.just(True) | st.just(False) | st.just(4096.0)
page_sizes = st.sampled_from(maxbuf.PAGE_SIZES)


def test_oracles_agree_with_each_other() -> None:
    assert len(ALL) == 1 << 14
    assert ALL == sorted(ALL_SET)
    assert all(oracle_representable(s) for s in ALL)
    assert ALL[-1] == ORACLE_LARGEST


# --- decode / encode: all 2**14 field values -----------------------------------


def test_decode_every_field_value() -> None:
    decoded = [maxbuf.decode(f) for f in range(maxbuf.FIELD_MAX + 1)]
    assert maxbuf.FIELD_MAX == 0x3FFF
    assert decoded == ALL  # the bijection, in order
    assert all(a < b for a, b in itertools.pairwise(decoded))  # strictly increasing
    assert all(maxbuf.encode(s) == f for f, s in enumerate(decoded))
    assert maxbuf.LARGEST == ORACLE_LARGEST == decoded[-1]


def test_decode_examples() -> None:
    assert maxbuf.decode(0) == 0
    assert maxbuf.decode(1) == 4096
    assert maxbuf.decode(0x1FF) == 0x1FF000
    assert maxbuf.decode(0x200) == 0x200000  # E=1, M=0
    assert maxbuf.decode(0x3FF) == 0x3FF000  # E=1, M=511
    assert maxbuf.decode(0x400) == 0x400000  # E=2, M=0
    assert maxbuf.decode(0x3FFF) == 1023 << 42


@pytest.mark.parametrize("field", [0x4000, 0x8000, 0xC000, 0xFFFF, 0x10000, -1])
def test_decode_rejects_reserved_bits_and_out_of_range(field: int) -> None:
    with pytest.raises(ValueError, match="reserved"):
        maxbuf.decode(field)


@given(st.integers(min_value=maxbuf.FIELD_MAX + 1) | st.integers(max_value=-1) | not_ints)
def test_decode_rejects_anything_but_a_field_value(field: object) -> None:
    with pytest.raises(ValueError, match=r"accepted 0\.\.0x3fff"):
        maxbuf.decode(field)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "field"),
    [
        (0, 0),
        (4096, 1),
        (0x1FF000, 0x1FF),
        (0x200000, 0x200),
        (0x3FF000, 0x3FF),
        (0x400000, 0x400),
        (1023 << 42, 0x3FFF),
    ],
)
def test_encode_boundary_examples(size: int, field: int) -> None:
    assert maxbuf.encode(size) == field
    assert maxbuf.is_representable(size)


@pytest.mark.parametrize(
    ("size", "below", "above"),
    [
        (1, 0, 4096),
        (4095, 0, 4096),
        (0x1FF001, 0x1FF000, 0x200000),
        (0x200001, 0x200000, 0x201000),
        (0x401000, 0x400000, 0x402000),
        (0x3FF001, 0x3FF000, 0x400000),
        (ORACLE_LARGEST - 1, ORACLE_LARGEST - (1 << 42), ORACLE_LARGEST),
        (ORACLE_LARGEST + 1, ORACLE_LARGEST, None),
        (1 << 52, ORACLE_LARGEST, None),
        (U64_MAX, ORACLE_LARGEST, None),
    ],
)
def test_encode_names_the_neighbours(size: int, below: int, above: int | None) -> None:
    with pytest.raises(NotRepresentableError) as info:
        maxbuf.encode(size)
    assert info.value.size == size
    assert (info.value.below, info.value.above) == (below, above)
    message = str(info.value)
    assert f"{size:#x}" in message
    assert f"{below:#x}" in message
    assert (f"{above:#x}" if above is not None else "none") in message


def test_encode_error_text_for_edom_example() -> None:
    with pytest.raises(NotRepresentableError) as info:
        maxbuf.encode(0x401000)
    assert str(info.value) == "0x401000 has no exact MaxBuffSize encoding; nearest are 0x400000 and 0x402000"


def test_not_representable_error_is_exported_value_error() -> None:
    assert kvmspe.NotRepresentableError is NotRepresentableError
    assert issubclass(NotRepresentableError, ValueError)
    assert issubclass(NotRepresentableError, kvmspe.KvmspeError)


@given(u64)
@example(0)
@example(4096)
@example(0x1FF000)
@example(0x200000)
@example(0x3FF000)
@example(0x400000)
@example(0x401000)
@example(ORACLE_LARGEST)
@example(U64_MAX)
def test_encode_over_u64(size: int) -> None:
    if oracle_representable(size):
        assert maxbuf.decode(maxbuf.encode(size)) == size
        return
    with pytest.raises(NotRepresentableError) as info:
        maxbuf.encode(size)
    below, above = info.value.below, info.value.above
    assert (below, above) == oracle_neighbours(size)
    # Really the nearest: representable, on either side, nothing representable between.
    assert below is not None and maxbuf.is_representable(below) and below < size
    assert list(maxbuf.sizes(below + 1, min(size if above is None else above - 1, U64_MAX))) == []
    if above is not None:
        assert maxbuf.is_representable(above) and size < above
    assert f"{below:#x}" in str(info.value)
    assert (f"{above:#x}" if above is not None else "none") in str(info.value)


@given(outside_u64 | not_ints)
def test_encode_rejects_values_outside_u64(size: object) -> None:
    with pytest.raises(NotRepresentableError, match=r"u64|integer"):
        maxbuf.encode(size)  # type: ignore[arg-type]


# --- is_representable ------------------------------------------------------------


@given(u64 | outside_u64 | not_ints)
@example(0x401000)
@example(ORACLE_LARGEST + (1 << 42))
@example(1 << 64)
@example(-4096)
def test_is_representable_matches_oracle(size: object) -> None:
    assert maxbuf.is_representable(size) is oracle_representable(size)  # type: ignore[arg-type]


def test_is_representable_exactly_the_decoded_sizes_near_band_edges() -> None:
    for k in range(12, 65):
        for d in (-4096, -1, 0, 1, 4096):
            s = (1 << k) + d
            if 0 <= s <= U64_MAX:
                assert maxbuf.is_representable(s) is (s in ALL_SET), hex(s)


# --- round_down / round_up ----------------------------------------------------------


@given(u64, page_sizes)
@example(0x201000, 4096)
@example(0x3FF000, 4096)
@example(0x401000, 4096)
@example(0x1FF000, 16384)
@example(0x200000 + 0x1000, 65536)
@example(ORACLE_LARGEST, 65536)
@example(U64_MAX, 4096)
def test_round_down(size: int, page: int) -> None:
    got = maxbuf.round_down(size, page)
    assert maxbuf.is_representable(got)
    assert got % page == 0
    assert got <= size
    assert got == oracle_round_down(size, page)
    # Nothing closer: no representable page multiple in (got, size].
    assert [s for s in maxbuf.sizes(got + 1, size) if s % page == 0] == []


@given(u64, page_sizes)
@example(0x200001, 4096)
@example(0x1FF001, 4096)
@example(0x401000, 4096)
@example(0x1F1000, 65536)
@example(ORACLE_LARGEST - 1, 65536)
def test_round_up(size: int, page: int) -> None:
    expected = oracle_round_up(size, page)
    if expected is None:
        with pytest.raises(NotRepresentableError, match="largest"):
            maxbuf.round_up(size, page)
        return
    got = maxbuf.round_up(size, page)
    assert maxbuf.is_representable(got)
    assert got % page == 0
    assert got >= size
    assert got == expected
    # Nothing closer: no representable page multiple in [size, got).
    assert [s for s in maxbuf.sizes(size, max(got - 1, 0)) if s % page == 0 and s < got] == []


@pytest.mark.parametrize("page", maxbuf.PAGE_SIZES)
def test_round_is_identity_on_aligned_representable_sizes(page: int) -> None:
    for s in ALL:
        if s % page == 0:
            assert maxbuf.round_down(s, page) == s
            assert maxbuf.round_up(s, page) == s


@pytest.mark.parametrize("page", maxbuf.PAGE_SIZES)
def test_round_between_neighbours(page: int) -> None:
    # Between two consecutive aligned representable sizes, down and up give those two.
    aligned = [s for s in ALL if s % page == 0]
    for a, b in itertools.pairwise(aligned):
        if b - a > 1:
            mid = a + 1
            assert maxbuf.round_down(mid, page) == a
            assert maxbuf.round_up(mid, page) == b
            assert maxbuf.round_down(b - 1, page) == a
            assert maxbuf.round_up(b - 1, page) == b


@pytest.mark.parametrize("page", maxbuf.PAGE_SIZES)
def test_round_up_past_largest_raises(page: int) -> None:
    assert maxbuf.round_up(ORACLE_LARGEST, page) == ORACLE_LARGEST
    for size in (ORACLE_LARGEST + 1, 1 << 52, U64_MAX):
        with pytest.raises(NotRepresentableError, match="largest"):
            maxbuf.round_up(size, page)
        assert maxbuf.round_down(size, page) == ORACLE_LARGEST


@given(outside_u64 | not_ints)
def test_round_rejects_values_outside_u64(size: object) -> None:
    for fn in (maxbuf.round_down, maxbuf.round_up):
        with pytest.raises(ValueError):
            fn(size)  # type: ignore[arg-type]


@pytest.mark.parametrize("page", [0, 1, 4095, 8192, 2 << 20, -4096, "4096", None])
def test_round_rejects_other_page_sizes(page: object) -> None:
    for fn in (maxbuf.round_down, maxbuf.round_up):
        with pytest.raises(ValueError, match="page size"):
            fn(0x400000, page)  # type: ignore[arg-type]


# --- step_at -------------------------------------------------------------------------


def test_step_at_is_the_distance_to_the_next_size() -> None:
    for a, b in itertools.pairwise(ALL):
        assert maxbuf.step_at(a) == b - a, hex(a)
    assert maxbuf.step_at(ORACLE_LARGEST) == 1 << 42


# --- sizes ---------------------------------------------------------------------------


def test_sizes_all() -> None:
    assert list(maxbuf.sizes()) == ALL
    assert list(maxbuf.sizes(0, U64_MAX)) == ALL


@given(u64, u64 | st.none())
@example(0, 0)
@example(1, 4095)
@example(0x401000, 0x401000)
@example(0x400000, 0x402000)
@example(ORACLE_LARGEST, None)
@example(ORACLE_LARGEST + 1, None)
def test_sizes_range(lo: int, hi: int | None) -> None:
    top = U64_MAX if hi is None else hi
    expected = [s for s in ALL[bisect.bisect_left(ALL, lo) :] if s <= top]
    assert list(maxbuf.sizes(lo, hi)) == expected


def test_sizes_is_lazy_from_the_top() -> None:
    assert list(itertools.islice(maxbuf.sizes(1 << 51), 3)) == [
        1 << 51,
        (1 << 51) + (1 << 42),
        (1 << 51) + (2 << 42),
    ]


@given(outside_u64 | not_ints)
def test_sizes_rejects_bounds_outside_u64(bound: object) -> None:
    assume(bound is not None)
    with pytest.raises(ValueError):
        list(maxbuf.sizes(bound))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        list(maxbuf.sizes(0, bound))  # type: ignore[arg-type]
