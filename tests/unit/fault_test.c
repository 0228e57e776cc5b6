/*
 * tests/unit/fault_test.c — the fault seam's spec parser refuses what it
 * cannot honour (a sign, an overflow past 2^63, extra or empty fields, a
 * NUL) instead of arming a fault that never fires, and an armed fault fires
 * on the Nth call.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/fault.h"

static int parse(const char *s, struct kvfs_fault_spec *out)
{
	return kvfs_fault_parse_spec(s, strlen(s), out, KVFS_FAULT_SPEC_MAX);
}

static void test_good_specs(void **state)
{
	struct kvfs_fault_spec sp[KVFS_FAULT_SPEC_MAX];

	(void)state;
	assert_int_equal(parse("nvme_read:1:EIO", sp), 1);
	assert_int_equal(sp[0].op, KVFS_FAULT_NVME_READ);
	assert_int_equal(sp[0].nth, 1);
	assert_int_equal(sp[0].err, EIO);
	assert_false(sp[0].sticky);
	assert_int_equal(parse("nvme_write:3:28:sticky,cat_write:0:ENOSPC", sp), 2);
	assert_int_equal(sp[0].err, 28);
	assert_true(sp[0].sticky);
	assert_int_equal(sp[1].op, KVFS_FAULT_CAT_WRITE);
	assert_int_equal(sp[1].nth, 0);
	assert_int_equal(parse("arena:9223372036854775807:EIO", sp), 1); /* 2^63 - 1 */
	assert_int_equal(sp[0].nth, INT64_MAX);
}

static void test_bad_specs(void **state)
{
	static const char *const bad[] = {
		"",
		"nvme_read:-1:EIO",                   /* a sign */
		"nvme_read:+1:EIO",
		"nvme_read:9223372036854775808:EIO",  /* 2^63: the countdown is signed */
		"nvme_read:18446744073709551616:EIO", /* past 2^64 */
		"nvme_read:99999999999999999999999:EIO",
		"nvme_read:1:EIO:sticky:extra", /* extra fields */
		"nvme_read:1:EIO:x",
		"nvme_read:1:EIO:",
		"nvme_read::EIO",
		"nvme_read:1",
		"nvme_read:1:",
		"nvme_read:1:0",
		"nvme_read:1:4096",
		"nvme_read:1:-5",
		"nvme_read:1x:EIO",
		"nvme_read: 1:EIO",
		"nope:1:EIO",
		"nvme_read:1:EIO,",  /* an empty item */
		",nvme_read:1:EIO",
		"nvme_read:1:EIO,,cat_write:1:EIO",
	};
	struct kvfs_fault_spec sp[KVFS_FAULT_SPEC_MAX];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (parse(bad[i], sp) != -EINVAL)
			fail_msg("accepted '%s'", bad[i]);
	/* an embedded NUL is not the end of the spec */
	assert_int_equal(kvfs_fault_parse_spec("nvme_read:1:EIO\0x", 17, sp, 4), -EINVAL);
	/* more items than room */
	assert_int_equal(kvfs_fault_parse_spec("cat_write:1:EIO,cat_write:2:EIO", 31, sp, 1),
			 -EINVAL);
}

static void test_bad_spec_arms_nothing(void **state)
{
	(void)state;
	kvfs_fault_arm(KVFS_FAULT_NVME_READ, 0, 0, false);
	assert_int_equal(kvfs_fault_parse("nvme_read:1:EIO,cat_write:-1:EIO"), -EINVAL);
	assert_int_equal(kvfs_fault(KVFS_FAULT_NVME_READ), 0);
	assert_int_equal(kvfs_fault_parse("nvme_read:2:EIO"), 0);
	assert_int_equal(kvfs_fault(KVFS_FAULT_NVME_READ), 0);
	assert_int_equal(kvfs_fault(KVFS_FAULT_NVME_READ), -EIO);
	assert_int_equal(kvfs_fault(KVFS_FAULT_NVME_READ), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_good_specs),
		cmocka_unit_test(test_bad_specs),
		cmocka_unit_test(test_bad_spec_arms_nothing),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
