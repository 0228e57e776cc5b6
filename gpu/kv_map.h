/*
 * gpu/kv_map.h — private to gpu/: the index arithmetic of one gather/scatter
 * work item, shared by the CUDA kernel (gpu/kern.cu, one thread per item)
 * and the stand-in device (gpu/shm.c, a loop over the same items), so that
 * the tests that compare the stand-in with gpu_kv_host() byte for byte check
 * the very arithmetic the kernel runs.
 *
 * A transfer moves nblocks * parts * tokens rows of row_bytes, cut into
 * units of `unit` bytes (16, 8, 4, 2 or 1: the widest that divides the row,
 * both strides and every base address, so each access is aligned). Item u:
 *
 *   r = u % units_per_row               unit within the row
 *   t = (u / units_per_row) % tokens    token within the block
 *   p = (u / (units_per_row*tokens)) % parts     0: K (or latent), 1: V
 *   i = u / (units_per_row*tokens*parts)         block of the transfer
 *
 *   page byte = (p ? v : k) + block_ids[i]*block_stride + t*token_stride + r*unit
 *   seg byte  = segs[i] + (p*tokens + t)*row_bytes + r*unit
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
	uint64_t units_per_row, items;
	const uint32_t *block_ids; /* device-visible */
	uint8_t *const *segs;	   /* device-visible */
	int gather;
};

/* Byte addresses of item @u: *page in the engine's pages, *seg in a segment. */
GPU_HD void gpu_kv_item(const struct gpu_kv_args *a, uint64_t u, uint8_t **page, uint8_t **seg)
{
	uint64_t r = u % a->units_per_row;
	uint64_t rest = u / a->units_per_row;
	uint64_t t = rest % a->tokens;
	uint64_t p = (rest / a->tokens) % a->parts;
	uint64_t i = rest / a->tokens / a->parts;

	*page = (p ? a->v : a->k) + (uint64_t)a->block_ids[i] * a->block_stride +
		t * a->token_stride + r * a->unit;
	*seg = a->segs[i] + (p * a->tokens + t) * a->row_bytes + r * a->unit;
}

#endif
