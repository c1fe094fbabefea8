"""``kvmspe export --lang c-selftest``: the conformance cases as a C program, in
the kernel selftests' style.

The program is generated from the scenario vectors
(:func:`kvmspe.conformance.vectors.scenario_vectors`, which come from
:data:`kvmspe.conformance.cases.CASES`), and does on ``/dev/kvm`` what
``kvmspe conformance --backend kvm`` does: it probes the host (SPE or not,
page size, SPE units from sysfs), skips a case whose needs the host cannot
meet with the same reason, gives each case a fresh VM (on arm64 with its VCPUs
initialised, with the SPE feature where there is SPE, and an in-kernel GICv3),
performs the calls, and compares each result with the expected one. Case
values are the cases' own expressions over the host's numbers (``PAGE * 2``,
``unrep(PAGE)``), translated to C and computed on the host.

It prints TAP (``1..N``, ``ok N name``, ``not ok N name``,
``ok N name # SKIP reason``), one test per case, and exits 0 (no failure), 1
(a case failed) or 4 (every case skipped, as ``KSFT_SKIP``). It needs only
libc: no kernel tree, no kvmspe. Build it with ``gcc -std=c11 -O2 -static``;
for arm64 with Debian's ``aarch64-linux-gnu-gcc``.

The SPE VCPU feature bit is an assumed number: build with
``-DKVM_ARM_VCPU_SPE=N`` or run with ``--spe-feature-bit N``; otherwise, on
arm64, the program probes for it as kvmspe's docs describe (a throwaway VM per
candidate bit; only a bit that makes KVM_ARM_VCPU_SPE_CTRL answer HAS is the
SPE bit), and without one the SPE cases skip with "no SPE VCPU feature".
"""

from __future__ import annotations

import ast
import json
from typing import Any

from .. import __version__, abi, kvm
from ..conformance import runner as conformance
from ..conformance.vectors import scenario_vectors
from . import c_header

__all__ = ["render"]

_NAMES = ("PAGE", "SPU", "SPU2", "NOSPU", "LIMIT", "LARGEST", "KiB", "MiB", "GiB")
_FUNCS = {"next_size": "ks_next_size", "unrep": "ks_unrep", "enc": "ks_enc"}
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "/"}

_OPS = ("set", "get", "has", "run", "setrlimit", "create_vcpu")
_ADDR = {"valid": "ADDR_VALID", "bad-address": "ADDR_BAD", "null": "ADDR_NULL"}


def _c_expr(text: str) -> str:
    """A case expression as C over ``struct env *e``: u64 arithmetic, wrapping mod 2**64
    (as +, - and * are exact mod 2**64, a result that fits a u64 is the Python value)."""

    def tr(node: ast.AST) -> str:
        if isinstance(node, ast.Expression):
            return tr(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            if not 0 <= node.value < 1 << 64:
                raise ValueError(f"case expression {text!r}: constant {node.value} does not fit a u64")
            return f"UINT64_C({node.value:#x})"
        if isinstance(node, ast.Name) and node.id in _NAMES:
            return f"env_get(e, ENV_{node.id})"
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return f"({tr(node.left)} {_BINOPS[type(node.op)]} {tr(node.right)})"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            return f"ks_pow({tr(node.left)}, {tr(node.right)})"
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS
            and len(node.args) == 1
            and not node.keywords
        ):
            return f"{_FUNCS[node.func.id]}(e, {tr(node.args[0])})"
        raise ValueError(f"case expression {text!r}: {ast.dump(node)} has no C translation")

    return tr(ast.parse(text, mode="eval"))


def _cstr(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid C string literal for ASCII text


class _Exprs:
    """Every distinct expression, numbered; ``-1`` is "no expression"."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def id(self, value: dict[str, Any] | None) -> int:
        if value is None:
            return -1
        text = value["expr"]
        if text not in self.texts:
            _c_expr(text)  # refuse what cannot be translated, at generation time
            self.texts.append(text)
        return self.texts.index(text)

    def render(self) -> list[str]:
        lines = ["static uint64_t eval_expr(int id, struct env *e)", "{", "\tswitch (id) {"]
        for i, text in enumerate(self.texts):
            lines += [f"\tcase {i}: /* {text} */", f"\t\treturn {_c_expr(text)};"]
        lines += ["\t}", '\te->error = "unknown expression";', "\treturn 0;", "}", ""]
        lines += ["static const char *const expr_texts[] = {"]
        lines += [f"\t{_cstr(t)}," for t in self.texts] + ["};"]
        return lines


def _needs_irqchip(s: dict[str, Any]) -> bool:
    """As the Python runner: a case that sets the SPE interrupt or INIT, or runs a VCPU."""
    names = {"KVM_ARM_VCPU_SPE_IRQ", "KVM_ARM_VCPU_SPE_INIT"}
    return any(c["op"] == "run" or (c["op"] == "set" and c["attr_name"] in names) for c in s["calls"])


def _step(c: dict[str, Any], exprs: _Exprs) -> str:
    op = c["op"]
    exp = c["expect"]
    kind = f"OP_{op.upper()}" if op in _OPS else "OP_GUEST"
    value = c.get("value") or c.get("memlock_room")
    if "errno" in exp:
        ek, eerr, eexpr, ehas = "EXP_ERRNO", exp["errno"], -1, 0
    elif "has" in exp:
        ek, eerr, eexpr, ehas = "EXP_HAS", 0, -1, int(exp["has"])
    elif "value" in exp:
        ek, eerr, eexpr, ehas = "EXP_VALUE", 0, exprs.id(exp["value"]), 0
    elif "exit" in exp:
        if exp["exit"] == "any":
            ek, eerr, eexpr, ehas = "EXP_EXIT_ANY", 0, -1, 0
        else:
            ek, eerr, eexpr, ehas = "EXP_EXIT_RLIMIT", 0, exprs.id(exp.get("rlimit_excess")), 0
    else:
        ek, eerr, eexpr, ehas = "EXP_OK", 0, -1, 0
    vtype = {"int": "VT_INT", "none": "VT_NONE"}.get(c.get("value_type", "__u64"), "VT_U64")
    addr = _ADDR.get(c.get("addr", "valid"), "ADDR_VALID")
    spe = int(bool(c.get("spe", False)))
    return (
        f"{{ {kind}, {c['vcpu']}, {c.get('group', 0)}, {c.get('attr', 0)}, {vtype}, {addr},"
        f" {exprs.id(value)}, {spe}, {ek}, {eerr}, {ehas}, {eexpr}, {_cstr(_describe(c))} }}"
    )


def _describe(c: dict[str, Any]) -> str:
    who = f"vcpu{c['vcpu']} " if c["vcpu"] else ""
    name = c.get("attr_name", "").removeprefix("KVM_ARM_VCPU_")
    if c["op"] == "set":
        v = c.get("value")
        shown = v["expr"] if v else {"bad-address": "BAD", "null": "(no value)"}.get(c.get("addr", ""), "")
        return f"{who}SET {name}={shown}"
    if c["op"] == "get":
        return f"{who}GET {name}" + (" addr=BAD" if c.get("addr") == "bad-address" else "")
    if c["op"] == "has":
        return f"{who}HAS {name}"
    if c["op"] == "setrlimit":
        return f"setrlimit room={c['memlock_room']['expr']}"
    return f"{who}{c['op']}"


def _case(s: dict[str, Any], index: int, exprs: _Exprs) -> tuple[list[str], str]:
    req = s["requires"]
    limit = {"any": "LIM_ANY", "none": "LIM_NONE", "some": "LIM_SOME"}[req.get("spu_limit", "any")]
    steps = [_step(c, exprs) for c in s["calls"]]
    arr = f"steps_{index}"
    lines = [f"static const struct step {arr}[] = {{"] + [f"\t{x}," for x in steps] + ["};"]
    vcpus = "".join("1" if v["spe"] else "0" for v in s["vcpus"])
    entry = (
        f"\t{{ {_cstr(s['name'])}, {_cstr(s['rule'])}, {int(req['spe'])}, {req.get('spus', 0)}, {limit},"
        f" {req.get('page_size', 0)}, {int(req['guest'])}, {int(req.get('irqchip', True))},"
        f" {int(_needs_irqchip(s))}, {_cstr(vcpus)}, {exprs.id(s.get('memlock_room'))},"
        f" {arr}, {len(steps)} }},"
    )
    return lines, entry


def render() -> str:
    """The program's text."""
    doc = scenario_vectors()
    exprs = _Exprs()
    tables: list[str] = []
    entries: list[str] = []
    for i, s in enumerate(doc["scenarios"]):
        lines, entry = _case(s, i, exprs)
        tables += lines
        entries.append(entry)
    header = c_header.render()
    numbers = {
        "KS_UNMAPPED_ADDRESS": abi.UNMAPPED_ADDRESS,
        "KS_RUN_TIMEOUT_US": int(conformance.RUN_TIMEOUT * 1_000_000),
        "KS_EXIT_REASON_OFFSET": abi.KVM_RUN_EXIT_REASON_OFFSET,
        "KS_RLIMIT_EXCESS_OFFSET": abi.KVM_RUN_RLIMIT_EXCESS_OFFSET,
        "KS_VGIC_DIST_BASE": kvm.VGIC_V3_DIST_BASE,
        "KS_VGIC_REDIST_BASE": kvm.VGIC_V3_REDIST_BASE,
        "KS_DEVICE_ATTR_SIZE": abi.DEVICE_ATTR.size,
        "KS_VCPU_INIT_SIZE": abi.VCPU_INIT.size,
        "KS_CREATE_DEVICE_SIZE": abi.CREATE_DEVICE.size,
        "KS_NOSPU_OFFSET": 1000,
    }
    out = [
        f"// Generated by kvmspe {__version__} (kvmspe export --lang c-selftest). Do not edit: regenerate.",
        "// The kvmspe conformance cases against /dev/kvm, TAP output; see --help.",
        "#define _GNU_SOURCE",
        "#include <dirent.h>",
        "#include <errno.h>",
        "#include <fcntl.h>",
        "#include <signal.h>",
        "#include <stdio.h>",
        "#include <stdlib.h>",
        "#include <string.h>",
        "#include <sys/ioctl.h>",
        "#include <sys/mman.h>",
        "#include <sys/resource.h>",
        "#include <sys/time.h>",
        "#include <unistd.h>",
        "",
        "/* ---- kvmspe.h, as `kvmspe export --lang c` prints it ---- */",
        header,
        "/* ---- the program's numbers, from kvmspe's data ---- */",
    ]
    for name, value in numbers.items():
        out.append(f"#define {name} UINT64_C({value:#x})")
    out += _STATIC.splitlines()
    out += ["", "/* ---- the cases, from kvmspe's scenario vectors ---- */", ""]
    out += exprs.render()
    out += [""] + tables + ["", "static const struct kcase cases[] = {"] + entries + ["};", ""]
    out += _MAIN.splitlines()
    return "\n".join(out) + "\n"


_STATIC = r"""
#if defined(__aarch64__)
#define KS_ARM64 1
#else
#define KS_ARM64 0
#endif

struct kvm_device_attr {
    uint32_t flags;
    uint32_t group;
    uint64_t attr;
    uint64_t addr;
};
struct kvm_vcpu_init {
    uint32_t target;
    uint32_t features[7];
};
struct kvm_create_device {
    uint32_t type;
    uint32_t fd;
    uint32_t flags;
};
_Static_assert(sizeof(struct kvm_device_attr) == KS_DEVICE_ATTR_SIZE, "struct kvm_device_attr");
_Static_assert(sizeof(struct kvm_vcpu_init) == KS_VCPU_INIT_SIZE, "struct kvm_vcpu_init");
_Static_assert(sizeof(struct kvm_create_device) == KS_CREATE_DEVICE_SIZE, "struct kvm_create_device");

enum { ENV_PAGE, ENV_SPU, ENV_SPU2, ENV_NOSPU, ENV_LIMIT, ENV_LARGEST, ENV_KiB, ENV_MiB, ENV_GiB, ENV_N };
static const char *const env_names[ENV_N] = {
    "PAGE", "SPU", "SPU2", "NOSPU", "LIMIT", "LARGEST", "KiB", "MiB", "GiB",
};

struct env {
    uint64_t v[ENV_N];
    int have[ENV_N];
    const char *error; /* set when an expression cannot be computed */
};

static uint64_t env_get(struct env *e, int name)
{
    if (!e->have[name]) {
        if (!e->error)
            e->error = env_names[name];
        return 0;
    }
    return e->v[name];
}

static uint64_t ks_pow(uint64_t b, uint64_t n)
{
    uint64_t r = 1;

    while (n--)
        r *= b;
    return r;
}

/* next_size(x): the smallest page-aligned, representable size above x. */
static uint64_t ks_next_size(struct env *e, uint64_t x)
{
    uint64_t out = 0;

    if (x == UINT64_MAX || !kvmspe_maxbuffsize_round_up(x + 1, env_get(e, ENV_PAGE), &out))
        if (!e->error)
            e->error = "next_size: no representable size above";
    return out;
}

/* unrep(x): the smallest page-aligned size above x with no MaxBuffSize encoding. */
static uint64_t ks_unrep(struct env *e, uint64_t x)
{
    uint64_t page = env_get(e, ENV_PAGE), size;

    if (!page)
        return 0;
    size = (x / page + 1) * page;
    while (kvmspe_maxbuffsize_is_representable(size)) {
        if (kvmspe_maxbuffsize_step_at(size) <= page)
            size = (UINT64_C(1) << kvmspe_maxbuffsize_bit_length(size)) + page;
        else
            size += page;
    }
    return size;
}

/* enc(x): the MaxBuffSize field value of x. */
static uint64_t ks_enc(struct env *e, uint64_t x)
{
    uint16_t field = 0;

    if (!kvmspe_maxbuffsize_encode(x, &field) && !e->error)
        e->error = "enc: no encoding";
    return field;
}

enum op { OP_SET, OP_GET, OP_HAS, OP_RUN, OP_SETRLIMIT, OP_CREATE_VCPU, OP_GUEST };
enum vtype { VT_U64, VT_INT, VT_NONE };
enum addr { ADDR_VALID, ADDR_BAD, ADDR_NULL };
enum expk { EXP_OK, EXP_ERRNO, EXP_HAS, EXP_VALUE, EXP_EXIT_ANY, EXP_EXIT_RLIMIT };
enum lim { LIM_ANY, LIM_NONE, LIM_SOME };

struct step {
    int op, vcpu;
    uint32_t group;
    uint64_t attr;
    int vtype, addr, value; /* value: expression id, -1 none */
    int spe;        /* create_vcpu: with the SPE feature */
    int expect, expect_errno, expect_has, expect_value;
    const char *describe;
};

struct kcase {
    const char *name, *rule;
    int spe, spus, spu_limit, page_size, guest, irqchip, needs_irqchip;
    const char *vcpus; /* per VCPU: '1' with the SPE feature, '0' without */
    int memlock_room;  /* expression id, -1: leave RLIMIT_MEMLOCK alone */
    const struct step *steps;
    int nsteps;
};
"""

_MAIN = r"""
/* ---- the runner ---- */

#define MAX_SPUS 64
#define MAX_VCPUS 8

struct host {
    int kvm_fd;
    int spe;
    uint64_t page;
    int nspu;
    int spu_id[MAX_SPUS];
    int spu_limit_known[MAX_SPUS];
    uint64_t spu_limit[MAX_SPUS];
    long long feature_bit; /* -1: unknown */
    long long exit_rlimit; /* -1: unknown */
    char no_spe_why[200];
};

struct vcpu {
    int fd;
    struct kvm_run_map {
        void *p;
        size_t size;
    } run;
};

static struct host H;

static int kvm_ioctl(int fd, unsigned long req, void *arg)
{
    int r;

    do
        r = ioctl(fd, req, arg);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

static const char *errname(int e)
{
    switch (e) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case ENXIO: return "ENXIO";
    case E2BIG: return "E2BIG";
    case ENOEXEC: return "ENOEXEC";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case ENODEV: return "ENODEV";
    case EINVAL: return "EINVAL";
    case ENOTTY: return "ENOTTY";
    case ENOSPC: return "ENOSPC";
    case EDOM: return "EDOM";
    case ERANGE: return "ERANGE";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    }
    return "errno";
}

/* Create VCPU id; on arm64 initialise it, with the SPE feature when spe. */
static int vcpu_create(int vm, int id, int spe, int *err)
{
    int fd = kvm_ioctl(vm, KVM_CREATE_VCPU, (void *)(long)id);

    if (fd < 0) {
        *err = -fd;
        return -1;
    }
#if KS_ARM64
    {
        struct kvm_vcpu_init init;
        int r;

        memset(&init, 0, sizeof(init));
        r = kvm_ioctl(vm, KVM_ARM_PREFERRED_TARGET, &init);
        if (r == 0 && spe) {
            if (H.feature_bit < 0 || H.feature_bit >= 7 * 32) {
                r = -EINVAL;
            } else {
                init.features[H.feature_bit / 32] |= UINT32_C(1) << (H.feature_bit % 32);
            }
        }
        if (r == 0)
            r = kvm_ioctl(fd, KVM_ARM_VCPU_INIT, &init);
        if (r < 0) {
            close(fd);
            *err = -r;
            return -1;
        }
    }
#else
    (void)spe;
#endif
    return fd;
}

static int device_attr(int fd, unsigned long req, uint32_t group, uint64_t attr, uint64_t addr)
{
    struct kvm_device_attr a = { 0, group, attr, addr };

    return kvm_ioctl(fd, req, &a);
}

/* An in-kernel GICv3 placed where kvmspe's backend places it, then initialised. */
static int add_vgic(int vm, const char **what)
{
    struct kvm_create_device d = { KVM_DEV_TYPE_ARM_VGIC_V3, 0, 0 };
    uint64_t dist = KS_VGIC_DIST_BASE, redist = KS_VGIC_REDIST_BASE;
    int r = kvm_ioctl(vm, KVM_CREATE_DEVICE, &d);

    *what = "KVM_CREATE_DEVICE";
    if (r < 0)
        return r;
    *what = "KVM_SET_DEVICE_ATTR";
    r = device_attr((int)d.fd, KVM_SET_DEVICE_ATTR, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V3_ADDR_TYPE_DIST,
            (uint64_t)(uintptr_t)&dist);
    if (r == 0)
        r = device_attr((int)d.fd, KVM_SET_DEVICE_ATTR, KVM_DEV_ARM_VGIC_GRP_ADDR,
                KVM_VGIC_V3_ADDR_TYPE_REDIST, (uint64_t)(uintptr_t)&redist);
    if (r == 0)
        r = device_attr((int)d.fd, KVM_SET_DEVICE_ATTR, KVM_DEV_ARM_VGIC_GRP_CTRL,
                KVM_DEV_ARM_VGIC_CTRL_INIT, 0);
    close((int)d.fd);
    return r;
}

/* HAS KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE on a fresh VCPU: does the host do SPE? */
static int probe_spe_with(int spe_feature)
{
    int vm = kvm_ioctl(H.kvm_fd, KVM_CREATE_VM, 0), fd, err = 0, spe = 0;

    if (vm < 0)
        return 0;
    fd = vcpu_create(vm, 0, spe_feature, &err);
    if (fd >= 0) {
        spe = device_attr(fd, KVM_HAS_DEVICE_ATTR, KVM_ARM_VCPU_SPE_CTRL, KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE,
                  0) == 0;
        close(fd);
    }
    close(vm);
    return spe;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

static int read_u64(const char *path, uint64_t *v)
{
    char buf[64];
    FILE *f = fopen(path, "r");
    char *end;

    if (!f)
        return -1;
    if (!fgets(buf, sizeof(buf), f)) {
        fclose(f);
        return -1;
    }
    fclose(f);
    errno = 0;
    *v = strtoull(buf, &end, 0);
    return errno || end == buf ? -1 : 0;
}

/* SPE instances from sysfs: perf PMU type and, where the driver says, its own limit. */
static void read_spus(void)
{
    const char *root = "/sys/bus/event_source/devices";
    struct dirent **list;
    int n = scandir(root, &list, NULL, by_name);

    for (int i = 0; i < n; i++) {
        char path[512];
        uint64_t type, limit;

        if (strncmp(list[i]->d_name, "arm_spe_", 8) == 0 && H.nspu < MAX_SPUS) {
            snprintf(path, sizeof(path), "%s/%s/type", root, list[i]->d_name);
            if (read_u64(path, &type) == 0) {
                snprintf(path, sizeof(path), "%s/%s/caps/max_buff_size", root, list[i]->d_name);
                H.spu_id[H.nspu] = (int)type;
                H.spu_limit_known[H.nspu] = read_u64(path, &limit) == 0;
                H.spu_limit[H.nspu] = H.spu_limit_known[H.nspu] ? limit : 0;
                H.nspu++;
            }
        }
        free(list[i]);
    }
    if (n >= 0)
        free(list);
}

static void probe_host(void)
{
    H.page = (uint64_t)sysconf(_SC_PAGESIZE);
#if KS_ARM64
    if (H.feature_bit < 0) {
        /* Probe, do not guess: only a bit that makes the SPE group answer HAS. */
        for (long long bit = 0; bit < 7 * 32 && H.feature_bit < 0; bit++) {
            H.feature_bit = bit;
            if (!probe_spe_with(1))
                H.feature_bit = -1;
        }
    }
    if (H.feature_bit < 0) {
        snprintf(H.no_spe_why, sizeof(H.no_spe_why),
             "no SPE VCPU feature: none given (-DKVM_ARM_VCPU_SPE=N or --spe-feature-bit N)"
             " and no bit makes KVM_ARM_VCPU_SPE_CTRL answer");
        H.spe = 0;
    } else {
        H.spe = probe_spe_with(1);
    }
#else
    H.spe = probe_spe_with(0);
#endif
    if (H.spe)
        read_spus();
}

static int spu_fits(int want, int i)
{
    if (want == LIM_ANY)
        return 1;
    if (!H.spu_limit_known[i])
        return 0;
    return (H.spu_limit[i] == 0) == (want == LIM_NONE);
}

/* Why the case cannot run on this host, or NULL; as kvmspe's runner decides. */
static const char *skip_reason(const struct kcase *c, char *buf, size_t len)
{
    int fits = 0;

    if (!c->spe)
        return H.spe ? "host has SPE: the no-SPE cases do not apply" : NULL;
    if (!H.spe) {
        if (H.no_spe_why[0]) {
            snprintf(buf, len, "host has no SPE: only the ENXIO cases apply (%s)", H.no_spe_why);
            return buf;
        }
        return "host has no SPE: only the ENXIO cases apply";
    }
    if (c->guest)
        return "needs guest code that programs SPE; the conformance runner loads none (model only)";
    if (c->page_size && (uint64_t)c->page_size != H.page) {
        snprintf(buf, len, "needs a %d KiB host page size; this host has %llu KiB", c->page_size / 1024,
             (unsigned long long)(H.page / 1024));
        return buf;
    }
    if (c->spus > H.nspu) {
        snprintf(buf, len, "needs %d SPE instances; this host has %d", c->spus, H.nspu);
        return buf;
    }
    for (int i = 0; i < H.nspu; i++)
        fits |= spu_fits(c->spu_limit, i);
    if (!fits) {
        snprintf(buf, len,
             "needs an SPU %s its own max buffer size, and this host has none known"
             " (sysfs caps/max_buff_size missing or different)",
             c->spu_limit == LIM_NONE ? "without" : "with");
        return buf;
    }
    return NULL;
}

static void make_env(const struct kcase *c, struct env *e)
{
    int first = -1, k = 0;
    uint64_t most = 0;

    memset(e, 0, sizeof(*e));
    e->v[ENV_PAGE] = H.page;
    e->v[ENV_LARGEST] = KVMSPE_MAXBUFFSIZE_LARGEST;
    e->v[ENV_KiB] = 1 << 10;
    e->v[ENV_MiB] = 1 << 20;
    e->v[ENV_GiB] = 1 << 30;
    e->have[ENV_PAGE] = e->have[ENV_LARGEST] = e->have[ENV_KiB] = e->have[ENV_MiB] = e->have[ENV_GiB] = 1;
    for (int i = 0; i < H.nspu && first < 0; i++)
        if (spu_fits(c->spu_limit, i))
            first = i;
    if (first >= 0) {
        e->v[ENV_SPU] = (uint64_t)H.spu_id[first];
        e->have[ENV_SPU] = 1;
        if (H.spu_limit_known[first]) {
            e->v[ENV_LIMIT] = H.spu_limit[first];
            e->have[ENV_LIMIT] = H.spu_limit[first] != 0;
        }
        for (int i = 0; i < H.nspu; i++)
            if (i != first && !k++) {
                e->v[ENV_SPU2] = (uint64_t)H.spu_id[i];
                e->have[ENV_SPU2] = 1;
            }
    }
    for (int i = 0; i < H.nspu; i++)
        if ((uint64_t)H.spu_id[i] > most)
            most = (uint64_t)H.spu_id[i];
    e->v[ENV_NOSPU] = most + KS_NOSPU_OFFSET;
    e->have[ENV_NOSPU] = 1;
}

static uint64_t vm_lck(void)
{
    char line[256];
    unsigned long long kb = 0;
    FILE *f = fopen("/proc/self/status", "r");

    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmLck: %llu kB", &kb) == 1)
            break;
    fclose(f);
    return (uint64_t)kb * 1024;
}

static void set_room(uint64_t room, const struct rlimit *saved)
{
    struct rlimit r = *saved;

    r.rlim_cur = (rlim_t)(vm_lck() + room);
    if (saved->rlim_max != RLIM_INFINITY && r.rlim_cur > saved->rlim_max)
        r.rlim_cur = saved->rlim_max;
    setrlimit(RLIMIT_MEMLOCK, &r);
}

/* A case with no limit: RLIMIT_MEMLOCK unlimited where the process may, else soft = hard. */
static void no_room_limit(const struct rlimit *saved)
{
    struct rlimit r = {RLIM_INFINITY, RLIM_INFINITY};

    if (setrlimit(RLIMIT_MEMLOCK, &r) != 0) {
        r.rlim_cur = r.rlim_max = saved->rlim_max;
        setrlimit(RLIMIT_MEMLOCK, &r);
    }
}

static volatile sig_atomic_t alarmed;

static void on_alarm(int sig)
{
    (void)sig;
    alarmed = 1;
}

/* KVM_RUN, cut short by SIGALRM after KS_RUN_TIMEOUT_US: an interrupted run
 * counts as an exit (KVM_EXIT_INTR), as in kvmspe's runner. */
static int run_bounded(struct vcpu *v, uint32_t *reason, uint64_t *excess)
{
    struct sigaction sa, old;
    struct itimerval t, off;
    int r;

    if (!v->run.p) {
        int size = kvm_ioctl(H.kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
        void *p;

        if (size < 0)
            return size;
        p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
        if (p == MAP_FAILED)
            return -errno;
        v->run.p = p;
        v->run.size = (size_t)size;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_alarm; /* no SA_RESTART: the ioctl returns EINTR */
    sigaction(SIGALRM, &sa, &old);
    memset(&t, 0, sizeof(t));
    memset(&off, 0, sizeof(off));
    t.it_value.tv_sec = (time_t)(KS_RUN_TIMEOUT_US / 1000000);
    t.it_value.tv_usec = (suseconds_t)(KS_RUN_TIMEOUT_US % 1000000);
    alarmed = 0;
    setitimer(ITIMER_REAL, &t, NULL);
    do
        r = ioctl(v->fd, KVM_RUN, 0);
    while (r < 0 && errno == EINTR && !alarmed);
    r = r < 0 ? -errno : 0;
    setitimer(ITIMER_REAL, &off, NULL);
    sigaction(SIGALRM, &old, NULL);
    if (r == -EINTR) {
        *reason = KVM_EXIT_INTR;
        return 0;
    }
    if (r == 0) {
        memcpy(reason, (char *)v->run.p + KS_EXIT_REASON_OFFSET, sizeof(*reason));
        memcpy(excess, (char *)v->run.p + KS_RLIMIT_EXCESS_OFFSET, sizeof(*excess));
    }
    return r;
}

enum status { PASSED, FAILED, SKIPPED };

/* Perform the case's calls; on a difference describe it in msg. */
static int execute(const struct kcase *c, int vm, struct vcpu *v, int *nv, struct env *e,
                   const struct rlimit *saved, char *msg, size_t len)
{
    for (int i = 0; i < c->nsteps; i++) {
        const struct step *s = &c->steps[i];
        char got[96] = "", want[96] = "";
        uint64_t value = s->value >= 0 ? eval_expr(s->value, e) : 0;
        uint64_t expect = s->expect_value >= 0 ? eval_expr(s->expect_value, e) : 0;
        uint64_t buf = 0;
        int ibuf = 0, r = 0, match;
        uint64_t addr = 0;
        uint32_t reason = 0;
        uint64_t excess = 0;

        if (e->error) {
            snprintf(msg, len, "call %d of %d: %s: cannot compute a value (%s)", i + 1, c->nsteps,
                 s->describe, e->error);
            return FAILED;
        }
        if (s->vcpu >= *nv && s->op != OP_SETRLIMIT && s->op != OP_CREATE_VCPU) {
            snprintf(msg, len, "call %d: no VCPU %d", i + 1, s->vcpu);
            return FAILED;
        }
        if (s->addr == ADDR_BAD)
            addr = KS_UNMAPPED_ADDRESS;
        else if (s->addr == ADDR_VALID)
            addr = s->vtype == VT_INT ? (uint64_t)(uintptr_t)&ibuf : (uint64_t)(uintptr_t)&buf;
        if (s->vtype == VT_INT)
            ibuf = (int)(int64_t)value;
        else
            buf = value;
        switch (s->op) {
        case OP_SET:
            r = device_attr(v[s->vcpu].fd, KVM_SET_DEVICE_ATTR, s->group, s->attr, addr);
            break;
        case OP_GET:
            buf = 0;
            ibuf = 0;
            r = device_attr(v[s->vcpu].fd, KVM_GET_DEVICE_ATTR, s->group, s->attr, addr);
            break;
        case OP_HAS:
            r = device_attr(v[s->vcpu].fd, KVM_HAS_DEVICE_ATTR, s->group, s->attr, 0);
            break;
        case OP_RUN:
            r = run_bounded(&v[s->vcpu], &reason, &excess);
            break;
        case OP_SETRLIMIT:
            set_room(value, saved);
            break;
        case OP_CREATE_VCPU:
            if (*nv >= MAX_VCPUS) {
                snprintf(msg, len, "call %d: more than %d VCPUs", i + 1, MAX_VCPUS);
                return FAILED;
            }
            v[*nv].fd = vcpu_create(vm, *nv, s->spe && H.spe, &r);
            v[*nv].run.p = NULL;
            if (v[*nv].fd >= 0) {
                (*nv)++;
                r = 0;
            } else {
                r = -r;
            }
            break;
        default:
            snprintf(msg, len, "call %d: %s needs guest code, which this program has not", i + 1,
                 s->describe);
            return FAILED;
        }
        /* What came back, and does it match? */
        if (s->op == OP_HAS) {
            if (r == 0 || r == -ENXIO)
                snprintf(got, sizeof(got), "%s", r == 0 ? "True" : "False");
            else
                snprintf(got, sizeof(got), "%s", errname(-r));
        } else if (r < 0) {
            snprintf(got, sizeof(got), "%s", errname(-r));
        } else if (s->op == OP_GET) {
            snprintf(got, sizeof(got), "%#llx",
                 s->vtype == VT_INT ? (unsigned long long)(int64_t)ibuf : (unsigned long long)buf);
        } else if (s->op == OP_RUN) {
            snprintf(got, sizeof(got), "exit reason %u", reason);
        } else {
            snprintf(got, sizeof(got), "ok");
        }
        switch (s->expect) {
        case EXP_ERRNO:
            snprintf(want, sizeof(want), "%s", errname(s->expect_errno));
            match = r == -s->expect_errno && s->op != OP_HAS;
            break;
        case EXP_HAS:
            snprintf(want, sizeof(want), "%s", s->expect_has ? "True" : "False");
            match = s->op == OP_HAS && (s->expect_has ? r == 0 : r == -ENXIO);
            break;
        case EXP_VALUE:
            snprintf(want, sizeof(want), "%#llx",
                 s->vtype == VT_INT ? (unsigned long long)(int64_t)(int)(int64_t)expect
                            : (unsigned long long)expect);
            match = r == 0 && strcmp(got, want) == 0;
            break;
        case EXP_EXIT_ANY:
            snprintf(want, sizeof(want), "exit");
            match = r == 0 && s->op == OP_RUN;
            break;
        case EXP_EXIT_RLIMIT:
            snprintf(want, sizeof(want), "KVM_EXIT_RLIMIT excess=%#llx", (unsigned long long)expect);
            match = r == 0 && s->op == OP_RUN && H.exit_rlimit >= 0 && reason == (uint32_t)H.exit_rlimit &&
                excess == expect;
            break;
        default:
            snprintf(want, sizeof(want), "ok");
            match = r == 0 && s->op != OP_HAS;
        }
        if (e->error) {
            snprintf(msg, len, "call %d of %d: %s: cannot compute a value (%s)", i + 1, c->nsteps,
                 s->describe, e->error);
            return FAILED;
        }
        if (!match) {
            snprintf(msg, len, "call %d of %d: %s: expected %s, got %s", i + 1, c->nsteps, s->describe, want,
                 got);
            return FAILED;
        }
    }
    return PASSED;
}

static int run_case(const struct kcase *c, char *msg, size_t len)
{
    struct vcpu v[MAX_VCPUS];
    struct rlimit saved;
    struct env e;
    int vm, nv = 0, status, err = 0;

    make_env(c, &e);
    getrlimit(RLIMIT_MEMLOCK, &saved);
    if (c->memlock_room >= 0) {
        uint64_t room = eval_expr(c->memlock_room, &e);

        if (e.error) {
            snprintf(msg, len, "cannot compute the memlock room (%s)", e.error);
            return FAILED;
        }
        set_room(room, &saved);
    } else {
        no_room_limit(&saved);
    }
    vm = kvm_ioctl(H.kvm_fd, KVM_CREATE_VM, 0);
    if (vm < 0) {
        snprintf(msg, len, "KVM_CREATE_VM: %s", strerror(-vm));
        setrlimit(RLIMIT_MEMLOCK, &saved);
        return FAILED;
    }
    for (; c->vcpus[nv]; nv++) {
        v[nv].run.p = NULL;
        v[nv].fd = vcpu_create(vm, nv, c->vcpus[nv] == '1' && H.spe, &err);
        if (v[nv].fd < 0) {
            snprintf(msg, len, "cannot create the VCPUs: %s", strerror(err));
            status = SKIPPED;
            goto out;
        }
    }
    if (KS_ARM64 && c->irqchip) {
        const char *what;
        int r = add_vgic(vm, &what);

        if (r < 0 && c->needs_irqchip && H.spe) {
            snprintf(msg, len,
                     "needs an in-kernel GICv3 for the SPE interrupt, and the host refused one (%s: %s)",
                     what, strerror(-r));
            status = SKIPPED;
            goto out;
        }
    }
    status = execute(c, vm, v, &nv, &e, &saved, msg, len);
    if (status == FAILED && c->memlock_room < 0 && saved.rlim_max != RLIM_INFINITY &&
        strstr(msg, ", got ENOMEM")) {
        /* As the Python runner: the case did not run as written, not a kernel failure. */
        snprintf(msg, len,
                 "needs RLIMIT_MEMLOCK unlimited (the case has no limit); this process's hard limit is"
                 " %llu bytes and it may not raise it (CAP_SYS_RESOURCE)",
                 (unsigned long long)saved.rlim_max);
        status = SKIPPED;
    }
out:
    for (int i = 0; i < nv; i++) {
        if (v[i].run.p)
            munmap(v[i].run.p, v[i].run.size);
        close(v[i].fd);
    }
    close(vm);
    setrlimit(RLIMIT_MEMLOCK, &saved);
    return status;
}

static long long number_arg(const char *opt, const char *text)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(text, &end, 0);
    if (errno || end == text || *end || v < 0) {
        fprintf(stderr, "kvmspe-selftest: %s takes a non-negative number, got '%s'\n", opt, text);
        exit(2);
    }
    return v;
}

/* An assumed number given at run time: only what kvmspe accepts for it (the header's range). */
static long long assumed_arg(const char *opt, const char *text, long long lo, long long hi)
{
    long long v = number_arg(opt, text);

    if (v < lo || v > hi) {
        fprintf(stderr, "kvmspe-selftest: %s takes %lld..%lld (below, the numbers are taken"
                        " upstream), got '%s'\n", opt, lo, hi, text);
        exit(2);
    }
    return v;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: kvmspe-selftest [--spe-feature-bit N] [--exit-rlimit N] [--list]"
               " [--eval PAGE SPU SPU2 LIMIT]\n"
           "Runs kvmspe's conformance cases on /dev/kvm; TAP on stdout.\n"
           "Exit: 0 no failure, 1 a case failed, 2 bad usage, 4 every case skipped.\n"
           "The SPE feature bit and KVM_EXIT_RLIMIT are assumed numbers: give them with\n"
           "these options or at build time (-DKVM_ARM_VCPU_SPE=N, -DKVM_EXIT_RLIMIT=N);\n"
           "on arm64 the feature bit is otherwise probed.\n");
}

int main(int argc, char **argv)
{
    int n = (int)(sizeof(cases) / sizeof(cases[0])), fails = 0, passes = 0;
    const char *no_kvm = NULL;
    char why[512];

    H.feature_bit = -1;
    H.exit_rlimit = -1;
#if KVMSPE_HAVE_KVM_ARM_VCPU_SPE
    H.feature_bit = KVM_ARM_VCPU_SPE;
#endif
#if KVMSPE_HAVE_KVM_EXIT_RLIMIT
    H.exit_rlimit = KVM_EXIT_RLIMIT;
#endif
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--spe-feature-bit") && i + 1 < argc) {
            H.feature_bit = assumed_arg(argv[i], argv[i + 1], KVMSPE_KVM_ARM_VCPU_SPE_MIN,
                                        KVMSPE_KVM_ARM_VCPU_SPE_MAX);
            i++;
        } else if (!strcmp(argv[i], "--exit-rlimit") && i + 1 < argc) {
            H.exit_rlimit = assumed_arg(argv[i], argv[i + 1], KVMSPE_KVM_EXIT_RLIMIT_MIN,
                                        KVMSPE_KVM_EXIT_RLIMIT_MAX);
            i++;
        } else if (!strcmp(argv[i], "--eval") && i + 4 < argc) {
            /* Print every case expression on a host given as PAGE SPU SPU2 LIMIT. */
            struct env e;
            uint64_t got;

            memset(&e, 0, sizeof(e));
            for (int k = 0; k < ENV_N; k++)
                e.have[k] = 1;
            e.v[ENV_PAGE] = (uint64_t)number_arg("PAGE", argv[i + 1]);
            e.v[ENV_SPU] = (uint64_t)number_arg("SPU", argv[i + 2]);
            e.v[ENV_SPU2] = (uint64_t)number_arg("SPU2", argv[i + 3]);
            e.v[ENV_LIMIT] = (uint64_t)number_arg("LIMIT", argv[i + 4]);
            e.v[ENV_NOSPU] = (e.v[ENV_SPU] > e.v[ENV_SPU2] ? e.v[ENV_SPU] : e.v[ENV_SPU2]) + KS_NOSPU_OFFSET;
            e.v[ENV_LARGEST] = KVMSPE_MAXBUFFSIZE_LARGEST;
            e.v[ENV_KiB] = 1 << 10;
            e.v[ENV_MiB] = 1 << 20;
            e.v[ENV_GiB] = 1 << 30;
            for (int k = 0; k < (int)(sizeof(expr_texts) / sizeof(expr_texts[0])); k++) {
                e.error = NULL;
                got = eval_expr(k, &e);
                if (e.error)
                    printf("%s\terror\n", expr_texts[k]);
                else
                    printf("%s\t%#llx\n", expr_texts[k], (unsigned long long)got);
            }
            return 0;
        } else if (!strcmp(argv[i], "--list")) {
            for (int k = 0; k < n; k++)
                printf("%s %s\n", cases[k].name, cases[k].rule);
            return 0;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "kvmspe-selftest: unknown or incomplete option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (H.feature_bit >= 7 * 32) {
        fprintf(stderr, "kvmspe-selftest: --spe-feature-bit must be below 224 (kvm_vcpu_init.features[7])\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    H.kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (H.kvm_fd < 0) {
        snprintf(why, sizeof(why), "/dev/kvm is not usable: %s", strerror(errno));
        no_kvm = why;
    } else {
        probe_host();
    }
    printf("TAP version 13\n");
    printf("# kvmspe conformance on /dev/kvm: arch %s, SPE %s, page size %llu\n",
           KS_ARM64 ? "aarch64" : "x86_64", H.spe ? "yes" : "no", (unsigned long long)H.page);
    printf("1..%d\n", n);
    for (int k = 0; k < n; k++) {
        char buf[512], msg[512] = "";
        const char *skip = no_kvm ? no_kvm : skip_reason(&cases[k], buf, sizeof(buf));
        int status = skip ? SKIPPED : run_case(&cases[k], msg, sizeof(msg));

        if (status == SKIPPED) {
            printf("ok %d %s # SKIP %s\n", k + 1, cases[k].name, skip ? skip : msg);
        } else if (status == PASSED) {
            passes++;
            printf("ok %d %s\n", k + 1, cases[k].name);
        } else {
            fails++;
            printf("# %s: %s\n", cases[k].name, msg);
            printf("not ok %d %s\n", k + 1, cases[k].name);
        }
    }
    printf("# Totals: pass:%d fail:%d skip:%d\n", passes, fails, n - passes - fails);
    if (fails)
        return 1;
    return passes ? 0 : 4;
}
"""
