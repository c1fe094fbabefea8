/*
 * A stand-in VMM that knows nothing of kvmspe: raw KVM ioctls on x86, as a
 * VMM issues them, for the shim's tests. Each step prints "NAME ret errno";
 * the test compares them, and the shim's transcript, with what the model says.
 * Exit status 7, so that the test sees the shim keep the command's own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* The v6 series' SPE control group (patch 14/35): not in upstream headers. */
#define SPE_CTRL 3
#define SPE_SPU 1
#define SPE_MAX_BUFFER_SIZE 2

static void show(const char *name, int ret)
{
    printf("%s %d %s\n", name, ret, ret < 0 ? strerrorname_np(errno) : "-");
}

static int attr(int fd, unsigned long req, uint64_t a, uint64_t addr)
{
    struct kvm_device_attr da = {.group = SPE_CTRL, .attr = a, .addr = addr};
    return ioctl(fd, req, &da);
}

int main(void)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    int vcpu, other;
    uint64_t size = 4 << 20, got = 0;
    int spu = 10;
    struct kvm_device_attr tsc = {.group = KVM_VCPU_TSC_CTRL, .attr = KVM_VCPU_TSC_OFFSET};

    show("create_irqchip", ioctl(vm, KVM_CREATE_IRQCHIP, 0));
    vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    show("create_vcpu", vcpu < 0 ? vcpu : 0);
    show("has_max", attr(vcpu, KVM_HAS_DEVICE_ATTR, SPE_MAX_BUFFER_SIZE, 0));
    show("set_max_before_spu", attr(vcpu, KVM_SET_DEVICE_ATTR, SPE_MAX_BUFFER_SIZE, (uintptr_t)&size));
    show("set_spu", attr(vcpu, KVM_SET_DEVICE_ATTR, SPE_SPU, (uintptr_t)&spu));
    show("set_max_bad_addr", attr(vcpu, KVM_SET_DEVICE_ATTR, SPE_MAX_BUFFER_SIZE, 8));
    show("set_max", attr(vcpu, KVM_SET_DEVICE_ATTR, SPE_MAX_BUFFER_SIZE, (uintptr_t)&size));
    show("set_max_again", attr(vcpu, KVM_SET_DEVICE_ATTR, SPE_MAX_BUFFER_SIZE, (uintptr_t)&size));
    show("get_max_bad_addr", attr(vcpu, KVM_GET_DEVICE_ATTR, SPE_MAX_BUFFER_SIZE, 8));
    show("get_max", attr(vcpu, KVM_GET_DEVICE_ATTR, SPE_MAX_BUFFER_SIZE, (uintptr_t)&got));
    printf("got %#llx\n", (unsigned long long)got);
    /* Not the SPE group: the kernel's own answers. */
    show("mmap_size", ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0) > 0 ? 0 : -1);
    show("has_tsc_offset", ioctl(vcpu, KVM_HAS_DEVICE_ATTR, &tsc));
    /* A closed VCPU's number, reused for another file, is that file's again. */
    close(vcpu);
    other = open("/dev/null", O_RDONLY);
    printf("reused %d\n", other == vcpu);
    show("has_max_on_reused", attr(other, KVM_HAS_DEVICE_ATTR, SPE_MAX_BUFFER_SIZE, 0));
    fflush(stdout);
    return 7;
}
