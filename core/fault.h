/*
 * core/fault.h — the fault seam (SQLite's test_syscall.c, made small).
 *
 * Every system call or device operation that can fail in the field is
 * preceded by kvfs_fault(OP). Normally that is one relaxed atomic load; a
 * test arms an operation so that its Nth call from now (and, if sticky, every
 * call after it) fails with a chosen errno, without touching the device.
 * The daemon arms faults from the KVFS_FAULTS environment variable at start
 * and from the `.kvfs/fault` control file at run time.
 */
#ifndef KVFS_CORE_FAULT_H
#define KVFS_CORE_FAULT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum kvfs_fault_op {
	KVFS_FAULT_ARENA,      /* creating or growing the DRAM arena */
	KVFS_FAULT_CAT_WRITE,  /* a catalog commit */
	KVFS_FAULT_NVME_READ,  /* an NVMe extent read */
	KVFS_FAULT_NVME_WRITE, /* an NVMe extent write */
	KVFS_FAULT_NVME_FSYNC, /* an NVMe segment fsync */
	KVFS_FAULT_NET_READ,   /* bytes of a remote read (corruption seam) */
	KVFS_FAULT_GPU_COPY,   /* a device copy or gather/scatter, when it runs */
	KVFS_FAULT_BACKING_OPEN, /* registering a DRAM file for FUSE passthrough */
	KVFS_FAULT_NR,
};

struct kvfs_fault_slot {
	_Atomic int64_t countdown; /* calls left before the fault; 0 = disarmed */
	_Atomic int err;           /* positive errno to return */
	_Atomic bool sticky;       /* keep failing after the first hit */
	_Atomic uint64_t hits;     /* faults delivered */
};

extern struct kvfs_fault_slot kvfs_fault_slots[KVFS_FAULT_NR];

/* @return 0, or -errno if the armed fault for @op fires on this call. */
int kvfs_fault_fire(enum kvfs_fault_op op);

static inline int kvfs_fault(enum kvfs_fault_op op)
{
	if (__builtin_expect(atomic_load_explicit(&kvfs_fault_slots[op].countdown,
						  memory_order_relaxed) == 0, 1))
		return 0;
	return kvfs_fault_fire(op);
}

/*
 * Arm @op: its @nth call from now fails with @err (a positive errno, e.g.
 * EIO); with @sticky every later call fails too. @nth == 0 disarms.
 */
void kvfs_fault_arm(enum kvfs_fault_op op, uint64_t nth, int err, bool sticky);

/* One item of a spec. */
struct kvfs_fault_spec {
	enum kvfs_fault_op op;
	uint64_t nth; /* 0 disarms; at most INT64_MAX */
	int err;      /* positive errno */
	bool sticky;
};

#define KVFS_FAULT_SPEC_MAX 16

/*
 * Parse a spec of @len bytes (no NUL needed): comma-separated
 * "op:nth:errno[:sticky]", for example "nvme_write:3:EIO,cat_write:1:ENOSPC:sticky".
 * nth is decimal digits only, at most 2^63-1; errno is a name or a number
 * from 1 to 4095. Pure: arms nothing, touches no global state.
 * @return the number of items (1..@max) in @out; -EINVAL for an unknown op
 * or errno, a sign, an overflow, an empty or extra field, an empty item, or
 * more than @max items.
 */
int kvfs_fault_parse_spec(const char *spec, size_t len, struct kvfs_fault_spec *out, int max);

/*
 * Arm faults from a NUL-terminated spec (kvfs_fault_parse_spec), all or none.
 * @return 0, or -EINVAL (nothing is armed then).
 */
int kvfs_fault_parse(const char *spec);

/* Name of @op as used in specs. */
const char *kvfs_fault_name(enum kvfs_fault_op op);

#endif
