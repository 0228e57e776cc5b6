/*
 * tier/dram.c — the DRAM arena.
 *
 * Owns one memfd of `bytes` mapped shared, cut into fixed-size pages, and
 * the list of free pages. A memfd (rather than anonymous memory) lets the
 * engine library map the same arena and move bytes without the kernel in
 * the way (DESIGN §6). A background thread faults the whole arena in after
 * start (MADV_POPULATE_WRITE, which never changes contents, so it may race
 * with writers): the first write to a fresh shmem page otherwise pays for
 * the kernel allocating and zeroing it, which measured at a third of the
 * write throughput of a recycled page. Freed pages are reused last-in
 * first-out so recently touched memory is reused first.
 *
 * Locking: `lock` guards the free stack. Callers take many pages per call
 * (a 1 MiB write takes up to 16), so the lock is taken once per request,
 * not per page.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/fault.h"
#include "core/log.h"
#include "core/util.h"
#include "tier/tier_i.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define POPULATE_CHUNK (64ull << 20)

static void *populate_main(void *arg)
{
	struct dram_arena *a = arg;

	for (uint64_t off = 0; off < a->bytes && !atomic_load(&a->stop); off += POPULATE_CHUNK) {
		size_t len = (size_t)KVFS_MIN(POPULATE_CHUNK, a->bytes - off);

		if (madvise(a->base + off, len, MADV_POPULATE_WRITE)) {
			/* Old kernel, or memory is short: pages fault in as used. */
			log_info("DRAM arena prefault stopped at %llu MiB: %s",
				 (unsigned long long)(off >> 20), strerror(errno));
			break;
		}
	}
	return NULL;
}

int dram_open(struct dram_arena *a, uint64_t bytes, uint32_t page_size, char *err, size_t errlen)
{
	uint64_t npages = bytes / page_size;
	int rc;

	memset(a, 0, sizeof(*a));
	a->fd = -1;
	if (npages == 0 || npages >= TIER_NO_PAGE) {
		snprintf(err, errlen, "DRAM size must hold 1 to %u pages of %u bytes", TIER_NO_PAGE - 1,
			 page_size);
		return -EINVAL;
	}
	a->page_size = page_size;
	a->page_shift = (uint32_t)__builtin_ctz(page_size);
	a->npages = (uint32_t)npages;
	a->bytes = npages * page_size;

	rc = kvfs_fault(KVFS_FAULT_ARENA);
	if (rc)
		goto out_err;
	a->fd = memfd_create("kvfs-dram", MFD_CLOEXEC);
	if (a->fd < 0 || ftruncate(a->fd, (off_t)a->bytes) < 0) {
		rc = -errno;
		goto out_err;
	}
	a->base = mmap(NULL, a->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, a->fd, 0);
	if (a->base == MAP_FAILED) {
		a->base = NULL;
		rc = -errno;
		goto out_err;
	}
	a->free_stack = malloc(sizeof(uint32_t) * a->npages);
	if (!a->free_stack) {
		rc = -ENOMEM;
		goto out_err;
	}
	/* Pop order is ascending page ids: the first file lands at the start. */
	for (uint32_t i = 0; i < a->npages; i++)
		a->free_stack[i] = a->npages - 1 - i;
	a->nfree = a->npages;
	pthread_mutex_init(&a->lock, NULL);
	a->populating = pthread_create(&a->populate, NULL, populate_main, a) == 0;
	return 0;

out_err:
	snprintf(err, errlen, "cannot create a %llu-byte DRAM arena: %s",
		 (unsigned long long)a->bytes, strerror(-rc));
	dram_close(a);
	return rc;
}

void dram_close(struct dram_arena *a)
{
	if (a->populating) {
		atomic_store(&a->stop, true);
		pthread_join(a->populate, NULL);
		a->populating = false;
	}
	if (a->free_stack)
		pthread_mutex_destroy(&a->lock);
	free(a->free_stack);
	if (a->base)
		munmap(a->base, a->bytes);
	if (a->fd >= 0)
		close(a->fd);
	a->free_stack = NULL;
	a->base = NULL;
	a->fd = -1;
}

int dram_alloc(struct dram_arena *a, uint32_t n, uint32_t *ids)
{
	int rc = -ENOSPC;

	pthread_mutex_lock(&a->lock);
	if (a->nfree >= n) {
		/* Top of the stack first, so fresh pages come out in ascending order. */
		for (uint32_t i = 0; i < n; i++)
			ids[i] = a->free_stack[a->nfree - 1 - i];
		a->nfree -= n;
		rc = 0;
	}
	pthread_mutex_unlock(&a->lock);
	return rc;
}

void dram_free(struct dram_arena *a, const uint32_t *ids, uint32_t n)
{
	if (n == 0)
		return;
	pthread_mutex_lock(&a->lock);
	memcpy(a->free_stack + a->nfree, ids, sizeof(uint32_t) * n);
	a->nfree += n;
	pthread_mutex_unlock(&a->lock);
}

uint32_t dram_free_pages(struct dram_arena *a)
{
	uint32_t n;

	pthread_mutex_lock(&a->lock);
	n = a->nfree;
	pthread_mutex_unlock(&a->lock);
	return n;
}
