"""The device-tree node a VMM adds for the guest's SPE: compatible string and PPI.

What the node holds, and where each number comes from:

* ``compatible = "arm,statistical-profiling-extension-v1"``: the only
  compatible of the Linux binding ``Documentation/devicetree/bindings/perf/
  spe-pmu.yaml``, which also requires ``interrupts`` with exactly one PPI.
* ``interrupts = <type number flags>``: the 3-cell GIC interrupt specifier of
  the bindings ``interrupt-controller/arm,gic-v3.yaml`` and ``arm,gic.yaml``
  (GICv1/v2). The first cell is the interrupt type, 1 for a PPI; the second
  the PPI number, INTID - 16; the third the flags.
* The flags' bits [3:0] are the trigger: 4, ``IRQ_TYPE_LEVEL_HIGH`` of
  ``include/dt-bindings/interrupt-controller/irq.h`` ("active high
  level-sensitive" in the GICv2 binding). The SPE binding's own example uses
  ``IRQ_TYPE_LEVEL_HIGH``, and Linux registers the SPE interrupt it finds in
  ACPI as level-sensitive, active high (``drivers/perf/arm_pmu_acpi.c``,
  ``arm_acpi_register_pmu_device``), as does kvmtool's SPE node.
* GICv2 only: bits [15:8] of the flags are the PPI's CPU mask, one bit per
  CPU interface the interrupt is wired to, 8 at most (binding ``arm,gic.yaml``).
  The GICv3 binding gives the flags no CPU mask.

The form follows what VMMs write for their PMU node: QEMU's ``virt`` machine
(``hw/arm/virt.c``, ``fdt_add_pmu_nodes``) writes ``<1, INTID - 16,
IRQ_TYPE_LEVEL_HIGH>`` and adds the mask ``(1 << cpus) - 1`` at bit 8 only on
GICv2; kvmtool (``arm/aarch64/pmu.c``, and its SPE patch "arm64: Add SPE
support", RFC v4, 2021, node ``spe`` with INTID 21) ORs that mask in for
either GIC. kvmspe follows QEMU: the mask where the binding defines it.

The node name defaults to ``spe-pmu``, the name in the binding's example;
the node goes directly under ``/`` of a tree whose interrupt parent is the GIC
(``interrupt-parent`` at the root, ``#interrupt-cells = <3>`` in the GIC node).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..errors import InvalidArgumentError
from ..validation import check_int, is_int
from .interrupt import PPI_INTID_BASE, check_spe_ppi

__all__ = [
    "COMPATIBLE",
    "DEFAULT_NODE_NAME",
    "GICV2_MAX_CPUS",
    "GICV2_PPI_CPU_SHIFT",
    "GIC_FDT_IRQ_TYPE_PPI",
    "GIC_VERSIONS",
    "IRQ_TYPE_LEVEL_HIGH",
    "MAX_VCPUS",
    "Gic",
    "SpeNode",
    "spe_node",
]

#: The compatible string of the Linux SPE binding (perf/spe-pmu.yaml).
COMPATIBLE = "arm,statistical-profiling-extension-v1"
#: First cell of a GIC interrupt specifier: 0 SPI, 1 PPI (arm,gic.yaml, arm,gic-v3.yaml).
GIC_FDT_IRQ_TYPE_PPI = 1
#: Flags bits [3:0]: active-high level-sensitive (dt-bindings/interrupt-controller/irq.h).
IRQ_TYPE_LEVEL_HIGH = 4
#: GICv2: the PPI's CPU mask sits in flags bits [15:8] (arm,gic.yaml).
GICV2_PPI_CPU_SHIFT = 8
#: GICv2: at most 8 CPU interfaces, one mask bit each (arm,gic.yaml).
GICV2_MAX_CPUS = 8
#: The VCPU count accepted otherwise: arm64's KVM_MAX_VCPUS, the GICv3 limit (as ``configure``).
MAX_VCPUS = 512
#: The node name of the SPE binding's example.
DEFAULT_NODE_NAME = "spe-pmu"

Gic = Literal["v3", "v2"]
#: The GIC versions a node can be written for; v3 is what kvmspe configures.
GIC_VERSIONS: tuple[Gic, ...] = ("v3", "v2")

# Device-tree specification: a node name is 1..31 characters from [0-9a-zA-Z,._+-]
# and starts with a letter (an optional "@unit-address" is not needed here: the
# node has no "reg"); a label is a C-like identifier of at most 31 characters.
_NODE_NAME = re.compile(r"[A-Za-z][0-9A-Za-z,._+-]{0,30}")
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,30}")


@dataclass(frozen=True)
class SpeNode:
    """One SPE node: its name, label, and the two properties the binding requires."""

    name: str
    label: str | None
    irq: int
    gic: Gic
    vcpus: int

    @property
    def ppi(self) -> int:
        """The PPI number the specifier carries: INTID - 16."""
        return self.irq - PPI_INTID_BASE

    @property
    def cpu_mask(self) -> int | None:
        """GICv2: the mask of CPU interfaces the PPI reaches (one bit per VCPU); None on GICv3."""
        return (1 << self.vcpus) - 1 if self.gic == "v2" else None

    @property
    def flags(self) -> int:
        """The third cell: the trigger, plus the CPU mask in bits [15:8] on GICv2."""
        mask = self.cpu_mask
        return IRQ_TYPE_LEVEL_HIGH | (mask << GICV2_PPI_CPU_SHIFT if mask is not None else 0)

    @property
    def interrupts(self) -> tuple[int, int, int]:
        """The ``interrupts`` cells: PPI type, PPI number, flags."""
        return (GIC_FDT_IRQ_TYPE_PPI, self.ppi, self.flags)

    def properties(self) -> dict[str, str | list[int]]:
        """The node's properties as data: the string, and the cells as integers."""
        return {"compatible": COMPATIBLE, "interrupts": list(self.interrupts)}

    def to_dts(self) -> str:
        """The node in device-tree source, to paste under ``/`` (ends with a newline)."""
        head = f"{self.label}: {self.name}" if self.label else self.name
        kind, number, flags = self.interrupts
        flags_text = f"{flags:#x}" if flags > 0xF else str(flags)
        what = f"INTID {self.irq}, level-sensitive, active high"
        if self.cpu_mask is not None:
            what += f", CPU mask {self.cpu_mask:#04x}"
        return (
            f"{head} {{\n"
            f'\tcompatible = "{COMPATIBLE}";\n'
            f"\tinterrupts = <{kind} {number} {flags_text}>;\t/* PPI {number}: {what} */\n"
            "};\n"
        )


def spe_node(
    irq: int,
    *,
    gic: str = "v3",
    vcpus: int = 1,
    name: str = DEFAULT_NODE_NAME,
    label: str | None = None,
) -> SpeNode:
    """The SPE node for the SPE interrupt ``irq`` (an INTID, 16..31) on a ``gic`` GIC.

    ``vcpus`` matters on GICv2 only (the CPU mask; at most 8). Raises
    :class:`~kvmspe.errors.InvalidArgumentError` for a non-PPI, an unknown GIC
    version, a VCPU count out of range, or a name or label the device-tree
    syntax does not allow.
    """
    check_spe_ppi(irq)
    if gic not in GIC_VERSIONS:
        raise InvalidArgumentError(f"GIC version {gic!r} is not known; accepted: {', '.join(GIC_VERSIONS)}")
    if gic == "v2" and is_int(vcpus) and vcpus > GICV2_MAX_CPUS:
        raise InvalidArgumentError(
            f"{vcpus} VCPUs do not fit a GICv2 PPI's CPU mask; accepted: 1..{GICV2_MAX_CPUS} (or a GICv3)"
        )
    check_int("VCPU count", vcpus, 1, GICV2_MAX_CPUS if gic == "v2" else MAX_VCPUS)
    if not isinstance(name, str) or not _NODE_NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"node name {name!r} is not a device-tree node name; accepted: a letter, then"
            " up to 30 of [0-9A-Za-z,._+-]"
        )
    if label is not None and (not isinstance(label, str) or not _LABEL.fullmatch(label)):
        raise InvalidArgumentError(
            f"label {label!r} is not a device-tree label; accepted: a letter or _, then letters,"
            " digits or _, 31 characters at most"
        )
    return SpeNode(name=name, label=label, irq=irq, gic="v2" if gic == "v2" else "v3", vcpus=vcpus)
