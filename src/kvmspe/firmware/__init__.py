"""What a VMM gives the guest to describe SPE: a device-tree node or an ACPI MADT field.

KVM makes the SPE interrupt a PPI of the VCPU (``KVM_ARM_VCPU_SPE_IRQ``); the
guest's kernel only finds it through its firmware description. Two ways exist,
one module each: :mod:`kvmspe.firmware.devicetree` (the node with
``compatible = "arm,statistical-profiling-extension-v1"``) and
:mod:`kvmspe.firmware.acpi` (the "SPE overflow interrupt" field of every MADT
GICC structure). The interrupt rule both share is :mod:`kvmspe.firmware.interrupt`.
"""
