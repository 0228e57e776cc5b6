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
};

static const struct {
	const char *name;
	int err;
} errno_names[] = {
	{"EIO", EIO},         {"ENOSPC", ENOSPC}, {"ENOMEM", ENOMEM}, {"EAGAIN", EAGAIN},
	{"EBADMSG", EBADMSG}, {"EROFS", EROFS},   {"EDQUOT", EDQUOT}, {"ETIMEDOUT", ETIMEDOUT},
	{"ECONNRESET", ECONNRESET},
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

static int parse_errno(const char *s)
{
	char *end;
	long v;

	for (size_t i = 0; i < sizeof(errno_names) / sizeof(errno_names[0]); i++)
		if (strcmp(s, errno_names[i].name) == 0)
			return errno_names[i].err;
	v = strtol(s, &end, 10);
	if (*s && !*end && v > 0 && v < 4096)
		return (int)v;
	return -EINVAL;
}

int kvfs_fault_parse(const char *spec)
{
	struct {
		int op;
		uint64_t nth;
		int err;
		bool sticky;
	} parsed[16];
	int n = 0, rc = -EINVAL;
	char *copy, *item, *save = NULL;

	copy = strdup(spec);
	if (!copy)
		return -ENOMEM;
	for (item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
		char *f[4] = {0}, *s2 = NULL, *end;
		int nf = 0;

		for (char *t = strtok_r(item, ":", &s2); t; t = strtok_r(NULL, ":", &s2)) {
			if (nf == 4)
				goto out; /* a fifth field */
			f[nf++] = t;
		}
		if (nf < 3 || n == 16)
			goto out;
		parsed[n].op = -1;
		for (int i = 0; i < KVFS_FAULT_NR; i++)
			if (strcmp(f[0], fault_names[i]) == 0)
				parsed[n].op = i;
		/* digits only (strtoull would take "-1"), and a count that fits the slot */
		if (f[1][0] < '0' || f[1][0] > '9')
			goto out;
		errno = 0;
		parsed[n].nth = strtoull(f[1], &end, 10);
		if (errno == ERANGE || parsed[n].nth > INT64_MAX)
			goto out;
		parsed[n].err = parse_errno(f[2]);
		parsed[n].sticky = nf == 4 && strcmp(f[3], "sticky") == 0;
		if (parsed[n].op < 0 || *end || !*f[1] || parsed[n].err < 0 ||
		    (nf == 4 && !parsed[n].sticky))
			goto out;
		n++;
	}
	for (int i = 0; i < n; i++)
		kvfs_fault_arm(parsed[i].op, parsed[i].nth, parsed[i].err, parsed[i].sticky);
	rc = 0;
out:
	free(copy);
	return rc;
}
