/*
 * The C baseline for the ioctl rows of the bench: KVM_HAS/GET/SET_DEVICE_ATTR
 * on one VCPU in a tight loop, on the x86 TSC group (KVM_VCPU_TSC_CTRL = 0,
 * attribute KVM_VCPU_TSC_OFFSET = 0), which is a real VCPU attribute on any
 * x86 host with /dev/kvm.
 *
 * Usage: ioctl_loop [CALLS]
 *   With CALLS, run one round and exit. Without it, read one call count per
 *   line on stdin and answer each with one round, so that a driver can
 *   interleave C rounds with its own rounds without re-creating the VM.
 * Each round prints one line: "has NS get NS set NS", nanoseconds per call
 * (CLOCK_MONOTONIC, the clock behind Python's time.perf_counter_ns).
 *
 * Only the kernel UAPI numbers are used, so the program builds without
 * <linux/kvm.h> installed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

struct kvm_device_attr {
	uint32_t flags;
	uint32_t group;
	uint64_t attr;
	uint64_t addr;
};

#define KVMIO 0xAE
#define KVM_CREATE_VM _IO(KVMIO, 0x01)
#define KVM_CREATE_VCPU _IO(KVMIO, 0x41)
#define KVM_SET_DEVICE_ATTR _IOW(KVMIO, 0xe1, struct kvm_device_attr)
#define KVM_GET_DEVICE_ATTR _IOW(KVMIO, 0xe2, struct kvm_device_attr)
#define KVM_HAS_DEVICE_ATTR _IOW(KVMIO, 0xe3, struct kvm_device_attr)

#define KVM_VCPU_TSC_CTRL 0
#define KVM_VCPU_TSC_OFFSET 0

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "ioctl_loop: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* Time CALLS calls of one request; every call must succeed. */
static double loop(int fd, unsigned long request, struct kvm_device_attr *da, long calls, const char *name)
{
	int64_t start = now_ns();

	for (long i = 0; i < calls; i++)
		if (ioctl(fd, request, da) < 0)
			die(name);
	return (double)(now_ns() - start) / (double)calls;
}

static void round_once(int vcpu, struct kvm_device_attr *da, long calls)
{
	double has = loop(vcpu, KVM_HAS_DEVICE_ATTR, da, calls, "KVM_HAS_DEVICE_ATTR");
	double get = loop(vcpu, KVM_GET_DEVICE_ATTR, da, calls, "KVM_GET_DEVICE_ATTR");
	double set = loop(vcpu, KVM_SET_DEVICE_ATTR, da, calls, "KVM_SET_DEVICE_ATTR");

	printf("has %.1f get %.1f set %.1f\n", has, get, set);
	fflush(stdout);
}

static long parse_calls(const char *text)
{
	char *end;
	long calls = strtol(text, &end, 10);

	if (end == text || (*end != '\0' && *end != '\n') || calls <= 0) {
		fprintf(stderr, "ioctl_loop: call count must be a positive integer, got '%s'\n", text);
		exit(2);
	}
	return calls;
}

int main(int argc, char **argv)
{
	static uint64_t value; /* the __u64 behind kvm_device_attr.addr */
	struct kvm_device_attr da = {
		.flags = 0,
		.group = KVM_VCPU_TSC_CTRL,
		.attr = KVM_VCPU_TSC_OFFSET,
		.addr = (uint64_t)(uintptr_t)&value,
	};
	char line[64];
	int kvm, vm, vcpu;

	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm");
	vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");
	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU");
	/* Start from the VCPU's own offset so that SET writes back what is there. */
	if (ioctl(vcpu, KVM_GET_DEVICE_ATTR, &da) < 0)
		die("KVM_GET_DEVICE_ATTR");

	if (argc > 1) {
		round_once(vcpu, &da, parse_calls(argv[1]));
		return 0;
	}
	while (fgets(line, sizeof(line), stdin))
		round_once(vcpu, &da, parse_calls(line));
	return 0;
}
