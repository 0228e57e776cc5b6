/*
 * tests/unit/util_test.c — option values (core/util.c) and fault specs
 * (core/fault.c): the cases tests/fuzz/fuzz_size.c and fuzz_fault.c found
 * or guard, written down so they never regress.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/fault.h"
#include "core/util.h"

static void test_sizes(void **state)
{
	uint64_t v;

	(void)state;
	assert_int_equal(kvfs_parse_size("4096", &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(kvfs_parse_size("8G", &v), 0);
	assert_int_equal(v, 8ull << 30);
	assert_int_equal(kvfs_parse_size("1TiB", &v), 0);
	assert_int_equal(v, 1ull << 40);
	assert_int_equal(kvfs_parse_size("15E", &v), 0);
	assert_int_equal(kvfs_parse_size("16E", &v), -ERANGE);
	assert_int_equal(kvfs_parse_size("18446744073709551616", &v), -ERANGE);
	assert_int_equal(kvfs_parse_size("-1", &v), -EINVAL);
	assert_int_equal(kvfs_parse_size("4 G", &v), -EINVAL);
	assert_int_equal(kvfs_parse_size("4GG", &v), -EINVAL);
	assert_int_equal(kvfs_parse_size("", &v), -EINVAL);
}

static void test_seconds(void **state)
{
	double d = 7;

	(void)state;
	assert_int_equal(kvfs_parse_seconds("0.5", &d), 0);
	assert_true(d == 0.5);
	assert_int_equal(kvfs_parse_seconds("31536000", &d), 0);
	d = 7;
	/* strtod reads "nan", and NaN fails every comparison: it used to pass */
	assert_int_equal(kvfs_parse_seconds("nan", &d), -EINVAL);
	assert_int_equal(kvfs_parse_seconds("NAN", &d), -EINVAL);
	assert_int_equal(kvfs_parse_seconds("inf", &d), -EINVAL);
	assert_int_equal(kvfs_parse_seconds("-1", &d), -EINVAL);
	assert_int_equal(kvfs_parse_seconds("31536001", &d), -EINVAL);
	assert_int_equal(kvfs_parse_seconds("", &d), -EINVAL);
	assert_int_equal(kvfs_parse_seconds("1s", &d), -EINVAL);
	assert_true(d == 7);
}

static void test_fault_specs(void **state)
{
	(void)state;
	assert_int_equal(kvfs_fault_parse("nvme_read:3:EIO"), 0);
	assert_int_equal(atomic_load(&kvfs_fault_slots[KVFS_FAULT_NVME_READ].countdown), 3);
	kvfs_fault_arm(KVFS_FAULT_NVME_READ, 0, 0, false);
	assert_int_equal(kvfs_fault_parse("nvme_read:9223372036854775807:EIO:sticky"), 0);
	kvfs_fault_arm(KVFS_FAULT_NVME_READ, 0, 0, false);
	/*
	 * Counts that cannot be honoured were armed as a negative countdown
	 * that never fires; a fifth field was ignored.
	 */
	static const char *const bad[] = {
		"nvme_read:-1:EIO",
		"nvme_read:-12:5",
		"nvme_read:+1:EIO",
		"nvme_read: 1:EIO",
		"nvme_read:9223372036854775808:EIO",
		"nvme_read:18446744073709551616:EIO",
		"nvme_read:1:EIO:sticky:extra",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(kvfs_fault_parse(bad[i]), -EINVAL);
		for (int op = 0; op < KVFS_FAULT_NR; op++)
			assert_int_equal(atomic_load(&kvfs_fault_slots[op].countdown), 0);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sizes),
		cmocka_unit_test(test_seconds),
		cmocka_unit_test(test_fault_specs),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
