/*
 * gpu/gpu.c — what the GPU layer does the same on every device: the
 * per-thread failure reason, the checks and host implementation of a
 * gather/scatter, and the block pool.
 *
 * The pool is one device allocation made at start (a pool larger than the
 * device's free memory fails then, never later) carved into equal blocks.
 * Free blocks are a stack of indexes; `used` marks which are out, so a
 * double or bad put is refused and counted instead of corrupting the stack.
 * Locking: one mutex per pool around the stack; taking or giving back n
 * blocks is O(n) under it.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/gpu_i.h"

static __thread char last_error[256];

const char *gpu_error(void)
{
	return last_error;
}

int gpu_fail(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
	va_end(ap);
	return err < 0 ? err : -err;
}

int gpu_have_cuda(void)
{
	return gpu_cuda() != NULL;
}

int gpu_open(const struct gpu_ops *ops, int index, gpu_dev **out)
{
	if (!ops)
		return gpu_fail(-ENOTSUP, "kvfs was built without CUDA support");
	if (index < 0)
		return gpu_fail(-ENODEV, "no device %d", index);
	return ops->open(index, out);
}

void gpu_close(gpu_dev *d)
{
	if (d)
		d->ops->close(d);
}

/* --- gather/scatter ---------------------------------------------------------------- */

uint64_t gpu_kv_seg_bytes(const struct gpu_kv_xfer *x)
{
	return (uint64_t)x->tokens * x->row_bytes * (x->v ? 2 : 1);
}

int gpu_kv_check(const struct gpu_kv_xfer *x)
{
	if (!x->k || !x->block_ids || !x->segs)
		return gpu_fail(-EINVAL, "gather/scatter: NULL pages, block table or segments");
	if (!x->nblocks || x->nblocks > GPU_KV_MAX_BLOCKS)
		return gpu_fail(-EINVAL, "gather/scatter: %" PRIu32 " blocks (1..%u)", x->nblocks,
				GPU_KV_MAX_BLOCKS);
	if (!x->tokens || !x->row_bytes || x->token_stride < x->row_bytes)
		return gpu_fail(-EINVAL,
				"gather/scatter: a row of %" PRIu64
				" bytes does not fit a token stride of %" PRIu64,
				x->row_bytes, x->token_stride);
	if ((uint64_t)x->tokens * x->row_bytes > UINT32_MAX)
		return gpu_fail(-EINVAL,
				"gather/scatter: %" PRIu32 " rows of %" PRIu64
				" bytes: a block's part must stay under 4 GiB",
				x->tokens, x->row_bytes);
	if (x->block_stride < (uint64_t)(x->tokens - 1) * x->token_stride + x->row_bytes)
		return gpu_fail(-EINVAL,
				"gather/scatter: %" PRIu32
				" tokens do not fit a block stride of %" PRIu64,
				x->tokens, x->block_stride);
	for (uint32_t i = 0; i < x->nblocks; i++)
		if (!x->segs[i])
			return gpu_fail(-EINVAL, "gather/scatter: segment %" PRIu32 " is NULL", i);
	return 0;
}

int gpu_kv_host(const struct gpu_kv_xfer *x)
{
	int rc = gpu_kv_check(x);
	unsigned parts = x->v ? 2 : 1;

	if (rc)
		return rc;
	for (uint32_t i = 0; i < x->nblocks; i++) {
		for (unsigned p = 0; p < parts; p++) {
			uint8_t *page =
				(p ? x->v : x->k) + (uint64_t)x->block_ids[i] * x->block_stride;
			uint8_t *seg = x->segs[i] + (uint64_t)p * x->tokens * x->row_bytes;

			if (x->token_stride == x->row_bytes) { /* the rows are one run */
				if (x->gather)
					memcpy(seg, page, x->tokens * x->row_bytes);
				else
					memcpy(page, seg, x->tokens * x->row_bytes);
				continue;
			}
			for (uint32_t t = 0; t < x->tokens; t++) {
				uint8_t *row = page + (uint64_t)t * x->token_stride;
				uint8_t *srow = seg + (uint64_t)t * x->row_bytes;

				if (x->gather)
					memcpy(srow, row, x->row_bytes);
				else
					memcpy(row, srow, x->row_bytes);
			}
		}
	}
	return 0;
}

void gpu_kv_args_init(const struct gpu_kv_xfer *x, struct gpu_kv_args *a)
{
	uint64_t bits = x->row_bytes | x->block_stride | x->token_stride | (uintptr_t)x->k |
			(uintptr_t)x->v;

	for (uint32_t i = 0; i < x->nblocks; i++)
		bits |= (uintptr_t)x->segs[i];
	memset(a, 0, sizeof(*a));
	a->unit = 16;
	while (a->unit > 1 && (bits & (a->unit - 1)))
		a->unit /= 2;
	a->k = x->k;
	a->v = x->v;
	a->block_stride = x->block_stride;
	a->token_stride = x->token_stride;
	a->row_bytes = x->row_bytes;
	a->tokens = x->tokens;
	a->parts = x->v ? 2 : 1;
	a->nblocks = x->nblocks;
	a->nparts = a->nblocks * a->parts;
	a->units_per_row = (uint32_t)(x->row_bytes / a->unit);
	a->units_per_part = a->tokens * a->units_per_row;
	a->contig = x->token_stride == x->row_bytes;
	a->block_ids = x->block_ids;
	a->segs = x->segs;
	a->gather = x->gather;
}

/* --- the pool ---------------------------------------------------------------------- */

struct gpu_pool {
	gpu_dev *dev;
	uint8_t *base;
	uint64_t bytes, block_bytes;
	uint32_t blocks;
	pthread_mutex_t lock;
	uint32_t *free_stack; /* indexes of free blocks; nfree of them */
	uint32_t nfree;
	uint8_t *used; /* 1 while a block is out */
	uint64_t gets, puts, full, bad_puts;
};

int gpu_pool_new(gpu_dev *d, uint64_t bytes, uint64_t block_bytes, gpu_pool **out)
{
	gpu_pool *p;
	size_t free_b = 0, total_b = 0;
	uint64_t blocks;
	int rc;

	if (!block_bytes || block_bytes % 256 || bytes < block_bytes)
		return gpu_fail(-EINVAL,
				"pool of %" PRIu64 " bytes in blocks of %" PRIu64
				": blocks must be a multiple of 256 bytes and fit the pool",
				bytes, block_bytes);
	blocks = bytes / block_bytes;
	if (blocks > UINT32_MAX)
		return gpu_fail(-EINVAL, "pool of %" PRIu64 " blocks: too many", blocks);
	p = calloc(1, sizeof(*p));
	if (!p)
		return gpu_fail(-ENOMEM, "out of host memory");
	p->dev = d;
	p->block_bytes = block_bytes;
	p->blocks = (uint32_t)blocks;
	p->bytes = blocks * block_bytes;
	pthread_mutex_init(&p->lock, NULL);
	p->free_stack = malloc(sizeof(*p->free_stack) * p->blocks);
	p->used = calloc(p->blocks, 1);
	if (!p->free_stack || !p->used) {
		rc = gpu_fail(-ENOMEM, "out of host memory");
		goto out_free;
	}
	if (d->ops->mem_info(d, &free_b, &total_b) == 0 && p->bytes > free_b) {
		rc = gpu_fail(-ENOMEM,
			      "out of memory: a pool of %" PRIu64
			      " bytes on device %d, which has %zu of %zu bytes free",
			      p->bytes, d->index, free_b, total_b);
		goto out_free;
	}
	rc = d->ops->mem_alloc(d, p->bytes, (void **)&p->base);
	if (rc)
		goto out_free;
	for (uint32_t i = 0; i < p->blocks; i++)
		p->free_stack[i] = p->blocks - 1 - i; /* block 0 is handed out first */
	p->nfree = p->blocks;
	*out = p;
	return 0;
out_free:
	free(p->used);
	free(p->free_stack);
	pthread_mutex_destroy(&p->lock);
	free(p);
	return rc;
}

void gpu_pool_free(gpu_pool *p)
{
	if (!p)
		return;
	p->dev->ops->mem_free(p->dev, p->base);
	free(p->used);
	free(p->free_stack);
	pthread_mutex_destroy(&p->lock);
	free(p);
}

int gpu_pool_get(gpu_pool *p, uint32_t n, uint32_t *idx)
{
	int rc = 0;

	if (!n)
		return gpu_fail(-EINVAL, "pool: 0 blocks asked for");
	pthread_mutex_lock(&p->lock);
	if (n > p->nfree) {
		p->full++;
		rc = gpu_fail(-ENOSPC, "pool: %" PRIu32 " blocks asked for, %" PRIu32 " free", n,
			      p->nfree);
		goto out;
	}
	for (uint32_t i = 0; i < n; i++) {
		idx[i] = p->free_stack[--p->nfree];
		p->used[idx[i]] = 1;
	}
	p->gets += n;
out:
	pthread_mutex_unlock(&p->lock);
	return rc;
}

void gpu_pool_put(gpu_pool *p, uint32_t n, const uint32_t *idx)
{
	pthread_mutex_lock(&p->lock);
	for (uint32_t i = 0; i < n; i++) {
		if (idx[i] >= p->blocks || !p->used[idx[i]]) {
			p->bad_puts++;
			continue;
		}
		p->used[idx[i]] = 0;
		p->free_stack[p->nfree++] = idx[i];
		p->puts++;
	}
	pthread_mutex_unlock(&p->lock);
}

void *gpu_pool_block(const gpu_pool *p, uint32_t idx)
{
	return idx < p->blocks ? p->base + (uint64_t)idx * p->block_bytes : NULL;
}

int gpu_pool_export(const gpu_pool *p, struct gpu_ipc *out)
{
	return p->dev->ops->ipc_export(p->dev, p->base, p->bytes, out);
}

void gpu_pool_get_stats(gpu_pool *p, struct gpu_pool_stats *st)
{
	pthread_mutex_lock(&p->lock);
	*st = (struct gpu_pool_stats){
		.bytes = p->bytes,
		.block_bytes = p->block_bytes,
		.blocks = p->blocks,
		.free_blocks = p->nfree,
		.gets = p->gets,
		.puts = p->puts,
		.full = p->full,
		.bad_puts = p->bad_puts,
	};
	pthread_mutex_unlock(&p->lock);
}

#ifndef KVFS_CUDA
const struct gpu_ops *gpu_cuda(void)
{
	return NULL;
}
#endif
