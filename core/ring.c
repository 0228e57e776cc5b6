/*
 * core/ring.c — decoding of fast-path requests (core/ring.h), the part of
 * the daemon's ring server that reads what an engine wrote.
 *
 * Pure functions: no state, no locks, no allocation. Everything they read
 * is untrusted shared memory; each bound is checked before the bytes it
 * covers are read, with comparisons that cannot overflow for any input, and
 * a span handed back is inside the memory it was checked against. fs/
 * fastpath.c applies the results (permissions, lookups, copies);
 * tests/fuzz/fuzz_ring.c feeds them arbitrary bytes.
 */
#include "core/ring.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <string.h>

int kvfs_ring_check(const void *mem, size_t size, struct kvfs_ring_geom *g)
{
	const struct kvfs_ring_hdr *h = mem;
	uint32_t sq, cq;

	if (size < sizeof(*h) || h->magic != KVFS_RING_MAGIC || h->version != KVFS_RING_VERSION)
		return -EPROTO;
	sq = h->sq_entries;
	cq = h->cq_entries;
	if (!sq || !cq || (sq & (sq - 1)) || (cq & (cq - 1)) || sq > KVFS_RING_MAX_ENTRIES ||
	    cq > KVFS_RING_MAX_ENTRIES || cq < sq)
		return -EINVAL;
	if (h->sq_off < sizeof(*h) || h->sq_off % 64 || h->cq_off % 64 || h->data_off % 64 ||
	    !kvfs_ring_span_ok(h->sq_off, (uint64_t)sq * sizeof(struct kvfs_ring_sqe), size) ||
	    !kvfs_ring_span_ok(h->cq_off, (uint64_t)cq * sizeof(struct kvfs_ring_cqe), size) ||
	    !kvfs_ring_span_ok(h->data_off, h->data_bytes, size))
		return -EINVAL;
	g->sq_entries = sq;
	g->cq_entries = cq;
	g->sq_off = h->sq_off;
	g->cq_off = h->cq_off;
	g->data_off = h->data_off;
	g->data_bytes = h->data_bytes;
	return 0;
}

const uint8_t *kvfs_ring_payload(const struct kvfs_ring_geom *g, const uint8_t *mem, uint64_t off,
				 uint64_t len)
{
	if (!kvfs_ring_span_ok(off, len, g->data_bytes))
		return NULL;
	return mem + g->data_off + off;
}

int kvfs_ring_ns_path(const struct kvfs_ring_geom *g, const uint8_t *mem,
		      const struct kvfs_ring_sqe *e, const char *reserved, char *path)
{
	uint64_t len = e->args[1];
	const uint8_t *p = kvfs_ring_payload(g, mem, e->args[0], len);
	bool first = true;
	size_t i = 0;

	if (!p || len == 0 || len >= KVFS_RING_PATH_MAX)
		return -EINVAL;
	memcpy(path, p, len);
	path[len] = '\0';
	if (strlen(path) != len || path[0] == '/')
		return -EINVAL;
	while (i < len) {
		size_t n = strcspn(path + i, "/");
		const char *c = path + i;

		if (n) {
			if ((n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.') ||
			    n > NAME_MAX ||
			    (first && strlen(reserved) == n && memcmp(c, reserved, n) == 0))
				return -EINVAL;
			first = false;
		}
		i += n + 1;
	}
	return 0;
}

int kvfs_ring_match_keys(const struct kvfs_ring_geom *g, const uint8_t *mem,
			 const struct kvfs_ring_sqe *e, const uint8_t **keys, uint32_t *n)
{
	if (e->args[1] > KVFS_RING_MAX_MATCH)
		return -E2BIG;
	*keys = kvfs_ring_payload(g, mem, e->args[0], e->args[1] * KVFS_KEY_BYTES);
	if (!*keys)
		return -EINVAL;
	*n = (uint32_t)e->args[1];
	return 0;
}

int kvfs_ring_read_descs(const struct kvfs_ring_geom *g, const uint8_t *mem,
			 const struct kvfs_ring_sqe *e, const uint8_t **descs, uint32_t *n)
{
	if (e->args[2] > KVFS_RING_MAX_DESCS)
		return -E2BIG;
	*descs = kvfs_ring_payload(g, mem, e->args[1], e->args[2] * sizeof(struct kvfs_ring_desc));
	if (!*descs)
		return -EINVAL;
	*n = (uint32_t)e->args[2];
	return 0;
}

void kvfs_ring_desc_get(const uint8_t *descs, uint32_t i, struct kvfs_ring_desc *d)
{
	memcpy(d, descs + (size_t)i * sizeof(*d), sizeof(*d));
}

const uint8_t *kvfs_ring_save_key(const struct kvfs_ring_geom *g, const uint8_t *mem,
				  const struct kvfs_ring_sqe *e)
{
	return kvfs_ring_payload(g, mem, e->args[3], KVFS_KEY_BYTES);
}

int kvfs_ring_save_range(const struct kvfs_ring_sqe *e, uint64_t buf_size)
{
	return e->args[2] && kvfs_ring_span_ok(e->args[1], e->args[2], buf_size) ? 0 : -EFAULT;
}

/* A decimal u32 in canonical form (no sign, space or leading zero); @end past it. */
static int parse_dec(const char *s, const char **end, uint32_t *out)
{
	uint64_t v = 0;
	const char *p = s;

	while (*p >= '0' && *p <= '9') {
		v = v * 10 + (uint64_t)(*p - '0');
		if (v > UINT32_MAX)
			return -EINVAL;
		p++;
	}
	if (p == s || (s[0] == '0' && p - s > 1))
		return -EINVAL;
	*end = p;
	*out = (uint32_t)v;
	return 0;
}

int kvfs_ring_reg_name(const char *name, int *kind, uint32_t *tgid, uint32_t *id)
{
	static const struct {
		const char *prefix;
		int kind;
	} kinds[] = {{"ring.", KVFS_REG_RING}, {"buf.", KVFS_REG_BUF}, {"dev.", KVFS_REG_DEV}};

	for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
		size_t n = strlen(kinds[k].prefix);
		const char *p = name + n;

		if (strncmp(name, kinds[k].prefix, n) != 0)
			continue;
		if (parse_dec(p, &p, tgid) || *p != '.' || parse_dec(p + 1, &p, id) || *p)
			return -EINVAL;
		if (*tgid == 0 || *tgid > INT32_MAX)
			return -EINVAL;
		*kind = kinds[k].kind;
		return 0;
	}
	return -EINVAL;
}
