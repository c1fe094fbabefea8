/*
 * kvmspe shim: an LD_PRELOAD library that makes a real KVM without SPE look
 * like a KVM with the v6 SPE VCPU interface.
 *
 * It defines ioctl() (and close/dup* to follow file descriptors), issues the
 * real call through dlsym(RTLD_NEXT), and sends every call the SPE interface
 * touches to kvmspe's model server over the Unix socket named by
 * KVMSPE_SHIM_SOCKET: the model decides each SPE answer; the kernel does
 * everything else. The shim holds no KVM number and no rule of its own: the
 * server's answer to the first request is a table of numbers built from
 * kvmspe.abi, and every SPE errno comes from kvmspe.model.
 *
 * File descriptors are told apart by what the kernel returned them for:
 * KVM_CREATE_VM (a VM fd, named anon_inode:kvm-vm), KVM_CREATE_VCPU on such
 * a VM fd (a VCPU fd, anon_inode:kvm-vcpu:N), KVM_CREATE_DEVICE of a vGIC.
 * The table is per process; a child after fork starts with none (KVM refuses
 * a VM's ioctls from another process anyway), and a child made by vfork or a
 * raw clone leaves the parent's table and socket alone. close, dup*, fcntl
 * (F_DUPFD*), close_range and closefrom are followed; the socket's identity
 * is checked before each use, since the process may close or reuse its
 * number by means the shim does not see.
 *
 * The op codes and table indices below mirror kvmspe/shim/protocol.py.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

/* The type byte of an ioctl number (asm-generic/ioctl.h: bits 15..8). Only
 * ioctls whose type byte is the table's KVMIO are looked at; before the
 * table is known, 0xAE (KVM's, include/uapi/linux/kvm.h) is the filter
 * that decides whether to connect at all. */
#define KS_TYPE(req) (((req) >> 8) & 0xffu)
#define KS_KVMIO_PRELOAD 0xAEu

enum ks_op {
    OP_HELLO, OP_CHECK_EXTENSION, OP_CREATE_VM, OP_CREATE_VCPU, OP_VCPU_INIT,
    OP_HAS_ATTR, OP_GET_ATTR, OP_SET_ATTR, OP_CREATE_DEVICE, OP_DEVICE_INIT,
    OP_CREATE_IRQCHIP, OP_RUN, OP_DUP, OP_CLOSE,
};

enum ks_action { ACT_PASS, ACT_ANSWER, ACT_ENTER, ACT_EXIT, ACT_TRACK };

enum ks_cfg {
    CFG_VERSION, CFG_KVMIO, CFG_CHECK_EXTENSION, CFG_CREATE_VM, CFG_CREATE_VCPU,
    CFG_RUN, CFG_ARM_VCPU_INIT, CFG_SET_DEVICE_ATTR, CFG_GET_DEVICE_ATTR,
    CFG_HAS_DEVICE_ATTR, CFG_CREATE_DEVICE, CFG_CREATE_IRQCHIP, CFG_SPE_GROUP,
    CFG_CAP_ARM_SPE, CFG_SPE_FEATURE_BIT, CFG_EXIT_RLIMIT, CFG_VCPU_INIT_SIZE,
    CFG_VGIC_V3_TYPE, CFG_VGIC_V2_TYPE, CFG_VGIC_GRP_CTRL, CFG_VGIC_CTRL_INIT,
    CFG_RUN_EXIT_REASON_OFFSET, CFG_RUN_EXCESS_OFFSET, CFG_ALL_VCPUS_SPE,
    CFG_ATTR_WIDTHS, CFG_SET_SIGNAL_MASK, CFG_N,
};

#define KS_VERSION 1
#define KS_NONE UINT64_MAX
#define FLAG_BAD_ADDR 1u
#define FLAG_SPE 2u
#define FLAG_RECONNECT 4u
#define WIDTH_NO_VALUE 0xffu

struct ks_req {
    uint32_t op;
    int32_t fd;
    uint32_t flags;
    uint32_t kind;
    uint64_t index, group, attr, value, rlimit, aux;
};

struct ks_resp {
    int32_t err;
    uint32_t action;
    uint64_t value, exit_reason, excess;
};

_Static_assert(sizeof(struct ks_req) == 64, "struct ks_req is protocol.REQUEST");
_Static_assert(sizeof(struct ks_resp) == 32, "struct ks_resp is protocol.RESPONSE");

/* struct kvm_device_attr and struct kvm_create_device [uapi]. */
struct ks_device_attr {
    uint32_t flags, group;
    uint64_t attr, addr;
};

struct ks_create_device {
    uint32_t type, fd, flags;
};

enum ks_kind { K_NONE, K_VM, K_VCPU, K_VGIC };

#define KS_MAX_FDS 65536

static unsigned char kinds[KS_MAX_FDS];
/* The VMM set this VCPU's KVM_SET_SIGNAL_MASK itself: the shim leaves it alone. */
static unsigned char own_sigmask[KS_MAX_FDS];
static void *run_maps[KS_MAX_FDS];
static uint64_t cfg[CFG_N];
static int sock = -1;
/* The socket's identity: the process may close or replace the number in ways
 * the shim does not see (a raw system call), so it is checked before use. */
static dev_t sock_dev;
static ino_t sock_ino;
/* The process that connected; whether this program connected before (it
 * closed the shim's socket since): the server then keeps its state, where a
 * program's first connection (after an exec, say) starts afresh. */
static pid_t owner;
static int reconnecting;
static int state; /* 0: not connected yet, 1: connected, -1: off */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
/* Whether this thread holds the lock: a signal handler that closes or copies
 * a descriptor (both async-signal-safe) may land while it does, and must not
 * wait for the lock its own thread holds. */
static __thread volatile int holding;

typedef int (*ioctl_fn)(int, unsigned long, ...);
typedef int (*close_fn)(int);
typedef int (*dup_fn)(int);
typedef int (*dup2_fn)(int, int);
typedef int (*dup3_fn)(int, int, int);
typedef int (*fcntl_fn)(int, int, ...);
typedef int (*close_range_fn)(unsigned int, unsigned int, int);
typedef void (*closefrom_fn)(int);

static ioctl_fn real_ioctl_p;
static close_fn real_close_p;
static dup_fn real_dup_p;
static dup2_fn real_dup2_p;
static dup3_fn real_dup3_p;
static fcntl_fn real_fcntl_p;
/* Only in a C library that has them (glibc 2.34 on). */
static close_range_fn real_close_range_p;
static closefrom_fn real_closefrom_p;

static void *next_symbol(const char *name)
{
    void *p = dlsym(RTLD_NEXT, name);

    if (!p) {
        fprintf(stderr, "kvmspe shim: cannot find the C library's %s: %s\n", name, dlerror());
        abort();
    }
    return p;
}

/* The C library's functions: resolved in the constructor, or at the first
 * call when another library's constructor calls one of them earlier. */
static void resolve(void)
{
    if (real_fcntl_p)
        return;
    real_ioctl_p = (ioctl_fn)next_symbol("ioctl");
    real_close_p = (close_fn)next_symbol("close");
    real_dup_p = (dup_fn)next_symbol("dup");
    real_dup2_p = (dup2_fn)next_symbol("dup2");
    real_dup3_p = (dup3_fn)next_symbol("dup3");
    real_close_range_p = (close_range_fn)dlsym(RTLD_NEXT, "close_range");
    real_closefrom_p = (closefrom_fn)dlsym(RTLD_NEXT, "closefrom");
    real_fcntl_p = (fcntl_fn)next_symbol("fcntl");
}

#define REAL(name) (resolve(), real_##name##_p)

static int kind_of(int fd)
{
    return fd >= 0 && fd < KS_MAX_FDS ? kinds[fd] : K_NONE;
}

static void set_kind(int fd, int kind)
{
    if (fd >= 0 && fd < KS_MAX_FDS)
        kinds[fd] = (unsigned char)kind;
}

/* Whether /proc/self/fd/FD names what the kernel calls a KVM object of PREFIX. */
static int named(int fd, const char *prefix)
{
    char path[64], target[128];
    ssize_t n;

    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    n = readlink(path, target, sizeof(target) - 1);
    if (n < 0)
        return 0;
    target[n] = '\0';
    return strncmp(target, prefix, strlen(prefix)) == 0;
}

static void set_state(int value) { __atomic_store_n(&state, value, __ATOMIC_RELEASE); }

static void child_after_fork(void)
{
    if (sock >= 0)
        REAL(close)(sock);
    sock = -1;
    state = 0;
    reconnecting = 0;
    memset(kinds, 0, sizeof(kinds));
    memset(own_sigmask, 0, sizeof(own_sigmask));
    memset(run_maps, 0, sizeof(run_maps));
    pthread_mutex_init(&lock, NULL);
}

/* Whether SOCK is still the socket the shim connected. */
static int sock_is_ours(void)
{
    struct stat st;

    return sock >= 0 && fstat(sock, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == sock_dev &&
           st.st_ino == sock_ino;
}

/* The process closed or replaced the shim's socket: connect again when the
 * model is needed; the server keeps this process's state by its pid. The
 * number is the process's now: never close it. Called with the lock held. */
static void sock_gone(void)
{
    reconnecting = 1;
    sock = -1;
    set_state(0);
}

/* Take the lock; 0 (and nothing taken) in a signal handler that interrupted
 * this thread while it held the lock: the caller then leaves the model alone.
 * HOLDING is set before the lock is taken and cleared after it is given back,
 * so that a handler landing in between never waits for it either. */
static int take(void)
{
    if (holding)
        return 0;
    holding = 1;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    pthread_mutex_lock(&lock);
    return 1;
}

static void give(void)
{
    pthread_mutex_unlock(&lock);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    holding = 0;
}

static void before_fork(void) { pthread_mutex_lock(&lock); }
static void parent_after_fork(void) { pthread_mutex_unlock(&lock); }

static int exchange(const struct ks_req *req, void *out, size_t out_size)
{
    ssize_t n;

    do
        n = send(sock, req, sizeof(*req), MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof(*req))
        return -1;
    do
        n = recv(sock, out, out_size, 0);
    while (n < 0 && errno == EINTR);
    return n == (ssize_t)out_size ? 0 : -1;
}

/* connect() waits while the server's listen backlog is full, and a signal
 * (a VMM's timer, say) interrupts it: try again, as exchange() does. */
static int connect_retrying(int fd, const struct sockaddr_un *addr)
{
    int r;

    do
        r = connect(fd, (const struct sockaddr *)addr, sizeof(*addr));
    while (r < 0 && errno == EINTR);
    return r < 0 && errno == EISCONN ? 0 : r;
}

/* Connect once per process; called with the lock held. */
static int connected(void)
{
    const char *path;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    struct ks_req hello = {.op = OP_HELLO};
    struct stat st;

    if (state)
        return state > 0;
    /* Other threads read state without the lock (enabled()): it is set
     * once the outcome is known, never to "off" while connecting. */
    path = getenv("KVMSPE_SHIM_SOCKET");
    if (!path || !*path)
        return set_state(-1), 0;
    if (strlen(path) >= sizeof(addr.sun_path)) {
        fprintf(stderr, "kvmspe shim: KVMSPE_SHIM_SOCKET is too long; KVM calls go to the kernel unchanged\n");
        return set_state(-1), 0;
    }
    strcpy(addr.sun_path, path);
    sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    hello.value = (uint64_t)getpid();
    hello.flags = reconnecting ? FLAG_RECONNECT : 0;
    if (sock >= 0 && fstat(sock, &st) == 0) {
        sock_dev = st.st_dev;
        sock_ino = st.st_ino;
    }
    if (sock < 0 || connect_retrying(sock, &addr) < 0 ||
        exchange(&hello, cfg, sizeof(cfg)) < 0 || cfg[CFG_VERSION] != KS_VERSION) {
        fprintf(stderr, "kvmspe shim: cannot reach the model at %s (%s); KVM calls go to the kernel unchanged\n",
                path, strerror(errno));
        if (sock >= 0)
            REAL(close)(sock);
        sock = -1;
        return set_state(-1), 0;
    }
    owner = getpid();
    set_state(1);
    return 1;
}

/* Whether this is a child the fork handlers did not run in (vfork, or a raw
 * clone): it shares (vfork) or copied (clone) the shim's memory and socket,
 * and the server would take its calls for its parent's. It leaves both
 * alone; its calls go to the kernel (which refuses a VM's calls from
 * another process). */
static int foreign(void)
{
    return __atomic_load_n(&state, __ATOMIC_ACQUIRE) > 0 && getpid() != owner;
}

static uint64_t memlock_soft(void)
{
    struct rlimit r;

    if (getrlimit(RLIMIT_MEMLOCK, &r) < 0 || r.rlim_cur == RLIM_INFINITY)
        return KS_NONE;
    return (uint64_t)r.rlim_cur;
}

/* One request to the model; ACT_PASS when the model cannot be asked. */
static struct ks_resp ask(struct ks_req req)
{
    struct ks_resp resp = {.action = ACT_PASS};
    int saved = errno;

    req.rlimit = memlock_soft();
    if (!take())
        return resp;
    if (state > 0 && !sock_is_ours())
        sock_gone();
    if (connected() && exchange(&req, &resp, sizeof(resp)) < 0) {
        fprintf(stderr, "kvmspe shim: lost the model (%s); KVM calls go to the kernel unchanged\n",
                strerror(errno));
        if (sock_is_ours())
            REAL(close)(sock);
        sock = -1;
        set_state(-1);
        resp.action = ACT_PASS;
    }
    give();
    errno = saved;
    return resp;
}

static int enabled(void)
{
    int on, now = __atomic_load_n(&state, __ATOMIC_ACQUIRE);

    if (now)
        return now > 0;
    if (!take())
        return 0;
    on = connected();
    give();
    return on;
}

/* Copy N bytes from or to this process's memory without faulting: EFAULT
 * for an address that cannot be read or written, as the kernel would say. */
static int peek(void *dst, uint64_t addr, size_t n)
{
    struct iovec local = {dst, n}, remote = {(void *)(uintptr_t)addr, n};

    return process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)n ? 0 : -1;
}

static int poke(uint64_t addr, const void *src, size_t n)
{
    struct iovec local = {(void *)src, n}, remote = {(void *)(uintptr_t)addr, n};

    return process_vm_writev(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)n ? 0 : -1;
}

static int fail(int code)
{
    errno = code;
    return -1;
}

static unsigned attr_width(uint64_t attr)
{
    return attr < 8 ? (unsigned)((cfg[CFG_ATTR_WIDTHS] >> (8 * attr)) & 0xff) : 0;
}

static int device_attr(int fd, unsigned long req, void *arg)
{
    struct ks_device_attr a;
    struct ks_req r = {.fd = fd};
    struct ks_resp resp;
    unsigned width;
    unsigned char value[8] = {0};

    if (peek(&a, (uint64_t)(uintptr_t)arg, sizeof(a)) < 0)
        return fail(EFAULT);
    if (a.group != cfg[CFG_SPE_GROUP])
        return REAL(ioctl)(fd, req, arg);
    width = attr_width(a.attr);
    r.group = a.group;
    r.attr = a.attr;
    if (req == cfg[CFG_HAS_DEVICE_ATTR]) {
        r.op = OP_HAS_ATTR;
    } else if (req == cfg[CFG_SET_DEVICE_ATTR]) {
        r.op = OP_SET_ATTR;
        if (width && width != WIDTH_NO_VALUE) {
            if (peek(value, a.addr, width) < 0)
                r.flags |= FLAG_BAD_ADDR;
            else if (width == 4) {
                int32_t v;
                memcpy(&v, value, 4);
                r.value = (uint64_t)(int64_t)v;
            } else
                memcpy(&r.value, value, 8);
        }
    } else {
        r.op = OP_GET_ATTR;
        /* Writable? Read the bytes and write the same bytes back. */
        if (width && width != WIDTH_NO_VALUE &&
            (peek(value, a.addr, width) < 0 || poke(a.addr, value, width) < 0))
            r.flags |= FLAG_BAD_ADDR;
    }
    resp = ask(r);
    if (resp.action == ACT_PASS)
        return REAL(ioctl)(fd, req, arg);
    if (resp.err)
        return fail(resp.err);
    if (r.op == OP_GET_ATTR && width && width != WIDTH_NO_VALUE) {
        if (width == 4) {
            int32_t v = (int32_t)resp.value;
            memcpy(value, &v, 4);
        } else
            memcpy(value, &resp.value, 8);
        if (poke(a.addr, value, width) < 0)
            return fail(EFAULT);
    }
    return 0;
}

static int vcpu_init(int fd, unsigned long req, void *arg)
{
    uint32_t init[64];
    size_t size = (size_t)cfg[CFG_VCPU_INIT_SIZE];
    uint64_t bit = cfg[CFG_SPE_FEATURE_BIT];
    struct ks_req r = {.op = OP_VCPU_INIT, .fd = fd};
    struct ks_resp resp;

    if (size > sizeof(init) || size < 8 || peek(init, (uint64_t)(uintptr_t)arg, size) < 0)
        return REAL(ioctl)(fd, req, arg);
    /* init[0] is the target, init[1..] the features words. */
    if (bit != KS_NONE && 1 + bit / 32 < size / 4 && (init[1 + bit / 32] >> (bit % 32)) & 1) {
        r.flags = FLAG_SPE;
        init[1 + bit / 32] &= ~(1u << (bit % 32));
    }
    resp = ask(r);
    if (resp.action == ACT_PASS)
        return REAL(ioctl)(fd, req, arg);
    if (resp.err)
        return fail(resp.err);
    return REAL(ioctl)(fd, req, init);
}

/* KVM_SET_SIGNAL_MASK on FD: MASK's first 64 signals (the kernel's sigset), or none. */
static void kvm_sigmask(int fd, const sigset_t *mask)
{
    struct {
        uint32_t len;
        unsigned char sigset[8];
    } m = {.len = 8};

    if (!mask) {
        REAL(ioctl)(fd, (unsigned long)cfg[CFG_SET_SIGNAL_MASK], NULL);
        return;
    }
    memcpy(m.sigset, mask, sizeof(m.sigset));
    REAL(ioctl)(fd, (unsigned long)cfg[CFG_SET_SIGNAL_MASK], &m);
}

/* The real KVM_RUN, entered as if the model's exchange had not happened: a
 * signal that came meanwhile (held back, pending) ends the run at once with
 * EINTR, as it would have without the shim, instead of being handled before
 * KVM_RUN and lost to it (a VMM's one-shot timer would then never end the run).
 * The VCPU takes the thread's own mask for the run, unless the VMM gave it
 * one with KVM_SET_SIGNAL_MASK. */
static int enter(int fd, unsigned long req, void *arg, const sigset_t *old)
{
    int own = fd < KS_MAX_FDS && own_sigmask[fd];
    int r, saved;

    if (!own)
        kvm_sigmask(fd, old);
    r = REAL(ioctl)(fd, req, arg);
    saved = errno;
    if (!own)
        kvm_sigmask(fd, NULL);
    pthread_sigmask(SIG_SETMASK, old, NULL);
    errno = saved;
    return r;
}

static int vcpu_run(int fd, unsigned long req, void *arg)
{
    struct ks_req r = {.op = OP_RUN, .fd = fd};
    struct ks_resp resp;
    unsigned char *run;
    uint32_t reason;
    sigset_t all, old;

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    resp = ask(r);
    if (resp.action == ACT_PASS || resp.action == ACT_ENTER)
        return enter(fd, req, arg, &old);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (resp.action != ACT_EXIT)
        return resp.err ? fail(resp.err) : 0;
    if (fd >= KS_MAX_FDS)
        return fail(EIO);
    if (!run_maps[fd]) {
        void *p = mmap(NULL, (size_t)sysconf(_SC_PAGESIZE), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED)
            return fail(EIO);
        run_maps[fd] = p;
    }
    run = run_maps[fd];
    reason = (uint32_t)resp.exit_reason;
    memcpy(run + cfg[CFG_RUN_EXIT_REASON_OFFSET], &reason, sizeof(reason));
    memcpy(run + cfg[CFG_RUN_EXCESS_OFFSET], &resp.excess, sizeof(resp.excess));
    return 0;
}

static int vm_ioctl(int fd, unsigned long req, void *arg)
{
    int r = REAL(ioctl)(fd, req, arg);
    int saved = errno;

    if (r < 0)
        return r;
    if (req == cfg[CFG_CREATE_VCPU] && named(r, "anon_inode:kvm-vcpu")) {
        struct ks_req q = {.op = OP_CREATE_VCPU, .fd = r, .aux = (uint64_t)fd,
                           .index = (uint64_t)(uintptr_t)arg};
        struct ks_resp resp = ask(q);

        if (resp.action == ACT_ANSWER && resp.err) {
            REAL(close)(r);
            return fail(resp.err);
        }
        if (resp.action == ACT_TRACK)
            set_kind(r, K_VCPU);
    } else if (req == cfg[CFG_CREATE_DEVICE]) {
        struct ks_create_device cd;

        if (peek(&cd, (uint64_t)(uintptr_t)arg, sizeof(cd)) == 0 && !(cd.flags & 1)) {
            struct ks_req q = {.op = OP_CREATE_DEVICE, .fd = (int32_t)cd.fd, .aux = (uint64_t)fd,
                               .value = cd.type};
            if (ask(q).action == ACT_TRACK)
                set_kind((int)cd.fd, K_VGIC);
        }
    } else if (req == cfg[CFG_CREATE_IRQCHIP]) {
        struct ks_req q = {.op = OP_CREATE_IRQCHIP, .fd = fd};
        ask(q);
    }
    errno = saved;
    return r;
}

static int vgic_ioctl(int fd, unsigned long req, void *arg)
{
    int r = REAL(ioctl)(fd, req, arg);
    int saved = errno;
    struct ks_device_attr a;

    if (r == 0 && req == cfg[CFG_SET_DEVICE_ATTR] && peek(&a, (uint64_t)(uintptr_t)arg, sizeof(a)) == 0 &&
        a.group == cfg[CFG_VGIC_GRP_CTRL] && a.attr == cfg[CFG_VGIC_CTRL_INIT]) {
        struct ks_req q = {.op = OP_DEVICE_INIT, .fd = fd};
        ask(q);
    }
    errno = saved;
    return r;
}

static int kvm_ioctl(int fd, unsigned long req, void *arg)
{
    int kind = kind_of(fd);

    if (KS_TYPE(req) != cfg[CFG_KVMIO])
        return REAL(ioctl)(fd, req, arg);
    if (req == cfg[CFG_CHECK_EXTENSION] && cfg[CFG_CAP_ARM_SPE] != KS_NONE &&
        (uint64_t)(uintptr_t)arg == cfg[CFG_CAP_ARM_SPE]) {
        struct ks_req q = {.op = OP_CHECK_EXTENSION, .fd = fd, .value = cfg[CFG_CAP_ARM_SPE]};
        struct ks_resp resp;
        /* Only a descriptor that answers KVM_CHECK_EXTENSION (/dev/kvm, a VM)
         * has the capability: the kernel says which (a VCPU: EINVAL, a file
         * that is not KVM's: ENOTTY, a closed one: EBADF). */
        int r = REAL(ioctl)(fd, req, arg);

        if (r < 0)
            return r;
        resp = ask(q);
        if (resp.action == ACT_ANSWER)
            return resp.err ? fail(resp.err) : (int)resp.value;
        return REAL(ioctl)(fd, req, arg);
    }
    if (req == cfg[CFG_CREATE_VM] && kind == K_NONE) {
        int r = REAL(ioctl)(fd, req, arg);
        int saved = errno;

        if (r >= 0 && named(r, "anon_inode:kvm-vm")) {
            struct ks_req q = {.op = OP_CREATE_VM, .fd = r, .aux = (uint64_t)fd};
            if (ask(q).action == ACT_TRACK)
                set_kind(r, K_VM);
        }
        errno = saved;
        return r;
    }
    switch (kind) {
    case K_VM:
        return vm_ioctl(fd, req, arg);
    case K_VGIC:
        return vgic_ioctl(fd, req, arg);
    case K_VCPU:
        if (req == cfg[CFG_HAS_DEVICE_ATTR] || req == cfg[CFG_GET_DEVICE_ATTR] ||
            req == cfg[CFG_SET_DEVICE_ATTR])
            return device_attr(fd, req, arg);
        if (req == cfg[CFG_RUN])
            return vcpu_run(fd, req, arg);
        if (req == cfg[CFG_SET_SIGNAL_MASK]) {
            int r = REAL(ioctl)(fd, req, arg);

            if (r == 0 && fd < KS_MAX_FDS)
                own_sigmask[fd] = arg != NULL;
            return r;
        }
        if (req == cfg[CFG_ARM_VCPU_INIT])
            return vcpu_init(fd, req, arg);
        break;
    }
    return REAL(ioctl)(fd, req, arg);
}

int ioctl(int fd, unsigned long req, ...)
{
    va_list ap;
    void *arg;

    va_start(ap, req);
    arg = va_arg(ap, void *);
    va_end(ap);
    if (KS_TYPE(req) != KS_KVMIO_PRELOAD || !enabled() || foreign())
        return REAL(ioctl)(fd, req, arg);
    return kvm_ioctl(fd, req, arg);
}

/* Forget FD (it is being closed or replaced): the model hears of it first. */
static void forget(int fd)
{
    struct ks_req q = {.op = OP_CLOSE, .fd = fd};

    if (kind_of(fd) == K_NONE)
        return;
    ask(q);
    set_kind(fd, K_NONE);
    own_sigmask[fd] = 0;
    if (run_maps[fd]) {
        munmap(run_maps[fd], (size_t)sysconf(_SC_PAGESIZE));
        run_maps[fd] = NULL;
    }
}

static int copied(int old, int fd)
{
    if (fd >= 0 && kind_of(old) != K_NONE && !foreign()) {
        struct ks_req q = {.op = OP_DUP, .fd = fd, .aux = (uint64_t)old};
        int saved = errno;

        if (ask(q).action == ACT_TRACK)
            set_kind(fd, kind_of(old));
        errno = saved;
    }
    return fd;
}

int close(int fd)
{
    if (foreign())
        return REAL(close)(fd);
    if (fd == sock && sock >= 0) {
        /* The process closes every descriptor (closefrom-style): let it, and
         * reconnect when the model is needed again; the server keeps this
         * process's state by its pid. */
        if (take()) {
            sock_gone();
            give();
        }
    } else
        forget(fd);
    return REAL(close)(fd);
}

int dup(int old) { return copied(old, REAL(dup)(old)); }

/* dup2/dup3 onto FD: what FD was is gone only once the call succeeded (a
 * failed one leaves FD open, as it was); dup2 of a descriptor onto itself
 * changes nothing. */
static int replaced(int old, int fd, int r)
{
    int saved = errno;

    if (r < 0 || old == fd || foreign())
        return r;
    if (fd == sock) {
        if (take()) {
            sock_gone();
            give();
        }
    }
    forget(fd);
    copied(old, fd);
    errno = saved;
    return r;
}

int dup2(int old, int fd) { return replaced(old, fd, REAL(dup2)(old, fd)); }

int dup3(int old, int fd, int flags) { return replaced(old, fd, REAL(dup3)(old, fd, flags)); }

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1u << 2)
#endif

/* Descriptors LO..HI were closed at once (close_range, closefrom). */
static void closed_range(unsigned int lo, unsigned int hi)
{
    int saved = errno;

    if (foreign())
        return;
    if (sock >= 0 && (unsigned int)sock >= lo && (unsigned int)sock <= hi) {
        if (take()) {
            sock_gone();
            give();
        }
    }
    for (unsigned int fd = lo; fd <= hi && fd < KS_MAX_FDS; fd++)
        forget((int)fd);
    errno = saved;
}

int close_range(unsigned int lo, unsigned int hi, int flags)
{
    int r;

    resolve();
    r = real_close_range_p ? real_close_range_p(lo, hi, flags) : (int)syscall(SYS_close_range, lo, hi, flags);
    /* With CLOSE_RANGE_CLOEXEC nothing is closed now: exec closes them. */
    if (r == 0 && !(flags & CLOSE_RANGE_CLOEXEC))
        closed_range(lo, hi);
    return r;
}

void closefrom(int lo)
{
    unsigned int from = lo < 0 ? 0 : (unsigned int)lo;

    resolve();
    if (real_closefrom_p)
        real_closefrom_p(lo);
    else
        syscall(SYS_close_range, from, ~0u, 0);
    closed_range(from, ~0u);
}

/* fcntl's third argument, whichever type the command takes, fits an unsigned long. */
static int fcntl_with(int fd, int cmd, unsigned long arg)
{
    if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)
        return copied(fd, REAL(fcntl)(fd, cmd, arg));
    return REAL(fcntl)(fd, cmd, arg);
}

int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    unsigned long arg;

    va_start(ap, cmd);
    arg = va_arg(ap, unsigned long);
    va_end(ap);
    return fcntl_with(fd, cmd, arg);
}

/* glibc's name for fcntl with 64-bit offsets, which some programs call. */
int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    unsigned long arg;

    va_start(ap, cmd);
    arg = va_arg(ap, unsigned long);
    va_end(ap);
    return fcntl_with(fd, cmd, arg);
}

__attribute__((constructor)) static void shim_loaded(void)
{
    resolve();
    pthread_atfork(before_fork, parent_after_fork, child_after_fork);
}
