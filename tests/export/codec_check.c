/* Checks kvmspe.h's MaxBuffSize codec against a table kvmspe wrote.
 * Lines: "D field valid size" and
 * "S size representable field down4K up4K down16K up16K down64K up64K",
 * numbers in hex, "-" where there is none. Exit 0 when every line agrees. */
#include "kvmspe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long mismatches;

static int get(const char *tok, uint64_t *v)
{
	if (strcmp(tok, "-") == 0)
		return 0;
	*v = strtoull(tok, NULL, 16);
	return 1;
}

static void check(unsigned long line, const char *what, int want_ok, uint64_t want, int ok, uint64_t got)
{
	if (want_ok == ok && (!ok || want == got))
		return;
	if (mismatches++ < 10)
		printf("line %lu: %s: expected %s%llx, got %s%llx\n", line, what, want_ok ? "" : "none ",
		       (unsigned long long)(want_ok ? want : 0), ok ? "" : "none ",
		       (unsigned long long)(ok ? got : 0));
}

int main(int argc, char **argv)
{
	static const uint64_t pages[3] = { KVMSPE_PAGE_SIZE_4K, KVMSPE_PAGE_SIZE_16K, KVMSPE_PAGE_SIZE_64K };
	char buf[512], *tok[12];
	unsigned long line = 0;
	FILE *f;

	if (argc != 2 || !(f = fopen(argv[1], "r"))) {
		fprintf(stderr, "usage: codec_check TABLE\n");
		return 2;
	}
	while (fgets(buf, sizeof(buf), f)) {
		int n = 0;
		uint64_t a = 0, b = 0, got = 0;
		uint16_t field;

		line++;
		for (char *p = strtok(buf, " \n"); p && n < 12; p = strtok(NULL, " \n"))
			tok[n++] = p;
		if (n == 4 && tok[0][0] == 'D') {
			uint64_t fv, valid, size;
			int ok;

			get(tok[1], &fv);
			get(tok[2], &valid);
			get(tok[3], &size);
			got = 0;
			ok = kvmspe_maxbuffsize_decode((uint32_t)fv, &got);
			check(line, "decode", (int)valid, size, ok, got);
		} else if (n == 10 && tok[0][0] == 'S') {
			uint64_t size, rep;
			int ok, want;

			get(tok[1], &size);
			get(tok[2], &rep);
			check(line, "is_representable", 1, rep, 1, kvmspe_maxbuffsize_is_representable(size));
			field = 0;
			ok = kvmspe_maxbuffsize_encode(size, &field);
			want = get(tok[3], &a);
			check(line, "encode", want, a, ok, field);
			for (int i = 0; i < 3; i++) {
				ok = kvmspe_maxbuffsize_round_down(size, pages[i], &got);
				want = get(tok[4 + 2 * i], &a);
				check(line, "round_down", want, a, ok, got);
				ok = kvmspe_maxbuffsize_round_up(size, pages[i], &got);
				want = get(tok[5 + 2 * i], &b);
				check(line, "round_up", want, b, ok, got);
			}
		} else {
			printf("line %lu: not understood\n", line);
			mismatches++;
		}
	}
	fclose(f);
	/* A page size that is not 4, 16 or 64 KiB is refused. */
	{
		uint64_t out;

		if (kvmspe_maxbuffsize_round_down(4096, 8192, &out) || kvmspe_maxbuffsize_round_up(4096, 0, &out)) {
			printf("a page size of 8 KiB or 0 was accepted\n");
			mismatches++;
		}
	}
	printf("%lu lines, %lu mismatches\n", line, mismatches);
	return mismatches ? 1 : 0;
}
