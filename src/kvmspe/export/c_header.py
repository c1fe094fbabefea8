"""``kvmspe export --lang c``: a C header for VMMs, generated from the library's data.

The header holds the SPE group and attribute numbers, the other uapi numbers
kvmspe uses, the assumed numbers as "define it yourself" guards, the SPE
buffer registers' fields as shifts, widths and masks, and the
PMBIDR_EL1.MaxBuffSize codec as ``static inline`` functions that compute what
:mod:`kvmspe.arch.maxbuf` computes. It needs only ``<stdint.h>`` and
``<stdbool.h>`` and compiles as C99 or C11, 32- or 64-bit.

Every number is under ``#ifndef``, so a build can override it
(``-DKVM_ARM_VCPU_SPE=N``), and a program that includes ``<linux/kvm.h>``
first keeps the kernel's own definitions.
"""

from __future__ import annotations

from .. import __version__, abi
from . import abidata

__all__ = ["render"]

_PREFIX = "kvmspe_maxbuffsize_"


def _num(value: int) -> str:
    if value < 1 << 31:
        return str(value) if value < 4096 else f"{value:#x}"
    if value < 1 << 32:
        return f"{value:#x}U"
    return f"UINT64_C({value:#x})"


def _define(name: str, value: int, comment: str = "") -> list[str]:
    tail = f" /* {comment} */" if comment else ""
    return [f"#ifndef {name}", f"#define {name} {_num(value)}{tail}", "#endif"]


#: What <linux/kvm.h> declares as enumerators (``enum kvm_device_type``), not as
#: numeric macros: a number defined under such a name before it breaks it.
_ENUMERATOR_PREFIX = "KVM_DEV_TYPE_"
#: The name of this header's own enumerators for them: the compiler's error,
#: should <linux/kvm.h> come after this header, quotes it.
_ORDER_HINT = "kvmspe_error_include_linux_kvm_h_before_kvmspe_h_"


def _enumerators(constants: list[abidata.Constant]) -> list[str]:
    """The ``KVM_DEV_TYPE_*`` numbers, such that including <linux/kvm.h> after
    this header stops with an error that says what to do."""
    if not constants:
        return []
    lines = [
        "/*",
        " * <linux/kvm.h> declares KVM_DEV_TYPE_* as enumerators. When it has not",
        " * been included (yet), this header gives them as enumerators of its own:",
        " * should <linux/kvm.h> come later, its enum then redeclares them, and the",
        " * compiler's error says the fix: include <linux/kvm.h> before this header.",
        " */",
        "#if " + " && ".join(f"!defined({c.name})" for c in constants),
        "enum kvmspe_dev_type {",
    ]
    lines += [f"    {_ORDER_HINT}{c.name[len(_ENUMERATOR_PREFIX) :]} = {_num(c.value)}," for c in constants]
    lines.append("};")
    lines += [f"#define {c.name} {_ORDER_HINT}{c.name[len(_ENUMERATOR_PREFIX) :]}" for c in constants]
    lines.append("#endif")
    return lines


def _assumed() -> list[str]:
    lines = [
        "/*",
        " * Assumed numbers. The v6 series uses these but does not publish their",
        " * numbers, and the numbers earlier revisions used are taken upstream by",
        " * other features, so this header gives no default. Define each one you",
        " * use at build time (e.g. -DKVM_ARM_VCPU_SPE=N) from what your kernel's",
        " * uapi headers say or what you probed; KVMSPE_HAVE_<NAME> says whether",
        " * it is defined. Define KVMSPE_REQUIRE_ASSUMED to make a missing one an",
        " * error.",
        " */",
    ]
    for a in abidata.assumed_numbers():
        env = f"; kvmspe reads it from {a.env}" if a.env else ""
        lines.append(f"/* {a.name}: ASSUMED, {a.what}{env}. */")
        if a.value is not None:
            lines += [
                f"#ifndef {a.name}",
                f"#define {a.name} {_num(a.value)} /* ASSUMED: given to kvmspe when this header was made */",
                "#endif",
            ]
        lo, hi, why = abi.accepted_range(a.field)
        lines += [
            f"#define KVMSPE_{a.name}_MIN {_num(lo)}",
            f"#define KVMSPE_{a.name}_MAX {_num(hi)}",
            f"#ifdef {a.name}",
            f"#define KVMSPE_HAVE_{a.name} 1",
            f"#if ({a.name}) < KVMSPE_{a.name}_MIN || ({a.name}) > KVMSPE_{a.name}_MAX",
            f'#error "{a.name} is out of range: kvmspe accepts {lo}..{hi} ({why})"',
            "#endif",
            "#else",
            f"#define KVMSPE_HAVE_{a.name} 0",
            "#if defined(KVMSPE_REQUIRE_ASSUMED)",
            f'#error "{a.name} is assumed and unknown: define it (-D{a.name}=N)"',
            "#endif",
            "#endif",
        ]
    return lines


def _registers() -> list[str]:
    lines = []
    for reg, rows in abidata.register_constants().items():
        lines += ["", f"/* {reg} */"]
        for r in rows:
            if r.kind in ("mask", "res0"):
                body = f"UINT64_C({r.value:#018x})"
            else:
                body = _num(r.value)
            lines += [f"#ifndef {r.name}", f"#define {r.name} {body}", "#endif"]
    return lines


_CODEC = """
/*
 * PMBIDR_EL1.MaxBuffSize: E = field bits [13:9], M = bits [8:0], bits [15:14]
 * reserved. E = 0: M * 4 KiB; E > 0: (512 + M) << (E + 11). Field 0 is 0,
 * "no limit". Each function answers false where kvmspe raises an error.
 */

/* The size a field value stands for; false when the field has bits above
 * KVMSPE_MAXBUFFSIZE_FIELD_MAX set (the reserved bits [15:14]). */
static inline bool {p}decode(uint32_t field, uint64_t *size)
{{
    uint32_t e, m;

    if (field > KVMSPE_MAXBUFFSIZE_FIELD_MAX)
        return false;
    e = (field & KVMSPE_MAXBUFFSIZE_E_MASK) >> KVMSPE_MAXBUFFSIZE_E_SHIFT;
    m = field & KVMSPE_MAXBUFFSIZE_M_MASK;
    *size = e == 0 ? (uint64_t)m * KVMSPE_MAXBUFFSIZE_GRANULE
               : (uint64_t)(512 + m) << (e + 11);
    return true;
}}

static inline unsigned {p}bit_length(uint64_t v)
{{
    unsigned n = 0;

    while (v) {{
        n++;
        v >>= 1;
    }}
    return n;
}}

/* The largest field value whose size is <= size. */
static inline uint32_t {p}floor_field(uint64_t size)
{{
    unsigned e;

    if (size < (UINT64_C(1) << 21))
        return (uint32_t)(size / KVMSPE_MAXBUFFSIZE_GRANULE);
    e = {p}bit_length(size) - 21;
    if (e > 31)
        return KVMSPE_MAXBUFFSIZE_FIELD_MAX;
    return (uint32_t)((e << 9) | ((size >> (e + 11)) - 512));
}}

static inline uint64_t {p}size_of(uint32_t field)
{{
    uint64_t size = 0;

    (void){p}decode(field, &size);
    return size;
}}

/* True when size has an exact MaxBuffSize encoding. */
static inline bool {p}is_representable(uint64_t size)
{{
    if (size > KVMSPE_MAXBUFFSIZE_LARGEST)
        return false;
    return {p}size_of({p}floor_field(size)) == size;
}}

/* The field value of size; false when size has no exact encoding. */
static inline bool {p}encode(uint64_t size, uint16_t *field)
{{
    if (!{p}is_representable(size))
        return false;
    *field = (uint16_t){p}floor_field(size);
    return true;
}}

/* Distance between representable sizes in the exponent band of size. */
static inline uint64_t {p}step_at(uint64_t size)
{{
    int shift = (int){p}bit_length(size) - 22;

    if (shift < 0)
        shift = 0;
    if (shift > 30)
        shift = 30;
    return (uint64_t)KVMSPE_MAXBUFFSIZE_GRANULE << shift;
}}

static inline bool {p}page_size_ok(uint64_t page_size)
{{
    return page_size == KVMSPE_PAGE_SIZE_4K || page_size == KVMSPE_PAGE_SIZE_16K ||
           page_size == KVMSPE_PAGE_SIZE_64K;
}}

/* The largest size <= size that is representable and a multiple of
 * page_size (4, 16 or 64 KiB); false for another page size. 0 is such a
 * size, and 0 means "no limit". */
static inline bool {p}round_down(uint64_t size, uint64_t page_size, uint64_t *out)
{{
    uint64_t unit;

    if (!{p}page_size_ok(page_size))
        return false;
    if (size > KVMSPE_MAXBUFFSIZE_LARGEST)
        size = KVMSPE_MAXBUFFSIZE_LARGEST;
    unit = {p}step_at(size);
    if (unit < page_size)
        unit = page_size;
    *out = size - size % unit;
    return true;
}}

/* The smallest size >= size that is representable and a multiple of
 * page_size; false for another page size or a size above the largest. */
static inline bool {p}round_up(uint64_t size, uint64_t page_size, uint64_t *out)
{{
    uint64_t unit;

    if (!{p}page_size_ok(page_size) || size > KVMSPE_MAXBUFFSIZE_LARGEST)
        return false;
    unit = {p}step_at(size);
    if (unit < page_size)
        unit = page_size;
    *out = (size + unit - 1) / unit * unit;
    return true;
}}
"""


def render() -> str:
    """The header's text."""
    lines = [
        f"/* Generated by kvmspe {__version__} (kvmspe export --lang c). Do not edit: regenerate. */",
        "/*",
        " * KVM arm64 SPE VCPU interface (v6 series, KVM_ARM_VCPU_SPE_CTRL) for VMMs:",
        " * numbers, SPE buffer register fields and the PMBIDR_EL1.MaxBuffSize codec.",
        " * Include <linux/kvm.h> before this header if you use both (the other",
        " * order stops the build with an error saying so).",
        " */",
        "#ifndef KVMSPE_H",
        "#define KVMSPE_H",
        "",
        "#include <stdbool.h>",
        "#include <stdint.h>",
        "",
        "/* The SPE control group and its attributes [the v6 series' uapi] */",
    ]
    for c in abidata.spe_constants():
        lines += _define(c.name, c.value, c.comment)
    lines += ["", "/* Upstream uapi numbers kvmspe uses (include/uapi/linux/kvm.h, asm/kvm.h) */"]
    uapi = abidata.uapi_constants()
    for c in uapi:
        if not c.name.startswith(_ENUMERATOR_PREFIX):
            lines += _define(c.name, c.value, c.comment)
    lines += _enumerators([c for c in uapi if c.name.startswith(_ENUMERATOR_PREFIX)])
    lines += [""] + _assumed()
    lines += ["", "/* SPE buffer registers (Arm architecture, as arch/arm64/tools/sysreg names them) */"]
    lines += _registers()
    lines += ["", "/* The MaxBuffSize codec's parameters */"]
    for c in abidata.codec_constants():
        lines += _define(c.name, c.value, c.comment)
    lines += _CODEC.format(p=_PREFIX).splitlines()
    lines += ["", "#endif /* KVMSPE_H */"]
    return "\n".join(lines) + "\n"
