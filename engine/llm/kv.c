/*
 * engine/llm/kv.c — the paged KV cache, as vLLM keeps it.
 *
 * One pool of fixed-size blocks per layer and per K/V. A sequence owns a
 * block table (block ids, in position order); position p lives in block
 * table[p / block_tokens], row p % block_tokens. Blocks are handed out from
 * a stack, so a sequence's blocks are generally not adjacent — the attention
 * code must go through the table (or eng_kv_gather), never assume a
 * contiguous context.
 *
 * Memory layout (one allocation, kvfs_alloc() when there is a namespace so
 * the fast path can write loaded blocks straight into it):
 *
 *   [layer 0 K: nblocks x block] [layer 0 V: ...] [layer 1 K] ...
 *   block = block_tokens rows of kv_heads * head_dim floats
 *
 * which is exactly what struct kvfs_kv_pages describes (token_stride = one
 * row, block_stride = one block). Not thread-safe: one engine, one thread
 * (libkvfs's loader writes blocks the engine reserved for it).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "engine/llm/llm.h"

int eng_kv_init(struct eng_kv *kv, uint32_t layers, uint32_t kv_heads, uint32_t head_dim,
		uint32_t block_tokens, uint32_t nblocks, kvfs_ns *ns)
{
	size_t part;

	memset(kv, 0, sizeof(*kv));
	if (!layers || !kv_heads || !head_dim || !block_tokens || !nblocks)
		return -EINVAL;
	kv->layers = layers;
	kv->kv_heads = kv_heads;
	kv->head_dim = head_dim;
	kv->block_tokens = block_tokens;
	kv->nblocks = nblocks;
	kv->row_floats = (size_t)kv_heads * head_dim;
	kv->block_floats = kv->row_floats * block_tokens;
	part = kv->block_floats * nblocks; /* floats of one layer's K (or V) */
	kv->bytes = part * sizeof(float) * 2 * layers;
	kv->ns = ns;
	if (ns) {
		kv->mem = kvfs_alloc(ns, kv->bytes);
	} else {
		kv->mem = mmap(NULL, kv->bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			       -1, 0);
		if (kv->mem == MAP_FAILED)
			kv->mem = NULL;
	}
	kv->layer = calloc(layers, sizeof(*kv->layer));
	kv->free_ids = malloc(sizeof(*kv->free_ids) * nblocks);
	if (!kv->mem || !kv->layer || !kv->free_ids) {
		eng_kv_destroy(kv);
		return -ENOMEM;
	}
	for (uint32_t l = 0; l < layers; l++) {
		kv->layer[l].k = kv->mem + (size_t)(2 * l) * part;
		kv->layer[l].v = kv->mem + (size_t)(2 * l + 1) * part;
		kv->layer[l].block_stride = kv->block_floats * sizeof(float);
		kv->layer[l].token_stride = kv->row_floats * sizeof(float);
	}
	kv->pages.layers = kv->layer;
	/* Block 0 on top: ids come out 0, 1, 2... at first and scattered after reuse. */
	for (uint32_t i = 0; i < nblocks; i++)
		kv->free_ids[i] = nblocks - 1 - i;
	kv->nfree = nblocks;
	return 0;
}

void eng_kv_destroy(struct eng_kv *kv)
{
	if (kv->mem) {
		if (kv->ns)
			kvfs_free(kv->ns, kv->mem, kv->bytes);
		else
			munmap(kv->mem, kv->bytes);
	}
	free(kv->layer);
	free(kv->free_ids);
	memset(kv, 0, sizeof(*kv));
}

int eng_kv_alloc_block(struct eng_kv *kv, uint32_t *id)
{
	if (!kv->nfree)
		return -ENOSPC;
	*id = kv->free_ids[--kv->nfree];
	return 0;
}

void eng_kv_free_block(struct eng_kv *kv, uint32_t id)
{
	kv->free_ids[kv->nfree++] = id;
}

float *eng_kv_row(const struct eng_kv *kv, uint32_t layer, int v, const uint32_t *table, size_t pos)
{
	float *base = v ? kv->layer[layer].v : kv->layer[layer].k;

	return base + (size_t)table[pos / kv->block_tokens] * kv->block_floats +
	       (pos % kv->block_tokens) * kv->row_floats;
}

void eng_kv_scatter(const struct eng_kv *kv, uint32_t layer, const uint32_t *table, size_t pos,
		    const float *k, const float *v)
{
	memcpy(eng_kv_row(kv, layer, 0, table, pos), k, kv->row_floats * sizeof(float));
	memcpy(eng_kv_row(kv, layer, 1, table, pos), v, kv->row_floats * sizeof(float));
}

void eng_kv_gather(const struct eng_kv *kv, uint32_t layer, const uint32_t *table, size_t n,
		   size_t upto, uint32_t head, float *k, float *v)
{
	size_t D = kv->head_dim, T = kv->block_tokens;

	for (size_t p = 0; p < n; p += T) {
		size_t blk = (size_t)table[p / T] * kv->block_floats + head * D;
		size_t rows = n - p < T ? n - p : T;

		for (size_t r = 0; r < rows; r++) {
			size_t off = blk + r * kv->row_floats;

			if (k)
				memcpy(k + (p + r) * D, (float *)kv->layer[layer].k + off,
				       D * sizeof(float));
			if (v)
				memcpy(v + (p + r) * D, (float *)kv->layer[layer].v + off,
				       D * sizeof(float));
		}
	}
	if (upto > n) {
		if (k)
			memset(k + n * D, 0, (upto - n) * D * sizeof(float));
		if (v)
			memset(v + n * D, 0, (upto - n) * D * sizeof(float));
	}
}
