/*
 * tests/fuzz/fuzz_size.c — the daemon's option values: sizes (--dram,
 * --nvme DIR:SIZE, --lend, --read-ahead, --page-size: kvfs_parse_size),
 * durations (--entry-timeout and the other timeouts: kvfs_parse_seconds),
 * the --cluster URL (rdma_rconn_check_url), log levels, and the dtype and
 * kind names of a namespace layout.
 *
 * Input: the text of one option value (a NUL ends it, as in argv).
 *
 * Oracles besides the sanitizers: a size that parses equals what a plain
 * reference computes from its digits and unit (binary units, optional "B"
 * or "iB" after a unit, no overflow) and nothing else parses; a
 * duration that parses is finite and within a year; a name that parses is
 * the canonical name of what it parsed to.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "core/log.h"
#include "core/util.h"
#include "kvfs/format.h"
#include "rdma/rdma_i.h"
#include "tests/fuzz/fuzz.h"

/* The size grammar, written out again as simply as possible. */
static int ref_size(const char *s, uint64_t *out)
{
	static const char units[] = "KMGTPE";
	unsigned __int128 v = 0;
	const char *p = s;
	int shift = 0;

	if (*p < '0' || *p > '9')
		return -EINVAL;
	while (*p >= '0' && *p <= '9') {
		v = v * 10 + (unsigned)(*p++ - '0');
		if (v > UINT64_MAX)
			v = (unsigned __int128)UINT64_MAX + 1; /* saturate: too large either way */
	}
	if (*p) {
		const char *u = memchr(units, *p & ~0x20, 6);

		if (!u || !(*p & 0x40))
			return -EINVAL;
		shift = 10 * (int)(u - units + 1);
		p++;
		if (strcmp(p, "") && strcmp(p, "B") && strcmp(p, "b") && strcmp(p, "iB"))
			return -EINVAL;
	}
	if (v > UINT64_MAX || (v << shift) > UINT64_MAX)
		return -ERANGE;
	*out = (uint64_t)(v << shift);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1), fmt[64];
	uint64_t v = 0, want = 0;
	double secs = -1;
	int rc, wrc, k;

	CHECK(s);
	memcpy(s, data, size);
	s[size] = '\0';

	rc = kvfs_parse_size(s, &v);
	wrc = ref_size(s, &want);
	CHECK((rc == 0) == (wrc == 0));
	CHECK(rc || v == want);
	CHECK(rc == 0 || rc == -EINVAL || rc == -ERANGE);
	if (rc == 0) {
		CHECK(kvfs_fmt_size(v, fmt, sizeof(fmt)) == fmt);
		CHECK(strlen(fmt) < sizeof(fmt) && strlen(fmt) > 0);
	}

	if (kvfs_parse_seconds(s, &secs) == 0)
		CHECK(isfinite(secs) && secs >= 0 && secs <= 86400.0 * 365);
	else
		CHECK(secs == -1);

	{
		char err[256];

		err[0] = '\0';
		k = rdma_rconn_check_url(s, err, sizeof(err));
		CHECK(k == 0 || k == -EINVAL || k == -ENOMEM);
		CHECK(memchr(err, '\0', sizeof(err)) != NULL);
		CHECK(k != -EINVAL || err[0]);
	}
	k = kvfs_log_level_parse(s);
	CHECK(k == -EINVAL || (k >= 0 && k <= KVFS_LOG_DEBUG));
	k = kvfs_dtype_parse(s);
	if (k >= 0)
		CHECK(kvfs_dtype_size((unsigned)k) && strcmp(kvfs_dtype_name((unsigned)k), s) == 0);
	k = kvfs_kind_parse(s);
	if (k >= 0)
		CHECK(strcmp(kvfs_kind_name((unsigned)k), s) == 0);
	free(s);
	return 0;
}
