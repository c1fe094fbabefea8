@GENERATED@
// The kvmspe conformance cases against /dev/kvm, TAP output; see --help.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

/* ---- kvmspe.h, as `kvmspe export --lang c` prints it ---- */
@KVMSPE_H@
/* ---- the program's numbers, from kvmspe's data ---- */
@NUMBERS@

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

@CASES_HEAD@

/* ---- the cases, from kvmspe's scenario vectors ---- */
@CASE_TABLE@

/* ---- this program's VMs and VCPUs: raw ioctls on /dev/kvm ---- */

static int kvm_fd = -1;

struct vcpu {
	int fd;
	void *run;
	size_t run_size;
};

struct ks_vm {
	int fd;
	int nv;
	struct vcpu v[MAX_VCPUS];
};

static int kvm_ioctl(int fd, unsigned long req, void *arg)
{
	int r;

	do
		r = ioctl(fd, req, arg);
	while (r < 0 && errno == EINTR);
	return r < 0 ? -errno : r;
}

static int device_attr(int fd, unsigned long req, uint32_t group, uint64_t attr, uint64_t addr)
{
	struct kvm_device_attr a = { 0, group, attr, addr };

	return kvm_ioctl(fd, req, &a);
}

static int ks_vm_create(struct ks_vm *vm)
{
	vm->nv = 0;
	vm->fd = kvm_ioctl(kvm_fd, KVM_CREATE_VM, 0);
	return vm->fd < 0 ? vm->fd : 0;
}

static void ks_vm_destroy(struct ks_vm *vm)
{
	for (int i = 0; i < vm->nv; i++) {
		if (vm->v[i].run)
			munmap(vm->v[i].run, vm->v[i].run_size);
		close(vm->v[i].fd);
	}
	close(vm->fd);
}

/* VCPU vm->nv; on arm64 initialised, with the SPE feature when spe. */
static int ks_vcpu_add(struct ks_vm *vm, int spe)
{
	int fd = kvm_ioctl(vm->fd, KVM_CREATE_VCPU, (void *)(long)vm->nv);

	if (fd < 0)
		return fd;
#if KS_ARM64
	{
		struct kvm_vcpu_init init;
		int r;

		memset(&init, 0, sizeof(init));
		r = kvm_ioctl(vm->fd, KVM_ARM_PREFERRED_TARGET, &init);
		if (r == 0 && spe) {
			if (H.feature_bit < 0 || H.feature_bit >= 7 * 32)
				r = -EINVAL;
			else
				init.features[H.feature_bit / 32] |= UINT32_C(1) << (H.feature_bit % 32);
		}
		if (r == 0)
			r = kvm_ioctl(fd, KVM_ARM_VCPU_INIT, &init);
		if (r < 0) {
			close(fd);
			return r;
		}
	}
#else
	(void)spe;
#endif
	vm->v[vm->nv].fd = fd;
	vm->v[vm->nv].run = NULL;
	vm->nv++;
	return 0;
}

static int ks_device_attr(struct ks_vm *vm, int vcpu, int op, uint32_t group, uint64_t attr, uint64_t addr)
{
	unsigned long req = op == OP_SET ? KVM_SET_DEVICE_ATTR : op == OP_GET ? KVM_GET_DEVICE_ATTR
									  : KVM_HAS_DEVICE_ATTR;

	return device_attr(vm->v[vcpu].fd, req, group, attr, addr);
}

static int ks_kvm_run(struct ks_vm *vm, int vcpu, void **run)
{
	struct vcpu *v = &vm->v[vcpu];

	if (!v->run) {
		int size = kvm_ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
		void *p;

		if (size < 0)
			return size;
		p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
		if (p == MAP_FAILED)
			return -errno;
		v->run = p;
		v->run_size = (size_t)size;
	}
	*run = v->run;
	return ioctl(v->fd, KVM_RUN, 0) < 0 ? -errno : 0;
}

/* An in-kernel GICv3 placed where kvmspe's backend places it, then initialised (arm64 only). */
static int ks_vgic_v3(struct ks_vm *vm, const char **what)
{
#if KS_ARM64
	struct kvm_create_device d = { KVM_DEV_TYPE_ARM_VGIC_V3, 0, 0 };
	uint64_t dist = KS_VGIC_DIST_BASE, redist = KS_VGIC_REDIST_BASE;
	int r = kvm_ioctl(vm->fd, KVM_CREATE_DEVICE, &d);

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
#else
	(void)vm;
	(void)what;
	return 0;
#endif
}

@CASES_RUN@

/* ---- this program: probe, options, TAP ---- */

static void probe_host(void)
{
	char why[160];

	H.page = (uint64_t)sysconf(_SC_PAGESIZE);
#if KS_ARM64
	if (H.feature_bit < 0) {
		/* Probe, do not guess: only a bit that makes the SPE group answer HAS. */
		for (long long bit = 0; bit < 7 * 32 && H.feature_bit < 0; bit++) {
			H.feature_bit = bit;
			if (!probe_spe_with(1, why, sizeof(why)))
				H.feature_bit = -1;
		}
	}
	if (H.feature_bit < 0) {
		snprintf(H.no_spe_why, sizeof(H.no_spe_why),
			 "no SPE VCPU feature: none given (-DKVM_ARM_VCPU_SPE=N or --spe-feature-bit N)"
			 " and no bit makes KVM_ARM_VCPU_SPE_CTRL answer");
		H.spe = 0;
	} else {
		H.spe = probe_spe_with(1, why, sizeof(why));
	}
#else
	H.spe = probe_spe_with(0, why, sizeof(why));
#endif
	if (H.spe)
		read_spus();
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

	built_in_numbers();
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
	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm_fd < 0) {
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
