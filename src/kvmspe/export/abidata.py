"""The numbers an exporter writes, gathered from the library at generation time.

Nothing here lists a constant by hand: the SPE attributes come from
:data:`kvmspe.abi.ATTRS`, the other uapi numbers from every ``KVM_*`` integer
:mod:`kvmspe.abi` defines, the assumed numbers from the fields of
:class:`kvmspe.abi.Assumed`, the register layouts from
:data:`kvmspe.arch.registers.REGISTERS` and the MaxBuffSize parameters from
:mod:`kvmspe.arch.maxbuf`. A number added to any of them shows up in every
exported language without a change here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import abi
from ..arch import maxbuf, registers
from ..arch.registers import REGISTERS
from ..validation import is_int

__all__ = [
    "AssumedNumber",
    "Constant",
    "RegisterConstant",
    "assumed_numbers",
    "codec_constants",
    "register_constants",
    "spe_constants",
    "uapi_constants",
]

#: The kernel names of the assumed numbers, by :class:`kvmspe.abi.Assumed`
#: field (the names the v6 series uses; their numbers are what is unknown).
#: A field not named here is exported as ``KVMSPE_ASSUMED_<FIELD>``.
_ASSUMED_NAMES = {
    "spe_feature_bit": ("KVM_ARM_VCPU_SPE", "the VCPU feature bit for KVM_ARM_VCPU_INIT (v6 series)"),
    "cap_arm_spe": ("KVM_CAP_ARM_SPE", "the KVM_CHECK_EXTENSION capability (v6 series)"),
    "exit_rlimit": ("KVM_EXIT_RLIMIT", "the KVM_RUN exit reason (v6 series patch 32)"),
}


@dataclass(frozen=True)
class Constant:
    """A named number: ``ctype`` is ``u32`` or ``u64`` (how wide to declare it)."""

    name: str
    value: int
    comment: str = ""

    @property
    def ctype(self) -> str:
        return "u32" if 0 <= self.value < 1 << 32 else "u64"


@dataclass(frozen=True)
class AssumedNumber:
    """A number the v6 series uses but does not publish [assumed].

    ``value`` is what the user gave kvmspe (environment or ``set_assumed``)
    when the export ran, else None: a default is never exported, because the
    numbers older revisions used are taken upstream.
    """

    field: str
    name: str
    what: str
    env: str | None
    value: int | None


@dataclass(frozen=True)
class RegisterConstant:
    """One line of a register layout: ``<REG>_<FIELD>_{SHIFT,WIDTH,MASK}``,
    an enum value ``<REG>_<FIELD>_<Name>`` or ``<REG>_RES0``."""

    name: str
    value: int
    kind: str  # "shift", "width", "mask", "enum", "res0", "value"


def spe_constants() -> list[Constant]:
    """The SPE control group and every name of every attribute in :data:`abi.ATTRS`."""
    out: list[Constant] = []
    groups = sorted({g for g, _ in abi.ATTRS})
    for group in groups:
        name = next(
            (names[group] for names in abi.GROUP_NAMES.values() if group in names and "SPE" in names[group]),
            None,
        )
        if name is not None:
            out.append(Constant(name, group, "VCPU device attribute group [seed]"))
    for (_, attr), info in sorted(abi.ATTRS.items()):
        value = "no value" if getattr(info, "value", None) is None else _ctype(info.value)
        for i, alias in enumerate(info.names):
            note = f"attribute, value behind addr: {value}" if i == 0 else f"same attribute as {info.name}"
            out.append(Constant(alias, attr, note))
    return out


def _ctype(fmt: object) -> str:
    return "__u64" if fmt is abi.U64 else "int" if fmt is abi.INT else str(fmt)


def uapi_constants() -> list[Constant]:
    """Every other ``KVM_*``/``KVMIO`` integer of :mod:`kvmspe.abi`, sorted by name.

    Names ending in ``_OFFSET`` are kvmspe's own layout notes, not uapi names,
    and are left out.
    """
    taken = {c.name for c in spe_constants()}
    out = []
    for name, value in sorted(vars(abi).items()):
        if not (name.startswith("KVM_") or name == "KVMIO") or name in taken or name.endswith("_OFFSET"):
            continue
        if not is_int(value):
            continue
        out.append(Constant(name, value))
    return out


def assumed_numbers() -> list[AssumedNumber]:
    """The assumed numbers, each with the value the user gave (a built-in
    default is never reported as a number: it is not the kernel's)."""
    out = []
    for key, value in abi.ASSUMED.as_dict().items():
        name, what = _ASSUMED_NAMES.get(key, (f"KVMSPE_ASSUMED_{key.upper()}", key))
        given = value if abi.ASSUMED.source(key) != "default" else None
        out.append(AssumedNumber(key, name, what, abi.ASSUMED_ENV[key], given))
    return out


def register_constants() -> dict[str, list[RegisterConstant]]:
    """Per register of :data:`kvmspe.arch.registers.REGISTERS`: shifts, widths,
    masks, enum values (unshifted, as in the kernel's sysreg headers) and
    the RES0 mask."""
    out: dict[str, list[RegisterConstant]] = {}
    for reg in REGISTERS.values():
        rows: list[RegisterConstant] = []
        for f in reg.fields:
            if f.kind == "res0":
                continue
            base = f"{reg.name}_{f.name}"
            rows += [
                RegisterConstant(f"{base}_SHIFT", f.lsb, "shift"),
                RegisterConstant(f"{base}_WIDTH", f.width, "width"),
                RegisterConstant(f"{base}_MASK", f.mask, "mask"),
            ]
            for number, label in sorted(f.enum.items()):
                rows.append(RegisterConstant(f"{base}_{label}", number, "enum"))
        rows.append(RegisterConstant(f"{reg.name}_RES0", reg.res0_mask, "res0"))
        # Named values kvmspe keeps next to the table, e.g. PMBSR_BSC_SIZE.
        prefix = reg.name.removesuffix("_EL1") + "_"
        for name, value in sorted(vars(registers).items()):
            if name.startswith(prefix) and is_int(value):
                rows.append(RegisterConstant(name, value, "value"))
        out[reg.name] = rows
    return out


def codec_constants() -> list[Constant]:
    """The MaxBuffSize field's layout and the codec's limits, from :mod:`kvmspe.arch.maxbuf`."""
    e_shift = maxbuf.M_BITS
    return [
        Constant("KVMSPE_MAXBUFFSIZE_M_SHIFT", 0, "mantissa M: field bits [8:0]"),
        Constant("KVMSPE_MAXBUFFSIZE_M_MASK", maxbuf.M_MASK),
        Constant("KVMSPE_MAXBUFFSIZE_E_SHIFT", e_shift, "exponent E: field bits [13:9]"),
        Constant("KVMSPE_MAXBUFFSIZE_E_MASK", maxbuf.E_MASK << e_shift),
        Constant(
            "KVMSPE_MAXBUFFSIZE_RESERVED_MASK",
            ((1 << 16) - 1) & ~maxbuf.FIELD_MAX,
            "field bits [15:14]: reserved; a field with them set is invalid",
        ),
        Constant("KVMSPE_MAXBUFFSIZE_FIELD_MAX", maxbuf.FIELD_MAX, "largest valid field value"),
        Constant("KVMSPE_MAXBUFFSIZE_GRANULE", maxbuf.GRANULE, "unit of the E = 0 band"),
        Constant("KVMSPE_MAXBUFFSIZE_LARGEST", maxbuf.LARGEST, "largest representable size, 1023 << 42"),
        *(
            Constant(f"KVMSPE_PAGE_SIZE_{p // 1024}K", p, "an arm64 host page size")
            for p in maxbuf.PAGE_SIZES
        ),
    ]
