@GENERATED@
//! KVM arm64 SPE VCPU interface (v6 series, KVM_ARM_VCPU_SPE_CTRL) for VMMs:
//! numbers, SPE buffer register fields and the PMBIDR_EL1.MaxBuffSize codec.
#![allow(non_upper_case_globals, dead_code)]

// The SPE control group and its attributes [the v6 series' uapi]
@SPE_NUMBERS@

// Upstream uapi numbers kvmspe uses (include/uapi/linux/kvm.h, asm/kvm.h)
@UAPI_NUMBERS@

// Assumed numbers: the v6 series uses them but does not publish their
// numbers, and those of earlier revisions are taken upstream, so there is
// no default. Set the environment variable of the same name when
// compiling (KVM_ARM_VCPU_SPE=N cargo build) to give one: decimal or 0x hex.

const fn parse_assumed(text: Option<&str>, given: Option<u32>) -> Option<u32> {
    let bytes = match text {
        Some(t) => t.as_bytes(),
        None => return given,
    };
    if bytes.is_empty() {
        panic!("an assumed number is set to an empty string");
    }
    let hex = bytes.len() > 2 && bytes[0] == b'0' && (bytes[1] == b'x' || bytes[1] == b'X');
    let base: u64 = if hex { 16 } else { 10 };
    let mut i = if hex { 2 } else { 0 };
    let mut value: u64 = 0;
    while i < bytes.len() {
        let d = bytes[i];
        let digit = if d >= b'0' && d <= b'9' {
            (d - b'0') as u64
        } else if hex && d >= b'a' && d <= b'f' {
            (d - b'a' + 10) as u64
        } else if hex && d >= b'A' && d <= b'F' {
            (d - b'A' + 10) as u64
        } else {
            panic!("an assumed number must be a decimal or 0x-hex u32");
        };
        value = value * base + digit;
        if value > u32::MAX as u64 {
            panic!("an assumed number must be a decimal or 0x-hex u32");
        }
        i += 1;
    }
    Some(value as u32)
}

const fn assumed_in_range(value: Option<u32>, lo: u32, hi: u32) -> bool {
    match value {
        Some(v) => v >= lo && v <= hi,
        None => true,
    }
}
@ASSUMED_NUMBERS@

// SPE buffer registers (Arm architecture, as arch/arm64/tools/sysreg names them)
@REGISTER_FIELDS@

// The MaxBuffSize codec's parameters
@CODEC_NUMBERS@

// PMBIDR_EL1.MaxBuffSize: E = field bits [13:9], M = bits [8:0], bits [15:14]
// reserved. E = 0: M * 4 KiB; E > 0: (512 + M) << (E + 11). Field 0 is 0,
// "no limit". Each function answers None where kvmspe raises an error.

/// The size a field value stands for; None when bits above
/// KVMSPE_MAXBUFFSIZE_FIELD_MAX (the reserved bits [15:14]) are set.
pub const fn maxbuffsize_decode(field: u32) -> Option<u64> {
    if field > KVMSPE_MAXBUFFSIZE_FIELD_MAX {
        return None;
    }
    let e = (field & KVMSPE_MAXBUFFSIZE_E_MASK) >> KVMSPE_MAXBUFFSIZE_E_SHIFT;
    let m = (field & KVMSPE_MAXBUFFSIZE_M_MASK) as u64;
    if e == 0 {
        Some(m * KVMSPE_MAXBUFFSIZE_GRANULE as u64)
    } else {
        Some((512 + m) << (e + 11))
    }
}

const fn bit_length(v: u64) -> u32 {
    64 - v.leading_zeros()
}

/// The largest field value whose size is <= size.
const fn floor_field(size: u64) -> u32 {
    if size < 1 << 21 {
        return (size / KVMSPE_MAXBUFFSIZE_GRANULE as u64) as u32;
    }
    let e = bit_length(size) - 21;
    if e > 31 {
        return KVMSPE_MAXBUFFSIZE_FIELD_MAX;
    }
    (e << 9) | ((size >> (e + 11)) - 512) as u32
}

/// True when size has an exact MaxBuffSize encoding.
pub const fn maxbuffsize_is_representable(size: u64) -> bool {
    if size > KVMSPE_MAXBUFFSIZE_LARGEST {
        return false;
    }
    match maxbuffsize_decode(floor_field(size)) {
        Some(s) => s == size,
        None => false,
    }
}

/// The field value of size; None when size has no exact encoding.
pub const fn maxbuffsize_encode(size: u64) -> Option<u16> {
    if maxbuffsize_is_representable(size) {
        Some(floor_field(size) as u16)
    } else {
        None
    }
}

/// Distance between representable sizes in the exponent band of size.
const fn step_at(size: u64) -> u64 {
    let mut shift = bit_length(size) as i32 - 22;
    if shift < 0 {
        shift = 0;
    }
    if shift > 30 {
        shift = 30;
    }
    (KVMSPE_MAXBUFFSIZE_GRANULE as u64) << shift
}

const fn page_size_ok(page_size: u64) -> bool {
    page_size == KVMSPE_PAGE_SIZE_4K as u64
        || page_size == KVMSPE_PAGE_SIZE_16K as u64
        || page_size == KVMSPE_PAGE_SIZE_64K as u64
}

/// The largest size <= size that is representable and a multiple of
/// page_size (4, 16 or 64 KiB); None for another page size. 0 is such a
/// size, and 0 means "no limit".
pub const fn maxbuffsize_round_down(size: u64, page_size: u64) -> Option<u64> {
    if !page_size_ok(page_size) {
        return None;
    }
    let size = if size > KVMSPE_MAXBUFFSIZE_LARGEST { KVMSPE_MAXBUFFSIZE_LARGEST } else { size };
    let mut unit = step_at(size);
    if unit < page_size {
        unit = page_size;
    }
    Some(size - size % unit)
}

/// The smallest size >= size that is representable and a multiple of
/// page_size; None for another page size or a size above the largest.
pub const fn maxbuffsize_round_up(size: u64, page_size: u64) -> Option<u64> {
    if !page_size_ok(page_size) || size > KVMSPE_MAXBUFFSIZE_LARGEST {
        return None;
    }
    let mut unit = step_at(size);
    if unit < page_size {
        unit = page_size;
    }
    Some((size + unit - 1) / unit * unit)
}
