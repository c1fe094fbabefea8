/*
 * ---- running a case (shared by every harness) ----
 * The harness defined, before this point:
 *   struct ks_vm, with at least "int nv" (the VCPUs made so far);
 *   int ks_vm_create(struct ks_vm *vm)            0 or -errno
 *   void ks_vm_destroy(struct ks_vm *vm)          the VM and its VCPUs
 *   int ks_vcpu_add(struct ks_vm *vm, int spe)    VCPU vm->nv, with the SPE
 *                                                 feature when spe; 0 (nv grew)
 *                                                 or -errno
 *   int ks_vgic_v3(struct ks_vm *vm, const char **what)
 *                                                 an initialised in-kernel GICv3
 *                                                 (0 where there is none to
 *                                                 make); -errno, *what the call
 *   int ks_device_attr(struct ks_vm *vm, int vcpu, int op, uint32_t group,
 *                      uint64_t attr, uint64_t addr)
 *                                                 OP_SET/OP_GET/OP_HAS; 0 or -errno
 *   int ks_kvm_run(struct ks_vm *vm, int vcpu, void **run)
 *                                                 one KVM_RUN; 0 or -errno, *run
 *                                                 the VCPU's struct kvm_run
 */

static volatile sig_atomic_t alarmed;

static void on_alarm(int sig)
{
	(void)sig;
	alarmed = 1;
}

/* KVM_RUN, cut short by SIGALRM after KS_RUN_TIMEOUT_US: an interrupted run
 * counts as an exit (KVM_EXIT_INTR), as in kvmspe's runner. */
static int run_bounded(struct ks_vm *vm, int vcpu, uint32_t *reason, uint64_t *excess)
{
	struct sigaction sa, old;
	struct itimerval t, off;
	void *run = NULL;
	int r;

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
		r = ks_kvm_run(vm, vcpu, &run);
	while (r == -EINTR && !alarmed);
	setitimer(ITIMER_REAL, &off, NULL);
	sigaction(SIGALRM, &old, NULL);
	if (r == -EINTR) {
		*reason = KVM_EXIT_INTR;
		return 0;
	}
	if (r == 0 && run) {
		memcpy(reason, (char *)run + KS_EXIT_REASON_OFFSET, sizeof(*reason));
		memcpy(excess, (char *)run + KS_RLIMIT_EXCESS_OFFSET, sizeof(*excess));
	}
	return r;
}

enum status { PASSED, FAILED, SKIPPED };

/* Compare what one call gave (r, and the value read) with what the step expects. */
static int matches(const struct step *s, int r, uint64_t buf, int ibuf, uint32_t reason, uint64_t excess,
		   uint64_t expect, char *got, char *want, size_t len)
{
	if (s->op == OP_HAS) {
		if (r == 0 || r == -ENXIO)
			snprintf(got, len, "%s", r == 0 ? "True" : "False");
		else
			snprintf(got, len, "%s", errname(-r));
	} else if (r < 0) {
		snprintf(got, len, "%s", errname(-r));
	} else if (s->op == OP_GET) {
		snprintf(got, len, "%#llx",
			 s->vtype == VT_INT ? (unsigned long long)(int64_t)ibuf : (unsigned long long)buf);
	} else if (s->op == OP_RUN) {
		snprintf(got, len, "exit reason %u", reason);
	} else {
		snprintf(got, len, "ok");
	}
	switch (s->expect) {
	case EXP_ERRNO:
		snprintf(want, len, "%s", errname(s->expect_errno));
		return r == -s->expect_errno && s->op != OP_HAS;
	case EXP_HAS:
		snprintf(want, len, "%s", s->expect_has ? "True" : "False");
		return s->op == OP_HAS && (s->expect_has ? r == 0 : r == -ENXIO);
	case EXP_VALUE:
		snprintf(want, len, "%#llx",
			 s->vtype == VT_INT ? (unsigned long long)(int64_t)(int)(int64_t)expect
					    : (unsigned long long)expect);
		return r == 0 && strcmp(got, want) == 0;
	case EXP_EXIT_ANY:
		snprintf(want, len, "exit");
		return r == 0 && s->op == OP_RUN;
	case EXP_EXIT_RLIMIT:
		snprintf(want, len, "KVM_EXIT_RLIMIT excess=%#llx", (unsigned long long)expect);
		return r == 0 && s->op == OP_RUN && H.exit_rlimit >= 0 && reason == (uint32_t)H.exit_rlimit &&
		       excess == expect;
	}
	snprintf(want, len, "ok");
	return r == 0 && s->op != OP_HAS;
}

/* Perform the case's calls; on a difference describe it in msg, and give the
 * errno the call failed with (0 when it did not fail) in *err. */
static int execute(const struct kcase *c, struct ks_vm *vm, struct env *e, const struct rlimit *saved,
		   int *err, char *msg, size_t len)
{
	for (int i = 0; i < c->nsteps; i++) {
		const struct step *s = &c->steps[i];
		char got[96] = "", want[96] = "";
		uint64_t value = s->value >= 0 ? eval_expr(s->value, e) : 0;
		uint64_t expect = s->expect_value >= 0 ? eval_expr(s->expect_value, e) : 0;
		uint64_t buf = 0, addr = 0, excess = 0;
		uint32_t reason = 0;
		int ibuf = 0, r = 0;

		if (e->error) {
			snprintf(msg, len, "call %d of %d: %s: cannot compute %s (%s)", i + 1, c->nsteps, s->describe,
				 expr_texts[s->value >= 0 ? s->value : s->expect_value], e->error);
			return FAILED;
		}
		if (s->vcpu >= vm->nv && s->op != OP_SETRLIMIT && s->op != OP_CREATE_VCPU) {
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
		case OP_HAS:
			r = ks_device_attr(vm, s->vcpu, s->op, s->group, s->attr, s->op == OP_HAS ? 0 : addr);
			break;
		case OP_GET:
			buf = 0;
			ibuf = 0;
			r = ks_device_attr(vm, s->vcpu, s->op, s->group, s->attr, addr);
			break;
		case OP_RUN:
			r = run_bounded(vm, s->vcpu, &reason, &excess);
			break;
		case OP_SETRLIMIT:
			set_room(value, saved);
			break;
		case OP_CREATE_VCPU:
			if (vm->nv >= MAX_VCPUS) {
				snprintf(msg, len, "call %d: more than %d VCPUs", i + 1, MAX_VCPUS);
				return FAILED;
			}
			r = ks_vcpu_add(vm, s->spe && H.spe);
			break;
		default:
			snprintf(msg, len, "call %d: %s needs guest code, which this program has not", i + 1,
				 s->describe);
			return FAILED;
		}
		if (!matches(s, r, buf, ibuf, reason, excess, expect, got, want, sizeof(got))) {
			*err = r < 0 ? -r : 0;
			snprintf(msg, len, "call %d of %d: %s: expected %s, got %s", i + 1, c->nsteps, s->describe,
				 want, got);
			return FAILED;
		}
	}
	return PASSED;
}

/* One case on a fresh VM: its VCPUs, an in-kernel GICv3 unless the case asks
 * for a VM without one, RLIMIT_MEMLOCK as the case needs it (restored after). */
static int run_case(const struct kcase *c, char *msg, size_t len)
{
	struct ks_vm vm;
	struct rlimit saved;
	struct env e;
	int status, r, err = 0;

	make_env(c, &e);
	getrlimit(RLIMIT_MEMLOCK, &saved);
	if (c->memlock_room >= 0) {
		uint64_t room = eval_expr(c->memlock_room, &e);

		if (e.error) {
			snprintf(msg, len, "cannot compute the memlock room %s (%s)", expr_texts[c->memlock_room],
				 e.error);
			return FAILED;
		}
		set_room(room, &saved);
	} else {
		as_high_as_allowed(&saved);
	}
	r = ks_vm_create(&vm);
	if (r < 0) {
		snprintf(msg, len, "KVM_CREATE_VM: %s", strerror(-r));
		setrlimit(RLIMIT_MEMLOCK, &saved);
		return FAILED;
	}
	status = PASSED;
	while (c->vcpus[vm.nv] && status == PASSED) {
		r = ks_vcpu_add(&vm, c->vcpus[vm.nv] == '1' && H.spe);
		if (r < 0) {
			snprintf(msg, len, "cannot create the VCPUs: %s", strerror(-r));
			status = SKIPPED;
		}
	}
	if (status == PASSED && c->irqchip) {
		const char *what = "";

		r = ks_vgic_v3(&vm, &what);
		if (r < 0 && c->needs_irqchip && H.spe) {
			snprintf(msg, len,
				 "needs an in-kernel GICv3 for the SPE interrupt, and the host refused one (%s: %s)",
				 what, strerror(-r));
			status = SKIPPED;
		}
	}
	if (status == PASSED)
		status = execute(c, &vm, &e, &saved, &err, msg, len);
	ks_vm_destroy(&vm);
	setrlimit(RLIMIT_MEMLOCK, &saved);
	if (status == FAILED && err == ENOMEM && c->memlock_room < 0 && saved.rlim_max != RLIM_INFINITY) {
		/* It did not run as written: the case has no limit, and this one may not be lifted. */
		snprintf(msg, len,
			 "needs RLIMIT_MEMLOCK unlimited (the case has no limit); this process's hard limit is"
			 " %llu bytes and it may not raise it (CAP_SYS_RESOURCE)",
			 (unsigned long long)saved.rlim_max);
		status = SKIPPED;
	}
	return status;
}

/* HAS KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE on a fresh VCPU (with the SPE feature
 * when spe_feature): does the host do SPE? On no, why in why. */
static int probe_spe_with(int spe_feature, char *why, size_t len)
{
	struct ks_vm vm;
	int r = ks_vm_create(&vm), spe = 0;

	if (r < 0) {
		snprintf(why, len, "KVM_CREATE_VM: %s", errname(-r));
		return 0;
	}
	r = ks_vcpu_add(&vm, spe_feature);
	if (r < 0) {
		snprintf(why, len, "a VCPU with the SPE feature (bit %lld): %s", H.feature_bit,
			 errname(-r));
	} else {
		r = ks_device_attr(&vm, 0, OP_HAS, KVM_ARM_VCPU_SPE_CTRL, KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE, 0);
		spe = r == 0;
		if (!spe)
			snprintf(why, len, "HAS KVM_ARM_VCPU_SPE_CTRL/KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE: %s",
				 errname(-r));
	}
	ks_vm_destroy(&vm);
	return spe;
}
