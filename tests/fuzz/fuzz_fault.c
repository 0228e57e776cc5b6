/*
 * tests/fuzz/fuzz_fault.c — a write to `.kvfs/fault` (ctl_fault_input(), then
 * kvfs_fault_parse()): the fault seam's spec, "op:nth:errno[:sticky],...".
 *
 * Input: the bytes of the write.
 *
 * Oracles besides the sanitizers: a spec that is refused arms nothing; a
 * spec that is accepted leaves every slot able to fire — a countdown that
 * is not negative, an errno from 1 to 4095 where armed. Every slot is
 * disarmed again after each input.
 */
#include <errno.h>
#include <string.h>

#include "core/fault.h"
#include "fs/fs_i.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size ? size : 1);
	int rc;

	CHECK(buf);
	memcpy(buf, data, size);
	rc = ctl_fault_input(buf, size);
	CHECK(rc == 0 || rc == -EINVAL || rc == -ENOMEM);
	for (int op = 0; op < KVFS_FAULT_NR; op++) {
		struct kvfs_fault_slot *s = &kvfs_fault_slots[op];
		int64_t left = atomic_load(&s->countdown);

		if (rc)
			CHECK(left == 0);
		CHECK(left >= 0);
		if (left)
			CHECK(atomic_load(&s->err) >= 1 && atomic_load(&s->err) <= 4095);
		CHECK(strcmp(kvfs_fault_name((enum kvfs_fault_op)op), "?") != 0);
		kvfs_fault_arm((enum kvfs_fault_op)op, 0, 0, false);
	}
	free(buf);
	return 0;
}
