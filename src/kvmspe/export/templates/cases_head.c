/*
 * ---- kvmspe's case language in C (shared by every harness) ----
 * The values of the cases' expressions on this host, the case table's types,
 * what the host offers and why a case cannot run on it: as kvmspe's runner
 * (src/kvmspe/conformance/runner.py) decides. A harness defines how a VM,
 * a VCPU, a device attribute call and a KVM_RUN are made.
 */

#define MAX_SPUS 64
#define MAX_VCPUS 8

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
	const char *name, *rule, *source;
	int spe, spus, spu_limit, page_size, guest, irqchip, needs_irqchip;
	const char *vcpus; /* per VCPU: '1' with the SPE feature, '0' without */
	int memlock_room;  /* expression id, -1: leave RLIMIT_MEMLOCK alone */
	const struct step *steps;
	int nsteps;
};

struct host {
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

static struct host H;

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

/* RLIMIT_MEMLOCK for a case without a limit of its own: unlimited where the
 * process may (CAP_SYS_RESOURCE), else the soft limit at the hard one. */
static void as_high_as_allowed(const struct rlimit *saved)
{
	struct rlimit r = { RLIM_INFINITY, RLIM_INFINITY };

	if (setrlimit(RLIMIT_MEMLOCK, &r)) {
		r.rlim_cur = saved->rlim_max;
		r.rlim_max = saved->rlim_max;
		setrlimit(RLIMIT_MEMLOCK, &r);
	}
}

/* The numbers the series does not publish, as the build gave them (-1: not given). */
static void built_in_numbers(void)
{
	H.feature_bit = -1;
	H.exit_rlimit = -1;
#if KVMSPE_HAVE_KVM_ARM_VCPU_SPE
	H.feature_bit = KVM_ARM_VCPU_SPE;
#endif
#if KVMSPE_HAVE_KVM_EXIT_RLIMIT
	H.exit_rlimit = KVM_EXIT_RLIMIT;
#endif
}
