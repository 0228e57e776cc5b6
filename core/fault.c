/*
 * core/fault.c — the fault seam.
 *
 * State is a fixed table of atomic slots, one per operation; arming and
 * firing are lock-free so the seam can sit on I/O completion paths. A slot
 * counts down on each call; the call that takes it from 1 to 0 fails (and a
 * sticky slot re-arms itself at 1 so every later call fails too).
 */
#include "core/fault.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct kvfs_fault_slot kvfs_fault_slots[KVFS_FAULT_NR];

static const char *const fault_names[KVFS_FAULT_NR] = {
	[KVFS_FAULT_ARENA] = "arena",
	[KVFS_FAULT_CAT_WRITE] = "cat_write",
	[KVFS_FAULT_NVME_READ] = "nvme_read",
	[KVFS_FAULT_NVME_WRITE] = "nvme_write",
	[KVFS_FAULT_NVME_FSYNC] = "nvme_fsync",
	[KVFS_FAULT_NET_READ] = "net_read",
	[KVFS_FAULT_GPU_COPY] = "gpu_copy",
	[KVFS_FAULT_BACKING_OPEN] = "backing_open",
};

static const struct {
	const char *name;
	int err;
} errno_names[] = {
	{"EIO", EIO},         {"ENOSPC", ENOSPC}, {"ENOMEM", ENOMEM}, {"EAGAIN", EAGAIN},
	{"EBADMSG", EBADMSG}, {"EROFS", EROFS},   {"EDQUOT", EDQUOT}, {"ETIMEDOUT", ETIMEDOUT},
	{"ECONNRESET", ECONNRESET}, {"EPERM", EPERM}, {"EOPNOTSUPP", EOPNOTSUPP},
};

const char *kvfs_fault_name(enum kvfs_fault_op op)
{
	return op < KVFS_FAULT_NR ? fault_names[op] : "?";
}

int kvfs_fault_fire(enum kvfs_fault_op op)
{
	struct kvfs_fault_slot *s = &kvfs_fault_slots[op];
	int64_t left = atomic_load(&s->countdown);

	while (left > 0) {
		if (atomic_compare_exchange_weak(&s->countdown, &left, left - 1)) {
			if (left != 1)
				return 0;
			if (atomic_load(&s->sticky))
				atomic_store(&s->countdown, 1);
			atomic_fetch_add(&s->hits, 1);
			return -atomic_load(&s->err);
		}
	}
	return 0;
}

void kvfs_fault_arm(enum kvfs_fault_op op, uint64_t nth, int err, bool sticky)
{
	struct kvfs_fault_slot *s = &kvfs_fault_slots[op];

	atomic_store(&s->countdown, 0);
	atomic_store(&s->err, err);
	atomic_store(&s->sticky, sticky);
	atomic_store(&s->countdown, (int64_t)nth);
}

/* A field [s, s + n) equal to the NUL-terminated @word? */
static bool field_is(const char *s, size_t n, const char *word)
{
	return strlen(word) == n && memcmp(s, word, n) == 0;
}

/* An errno name or number 1..4095. @return it, or -EINVAL. */
static int parse_errno(const char *s, size_t n)
{
	int v = 0;

	for (size_t i = 0; i < sizeof(errno_names) / sizeof(errno_names[0]); i++)
		if (field_is(s, n, errno_names[i].name))
			return errno_names[i].err;
	if (n == 0 || n > 4)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		v = v * 10 + (s[i] - '0');
	}
	return v > 0 && v < 4096 ? v : -EINVAL;
}

/* Decimal digits only, no sign, at most INT64_MAX (the countdown is signed). */
static int parse_count(const char *s, size_t n, uint64_t *out)
{
	uint64_t v = 0;

	if (n == 0)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		if (v > ((uint64_t)INT64_MAX - (uint64_t)(s[i] - '0')) / 10)
			return -EINVAL;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*out = v;
	return 0;
}

/* One "op:nth:errno[:sticky]" item in [s, s + n). */
static int parse_item(const char *s, size_t n, struct kvfs_fault_spec *out)
{
	const char *f[4];
	size_t fl[4];
	int nf = 0, op = -1;
	const char *p = s, *end = s + n;

	for (;;) {
		const char *colon = memchr(p, ':', (size_t)(end - p));
		const char *stop = colon ? colon : end;

		if (nf == 4)
			return -EINVAL; /* extra fields */
		f[nf] = p;
		fl[nf++] = (size_t)(stop - p);
		if (!colon)
			break;
		p = colon + 1;
	}
	if (nf < 3)
		return -EINVAL;
	for (int i = 0; i < KVFS_FAULT_NR; i++)
		if (field_is(f[0], fl[0], fault_names[i]))
			op = i;
	if (op < 0 || parse_count(f[1], fl[1], &out->nth))
		return -EINVAL;
	out->op = (enum kvfs_fault_op)op;
	out->err = parse_errno(f[2], fl[2]);
	if (out->err < 0)
		return -EINVAL;
	out->sticky = nf == 4;
	if (nf == 4 && !field_is(f[3], fl[3], "sticky"))
		return -EINVAL;
	return 0;
}

int kvfs_fault_parse_spec(const char *spec, size_t len, struct kvfs_fault_spec *out, int max)
{
	const char *p = spec, *end = spec + len;
	int n = 0;

	if (len == 0)
		return -EINVAL;
	for (;;) {
		const char *comma = memchr(p, ',', (size_t)(end - p));
		const char *stop = comma ? comma : end;

		if (n == max || memchr(p, '\0', (size_t)(stop - p)) ||
		    parse_item(p, (size_t)(stop - p), &out[n]))
			return -EINVAL;
		n++;
		if (!comma)
			return n;
		p = comma + 1;
	}
}

int kvfs_fault_parse(const char *spec)
{
	struct kvfs_fault_spec parsed[KVFS_FAULT_SPEC_MAX];
	int n = kvfs_fault_parse_spec(spec, strlen(spec), parsed, KVFS_FAULT_SPEC_MAX);

	if (n < 0)
		return n;
	for (int i = 0; i < n; i++)
		kvfs_fault_arm(parsed[i].op, parsed[i].nth, parsed[i].err, parsed[i].sticky);
	return 0;
}
