/*
 * rdma/chash.c — consistent hashing of paths onto nodes (offload targets).
 *
 * Each node owns `vnodes` points on a 64-bit ring, XXH3-64 of "<id>#<v>";
 * a key's owner is the node of the first point at or after XXH3-64(key),
 * wrapping around. With enough virtual nodes every node owns close to 1/n
 * of the keys, and a node joining or leaving moves only the keys it gains
 * or loses. rdma_chash_pick() walks clockwise and returns distinct nodes
 * in ring order, skipping those a predicate rejects (dead, no room), so a
 * full node hands its keys to the next node on the ring rather than
 * reshuffling everyone.
 *
 * A built ring is immutable; the caller rebuilds it when membership changes
 * and guards it with its own lock.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "rdma/rdma_i.h"

static int pt_cmp(const void *a, const void *b)
{
	const struct rdma_chash_pt *x = a, *y = b;

	if (x->h != y->h)
		return x->h < y->h ? -1 : 1;
	return x->node < y->node ? -1 : x->node > y->node;
}

int rdma_chash_build(struct rdma_chash *c, const char *const *ids, uint32_t n, uint32_t vnodes)
{
	char buf[REMOTE_NODE_ID_MAX + 16];

	memset(c, 0, sizeof(*c));
	if (n == 0)
		return 0;
	if (n > RDMA_MAX_PEERS)
		return -EINVAL;
	if (vnodes == 0)
		vnodes = RDMA_CHASH_VNODES;
	c->pts = calloc((size_t)n * vnodes, sizeof(*c->pts));
	if (!c->pts)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		for (uint32_t v = 0; v < vnodes; v++) {
			int len = snprintf(buf, sizeof(buf), "%s#%u", ids[i], v);

			c->pts[c->npts].h = XXH3_64bits(buf, (size_t)len);
			c->pts[c->npts].node = i;
			c->npts++;
		}
	}
	qsort(c->pts, c->npts, sizeof(*c->pts), pt_cmp);
	c->nnodes = n;
	return 0;
}

void rdma_chash_free(struct rdma_chash *c)
{
	free(c->pts);
	memset(c, 0, sizeof(*c));
}

uint32_t rdma_chash_pick(const struct rdma_chash *c, const void *key, size_t len,
			 bool (*ok)(void *ctx, uint32_t node), void *ctx, uint32_t *out,
			 uint32_t max)
{
	uint64_t h = XXH3_64bits(key, len);
	uint32_t lo = 0, hi = c->npts, got = 0, nseen = 0;
	uint8_t seen[RDMA_MAX_PEERS] = {0};

	if (c->npts == 0 || max == 0)
		return 0;
	while (lo < hi) { /* first point with hash >= h */
		uint32_t mid = lo + (hi - lo) / 2;

		if (c->pts[mid].h < h)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (uint32_t k = 0; k < c->npts && got < max && nseen < c->nnodes; k++) {
		uint32_t node = c->pts[(lo + k) % c->npts].node;

		if (seen[node])
			continue;
		seen[node] = 1;
		nseen++;
		if (!ok || ok(ctx, node))
			out[got++] = node;
	}
	return got;
}
