"""The PMBIDR_EL1.MaxBuffSize codec: exact sizes only, nothing silently rounded.

The 16-bit field holds a 5-bit exponent E (field bits [13:9]) and a 9-bit
mantissa M (bits [8:0]); bits [15:14] are reserved.

* E = 0: size = M * 4 KiB           (0, 4 KiB ... 2 MiB - 4 KiB)
* E > 0: size = (512 + M) << (E + 11)  ([2^(E+20), 2^(E+21)) in steps of 2^(E+11))

The field value 0 decodes to 0, "no limit". Decoding is strictly increasing in
the field value, so the 2^14 field values are in bijection with the
representable sizes and every search below is arithmetic, not a scan.
Source: Arm DDI0601, PMBIDR_EL1.MaxBuffSize, as the reference patch uses it.
"""

from __future__ import annotations

from ..errors import InvalidArgumentError, NotRepresentableError
from ..validation import U64_MAX, check_int, is_int

# typing.TYPE_CHECKING without importing typing (the command line's codec path
# starts faster without it); mypy treats any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "FIELD_MAX",
    "check_page_size",
    "LARGEST",
    "PAGE_SIZES",
    "decode",
    "encode",
    "is_representable",
    "round_down",
    "round_up",
    "sizes",
    "step_at",
]

M_BITS = 9
E_BITS = 5
M_MASK = (1 << M_BITS) - 1
E_MASK = (1 << E_BITS) - 1
#: Largest valid field value (bits [15:14] reserved).
FIELD_MAX = (1 << (M_BITS + E_BITS)) - 1
#: Unit of the E = 0 range, and the smallest non-zero size.
GRANULE = 4096
#: Host page sizes an arm64 kernel may use.
PAGE_SIZES = (4096, 16384, 65536)


def decode(field: int) -> int:
    """Size in bytes of a MaxBuffSize field value (0 means no limit)."""
    if not is_int(field) or not 0 <= field <= FIELD_MAX:
        raise InvalidArgumentError(
            f"MaxBuffSize field {field!r} is out of range: accepted 0..{FIELD_MAX:#x}"
            " (bits [15:14] are reserved and must be zero)"
        )
    e, m = field >> M_BITS, field & M_MASK
    if e == 0:
        return m * GRANULE
    return (512 + m) << (e + 11)


#: The largest representable size, 1023 << 42.
LARGEST = decode(FIELD_MAX)


def _check_size(size: int) -> None:
    if not is_int(size):
        raise NotRepresentableError(f"size {size!r} is not an integer", 0, None, None)
    if not 0 <= size <= U64_MAX:
        raise NotRepresentableError(f"size {size} is outside the u64 range 0..2**64-1", size, None, None)


def _floor_field(size: int) -> int:
    """The largest field value whose size is <= ``size`` (``size`` >= 0)."""
    if size < 1 << 21:
        return size // GRANULE
    e = size.bit_length() - 21
    if e > E_MASK:
        return FIELD_MAX
    m = (size >> (e + 11)) - 512
    return (e << M_BITS) | m


def step_at(size: int) -> int:
    """Distance between representable sizes in the exponent band of ``size``.

    Band E >= 1 holds sizes of bit length E + 21 in steps of 2^(E+11), so the
    step is 4 KiB up to 4 MiB (E = 0 and E = 1 alike) and doubles per band
    after that, up to 2^42 in the last band (sizes above LARGEST count as in it).
    ``size`` is an int 0..2**64-1 (ValueError otherwise).
    """
    check_int("size", size, 0, U64_MAX)
    return GRANULE << max(0, min(size.bit_length() - 22, E_MASK - 1))


def is_representable(size: int) -> bool:
    """True when ``size`` has an exact MaxBuffSize encoding."""
    if not is_int(size) or not 0 <= size <= LARGEST:
        return False
    return decode(_floor_field(size)) == size


def _neighbours(size: int) -> tuple[int | None, int | None]:
    if size < 0:
        return None, 0
    f = _floor_field(size)
    below = decode(f)
    if below == size:
        return below, size
    above = decode(f + 1) if f < FIELD_MAX else None
    return below, above


def _describe(v: int | None) -> str:
    return "none" if v is None else f"{v:#x}"


def encode(size: int) -> int:
    """The MaxBuffSize field value (0..0x3FFF) of a size with an exact encoding.

    Raises :class:`~kvmspe.errors.NotRepresentableError` naming the nearest
    representable sizes below and above, for any other size.
    """
    _check_size(size)
    f = _floor_field(size)
    if decode(f) == size:
        return f
    below, above = _neighbours(size)
    raise NotRepresentableError(
        f"{size:#x} has no exact MaxBuffSize encoding; nearest are {_describe(below)} and {_describe(above)}",
        size,
        below,
        above,
    )


def check_page_size(page_size: object, what: str = "page size") -> int:
    """``page_size`` when it is an arm64 host page size (4, 16 or 64 KiB) given as an int,
    else :class:`~kvmspe.errors.InvalidArgumentError` (a ValueError) naming ``what``."""
    if type(page_size) is not int or page_size not in PAGE_SIZES:
        accepted = ", ".join(str(p) for p in PAGE_SIZES)
        raise InvalidArgumentError(f"{what} {page_size!r} is not an arm64 page size; accepted: {accepted}")
    return page_size


def round_down(size: int, page_size: int = GRANULE) -> int:
    """The largest size <= ``size`` that is representable and page aligned.

    Note that 0 is such a size, and 0 means "no limit": a caller using the
    result as a cap must treat 0 specially.
    """
    _check_size(size)
    check_page_size(page_size)
    size = min(size, LARGEST)
    unit = max(step_at(size), page_size)
    # Band starts (0 and powers of two >= 2 MiB) are multiples of every unit.
    return size - size % unit


def round_up(size: int, page_size: int = GRANULE) -> int:
    """The smallest size >= ``size`` that is representable and page aligned."""
    _check_size(size)
    check_page_size(page_size)
    if size > LARGEST:
        raise NotRepresentableError(
            f"{size:#x} is above the largest representable size {LARGEST:#x}", size, LARGEST, None
        )
    unit = max(step_at(size), page_size)
    # Rounding may land on the next band's start, a power of two that is representable.
    return -(-size // unit) * unit


def sizes(lo: int = 0, hi: int | None = None) -> Iterator[int]:
    """The representable sizes ``s`` with ``lo <= s <= hi``, in increasing order.

    ``hi=None`` means up to the largest. Each item costs O(1).
    """
    _check_size(lo)
    if hi is not None:
        _check_size(hi)
    top = LARGEST if hi is None else min(hi, LARGEST)
    if lo > top:
        return
    f = _floor_field(lo)
    if decode(f) < lo:
        f += 1
    while f <= FIELD_MAX:
        s = decode(f)
        if s > top:
            return
        yield s
        f += 1
