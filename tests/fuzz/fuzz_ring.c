/*
 * tests/fuzz/fuzz_ring.c — the fast path's request decoding (core/ring.c):
 * what the daemon reads from a ring that an unprivileged engine process
 * shares with it, and the names it registers rings and buffers under.
 *
 * Input: one selector byte, then
 *   'n' (0x6e)  a registration name: kvfs_ring_reg_name();
 *   otherwise   the whole ring memory as the engine left it (the daemon
 *               maps exactly the memfd's size): kvfs_ring_check(), then
 *               every SQE decoded for its op, the way fs/fastpath.c does,
 *               against a pretend match of four blocks and buffer 7.
 *
 * Oracles besides the sanitizers (the memory is an exact-size allocation,
 * so any read past it is caught): a ring that passes the check has its
 * queues and payload area inside the memory; every span a decoder hands
 * back is inside the payload area and as long as the request says; a path
 * is NUL-free, relative and without "." or ".." components; a name that is
 * accepted is the canonical "<kind>.<tgid>.<id>".
 */
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "core/ring.h"
#include "tests/fuzz/fuzz.h"

static const uint64_t block_sizes[4] = {0, 1, 4096, 1ull << 40};
#define BUF_ID	 7u
#define BUF_SIZE 65536u

static void in_payload(const struct kvfs_ring_geom *g, const uint8_t *mem, const uint8_t *p,
		       uint64_t len)
{
	CHECK(p >= mem + g->data_off);
	CHECK((uint64_t)(p - (mem + g->data_off)) <= g->data_bytes);
	CHECK(len <= g->data_bytes - (uint64_t)(p - (mem + g->data_off)));
}

static void name(const uint8_t *d, size_t n)
{
	char *s = malloc(n + 1), canon[64];
	uint32_t tgid, id;
	int ring;

	CHECK(s);
	memcpy(s, d, n);
	s[n] = '\0';
	if (kvfs_ring_reg_name(s, &ring, &tgid, &id) == 0) {
		CHECK(tgid >= 1 && tgid <= INT32_MAX);
		CHECK(ring == KVFS_REG_RING || ring == KVFS_REG_BUF || ring == KVFS_REG_DEV);
		snprintf(canon, sizeof(canon), "%s.%u.%u",
			 ring == KVFS_REG_RING ? "ring" : ring == KVFS_REG_BUF ? "buf" : "dev", tgid,
			 id);
		CHECK(strcmp(canon, s) == 0);
	}
	free(s);
}

static void serve(const struct kvfs_ring_geom *g, const uint8_t *mem, const struct kvfs_ring_sqe *e)
{
	char path[KVFS_RING_PATH_MAX];
	const uint8_t *p;
	uint32_t n;
	volatile uint8_t sink = 0;

	switch (e->op) {
	case KVFS_OP_OPEN_NS:
		if (kvfs_ring_ns_path(g, mem, e, ".kvfs", path) == 0) {
			size_t len = strlen(path);

			CHECK(len == e->args[1] && len > 0 && path[0] != '/');
			CHECK(strcmp(path, ".kvfs") != 0 && strncmp(path, ".kvfs/", 6) != 0);
			for (char *c = path; *c;) {
				size_t k = strcspn(c, "/");

				CHECK(k <= NAME_MAX);
				CHECK(!(k == 1 && c[0] == '.') && !(k == 2 && c[0] == '.' && c[1] == '.'));
				c += k + (c[k] == '/');
			}
		}
		break;
	case KVFS_OP_MATCH:
		if (kvfs_ring_match_keys(g, mem, e, &p, &n) == 0) {
			CHECK(n == e->args[1] && n <= KVFS_RING_MAX_MATCH);
			in_payload(g, mem, p, (uint64_t)n * KVFS_KEY_BYTES);
			for (uint32_t i = 0; i < n; i++)
				sink ^= p[(size_t)i * KVFS_KEY_BYTES + KVFS_KEY_BYTES - 1];
		}
		break;
	case KVFS_OP_READ:
		if (kvfs_ring_read_descs(g, mem, e, &p, &n) == 0) {
			CHECK(n == e->args[2] && n <= KVFS_RING_MAX_DESCS);
			in_payload(g, mem, p, (uint64_t)n * sizeof(struct kvfs_ring_desc));
			for (uint32_t i = 0; i < n; i++) {
				struct kvfs_ring_desc d;

				kvfs_ring_desc_get(p, i, &d);
				if (d.block >= 4 || !kvfs_ring_span_ok(d.src_off, d.len, block_sizes[d.block]))
					continue;
				CHECK(d.src_off + d.len <= block_sizes[d.block]);
				if (d.buf == BUF_ID && kvfs_ring_span_ok(d.dst_off, d.len, BUF_SIZE))
					CHECK(d.dst_off + d.len <= BUF_SIZE);
			}
		}
		break;
	case KVFS_OP_SAVE:
		p = kvfs_ring_save_key(g, mem, e);
		if (p) {
			in_payload(g, mem, p, KVFS_KEY_BYTES);
			sink ^= p[KVFS_KEY_BYTES - 1];
		}
		if (kvfs_ring_save_range(e, BUF_SIZE) == 0)
			CHECK(e->args[2] > 0 && e->args[1] + e->args[2] <= BUF_SIZE &&
			      e->args[1] < BUF_SIZE);
		break;
	default:
		break;
	}
	(void)sink;
}

static void ring(const uint8_t *d, size_t n)
{
	struct kvfs_ring_geom g;
	uint8_t *mem = NULL;

	/* ring memory is page aligned in the daemon; exactly n bytes here */
	CHECK(posix_memalign((void **)&mem, 64, n ? n : 1) == 0);
	memcpy(mem, d, n);
	if (kvfs_ring_check(mem, n, &g) == 0) {
		CHECK(n >= sizeof(struct kvfs_ring_hdr));
		CHECK(g.sq_entries && !(g.sq_entries & (g.sq_entries - 1)));
		CHECK(g.cq_entries >= g.sq_entries && g.cq_entries <= KVFS_RING_MAX_ENTRIES);
		CHECK(g.sq_off + (uint64_t)g.sq_entries * sizeof(struct kvfs_ring_sqe) <= n);
		CHECK(g.cq_off + (uint64_t)g.cq_entries * sizeof(struct kvfs_ring_cqe) <= n);
		CHECK(g.data_off <= n && g.data_bytes <= n - g.data_off);
		for (uint32_t i = 0; i < g.sq_entries; i++) {
			struct kvfs_ring_sqe e;

			/* the daemon copies an SQE out of shared memory first */
			memcpy(&e, mem + g.sq_off + (size_t)i * sizeof(e), sizeof(e));
			serve(&g, mem, &e);
		}
	}
	free(mem);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (data[0] == 'n')
		name(data + 1, size - 1);
	else
		ring(data + 1, size - 1);
	return 0;
}
