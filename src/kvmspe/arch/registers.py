"""SPE buffer registers as data, and one engine that decodes and encodes them.

Each register is a table of fields in the style of the kernel's
``arch/arm64/tools/sysreg``: a bit range, a kind (plain field, enum, RES0)
and, for enums, the architected names of the values. :class:`Register` turns
a table into masks and shifts and checks at import time that the fields
cover all 64 bits without overlap, so a typo in a table fails loudly.

Sources: the Arm architecture (Arm DDI0601, the SPE buffer registers) as Linux
describes it in ``arch/arm64/tools/sysreg``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..errors import RegisterError
from ..validation import is_int

__all__ = [
    "Field",
    "Register",
    "PMBIDR_EL1",
    "PMBSR_EL1",
    "PMBLIMITR_EL1",
    "PMBPTR_EL1",
    "REGISTERS",
    "PMBSR_EC_BUF",
    "PMBSR_EC_FAULT_S1",
    "PMBSR_EC_FAULT_S2",
    "PMBSR_BSC_FULL",
    "PMBSR_BSC_SIZE",
    "PMBSR_BSC_MASK",
]

FieldKind = Literal["field", "enum", "res0"]
FieldValue = int | str


@dataclass(frozen=True)
class Field:
    """One bit range of a register: ``name`` at bits ``msb:lsb``."""

    name: str
    msb: int
    lsb: int
    kind: FieldKind = "field"
    enum: Mapping[int, str] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return self.msb - self.lsb + 1

    @property
    def mask(self) -> int:
        """The field's bits in place in the 64-bit register."""
        return ((1 << self.width) - 1) << self.lsb

    def value_of(self, name: str) -> int:
        """The number of an enum value given by name."""
        for number, label in self.enum.items():
            if label == name:
                return number
        accepted = ", ".join(self.enum.values())
        raise RegisterError(f"{self.name}: unknown value {name!r}; accepted: {accepted}")


def Res0(msb: int, lsb: int) -> Field:  # noqa: N802 - reads like the sysreg file
    """A reserved-as-zero range."""
    return Field(f"RES0_{msb}_{lsb}", msb, lsb, "res0")


class Register:
    """A 64-bit system register described by a field table."""

    def __init__(self, name: str, encoding: tuple[int, int, int, int, int], fields: list[Field]):
        self.name = name
        self.encoding = encoding
        self.fields = tuple(sorted(fields, key=lambda f: f.lsb))
        self._by_name = {f.name: f for f in self.fields if f.kind != "res0"}
        self._check_cover()
        self.res0_mask = sum(f.mask for f in self.fields if f.kind == "res0")

    def _check_cover(self) -> None:
        names = [f.name for f in self.fields]
        for name in names:
            if names.count(name) > 1:
                raise RegisterError(f"{self.name}: field {name!r} is declared twice")
        seen = 0
        for f in self.fields:
            if not 0 <= f.lsb <= f.msb <= 63:
                raise RegisterError(f"{self.name}.{f.name}: bad range {f.msb}:{f.lsb}")
            if seen & f.mask:
                raise RegisterError(f"{self.name}.{f.name} overlaps another field")
            seen |= f.mask
        if seen != (1 << 64) - 1:
            raise RegisterError(f"{self.name}: fields leave bits uncovered: {~seen & ((1 << 64) - 1):#x}")

    @property
    def field_names(self) -> tuple[str, ...]:
        """Names of the non-reserved fields, lowest bit first."""
        return tuple(self._by_name)

    def field(self, name: str) -> Field:
        try:
            return self._by_name[name]
        except (KeyError, TypeError):
            accepted = ", ".join(self._by_name)
            raise RegisterError(f"{self.name} has no field {name!r}; fields: {accepted}") from None

    def _check_value(self, value: int) -> None:
        if not is_int(value) or not 0 <= value < 1 << 64:
            raise RegisterError(f"{self.name}: {value!r} is not a 64-bit value (0..2**64-1)")

    def get(self, value: int, name: str) -> int:
        """The raw number in field ``name`` of ``value``."""
        self._check_value(value)
        f = self.field(name)
        return (value & f.mask) >> f.lsb

    def decode(self, value: int, *, strict: bool = True) -> dict[str, FieldValue]:
        """Split ``value`` into its named fields; enum values come back by name.

        With ``strict`` (the default) a set RES0 bit is an error, because a
        value the architecture never produces usually means a wrong register
        or a transcription slip. An enum value without a name stays a number.
        """
        self._check_value(value)
        if strict and value & self.res0_mask:
            raise RegisterError(
                f"{self.name}: RES0 bits {value & self.res0_mask:#x} are set in {value:#x};"
                f" only {', '.join(self.field_names)} may be non-zero"
            )
        out: dict[str, FieldValue] = {}
        for f in self.fields:
            if f.kind == "res0":
                continue
            raw = (value & f.mask) >> f.lsb
            out[f.name] = f.enum.get(raw, raw) if f.kind == "enum" else raw
        return out

    def encode(self, fields: Mapping[str, FieldValue] | None = None, /, **kw: FieldValue) -> int:
        """Build a register value from field values (numbers, or enum names).

        Fields not named are zero. An unknown field, a value that does not
        fit its field, or an unknown enum name raises :class:`RegisterError`.
        """
        if fields is not None and not isinstance(fields, Mapping):
            raise RegisterError(f"{self.name}: fields must map field names to values, got {fields!r}")
        values = dict(fields or {}, **kw)
        out = 0
        for name, v in values.items():
            f = self.field(name)
            if isinstance(v, str):
                if f.kind != "enum":
                    raise RegisterError(f"{self.name}.{name} takes a number, not {v!r}")
                v = f.value_of(v)
            if not is_int(v) or not 0 <= v < 1 << f.width:
                raise RegisterError(
                    f"{self.name}.{name}={v!r} does not fit {f.width} bits"
                    f" (accepted: 0..{(1 << f.width) - 1})"
                )
            out |= v << f.lsb
        return out


PMBSR_EC_BUF = 0b000000
PMBSR_EC_FAULT_S1 = 0b100100
PMBSR_EC_FAULT_S2 = 0b100101

#: Buffer status codes in PMBSR_EL1.MSS[5:0] when EC is buffer management.
PMBSR_BSC_MASK = 0x3F
PMBSR_BSC_FULL = 0x1
PMBSR_BSC_SIZE = 0x4

PMBIDR_EL1 = Register(
    "PMBIDR_EL1",
    (3, 0, 9, 10, 7),
    [
        Field("ALIGN", 3, 0),
        Field("P", 4, 4),
        Field("F", 5, 5),
        Res0(7, 6),
        Field("EA", 11, 8, "enum", {0b0000: "NotDescribed", 0b0001: "Ignored", 0b0010: "SError"}),
        Res0(31, 12),
        Field("MaxBuffSize", 47, 32),
        Res0(63, 48),
    ],
)

PMBSR_EL1 = Register(
    "PMBSR_EL1",
    (3, 0, 9, 10, 3),
    [
        Field("MSS", 15, 0),
        Field("COLL", 16, 16),
        Field("S", 17, 17),
        Field("EA", 18, 18),
        Field("DL", 19, 19),
        Res0(25, 20),
        Field(
            "EC",
            31,
            26,
            "enum",
            {
                PMBSR_EC_BUF: "BUF",
                PMBSR_EC_FAULT_S1: "FAULT_S1",
                PMBSR_EC_FAULT_S2: "FAULT_S2",
                0b011110: "FAULT_GPC",
                0b011111: "IMP_DEF",
            },
        ),
        Res0(63, 32),
    ],
)

PMBLIMITR_EL1 = Register(
    "PMBLIMITR_EL1",
    (3, 0, 9, 10, 0),
    [
        Field("E", 0, 0),
        Field("FM", 2, 1, "enum", {0b00: "FILL", 0b10: "DISCARD"}),
        Res0(4, 3),
        Field("PMFZ", 5, 5),
        Res0(11, 6),
        Field("LIMIT", 63, 12),
    ],
)

PMBPTR_EL1 = Register("PMBPTR_EL1", (3, 0, 9, 10, 1), [Field("PTR", 63, 0)])

REGISTERS: dict[str, Register] = {r.name: r for r in (PMBIDR_EL1, PMBSR_EL1, PMBLIMITR_EL1, PMBPTR_EL1)}
