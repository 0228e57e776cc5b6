/*
 * tests/fuzz/fuzz_where.c — a write to `.kvfs/where` (ctl_where_path()),
 * a file any user of the mount may write: the path whose holders in the
 * cluster the daemon then looks up and renders as JSON.
 *
 * Input: the bytes of the write.
 *
 * Oracles besides the sanitizers: a path that is accepted is all of what
 * was written but leading '/'s and a trailing newline (no byte dropped, no
 * NUL inside it, so a C string holds it whole), and valid UTF-8 so the
 * JSON answer can carry it (jansson refuses anything else); then the same
 * JSON object the daemon builds is built and must hold the path.
 */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <string.h>

#include "fs/fs_i.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size ? size : 1), path[PATH_MAX];
	json_t *root, *p;
	int rc;

	CHECK(buf);
	memcpy(buf, data, size);
	rc = ctl_where_path(buf, size, path, sizeof(path));
	CHECK(rc == 0 || rc == -EINVAL);
	if (rc == 0) {
		size_t n = strlen(path);

		size_t lo = 0;

		CHECK(n > 0 && n < sizeof(path) && path[0] != '/');
		/* what was written, less leading '/'s and trailing newline or NULs */
		while (lo < size && buf[lo] == '/')
			lo++;
		CHECK(lo + n <= size && memcmp(buf + lo, path, n) == 0);
		for (size_t k = lo + n; k < size; k++)
			CHECK(buf[k] == '\n' || buf[k] == '\0');
		root = json_object();
		p = json_string(path);
		CHECK(p != NULL); /* NULL: not UTF-8, the answer would drop the path */
		CHECK(json_object_set_new(root, "path", p) == 0);
		CHECK(strcmp(json_string_value(json_object_get(root, "path")), path) == 0);
		json_decref(root);
	}
	free(buf);
	return 0;
}
