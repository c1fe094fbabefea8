/*
 * A VMM that does what VMMs do to their descriptors, processes and signals,
 * for the shim's hostile tests: raw KVM ioctls on x86, one scenario per run
 * (argv[1]). Each step prints "NAME ret errno"; the test compares them, and
 * the shim's transcript, with what the model and the kernel say. Every
 * scenario is bounded by alarm(): a hang ends with SIGALRM (status 142).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

/* The v6 series' SPE control group (patch 14/35): not in upstream headers. */
#define SPE_CTRL 3
#define SPE_IRQ 0
#define SPE_SPU 1
#define SPE_MAX_BUFFER_SIZE 2
#define SPE_INIT 3

static void show(const char *name, long ret)
{
    printf("%s %ld %s\n", name, ret, ret < 0 ? strerrorname_np(errno) : "-");
    fflush(stdout);
}

static int attr(int fd, unsigned long req, uint64_t a, void *addr)
{
    struct kvm_device_attr da = {.group = SPE_CTRL, .attr = a, .addr = (uintptr_t)addr};
    return ioctl(fd, req, &da);
}

static int set_int(int fd, uint64_t a, int v) { return attr(fd, KVM_SET_DEVICE_ATTR, a, &v); }
static int set_u64(int fd, uint64_t a, uint64_t v) { return attr(fd, KVM_SET_DEVICE_ATTR, a, &v); }

static int kvm, vm, vcpu;

/* The kernel's own KVM_CREATE_VM can answer EINTR when a signal is pending
 * (mm_take_all_locks): a VMM under timer signals tries again. */
#define RETRY(call)                                                                                 \
    ({                                                                                              \
        long r_;                                                                                    \
        do                                                                                          \
            r_ = (call);                                                                            \
        while (r_ < 0 && errno == EINTR);                                                           \
        (int)r_;                                                                                    \
    })

static void setup(void)
{
    kvm = RETRY(open("/dev/kvm", O_RDWR | O_CLOEXEC));
    vm = RETRY(ioctl(kvm, KVM_CREATE_VM, 0));
    RETRY(ioctl(vm, KVM_CREATE_IRQCHIP, 0));
    vcpu = RETRY(ioctl(vm, KVM_CREATE_VCPU, 0));
}

/* The SPE setup of VCPU fd FD (the VM's SPU and size given once, by VCPU 0). */
static int spe_setup(int fd, int first, uint64_t size)
{
    if (first && (set_int(fd, SPE_SPU, 10) || set_u64(fd, SPE_MAX_BUFFER_SIZE, size)))
        return -1;
    if (set_int(fd, SPE_IRQ, 23))
        return -1;
    return attr(fd, KVM_SET_DEVICE_ATTR, SPE_INIT, NULL);
}

/* dup2 of a descriptor onto itself is a no-op: the model's VM must live on. */
static void dup2_self(void)
{
    setup();
    close(vm);
    show("dup2_self", dup2(vcpu, vcpu) == vcpu ? 0 : -1);
    show("set_spu", set_int(vcpu, SPE_SPU, 10));
}

/* A dup2/dup3 that fails leaves the target open: it is still a VCPU. */
static void dup_fails(void)
{
    setup();
    show("dup2_badfd", dup2(4000, vcpu));
    show("dup3_badflags", dup3(kvm, vcpu, 0x7fff));
    show("set_spu", set_int(vcpu, SPE_SPU, 10));
}

/* Another file over a VCPU, and a copy made with F_DUPFD. */
static void dup_over(void)
{
    int null = open("/dev/null", O_RDONLY), copy;

    setup();
    copy = fcntl(vcpu, F_DUPFD_CLOEXEC, 100);
    show("dupfd", copy >= 100 ? 0 : -1);
    show("dup2_null", dup2(null, vcpu) == vcpu ? 0 : -1);
    show("has_on_replaced", attr(vcpu, KVM_HAS_DEVICE_ATTR, SPE_SPU, NULL));
    show("set_spu_on_copy", set_int(copy, SPE_SPU, 10));
}

/* close() of every descriptor, the shim's socket among them, then a new VM. */
static void close_all(void)
{
    setup();
    show("set_spu", set_int(vcpu, SPE_SPU, 10));
    for (int fd = 3; fd < 1024; fd++)
        close(fd);
    setup();
    show("set_spu_after", set_int(vcpu, SPE_SPU, 11));
}

/* close() of every socket the process has (the shim's among them), its VM
 * and VCPU kept: the VCPU is still the model's, with what was set on it. */
static void close_socket(void)
{
    struct stat st;
    int spu = 0;

    setup();
    show("set_spu", set_int(vcpu, SPE_SPU, 10));
    for (int fd = 3; fd < 1024; fd++)
        if (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode))
            close(fd);
    show("get_spu", attr(vcpu, KVM_GET_DEVICE_ATTR, SPE_SPU, &spu));
    printf("spu %d\n", spu);
    fflush(stdout);
}

/* close_range() over everything (the C library's, or the raw system call the
 * shim cannot see), then the process's own socket and files take the
 * numbers: the shim must neither write into them nor close them. */
static void close_range_all(int raw)
{
    int pair[2], pipes[2];
    char byte;

    setup();
    show("set_spu", set_int(vcpu, SPE_SPU, 10));
    show("close_range", raw ? syscall(SYS_close_range, 3, ~0u, 0) : close_range(3, ~0u, 0));
    show("socketpair", socketpair(AF_UNIX, SOCK_SEQPACKET, 0, pair));
    show("pipe", pipe(pipes));
    setup();
    show("set_spu_after", set_int(vcpu, SPE_SPU, 11));
    show("own_socket_untouched", recv(pair[0], &byte, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN ? 0 : -1);
    show("own_socket_open", fcntl(pair[1], F_GETFD) >= 0 ? 0 : -1);
    show("own_pipe_open", fcntl(pipes[0], F_GETFD) >= 0 && fcntl(pipes[1], F_GETFD) >= 0 ? 0 : -1);
}

/* A child that closes the VM's descriptors must not end the parent's VM;
 * its own calls on them are the kernel's (EIO: another process's VM). */
static void child_closes(int how)
{
    pid_t pid;
    int status;

    setup();
    show("set_spu", set_int(vcpu, SPE_SPU, 10));
    if (how == 0)
        pid = fork();
    else if (how == 1)
        pid = (pid_t)syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    else
        pid = vfork();
    if (pid == 0) {
        if (how != 2 && set_u64(vcpu, SPE_MAX_BUFFER_SIZE, 4 << 20) == 0)
            _exit(3);
        if (how != 2 && errno != EIO)
            _exit(4);
        close(vcpu);
        close(vm);
        _exit(0);
    }
    waitpid(pid, &status, 0);
    show("child", WIFEXITED(status) ? -WEXITSTATUS(status) : -100);
    show("set_max", set_u64(vcpu, SPE_MAX_BUFFER_SIZE, 4 << 20));
}

/* Threads, each with a VM and its VCPU, SPE calls and KVM_RUN at once: each
 * must get its own VM's answers, as in some serial order. */
#define THREADS 4
#define ROUNDS 200

static int wrong[THREADS];

static void *vcpu_thread(void *p)
{
    int i = (int)(intptr_t)p;
    int own_vm = ioctl(kvm, KVM_CREATE_VM, 0), fd;
    uint64_t size = (uint64_t)(i + 1) << 20, got;

    ioctl(own_vm, KVM_CREATE_IRQCHIP, 0);
    fd = ioctl(own_vm, KVM_CREATE_VCPU, 0);
    if (spe_setup(fd, 1, size))
        wrong[i]++;
    for (int n = 0; n < ROUNDS; n++) {
        got = 0;
        if (attr(fd, KVM_GET_DEVICE_ATTR, SPE_MAX_BUFFER_SIZE, &got) || got != size)
            wrong[i]++;
        if (attr(fd, KVM_HAS_DEVICE_ATTR, SPE_IRQ, NULL))
            wrong[i]++;
        if (set_int(fd, SPE_IRQ, 23) == 0 || errno != EBUSY)
            wrong[i]++;
        if (n % 20 == 0)
            ioctl(fd, KVM_RUN, 0); /* no guest memory: the kernel returns at once */
    }
    return NULL;
}

static void threads(void)
{
    pthread_t t[THREADS];
    int total = 0;

    kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    for (int i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, vcpu_thread, (void *)(intptr_t)i);
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        total += wrong[i];
    }
    show("wrong_answers", -total);
}

/* The model goes away between two calls (the test ends it while the VMM
 * waits for a line on stdin): the VMM goes on with the kernel's answers. */
static void server_gone(void)
{
    char line[8];

    setup();
    show("set_spu", set_int(vcpu, SPE_SPU, 10));
    if (!fgets(line, sizeof(line), stdin))
        return;
    show("set_spu_after", set_int(vcpu, SPE_SPU, 10));
}

/* A timer signal every 200 us, without SA_RESTART, during every exchange
 * (and the connection: the test may hold the model's backlog full). */
static volatile sig_atomic_t ticks;
static void tick(int sig) { (void)sig; ticks++; }

static void signals(void)
{
    struct sigaction sa = {.sa_handler = tick};
    struct itimerval it = {{0, 200}, {0, 200}};
    int bad = 0;
    uint64_t got;

    /* From the first KVM call on: the shim connects to its model under them too. */
    sigaction(SIGALRM, &sa, NULL);
    setitimer(ITIMER_REAL, &it, NULL);
    setup();
    show("set_spu", set_int(vcpu, SPE_SPU, 10));
    for (int n = 0; n < 3000; n++) {
        got = 0;
        if (set_u64(vcpu, SPE_MAX_BUFFER_SIZE, 4 << 20) ||
            attr(vcpu, KVM_GET_DEVICE_ATTR, SPE_MAX_BUFFER_SIZE, &got) || got != 4 << 20)
            bad++;
    }
    memset(&it, 0, sizeof(it));
    setitimer(ITIMER_REAL, &it, NULL);
    show("wrong_answers", -bad);
    show("interrupted", ticks > 10 ? 0 : -1);
}

/* A signal handler that copies and closes a VCPU descriptor (dup and close
 * are async-signal-safe), landing while the shim talks to its model. */
static void copy_and_close(int sig)
{
    int saved = errno;

    (void)sig;
    ticks++;
    close(dup(vcpu));
    errno = saved;
}

/* The timer is one-shot, armed again at each turn of the loop: a periodic
 * one shorter than the handler's own two exchanges with the model (on a
 * loaded machine) would run the handler back to back and starve the loop. */
static void handler_closes(void)
{
    struct sigaction sa = {.sa_handler = copy_and_close};
    struct itimerval it = {{0, 0}, {0, 200}};
    int bad = 0;
    uint64_t got;

    setup();
    show("set_spu", set_int(vcpu, SPE_SPU, 10));
    sigaction(SIGALRM, &sa, NULL);
    for (int n = 0; n < 3000; n++) {
        setitimer(ITIMER_REAL, &it, NULL);
        got = 0;
        if (set_u64(vcpu, SPE_MAX_BUFFER_SIZE, 4 << 20) ||
            attr(vcpu, KVM_GET_DEVICE_ATTR, SPE_MAX_BUFFER_SIZE, &got) || got != 4 << 20)
            bad++;
    }
    memset(&it, 0, sizeof(it));
    setitimer(ITIMER_REAL, &it, NULL);
    show("wrong_answers", -bad);
    show("interrupted", ticks > 10 ? 0 : -1);
}

/* KVM_CHECK_EXTENSION of the SPE capability (argv[2]) on each kind of fd:
 * /dev/kvm and a VM answer it; a VCPU and a file that is not KVM's do not. */
static void check_extension(const char *cap_text)
{
    unsigned long cap = strtoul(cap_text, NULL, 0);
    int null = open("/dev/null", O_RDONLY);

    setup();
    show("on_kvm", ioctl(kvm, KVM_CHECK_EXTENSION, cap));
    show("on_vm", ioctl(vm, KVM_CHECK_EXTENSION, cap));
    show("on_vcpu", ioctl(vcpu, KVM_CHECK_EXTENSION, cap));
    show("on_null", ioctl(null, KVM_CHECK_EXTENSION, cap));
    show("on_closed", ioctl(900, KVM_CHECK_EXTENSION, cap));
}

/* A bad pointer for the struct kvm_device_attr itself, and at a page's end. */
static void bad_arg(void)
{
    char *page = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct kvm_device_attr *edge = (void *)(page + 4096 - 8);

    setup();
    munmap(page + 4096, 4096);
    show("set_null", ioctl(vcpu, KVM_SET_DEVICE_ATTR, NULL));
    show("get_low", ioctl(vcpu, KVM_GET_DEVICE_ATTR, (void *)8));
    show("has_kernel_addr", ioctl(vcpu, KVM_HAS_DEVICE_ATTR, (void *)0xffff800000000000ul));
    edge->flags = 0;
    edge->group = SPE_CTRL;
    show("has_straddling", ioctl(vcpu, KVM_HAS_DEVICE_ATTR, edge));
}

/* Values at the edges of their C types, and attributes the group does not have. */
static void edges(void)
{
    setup();
    show("set_irq_minus1", set_int(vcpu, SPE_IRQ, -1));
    show("set_irq_intmin", set_int(vcpu, SPE_IRQ, INT32_MIN));
    show("set_spu_minus1", set_int(vcpu, SPE_SPU, -1));
    show("set_spu", set_int(vcpu, SPE_SPU, 10));
    show("set_max_u64max", set_u64(vcpu, SPE_MAX_BUFFER_SIZE, UINT64_MAX));
    show("set_max_topbit", set_u64(vcpu, SPE_MAX_BUFFER_SIZE, 1ull << 63));
    for (uint64_t a = 4; a < 10; a++)
        show("has_unknown", attr(vcpu, KVM_HAS_DEVICE_ATTR, a, NULL));
    show("set_unknown_u64max", set_u64(vcpu, UINT64_MAX, 0));
    show("get_unknown_u64max", attr(vcpu, KVM_GET_DEVICE_ATTR, UINT64_MAX, NULL));
}

/* The process execs itself (every KVM fd is O_CLOEXEC): the new image is a
 * new VMM, nothing of the old one's VMs and pinned memory may remain. */
static void exec_again(char **argv, int image)
{
    struct rlimit r;
    struct kvm_run *run;
    long size;

    getrlimit(RLIMIT_MEMLOCK, &r);
    r.rlim_cur = 3u << 20; /* room for one 2 MiB buffer, not two */
    setrlimit(RLIMIT_MEMLOCK, &r);
    setup();
    size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    run = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    show("spe_setup", spe_setup(vcpu, 1, 2 << 20));
    show("run", ioctl(vcpu, KVM_RUN, 0));
    printf("exit_reason %#x\n", run->exit_reason);
    fflush(stdout);
    if (image == 1)
        execl("/proc/self/exe", argv[0], "exec2", (char *)NULL);
}

int main(int argc, char **argv)
{
    const char *what = argc > 1 ? argv[1] : "";

    alarm(20);
    if (!strcmp(what, "dup2_self"))
        dup2_self();
    else if (!strcmp(what, "dup_fails"))
        dup_fails();
    else if (!strcmp(what, "dup_over"))
        dup_over();
    else if (!strcmp(what, "close_all"))
        close_all();
    else if (!strcmp(what, "close_socket"))
        close_socket();
    else if (!strcmp(what, "close_range"))
        close_range_all(0);
    else if (!strcmp(what, "close_range_raw"))
        close_range_all(1);
    else if (!strcmp(what, "fork"))
        child_closes(0);
    else if (!strcmp(what, "clone"))
        child_closes(1);
    else if (!strcmp(what, "vfork"))
        child_closes(2);
    else if (!strcmp(what, "threads"))
        threads();
    else if (!strcmp(what, "server_gone"))
        server_gone();
    else if (!strcmp(what, "handler_closes"))
        handler_closes();
    else if (!strcmp(what, "check_extension") && argc > 2)
        check_extension(argv[2]);
    else if (!strcmp(what, "signals"))
        signals();
    else if (!strcmp(what, "bad_arg"))
        bad_arg();
    else if (!strcmp(what, "edges"))
        edges();
    else if (!strcmp(what, "exec"))
        exec_again(argv, 1);
    else if (!strcmp(what, "exec2"))
        exec_again(argv, 2);
    else
        return 2;
    return 0;
}
