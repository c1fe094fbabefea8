/*
 * A stand-in VMM that bounds KVM_RUN with a one-shot timer, as many do:
 * an SA_RESTART SIGALRM handler, setitimer once, then KVM_RUN of an x86 VCPU
 * that halts (an in-kernel irqchip, one page of HLT at the reset vector), so
 * only the signal can end the run. Prints "run RET ERRNO"; for the shim's tests.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <unistd.h>

#define SPE_CTRL 3

static void ring(int sig) { (void)sig; }

static int set(int fd, uint64_t attr, void *value)
{
    struct kvm_device_attr da = {.group = SPE_CTRL, .attr = attr, .addr = (uintptr_t)value};
    return ioctl(fd, KVM_SET_DEVICE_ATTR, &da);
}

int main(void)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    int vm = ioctl(kvm, KVM_CREATE_VM, 0), vcpu, irq = 21, spu = 10, r;
    uint64_t size = 4 << 20;
    unsigned char *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0xfffff000, .memory_size = 4096, .userspace_addr = (uintptr_t)page};
    struct sigaction sa = {.sa_handler = ring, .sa_flags = SA_RESTART};
    struct itimerval once = {.it_value = {.tv_usec = 200000}};

    memset(page, 0xf4, 4096); /* HLT */
    if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) || ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region))
        return 3;
    vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0 || set(vcpu, 0, &irq) || set(vcpu, 1, &spu) || set(vcpu, 2, &size) || set(vcpu, 3, NULL))
        return 4;
    mmap(NULL, (size_t)ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0), PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    sigaction(SIGALRM, &sa, NULL);
    setitimer(ITIMER_REAL, &once, NULL);
    r = ioctl(vcpu, KVM_RUN, 0);
    printf("run %d %s\n", r, r < 0 ? strerrorname_np(errno) : "-");
    return 0;
}
