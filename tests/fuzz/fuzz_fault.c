/*
 * tests/fuzz/fuzz_fault.c — a write to `.kvfs/fault`: ctl_fault_spec()
 * (fs/ctl.c) and kvfs_fault_parse_spec() under it (core/fault.c), the fault
 * seam's "op:nth:errno[:sticky],...".
 *
 * Input: the bytes of the write.
 *
 * Oracles besides the sanitizers: an accepted spec has 1 to
 * KVFS_FAULT_SPEC_MAX items, each a known op other than `arena` (made once,
 * at start), a count that fits the signed countdown, an errno from 1 to
 * 4095, so armed it leaves every slot able to fire; kvfs_fault_parse() (the
 * KVFS_FAULTS path) agrees with the parser on the same text, and arms
 * nothing when it refuses. Every slot is disarmed after each input.
 */
#include <errno.h>
#include <string.h>

#include "core/fault.h"
#include "fs/fs_i.h"
#include "tests/fuzz/fuzz.h"

static void disarm(void)
{
	for (int op = 0; op < KVFS_FAULT_NR; op++)
		kvfs_fault_arm((enum kvfs_fault_op)op, 0, 0, false);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kvfs_fault_spec spec[KVFS_FAULT_SPEC_MAX];
	char *buf = malloc(size + 1);
	int n, rc;

	CHECK(buf);
	memcpy(buf, data, size);
	n = ctl_fault_spec(buf, size, spec, KVFS_FAULT_SPEC_MAX);
	CHECK(n == -EINVAL || (n >= 1 && n <= KVFS_FAULT_SPEC_MAX));
	for (int i = 0; i < n; i++) {
		CHECK(spec[i].op < KVFS_FAULT_NR && spec[i].op != KVFS_FAULT_ARENA);
		CHECK(spec[i].nth <= INT64_MAX);
		CHECK(spec[i].err >= 1 && spec[i].err <= 4095);
		kvfs_fault_arm(spec[i].op, spec[i].nth, spec[i].err, spec[i].sticky);
	}
	for (int op = 0; op < KVFS_FAULT_NR; op++)
		CHECK(atomic_load(&kvfs_fault_slots[op].countdown) >= 0);
	disarm();

	/* the same text through kvfs_fault_parse() (a C string: no newline, no NUL) */
	if (size && buf[size - 1] == '\n')
		size--;
	buf[size] = '\0';
	if (!memchr(buf, '\0', size)) {
		rc = kvfs_fault_parse(buf);
		CHECK(rc == 0 || rc == -EINVAL);
		CHECK((rc == 0) == (kvfs_fault_parse_spec(buf, size, spec, KVFS_FAULT_SPEC_MAX) > 0));
		for (int op = 0; op < KVFS_FAULT_NR; op++) {
			int64_t left = atomic_load(&kvfs_fault_slots[op].countdown);

			CHECK(left >= 0 && (rc == 0 || left == 0));
		}
		disarm();
	}
	free(buf);
	return 0;
}
