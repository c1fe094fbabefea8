"""The ACPI description of the guest's SPE: the MADT GICC "SPE overflow interrupt" field.

On an ACPI guest there is no SPE node: each GICC structure of the MADT (one
per processor, subtable type 11) carries the SPE interrupt in a 2-byte field
that ACPI 6.3 made out of the reserved bytes after "Processor Power
Efficiency Class" (ACPI 6.3 also raised the MADT revision to 5, as the
QEMU patch moving its arm ``virt`` MADT to revision 5 notes). Its value is
the GSIV of the PPI, which for a GIC interrupt is the INTID; 0 means the
processor has no SPE.

The layout is declared below as Linux declares it (``include/acpi/actbl2.h``,
``struct acpi_madt_generic_interrupt``, from ACPICA): the field is
``spe_interrupt`` at offset 78, so a GICC must be at least 80 bytes long to
hold it (the ACPI 6.3 length); ACPI 6.5 appends ``trbe_interrupt``, making 82.
Offsets come from ctypes, not from hand-kept numbers.

What Linux requires of it (``drivers/perf/arm_pmu_acpi.c``,
``arm_acpi_register_pmu_device`` called by ``arm_spe_acpi_register_device``,
with ``ACPI_MADT_GICC_SPE`` from ``arch/arm64/include/asm/acpi.h`` = the
field's offset + 2):

* every possible CPU's GICC is at least ``ACPI_MADT_GICC_SPE`` (80) bytes
  long, else no SPE device is registered;
* the value is non-zero and the same on every GICC (and the CPUs share one
  PPTT heterogeneous id), else the driver warns that SPE "must be
  homogeneous" and registers nothing;
* the interrupt is registered level-sensitive, active high
  (``ACPI_LEVEL_SENSITIVE``, ``ACPI_ACTIVE_HIGH``): the GICC has no trigger
  flag for this field.

So a VMM writes the same value into every GICC, which is what
:func:`gicc_spe_fields` returns, one entry per VCPU.
"""

from __future__ import annotations

import ctypes
from ctypes import c_uint8, c_uint16, c_uint32, c_uint64
from dataclasses import dataclass
from typing import Any

from ..validation import check_int
from .interrupt import check_spe_ppi

__all__ = [
    "ACPI_MADT_GICC_SPE",
    "ACPI_MADT_GICC_TRBE",
    "ACPI_MADT_TYPE_GENERIC_INTERRUPT",
    "FIELD_NAME",
    "FIELD_SINCE",
    "MAX_VCPUS",
    "SPE_OFFSET",
    "SPE_WIDTH",
    "GiccSpeField",
    "acpi_madt_generic_interrupt",
    "gicc_spe_fields",
    "madt_document",
]


class acpi_madt_generic_interrupt(ctypes.Structure):  # noqa: N801 (the C name)
    """MADT subtable 11, the GICC, in its ACPI 6.5 layout (packed, little-endian)."""

    _pack_ = 1
    _fields_ = [
        ("type", c_uint8),  # struct acpi_subtable_header: 11
        ("length", c_uint8),
        ("reserved", c_uint16),
        ("cpu_interface_number", c_uint32),
        ("uid", c_uint32),
        ("flags", c_uint32),
        ("parking_version", c_uint32),
        ("performance_interrupt", c_uint32),  # the PMU's GSIV
        ("parked_address", c_uint64),
        ("base_address", c_uint64),
        ("gicv_base_address", c_uint64),
        ("gich_base_address", c_uint64),
        ("vgic_interrupt", c_uint32),
        ("gicr_base_address", c_uint64),
        ("arm_mpidr", c_uint64),
        ("efficiency_class", c_uint8),  # ACPI 6.0
        ("reserved2", c_uint8 * 1),
        ("spe_interrupt", c_uint16),  # ACPI 6.3
        ("trbe_interrupt", c_uint16),  # ACPI 6.5
    ]


#: The MADT subtable type of a GICC (ACPICA's ACPI_MADT_TYPE_GENERIC_INTERRUPT).
ACPI_MADT_TYPE_GENERIC_INTERRUPT = 11
#: The field's name in the ACPI specification.
FIELD_NAME = "SPE overflow interrupt"
#: The specification version that added the field.
FIELD_SINCE = "ACPI 6.3"
#: Where the field sits in a GICC, and how wide it is (bytes).
SPE_OFFSET: int = acpi_madt_generic_interrupt.spe_interrupt.offset
SPE_WIDTH: int = acpi_madt_generic_interrupt.spe_interrupt.size
#: The shortest GICC that holds the field (Linux's ACPI_MADT_GICC_SPE; ACPI 6.3's GICC length).
ACPI_MADT_GICC_SPE = SPE_OFFSET + SPE_WIDTH
#: The GICC length with ACPI 6.5's TRBE interrupt after it (Linux's ACPI_MADT_GICC_TRBE).
ACPI_MADT_GICC_TRBE: int = (
    acpi_madt_generic_interrupt.trbe_interrupt.offset + acpi_madt_generic_interrupt.trbe_interrupt.size
)
#: VCPUs, hence GICCs, accepted: arm64's KVM_MAX_VCPUS, the GICv3 limit (as ``configure``).
MAX_VCPUS = 512


@dataclass(frozen=True)
class GiccSpeField:
    """The "SPE overflow interrupt" field of one VCPU's GICC: where it is and what to write."""

    #: The GICC's index among the MADT's GICCs (the VCPU's).
    gicc: int
    #: The GSIV to write: the SPE interrupt's INTID.
    value: int

    @property
    def offset(self) -> int:
        """Byte offset of the field from the start of the GICC structure."""
        return SPE_OFFSET

    @property
    def width(self) -> int:
        """Size of the field in bytes."""
        return SPE_WIDTH

    def to_bytes(self) -> bytes:
        """The bytes a VMM writes at :attr:`offset`: the value, little-endian (ACPI tables are)."""
        return self.value.to_bytes(SPE_WIDTH, "little")


def gicc_spe_fields(irq: int, vcpus: int = 1) -> list[GiccSpeField]:
    """The "SPE overflow interrupt" of every GICC of a guest with ``vcpus`` VCPUs.

    ``irq`` is the SPE interrupt's INTID (a PPI, 16..31, the value given to
    ``KVM_ARM_VCPU_SPE_IRQ``); every GICC gets the same value, as Linux
    requires. Raises :class:`~kvmspe.errors.InvalidArgumentError` for a
    non-PPI or a VCPU count outside 1..512.
    """
    check_spe_ppi(irq)
    check_int("VCPU count", vcpus, 1, MAX_VCPUS)
    return [GiccSpeField(gicc=i, value=irq) for i in range(vcpus)]


def madt_document(irq: int, vcpus: int = 1) -> dict[str, Any]:
    """The field of every GICC as a JSON-ready document: where it is (table, structure,
    offset, width, the GICC lengths that hold it), the value and its bytes, how Linux
    takes the interrupt, and each GICC's own entry. Raises as :func:`gicc_spe_fields`."""
    fields = gicc_spe_fields(irq, vcpus)
    first = fields[0]
    return {
        "description": "acpi",
        "irq": irq,
        "vcpus": vcpus,
        "table": "APIC",
        "structure": "GICC",
        "structure_type": ACPI_MADT_TYPE_GENERIC_INTERRUPT,
        "field": FIELD_NAME,
        "since": FIELD_SINCE,
        "offset": first.offset,
        "width": first.width,
        "min_gicc_length": ACPI_MADT_GICC_SPE,
        "gicc_length_with_trbe": ACPI_MADT_GICC_TRBE,
        "value": first.value,
        "bytes": list(first.to_bytes()),
        "trigger": "level",
        "polarity": "active-high",
        "gicc": [
            {"gicc": f.gicc, "offset": f.offset, "value": f.value, "bytes": list(f.to_bytes())}
            for f in fields
        ],
    }
