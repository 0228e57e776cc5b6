/*
 * rdma/lend.c — the allocator of lent memory: the DRAM this node offers to
 * peers for offloaded copies (--lend SIZE).
 *
 * The region is cut into fixed-size pages tracked by a bitmap (set = in
 * use). An allocation takes the first free stretches of pages, lowest
 * address first, as a short list of runs; each run becomes one RMA target
 * for the writer, so a request that would need more runs than a control
 * message carries is refused rather than fragmenting further. Allocation
 * is all or nothing.
 *
 * Used by the server thread only: no locking. nfree is read by stats
 * through the server's own atomic copy.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "rdma/rdma_i.h"

static bool page_used(const struct rdma_lend *l, uint32_t i)
{
	return l->bits[i / 64] & (1ull << (i % 64));
}

static void mark(struct rdma_lend *l, uint32_t first, uint32_t n, bool used)
{
	for (uint32_t i = first; i < first + n; i++) {
		if (used)
			l->bits[i / 64] |= 1ull << (i % 64);
		else
			l->bits[i / 64] &= ~(1ull << (i % 64));
	}
}

int rdma_lend_init(struct rdma_lend *l, void *base, uint64_t bytes, uint32_t page)
{
	memset(l, 0, sizeof(*l));
	if (page == 0 || (page & (page - 1)) || bytes / page > UINT32_MAX)
		return -EINVAL;
	l->base = base;
	l->page = page;
	l->npages = (uint32_t)(bytes / page);
	l->bytes = (uint64_t)l->npages * page;
	l->nfree = l->npages;
	l->bits = calloc((l->npages + 63) / 64 + 1, sizeof(uint64_t));
	return l->bits ? 0 : -ENOMEM;
}

void rdma_lend_fini(struct rdma_lend *l)
{
	free(l->bits);
	memset(l, 0, sizeof(*l));
}

int rdma_lend_alloc(struct rdma_lend *l, uint64_t size, struct rdma_lend_run *runs, int max)
{
	uint64_t need;
	uint32_t i = 0;
	int n = 0;

	if (size == 0 || max < 1)
		return -EINVAL;
	need = (size + l->page - 1) / l->page;
	if (need > l->nfree)
		return -ENOSPC;
	while (need > 0 && i < l->npages) {
		uint32_t start, len;

		/* Skip whole used words quickly. */
		if (i % 64 == 0 && l->bits[i / 64] == ~0ull) {
			i += 64;
			continue;
		}
		if (page_used(l, i)) {
			i++;
			continue;
		}
		start = i;
		while (i < l->npages && !page_used(l, i) && i - start < need)
			i++;
		len = i - start;
		if (n == max) {
			/* Too fragmented: undo and refuse. */
			for (int k = 0; k < n; k++)
				mark(l, runs[k].first, runs[k].npages, false);
			return -ENOSPC;
		}
		runs[n].first = start;
		runs[n].npages = len;
		mark(l, start, len, true);
		n++;
		need -= len;
	}
	if (need > 0) {
		for (int k = 0; k < n; k++)
			mark(l, runs[k].first, runs[k].npages, false);
		return -ENOSPC;
	}
	for (int k = 0; k < n; k++)
		l->nfree -= runs[k].npages;
	return n;
}

void rdma_lend_free(struct rdma_lend *l, const struct rdma_lend_run *runs, int n)
{
	for (int k = 0; k < n; k++) {
		mark(l, runs[k].first, runs[k].npages, false);
		l->nfree += runs[k].npages;
	}
}
