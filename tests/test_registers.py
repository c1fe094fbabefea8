"""The SPE buffer register tables and the engine, against the Arm architecture (DDI0601)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvmspe.arch import registers
from kvmspe.arch.registers import PMBIDR_EL1, PMBLIMITR_EL1, PMBPTR_EL1, PMBSR_EL1, REGISTERS, Field, Register
from kvmspe.errors import RegisterError

U64_MAX = (1 << 64) - 1

#: Our own transcription of Arm DDI0601: name -> {field: (msb, lsb)}; the rest is RES0.
LAYOUT = {
    "PMBIDR_EL1": {"ALIGN": (3, 0), "P": (4, 4), "F": (5, 5), "EA": (11, 8), "MaxBuffSize": (47, 32)},
    "PMBSR_EL1": {
        "EC": (31, 26),
        "DL": (19, 19),
        "EA": (18, 18),
        "S": (17, 17),
        "COLL": (16, 16),
        "MSS": (15, 0),
    },
    "PMBLIMITR_EL1": {"LIMIT": (63, 12), "PMFZ": (5, 5), "FM": (2, 1), "E": (0, 0)},
    "PMBPTR_EL1": {"PTR": (63, 0)},
}
#: op0, op1, CRn, CRm, op2 (Arm ARM; PMBIDR_EL1's as the reference patch gives it).
ENCODINGS = {
    "PMBIDR_EL1": (3, 0, 9, 10, 7),
    "PMBSR_EL1": (3, 0, 9, 10, 3),
    "PMBLIMITR_EL1": (3, 0, 9, 10, 0),
    "PMBPTR_EL1": (3, 0, 9, 10, 1),
}

ALL_REGS = list(REGISTERS.values())
regs = st.sampled_from(ALL_REGS)


def _mask(msb: int, lsb: int) -> int:
    return ((1 << (msb - lsb + 1)) - 1) << lsb


def test_the_four_registers_are_there() -> None:
    assert set(REGISTERS) == set(LAYOUT)
    assert [PMBIDR_EL1, PMBSR_EL1, PMBLIMITR_EL1, PMBPTR_EL1] == [REGISTERS[n] for n in LAYOUT]


@pytest.mark.parametrize("reg", ALL_REGS, ids=lambda r: r.name)
def test_table_matches_facts(reg: Register) -> None:
    assert reg.encoding == ENCODINGS[reg.name]
    named = {f.name: (f.msb, f.lsb) for f in reg.fields if f.kind != "res0"}
    assert named == LAYOUT[reg.name]
    assert set(reg.field_names) == set(LAYOUT[reg.name])
    expected_res0 = U64_MAX & ~sum(_mask(*r) for r in LAYOUT[reg.name].values())
    assert reg.res0_mask == expected_res0


@pytest.mark.parametrize("reg", ALL_REGS, ids=lambda r: r.name)
def test_table_covers_64_bits_without_overlap(reg: Register) -> None:
    masks = [f.mask for f in reg.fields]
    for a, b in itertools.combinations(masks, 2):
        assert a & b == 0
    assert sum(masks) == U64_MAX
    assert sum(f.width for f in reg.fields) == 64


def test_engine_rejects_overlap() -> None:
    with pytest.raises(RegisterError, match="overlaps"):
        Register("X", (3, 0, 0, 0, 0), [Field("A", 63, 4), Field("B", 4, 0)])


def test_engine_rejects_gap() -> None:
    with pytest.raises(RegisterError, match=r"uncovered: 0x10\b"):
        Register("X", (3, 0, 0, 0, 0), [Field("A", 63, 5), Field("B", 3, 0)])
    with pytest.raises(RegisterError, match="uncovered"):
        Register("X", (3, 0, 0, 0, 0), [])


@pytest.mark.parametrize(("msb", "lsb"), [(3, 4), (64, 0), (63, -1)])
def test_engine_rejects_bad_range(msb: int, lsb: int) -> None:
    with pytest.raises(RegisterError, match="bad range"):
        Register("X", (3, 0, 0, 0, 0), [Field("A", msb, lsb)])


def test_engine_rejects_duplicate_field_names() -> None:
    with pytest.raises(RegisterError, match="twice"):
        Register("X", (3, 0, 0, 0, 0), [Field("A", 63, 32), Field("A", 31, 0)])


# --- decode / encode ---------------------------------------------------------------


@given(regs, st.integers(0, U64_MAX))
def test_round_trip(reg: Register, raw: int) -> None:
    value = raw & ~reg.res0_mask
    fields = reg.decode(value)
    assert set(fields) == set(reg.field_names)
    assert reg.encode(fields) == value
    assert reg.encode(**{k: v for k, v in fields.items()}) == value
    for name in reg.field_names:
        f = reg.field(name)
        assert reg.get(value, name) == (value >> f.lsb) & ((1 << f.width) - 1)


@given(regs, st.integers(0, U64_MAX))
def test_lenient_decode_drops_res0(reg: Register, raw: int) -> None:
    assert reg.encode(reg.decode(raw, strict=False)) == raw & ~reg.res0_mask


@given(regs.filter(lambda r: r.res0_mask != 0), st.integers(0, U64_MAX), st.integers(0, 63))
def test_res0_bits_set_raise_in_strict_mode(reg: Register, raw: int, bit: int) -> None:
    res0_bits = [b for b in range(64) if reg.res0_mask >> b & 1]
    b = res0_bits[bit % len(res0_bits)]
    value = raw | 1 << b
    with pytest.raises(RegisterError) as info:
        reg.decode(value)
    message = str(info.value)
    assert reg.name in message
    assert "RES0" in message
    assert f"{value & reg.res0_mask:#x}" in message
    assert "\n" not in message


def test_res0_message_example() -> None:
    with pytest.raises(RegisterError) as info:
        PMBIDR_EL1.decode(0x40)
    assert str(info.value) == (
        "PMBIDR_EL1: RES0 bits 0x40 are set in 0x40; only ALIGN, P, F, EA, MaxBuffSize may be non-zero"
    )


def test_pmbptr_has_no_res0() -> None:
    assert PMBPTR_EL1.res0_mask == 0
    assert PMBPTR_EL1.decode(U64_MAX) == {"PTR": U64_MAX}


@pytest.mark.parametrize("value", [-1, 1 << 64, "0", None, 1.0, True])
@pytest.mark.parametrize("reg", ALL_REGS, ids=lambda r: r.name)
def test_value_outside_64_bits_rejected(reg: Register, value: object) -> None:
    with pytest.raises(RegisterError, match="64-bit"):
        reg.decode(value)  # type: ignore[arg-type]
    with pytest.raises(RegisterError, match="64-bit"):
        reg.get(value, reg.field_names[0])  # type: ignore[arg-type]


# --- enums -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reg", "name", "label", "number"),
    [
        (PMBIDR_EL1, "EA", "NotDescribed", 0),
        (PMBIDR_EL1, "EA", "Ignored", 1),
        (PMBIDR_EL1, "EA", "SError", 2),
        (PMBSR_EL1, "EC", "BUF", 0b000000),
        (PMBSR_EL1, "EC", "FAULT_S1", 0b100100),
        (PMBSR_EL1, "EC", "FAULT_S2", 0b100101),
        (PMBSR_EL1, "EC", "FAULT_GPC", 0b011110),
        (PMBSR_EL1, "EC", "IMP_DEF", 0b011111),
        (PMBLIMITR_EL1, "FM", "FILL", 0b00),
        (PMBLIMITR_EL1, "FM", "DISCARD", 0b10),
    ],
)
def test_enum_by_name_both_ways(reg: Register, name: str, label: str, number: int) -> None:
    f = reg.field(name)
    assert f.value_of(label) == number
    value = reg.encode(**{name: label})
    assert value == number << f.lsb
    assert reg.encode(**{name: number}) == value
    assert reg.decode(value)[name] == label


def test_enum_value_without_a_name_stays_a_number() -> None:
    assert PMBLIMITR_EL1.decode(0b01 << 1)["FM"] == 1
    assert PMBSR_EL1.decode(0b000001 << 26)["EC"] == 1


def test_unknown_enum_name_rejected() -> None:
    with pytest.raises(RegisterError, match=r"unknown value 'FULL'; accepted: BUF, FAULT_S1"):
        PMBSR_EL1.encode(EC="FULL")


def test_name_for_a_plain_field_rejected() -> None:
    with pytest.raises(RegisterError, match="takes a number"):
        PMBIDR_EL1.encode(MaxBuffSize="4MiB")


def test_pmbsr_constants() -> None:
    assert registers.PMBSR_EC_BUF == 0
    assert registers.PMBSR_EC_FAULT_S1 == 0b100100
    assert registers.PMBSR_EC_FAULT_S2 == 0b100101
    assert (registers.PMBSR_BSC_FULL, registers.PMBSR_BSC_SIZE) == (0x1, 0x4)
    assert registers.PMBSR_BSC_MASK & registers.PMBSR_BSC_SIZE == registers.PMBSR_BSC_SIZE


# --- out of range fields, unknown names --------------------------------------------------


@given(regs, st.data())
def test_out_of_range_field_values_rejected(reg: Register, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(reg.field_names))
    width = reg.field(name).width
    bad = data.draw(st.integers(min_value=1 << width) | st.integers(max_value=-1) | st.just(True))
    with pytest.raises(RegisterError, match=rf"{reg.name}\.{name}=.* does not fit {width} bits"):
        reg.encode(**{name: bad})


@pytest.mark.parametrize("name", ["MAXBUFFSIZE", "BSC", "RES0_63_48", ""])
def test_unknown_field_names_rejected(name: str) -> None:
    accepted = r"PMBIDR_EL1 has no field .*; fields: ALIGN, P, F, EA, MaxBuffSize"
    with pytest.raises(RegisterError, match=accepted):
        PMBIDR_EL1.encode(**{name: 0})
    with pytest.raises(RegisterError, match="has no field"):
        PMBIDR_EL1.field(name)
    with pytest.raises(RegisterError, match="has no field"):
        PMBIDR_EL1.get(0, name)


# --- known examples ----------------------------------------------------------------------


def test_pmbidr_with_4mib_max_buffer_size() -> None:
    value = PMBIDR_EL1.encode(MaxBuffSize=0x400)
    assert value == 0x0000_0400_0000_0000
    fields = {"ALIGN": 0, "P": 0, "F": 0, "EA": "NotDescribed", "MaxBuffSize": 0x400}
    assert PMBIDR_EL1.decode(value) == fields
    assert PMBIDR_EL1.get(value, "MaxBuffSize") == 0x400


def test_pmbidr_all_fields() -> None:
    value = PMBIDR_EL1.encode(ALIGN=0xB, P=1, F=1, EA="SError", MaxBuffSize=0x3FFF)
    assert value == 0x3FFF_0000_0000 | 0x2 << 8 | 1 << 5 | 1 << 4 | 0xB


def test_pmbsr_buffer_size_event() -> None:
    value = PMBSR_EL1.encode(EC="BUF", MSS=registers.PMBSR_BSC_SIZE)
    assert value == 0x4
    fields = PMBSR_EL1.decode(value)
    assert fields["EC"] == "BUF"
    assert fields["MSS"] == 0x4
    assert PMBSR_EL1.get(value, "MSS") & registers.PMBSR_BSC_MASK == registers.PMBSR_BSC_SIZE


def test_pmbsr_stage1_fault_with_service_bit() -> None:
    value = PMBSR_EL1.encode(EC="FAULT_S1", S=1, DL=1)
    assert value == 0b100100 << 26 | 1 << 17 | 1 << 19 == 0x900A_0000
    assert PMBSR_EL1.decode(value)["EC"] == "FAULT_S1"


def test_pmblimitr_limit_and_enable() -> None:
    value = PMBLIMITR_EL1.encode(LIMIT=0x80000 >> 12, FM="FILL", E=1)
    assert value == 0x80001
    assert PMBLIMITR_EL1.decode(value) == {"E": 1, "FM": "FILL", "PMFZ": 0, "LIMIT": 0x80}
