/*
 * fs/ctl_input.c — what a user writes into the .kvfs control files, parsed.
 *
 * Pure functions apart from the fault seam that a fault spec arms: the
 * control files (ctl.c) and the remote tier's `where` (remote.c) call them
 * on the bytes of a write, and tests/fuzz/ (fuzz_fault.c, fuzz_where.c)
 * drives them without a daemon. A write is untrusted: `.kvfs/where` is
 * open to every user.
 */
#include <errno.h>
#include <jansson.h>
#include <string.h>

#include "core/fault.h"
#include "fs/fs_i.h"

int ctl_fault_input(const char *buf, size_t len)
{
	char spec[512];

	if (len == 0 || len >= sizeof(spec))
		return -EINVAL;
	memcpy(spec, buf, len);
	spec[len] = '\0';
	if (spec[len - 1] == '\n')
		spec[len - 1] = '\0';
	return kvfs_fault_parse(spec);
}

int ctl_where_input(const char *req, size_t len, char *path, size_t cap)
{
	json_t *j;

	while (len && (req[len - 1] == '\n' || req[len - 1] == '\0'))
		len--;
	while (len && req[0] == '/')
		req++, len--;
	if (len == 0 || len >= cap)
		return -EINVAL;
	/* A NUL would cut the path short, and the answer is JSON: UTF-8 only. */
	if (memchr(req, '\0', len))
		return -EINVAL;
	j = json_stringn(req, len);
	if (!j)
		return -EINVAL;
	json_decref(j);
	memcpy(path, req, len);
	path[len] = '\0';
	return 0;
}
