/*
 * gpu/kv_map.h — private to gpu/: the index arithmetic of a gather/scatter,
 * shared by the CUDA kernel (gpu/kern.cu) and the stand-in device
 * (gpu/shm.c), which runs the same loops one item after another, so that
 * the tests that compare the stand-in with gpu_kv_host() byte for byte
 * check the very arithmetic the kernel runs.
 *
 * A transfer moves nparts = nblocks * parts parts (the K rows, or the V
 * rows, or the MLA latents, of one block); each part is `tokens` rows of
 * row_bytes, cut into units of `unit` bytes (16, 8, 4, 2 or 1: the widest
 * that divides the row, both strides and every base address, so each
 * access is aligned). The kernel gives each part to a CUDA block (a
 * grid-stride loop) and its units to the block's threads:
 *
 *   part bp:  i = bp / parts (block of the transfer), p = bp % parts (K, V)
 *             page = (p ? v : k) + block_ids[i] * block_stride
 *             seg  = segs[i] + p * tokens * row_bytes
 *   unit u of a part (u < tokens * units_per_row):
 *             contiguous rows (token_stride == row_bytes): both at u * unit
 *             else t = u / units_per_row, r = u % units_per_row:
 *             page + t * token_stride + r * unit, seg + t * row_bytes + r * unit
 *
 * The part's arithmetic runs once per part; a unit's is at most one 32-bit
 * division (gpu_kv_check() keeps a part under 4 GiB), none when rows are
 * contiguous (vLLM's layouts), so the kernel stays bound by memory.
 */
#ifndef KVFS_GPU_KV_MAP_H
#define KVFS_GPU_KV_MAP_H

#include <stdint.h>

#ifdef __CUDACC__
#define GPU_HD __host__ __device__ __forceinline__
#else
#define GPU_HD static inline
#endif

struct gpu_kv_args {
	uint8_t *k, *v;
	uint64_t block_stride, token_stride, row_bytes;
	uint32_t tokens, parts, nblocks, unit;
	uint32_t nparts; /* nblocks * parts */
	uint32_t units_per_row;
	uint32_t units_per_part;   /* tokens * units_per_row */
	int contig;		   /* token_stride == row_bytes */
	const uint32_t *block_ids; /* device-visible */
	uint8_t *const *segs;	   /* device-visible */
	int gather;
};

/* Where part @bp starts: *page in the engine's pages, *seg in its segment. */
GPU_HD void gpu_kv_part(const struct gpu_kv_args *a, uint32_t bp, uint8_t **page, uint8_t **seg)
{
	uint32_t i = bp / a->parts, p = bp % a->parts;

	*page = (p ? a->v : a->k) + (uint64_t)a->block_ids[i] * a->block_stride;
	*seg = a->segs[i] + (uint64_t)p * a->tokens * a->row_bytes;
}

/* Offsets of unit @u of a part from its page and segment starts. */
GPU_HD void gpu_kv_unit(const struct gpu_kv_args *a, uint32_t u, uint64_t *page_off,
			uint64_t *seg_off)
{
	uint32_t t, r;

	if (a->contig) {
		*page_off = *seg_off = (uint64_t)u * a->unit;
		return;
	}
	t = u / a->units_per_row;
	r = u % a->units_per_row;
	*page_off = (uint64_t)t * a->token_stride + (uint64_t)r * a->unit;
	*seg_off = (uint64_t)t * a->row_bytes + (uint64_t)r * a->unit;
}

#endif
