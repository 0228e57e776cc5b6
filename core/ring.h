/*
 * core/ring.h — the fast path's shared-memory ring and request format,
 * spoken by the daemon (fs/fastpath.c) and libkvfs (engine/libkvfs_fast.c).
 *
 * An engine process creates two kinds of shared memory, each a memfd sealed
 * with F_SEAL_SHRINK (the daemon refuses any other: a file that shrank
 * under its mapping would fault it), and registers them with the daemon through the namespace, the way 3FS's
 * USRBIO registers its buffers: symlink("/proc/self/fd/N",
 * "<mount>/.kvfs/iovs/<kind>.<name>"). The daemon learns the caller's
 * credentials from that FUSE request and maps the memfd it names in the
 * caller's own descriptor table:
 *
 *   ring.<name>  one ring: a header, a submission queue (SQ), a completion
 *                queue (CQ) and a scratch area for request payloads
 *   buf.<name>   a data buffer the daemon copies blocks into and out of
 *   dev.<name>   device memory of the engine: a sealed memfd holding one
 *                struct kvfs_ring_devreg (its IPC handle); the daemon maps
 *                the device memory and copies into it as into a buffer
 *
 * Queues are single-producer single-consumer: the engine produces SQEs and
 * consumes CQEs, the daemon the reverse. Indices are free-running u32s
 * (entry = index & (entries - 1)); stores of a tail are releases, loads of
 * the other side's tail acquires. Neither side makes a system call while
 * the other is busy: the daemon polls for a short while after its last
 * request, then sets `server_sleeping` and waits on it as a futex; an
 * engine that queues work while it is set wakes it. The engine likewise
 * sets `client_waiting` before sleeping on `cq_tail`.
 *
 * Everything in shared memory is untrusted by the daemon: it copies an SQE
 * before using it and checks every index, offset and length.
 */
#ifndef KVFS_CORE_RING_H
#define KVFS_CORE_RING_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "kvfs/keys.h"

#define KVFS_RING_MAGIC   0x6b766672u /* "kvfr" */
#define KVFS_RING_VERSION 1u
#define KVFS_IOVS_DIR     "iovs"      /* under .kvfs/ */

/* Limits the daemon enforces. */
#define KVFS_RING_MAX_ENTRIES   4096u
#define KVFS_RING_MAX_BYTES     (64u << 20)
#define KVFS_RING_MAX_MATCH     65536u   /* keys in one MATCH */
#define KVFS_RING_MAX_DESCS     65536u   /* descriptors in one READ */
#define KVFS_RING_MAX_MATCHES   1024u    /* matches one ring may hold */
#define KVFS_RING_MAX_NS        64u      /* namespaces one ring may open */

enum kvfs_ring_op {
	KVFS_OP_NOP = 0,
	/*
	 * Open a namespace directory. Payload: the path relative to the mount
	 * root (no leading '/'), args[0] = payload offset, args[1] = length.
	 * res = namespace id (>= 0) or -errno.
	 */
	KVFS_OP_OPEN_NS = 1,
	/*
	 * Match and hold a prefix. ns = namespace id; payload: n keys of 32
	 * bytes, args[0] = payload offset, args[1] = n. res = matched count
	 * (>= 0), aux = match id; or -errno.
	 */
	KVFS_OP_MATCH = 2,
	/*
	 * Copy bytes of held blocks into registered buffers. args[0] = match
	 * id, args[1] = payload offset, args[2] = descriptor count; payload:
	 * struct kvfs_ring_desc[]. res = bytes copied, or -errno (nothing is
	 * guaranteed about the destination then).
	 */
	KVFS_OP_READ = 3,
	/* Let a match go. args[0] = match id. res = 0 or -errno. */
	KVFS_OP_RELEASE = 4,
	/*
	 * Store a block: create `<namespace>/<key hex>` from bytes in a
	 * registered buffer. ns = namespace id, args[0] = buffer id, args[1] =
	 * offset, args[2] = length; payload: the 32-byte key at args[3].
	 * res = 0, -EEXIST if the file exists (a hit), or -errno (-EBADMSG
	 * for an invalid native block).
	 */
	KVFS_OP_SAVE = 5,
	/*
	 * Store a block whose layers are in registered device memory. ns =
	 * namespace id; args[0] = buffer id, args[1] = offset, args[2] =
	 * length of its header in a registered host buffer, as
	 * kvfs_block_encode_header() wrote it (layer checksums 0: the daemon
	 * computes them); payload at args[3]: the 32-byte key, then one
	 * struct kvfs_ring_devpart per layer. The daemon copies each layer's
	 * K (and V) out of device memory, fills in the checksums and stores
	 * the block as SAVE does. res as SAVE.
	 */
	KVFS_OP_SAVE_DEV = 6,
};

/* Where one layer of a SAVE_DEV block is: offsets in a dev.<> buffer. 24 bytes. */
struct kvfs_ring_devpart {
	uint32_t buf;
	uint32_t pad;
	uint64_t k_off;
	uint64_t v_off; /* unused for kind MLA */
};

/* The record a dev.<name> registration's memfd holds (sealed, exactly this size). */
#define KVFS_DEVREG_MAGIC 0x6464766bu /* "kvdd" */
struct kvfs_ring_devreg {
	uint32_t magic;
	uint32_t version;  /* KVFS_RING_VERSION */
	uint32_t kind;     /* enum kvfs_dev_kind (kvfs/kvfs.h) = enum gpu_impl */
	int32_t device;    /* the engine's device ordinal */
	uint64_t bytes;    /* registered, from base */
	uint64_t base;     /* its address in the engine (descriptor offsets are from here) */
	uint64_t offset;   /* how far base lies into the exported allocation */
	uint8_t uuid[16];
	uint8_t handle[64];
};

/* A copy from a held block to a registered buffer. 32 bytes. */
struct kvfs_ring_desc {
	uint32_t block;   /* index into the match */
	uint32_t buf;     /* registered buffer id */
	uint64_t src_off; /* offset in the block file */
	uint64_t dst_off; /* offset in the buffer */
	uint64_t len;
};

/* A submission. 64 bytes. */
struct kvfs_ring_sqe {
	uint8_t op;
	uint8_t pad[3];
	uint32_t ns;
	uint64_t user_data;
	uint64_t args[6];
};

/* A completion. 32 bytes. */
struct kvfs_ring_cqe {
	uint64_t user_data;
	int64_t res;
	uint64_t aux;
	uint64_t pad;
};

/* The ring header at offset 0 of a ring's memory. Written by the engine
 * before registration except the fields the daemon owns. */
struct kvfs_ring_hdr {
	uint32_t magic;
	uint32_t version;
	uint32_t sq_entries; /* power of two */
	uint32_t cq_entries; /* power of two, >= sq_entries */
	uint64_t sq_off;     /* offsets from the start of the ring memory */
	uint64_t cq_off;
	uint64_t data_off;   /* the payload area */
	uint64_t data_bytes;
	uint32_t server_pid; /* set by the daemon at registration */
	uint32_t pad0;
	uint64_t server_gen; /* set by the daemon: changes with every daemon start */
	uint8_t pad1[64 - 56];

	_Alignas(64) _Atomic uint32_t sq_head; /* daemon */
	_Alignas(64) _Atomic uint32_t sq_tail; /* engine */
	_Alignas(64) _Atomic uint32_t cq_head; /* engine */
	_Alignas(64) _Atomic uint32_t cq_tail; /* daemon */
	_Alignas(64) _Atomic uint32_t server_sleeping;
	_Alignas(64) _Atomic uint32_t client_waiting;
	_Alignas(64) _Atomic uint32_t closed; /* either side gave up on the ring */
};

/* --- request decoding (core/ring.c) -----------------------------------------
 *
 * Pure functions the daemon runs on what an engine wrote, before it touches
 * any state; each checks bounds against the geometry it was given and never
 * reads outside [mem, mem + size). tests/fuzz/fuzz_ring.c drives them.
 */

/* A ring's geometry as checked at registration (the daemon never rereads it). */
struct kvfs_ring_geom {
	uint32_t sq_entries, cq_entries;
	uint64_t sq_off, cq_off, data_off, data_bytes;
};

#define KVFS_RING_PATH_MAX 4096u /* OPEN_NS payload, NUL included */

/*
 * Check the header of a ring of @size bytes at @mem and fill @g.
 * @return 0; -EPROTO (too small, bad magic or version); -EINVAL (entries
 * not powers of two or over the limit, queues or payload area outside the
 * memory, misaligned offsets).
 */
int kvfs_ring_check(const void *mem, size_t size, struct kvfs_ring_geom *g);

/* Is [off, off + len) inside [0, size)? (No overflow for any input.) */
static inline int kvfs_ring_span_ok(uint64_t off, uint64_t len, uint64_t size)
{
	return off <= size && len <= size - off;
}

/* Payload bytes [off, off + len) of the ring's scratch area, or NULL. */
const uint8_t *kvfs_ring_payload(const struct kvfs_ring_geom *g, const uint8_t *mem, uint64_t off,
				 uint64_t len);

/*
 * OPEN_NS: copy the path (args[0], args[1]) into @path (KVFS_RING_PATH_MAX
 * bytes) and check it: 1..4095 bytes, no NUL, no leading '/', no "." or
 * ".." component, no component over NAME_MAX, and not @reserved (the
 * control directory) as the first. Empty components are skipped.
 * @return 0 or -EINVAL.
 */
int kvfs_ring_ns_path(const struct kvfs_ring_geom *g, const uint8_t *mem,
		      const struct kvfs_ring_sqe *e, const char *reserved, char *path);

/*
 * MATCH: the keys (args[0]) and their count (args[1]).
 * @return 0; -E2BIG (more than KVFS_RING_MAX_MATCH); -EINVAL (outside the
 * scratch area).
 */
int kvfs_ring_match_keys(const struct kvfs_ring_geom *g, const uint8_t *mem,
			 const struct kvfs_ring_sqe *e, const uint8_t **keys, uint32_t *n);

/*
 * READ: the descriptors (args[1]) and their count (args[2]); copy one out
 * with kvfs_ring_desc_get() before checking it.
 * @return 0; -E2BIG (more than KVFS_RING_MAX_DESCS); -EINVAL.
 */
int kvfs_ring_read_descs(const struct kvfs_ring_geom *g, const uint8_t *mem,
			 const struct kvfs_ring_sqe *e, const uint8_t **descs, uint32_t *n);

/* Copy descriptor @i of a checked array (shared memory is read once). */
void kvfs_ring_desc_get(const uint8_t *descs, uint32_t i, struct kvfs_ring_desc *d);

/*
 * SAVE: the key (args[3]) in the scratch area. The buffer range (args[1],
 * args[2]) is checked with kvfs_ring_save_range() once the buffer is known.
 * @return the key, or NULL if it is outside the scratch area.
 */
const uint8_t *kvfs_ring_save_key(const struct kvfs_ring_geom *g, const uint8_t *mem,
				  const struct kvfs_ring_sqe *e);
/* @return 0, or -EFAULT if the SAVE's bytes are empty or not inside @buf_size. */
int kvfs_ring_save_range(const struct kvfs_ring_sqe *e, uint64_t buf_size);

/* What a registration under .kvfs/iovs is, by the first part of its name. */
enum kvfs_ring_reg { KVFS_REG_RING, KVFS_REG_BUF, KVFS_REG_DEV };

/*
 * A registration name under .kvfs/iovs: "ring.<tgid>.<id>", "buf.<tgid>.<id>"
 * or "dev.<tgid>.<id>" (@kind: enum kvfs_ring_reg), tgid 1..INT32_MAX, id a
 * u32, both canonical decimal (no sign, space or leading zero).
 * @return 0 or -EINVAL.
 */
int kvfs_ring_reg_name(const char *name, int *kind, uint32_t *tgid, uint32_t *id);

static inline struct kvfs_ring_sqe *kvfs_ring_sq(void *mem)
{
	const struct kvfs_ring_hdr *h = mem;
	return (struct kvfs_ring_sqe *)((char *)mem + h->sq_off);
}

static inline struct kvfs_ring_cqe *kvfs_ring_cq(void *mem)
{
	const struct kvfs_ring_hdr *h = mem;
	return (struct kvfs_ring_cqe *)((char *)mem + h->cq_off);
}

#endif
