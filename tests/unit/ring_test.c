/*
 * tests/unit/ring_test.c — decoding of fast-path requests (core/ring.c):
 * registration names in canonical form only, the ring header check on a
 * memory smaller than a header, spans at the edge of the payload area, and
 * namespace paths. tests/fuzz/fuzz_ring.c explores the same functions at
 * random; these are the cases that must never regress.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/ring.h"

static void test_reg_names(void **state)
{
	uint32_t tgid, id;
	int ring;

	(void)state;
	assert_int_equal(kvfs_ring_reg_name("ring.1234.0", &ring, &tgid, &id), 0);
	assert_int_equal(ring, KVFS_REG_RING);
	assert_int_equal(tgid, 1234);
	assert_int_equal(id, 0);
	assert_int_equal(kvfs_ring_reg_name("buf.99.4294967295", &ring, &tgid, &id), 0);
	assert_int_equal(ring, KVFS_REG_BUF);
	assert_int_equal(id, UINT32_MAX);
	assert_int_equal(kvfs_ring_reg_name("buf.2147483647.1", &ring, &tgid, &id), 0);
	assert_int_equal(kvfs_ring_reg_name("dev.7.3", &ring, &tgid, &id), 0);
	assert_int_equal(ring, KVFS_REG_DEV);
	/*
	 * One registration, one name: sscanf("%lu") took signs, spaces and
	 * leading zeros, so "buf.+99.7" and "buf.099.7" registered a second
	 * buffer 7 of process 99 beside "buf.99.7".
	 */
	static const char *const bad[] = {
		"buf.+99.7", "buf.099.7", "buf. 99.7", "buf.99.07", "buf.99.+7", "buf.99. 7",
		"buf.-1.7",  "buf.0.7",   "buf.2147483648.1", "buf.99.4294967296", "buf.99.7 ",
		"buf.99.7.", "buf.99",    "buf..7", "ring.1.2x", "rings.1.2", "Ring.1.2", "",
		"dev.+7.3",  "dev.07.3",  "devs.7.3",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(kvfs_ring_reg_name(bad[i], &ring, &tgid, &id), -EINVAL);
}

static void test_check_small_memory(void **state)
{
	struct kvfs_ring_geom g;
	uint8_t *mem = malloc(16);

	(void)state;
	/* the size is checked before any field of the header is read */
	memset(mem, 0, 16);
	assert_int_equal(kvfs_ring_check(mem, 16, &g), -EPROTO);
	free(mem);
}

static void test_spans(void **state)
{
	(void)state;
	assert_true(kvfs_ring_span_ok(0, 0, 0));
	assert_true(kvfs_ring_span_ok(10, 0, 10));
	assert_true(kvfs_ring_span_ok(4, 6, 10));
	assert_false(kvfs_ring_span_ok(4, 7, 10));
	assert_false(kvfs_ring_span_ok(11, 0, 10));
	assert_false(kvfs_ring_span_ok(UINT64_MAX, 2, 10));
	assert_false(kvfs_ring_span_ok(2, UINT64_MAX, 10));
}

static void test_ns_paths(void **state)
{
	static _Alignas(64) uint8_t mem[4096];
	struct kvfs_ring_geom g = {.data_off = 1024, .data_bytes = 1024};
	struct kvfs_ring_sqe e = {.op = KVFS_OP_OPEN_NS};
	char path[KVFS_RING_PATH_MAX];
	static const char *const good[] = {"a", "models/llama", "a//b/", ".kvfsx/a", "a/.kvfs"};
	static const char *const bad[] = {"/a", ".", "a/./b", "../etc", "a/..", ".kvfs",
					  ".kvfs/iovs", "//.kvfs"};

	(void)state;
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		strcpy((char *)mem + 1024, good[i]);
		e.args[1] = strlen(good[i]);
		assert_int_equal(kvfs_ring_ns_path(&g, mem, &e, ".kvfs", path), 0);
		assert_string_equal(path, good[i]);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		strcpy((char *)mem + 1024, bad[i]);
		e.args[1] = strlen(bad[i]);
		assert_int_equal(kvfs_ring_ns_path(&g, mem, &e, ".kvfs", path), -EINVAL);
	}
	/* a NUL inside, a name over NAME_MAX, outside the payload area */
	memcpy(mem + 1024, "a\0b", 3);
	e.args[1] = 3;
	assert_int_equal(kvfs_ring_ns_path(&g, mem, &e, ".kvfs", path), -EINVAL);
	memset(mem + 1024, 'x', 256);
	e.args[1] = 256;
	assert_int_equal(kvfs_ring_ns_path(&g, mem, &e, ".kvfs", path), -EINVAL);
	e.args[1] = 255;
	assert_int_equal(kvfs_ring_ns_path(&g, mem, &e, ".kvfs", path), 0);
	e.args[0] = 1000;
	e.args[1] = 25;
	assert_int_equal(kvfs_ring_ns_path(&g, mem, &e, ".kvfs", path), -EINVAL);
}

static void test_batches(void **state)
{
	static _Alignas(64) uint8_t mem[4096];
	struct kvfs_ring_geom g = {.data_off = 1024, .data_bytes = 1024};
	struct kvfs_ring_sqe e = {.op = KVFS_OP_MATCH};
	const uint8_t *p;
	uint32_t n;

	(void)state;
	e.args[0] = 1024 - 64;
	e.args[1] = 2;
	assert_int_equal(kvfs_ring_match_keys(&g, mem, &e, &p, &n), 0);
	assert_ptr_equal(p, mem + 1024 + 1024 - 64);
	e.args[1] = 3;
	assert_int_equal(kvfs_ring_match_keys(&g, mem, &e, &p, &n), -EINVAL);
	e.args[1] = (uint64_t)1 << 59; /* n * 32 wraps to 0: E2BIG first */
	assert_int_equal(kvfs_ring_match_keys(&g, mem, &e, &p, &n), -E2BIG);
	e.op = KVFS_OP_READ;
	e.args[1] = 0;
	e.args[2] = 32;
	assert_int_equal(kvfs_ring_read_descs(&g, mem, &e, &p, &n), 0);
	e.args[2] = 33;
	assert_int_equal(kvfs_ring_read_descs(&g, mem, &e, &p, &n), -EINVAL);
	e.args[2] = KVFS_RING_MAX_DESCS + 1;
	assert_int_equal(kvfs_ring_read_descs(&g, mem, &e, &p, &n), -E2BIG);
	e.op = KVFS_OP_SAVE;
	e.args[1] = 100;
	e.args[2] = 0;
	assert_int_equal(kvfs_ring_save_range(&e, 4096), -EFAULT);
	e.args[2] = 3996;
	assert_int_equal(kvfs_ring_save_range(&e, 4096), 0);
	e.args[2] = 3997;
	assert_int_equal(kvfs_ring_save_range(&e, 4096), -EFAULT);
	e.args[3] = 1024 - 32;
	assert_non_null(kvfs_ring_save_key(&g, mem, &e));
	e.args[3] = 1024 - 31;
	assert_null(kvfs_ring_save_key(&g, mem, &e));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reg_names),
		cmocka_unit_test(test_check_small_memory),
		cmocka_unit_test(test_spans),
		cmocka_unit_test(test_ns_paths),
		cmocka_unit_test(test_batches),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
