@GENERATED@
/*
 * KVM arm64 SPE VCPU interface (v6 series, KVM_ARM_VCPU_SPE_CTRL) for VMMs:
 * numbers, SPE buffer register fields and the PMBIDR_EL1.MaxBuffSize codec.
 * Include <linux/kvm.h> before this header if you use both (the other
 * order stops the build with an error saying so).
 */
#ifndef KVMSPE_H
#define KVMSPE_H

#include <stdbool.h>
#include <stdint.h>

/* The SPE control group and its attributes [the v6 series' uapi] */
@SPE_NUMBERS@

/* Upstream uapi numbers kvmspe uses (include/uapi/linux/kvm.h, asm/kvm.h) */
@UAPI_NUMBERS@

/*
 * Assumed numbers. The v6 series uses these but does not publish their
 * numbers, and the numbers earlier revisions used are taken upstream by
 * other features, so this header gives no default. Define each one you
 * use at build time (e.g. -DKVM_ARM_VCPU_SPE=N) from what your kernel's
 * uapi headers say or what you probed; KVMSPE_HAVE_<NAME> says whether
 * it is defined. Define KVMSPE_REQUIRE_ASSUMED to make a missing one an
 * error.
 */
@ASSUMED_NUMBERS@

/* SPE buffer registers (Arm architecture, as arch/arm64/tools/sysreg names them) */
@REGISTER_FIELDS@

/* The MaxBuffSize codec's parameters */
@CODEC_NUMBERS@

/*
 * PMBIDR_EL1.MaxBuffSize: E = field bits [13:9], M = bits [8:0], bits [15:14]
 * reserved. E = 0: M * 4 KiB; E > 0: (512 + M) << (E + 11). Field 0 is 0,
 * "no limit". Each function answers false where kvmspe raises an error.
 */

/* The size a field value stands for; false when the field has bits above
 * KVMSPE_MAXBUFFSIZE_FIELD_MAX set (the reserved bits [15:14]). */
static inline bool kvmspe_maxbuffsize_decode(uint32_t field, uint64_t *size)
{
    uint32_t e, m;

    if (field > KVMSPE_MAXBUFFSIZE_FIELD_MAX)
        return false;
    e = (field & KVMSPE_MAXBUFFSIZE_E_MASK) >> KVMSPE_MAXBUFFSIZE_E_SHIFT;
    m = field & KVMSPE_MAXBUFFSIZE_M_MASK;
    *size = e == 0 ? (uint64_t)m * KVMSPE_MAXBUFFSIZE_GRANULE
               : (uint64_t)(512 + m) << (e + 11);
    return true;
}

static inline unsigned kvmspe_maxbuffsize_bit_length(uint64_t v)
{
    unsigned n = 0;

    while (v) {
        n++;
        v >>= 1;
    }
    return n;
}

/* The largest field value whose size is <= size. */
static inline uint32_t kvmspe_maxbuffsize_floor_field(uint64_t size)
{
    unsigned e;

    if (size < (UINT64_C(1) << 21))
        return (uint32_t)(size / KVMSPE_MAXBUFFSIZE_GRANULE);
    e = kvmspe_maxbuffsize_bit_length(size) - 21;
    if (e > 31)
        return KVMSPE_MAXBUFFSIZE_FIELD_MAX;
    return (uint32_t)((e << 9) | ((size >> (e + 11)) - 512));
}

static inline uint64_t kvmspe_maxbuffsize_size_of(uint32_t field)
{
    uint64_t size = 0;

    (void)kvmspe_maxbuffsize_decode(field, &size);
    return size;
}

/* True when size has an exact MaxBuffSize encoding. */
static inline bool kvmspe_maxbuffsize_is_representable(uint64_t size)
{
    if (size > KVMSPE_MAXBUFFSIZE_LARGEST)
        return false;
    return kvmspe_maxbuffsize_size_of(kvmspe_maxbuffsize_floor_field(size)) == size;
}

/* The field value of size; false when size has no exact encoding. */
static inline bool kvmspe_maxbuffsize_encode(uint64_t size, uint16_t *field)
{
    if (!kvmspe_maxbuffsize_is_representable(size))
        return false;
    *field = (uint16_t)kvmspe_maxbuffsize_floor_field(size);
    return true;
}

/* Distance between representable sizes in the exponent band of size. */
static inline uint64_t kvmspe_maxbuffsize_step_at(uint64_t size)
{
    int shift = (int)kvmspe_maxbuffsize_bit_length(size) - 22;

    if (shift < 0)
        shift = 0;
    if (shift > 30)
        shift = 30;
    return (uint64_t)KVMSPE_MAXBUFFSIZE_GRANULE << shift;
}

static inline bool kvmspe_maxbuffsize_page_size_ok(uint64_t page_size)
{
    return page_size == KVMSPE_PAGE_SIZE_4K || page_size == KVMSPE_PAGE_SIZE_16K ||
           page_size == KVMSPE_PAGE_SIZE_64K;
}

/* The largest size <= size that is representable and a multiple of
 * page_size (4, 16 or 64 KiB); false for another page size. 0 is such a
 * size, and 0 means "no limit". */
static inline bool kvmspe_maxbuffsize_round_down(uint64_t size, uint64_t page_size, uint64_t *out)
{
    uint64_t unit;

    if (!kvmspe_maxbuffsize_page_size_ok(page_size))
        return false;
    if (size > KVMSPE_MAXBUFFSIZE_LARGEST)
        size = KVMSPE_MAXBUFFSIZE_LARGEST;
    unit = kvmspe_maxbuffsize_step_at(size);
    if (unit < page_size)
        unit = page_size;
    *out = size - size % unit;
    return true;
}

/* The smallest size >= size that is representable and a multiple of
 * page_size; false for another page size or a size above the largest. */
static inline bool kvmspe_maxbuffsize_round_up(uint64_t size, uint64_t page_size, uint64_t *out)
{
    uint64_t unit;

    if (!kvmspe_maxbuffsize_page_size_ok(page_size) || size > KVMSPE_MAXBUFFSIZE_LARGEST)
        return false;
    unit = kvmspe_maxbuffsize_step_at(size);
    if (unit < page_size)
        unit = page_size;
    *out = (size + unit - 1) / unit * unit;
    return true;
}

#endif /* KVMSPE_H */
