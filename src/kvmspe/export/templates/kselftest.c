// SPDX-License-Identifier: GPL-2.0-only
@GENERATED@
/*
 * spe_conformance - the SPE VCPU attribute interface (KVM_ARM_VCPU_SPE_CTRL)
 * of the arm64 KVM SPE series, one test per kvmspe conformance case
 *
 * Each case gets a fresh VM and its VCPUs (KVM_ARM_VCPU_INIT with the SPE
 * feature where the case asks), an in-kernel GICv3 unless the case asks for a
 * VM without one, and performs its device attribute calls and KVM_RUNs; each
 * result must be the one the case expects. The test name is the case, the
 * message its rule and the rule's source (seed: the reference patch; series:
 * another patch of the series; measured, arch, uapi, assumed).
 *
 * The series does not publish the SPE VCPU feature bit (KVM_ARM_VCPU_SPE) and
 * the exit reason KVM_EXIT_RLIMIT: they come from this tree's uapi headers
 * when it has the series, else from the build (EXTRA_CFLAGS="-DKVM_ARM_VCPU_SPE=N
 * -DKVM_EXIT_RLIMIT=N"); without them the test skips. A host whose KVM has no
 * SPE skips. Cases that need guest code programming the SPE buffer skip: this
 * test loads none.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

#include <kvm_util.h>
#include <test_util.h>

/* ---- kvmspe.h (kvmspe export --lang c): this tree's uapi definitions come first and win ---- */
@KVMSPE_H@

@NUMBERS@

@CASES_HEAD@

/* ---- the cases, from kvmspe's scenario vectors ---- */
@CASE_TABLE@

/* ---- VMs and VCPUs from kvm_util ---- */

struct ks_vm {
	struct kvm_vm *vm;
	int nv;			/* VCPUs in vcpu[] */
	uint32_t next_id;	/* KVM never frees a VCPU id */
	struct kvm_vcpu *vcpu[MAX_VCPUS];
};

static int ks_vm_create(struct ks_vm *vm)
{
	vm->vm = vm_create_barebones();
	vm->nv = 0;
	vm->next_id = 0;
	return 0;
}

static void ks_vm_destroy(struct ks_vm *vm)
{
	kvm_vm_free(vm->vm);
}

static int ks_vcpu_add(struct ks_vm *vm, int spe)
{
	struct kvm_vcpu_init init;
	struct kvm_vcpu *vcpu;

	vm_ioctl(vm->vm, KVM_ARM_PREFERRED_TARGET, &init);
	if (spe) {
		if (H.feature_bit < 0 || H.feature_bit >= 7 * 32)
			return -EINVAL;
		init.features[H.feature_bit / 32] |= 1U << (H.feature_bit % 32);
	}
	vcpu = __vm_vcpu_add(vm->vm, vm->next_id++);
	if (__vcpu_ioctl(vcpu, KVM_ARM_VCPU_INIT, &init))
		return -errno;
	vm->vcpu[vm->nv++] = vcpu;
	return 0;
}

static int ks_device_attr(struct ks_vm *vm, int vcpu, int op, uint32_t group, uint64_t attr, uint64_t addr)
{
	struct kvm_vcpu *v = vm->vcpu[vcpu];
	void *val = (void *)(uintptr_t)addr;
	int r;

	if (op == OP_SET)
		r = __vcpu_device_attr_set(v, group, attr, val);
	else if (op == OP_GET)
		r = __vcpu_device_attr_get(v, group, attr, val);
	else
		r = __vcpu_has_device_attr(v, group, attr);
	return r ? -errno : 0;
}

static int ks_kvm_run(struct ks_vm *vm, int vcpu, void **run)
{
	struct kvm_vcpu *v = vm->vcpu[vcpu];

	*run = v->run;
	return __vcpu_run(v) ? -errno : 0;
}

static int ks_vgic_v3(struct ks_vm *vm, const char **what)
{
	uint64_t dist = KS_VGIC_DIST_BASE, redist = KS_VGIC_REDIST_BASE;
	int fd, r;

	*what = "KVM_CREATE_DEVICE";
	fd = __kvm_create_device(vm->vm, KVM_DEV_TYPE_ARM_VGIC_V3);
	if (fd < 0)
		return -errno;
	*what = "KVM_SET_DEVICE_ATTR";
	r = __kvm_device_attr_set(fd, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V3_ADDR_TYPE_DIST, &dist);
	if (!r)
		r = __kvm_device_attr_set(fd, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V3_ADDR_TYPE_REDIST, &redist);
	if (!r)
		r = __kvm_device_attr_set(fd, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT, NULL);
	r = r ? -errno : 0;
	close(fd);
	return r;
}

@CASES_RUN@

int main(void)
{
	int n = (int)(sizeof(cases) / sizeof(cases[0]));
	char why[200];

	ksft_print_header();
	built_in_numbers();
	__TEST_REQUIRE(H.feature_bit >= 0,
		       "KVM_ARM_VCPU_SPE is not defined: this tree's uapi has no SPE series;"
		       " build with EXTRA_CFLAGS=-DKVM_ARM_VCPU_SPE=N");
	__TEST_REQUIRE(H.exit_rlimit >= 0,
		       "KVM_EXIT_RLIMIT is not defined: this tree's uapi has no SPE series;"
		       " build with EXTRA_CFLAGS=-DKVM_EXIT_RLIMIT=N");
	H.page = (uint64_t)getpagesize();
	H.spe = probe_spe_with(1, why, sizeof(why));
	__TEST_REQUIRE(H.spe, "KVM has no SPE: %s", why);
	read_spus();
	ksft_print_msg("SPE feature bit %lld, KVM_EXIT_RLIMIT %lld, page size %llu, %d SPE units in sysfs\n",
		       H.feature_bit, H.exit_rlimit, (unsigned long long)H.page, H.nspu);

	ksft_set_plan(n);
	for (int k = 0; k < n; k++) {
		const struct kcase *c = &cases[k];
		char buf[512], msg[512] = "";
		const char *skip = skip_reason(c, buf, sizeof(buf));
		int status = skip ? SKIPPED : run_case(c, msg, sizeof(msg));

		if (status == SKIPPED) {
			ksft_test_result_skip("%s: %s\n", c->name, skip ? skip : msg);
		} else if (status == PASSED) {
			ksft_test_result_pass("%s: rule %s [%s]\n", c->name, c->rule, c->source);
		} else {
			ksft_print_msg("%s: %s\n", c->name, msg);
			ksft_test_result_fail("%s: rule %s [%s]\n", c->name, c->rule, c->source);
		}
	}
	ksft_finished();
}
