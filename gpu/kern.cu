/*
 * gpu/kern.cu — the gather/scatter kernel: one thread per work item of
 * gpu/kv_map.h (the index arithmetic the stand-in device also runs, and that
 * the tests compare with the host implementation), a grid-stride loop, one
 * aligned load and store of `unit` bytes per item.
 */
#include <cuda_runtime.h>
#include <stdint.h>

#include "gpu/kv_map.h"


template <typename T>
__global__ void kv_map_kernel(struct gpu_kv_args a)
{
	uint64_t stride = (uint64_t)blockDim.x * gridDim.x;

	for (uint64_t u = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; u < a.items; u += stride) {
		uint8_t *page, *seg;

		gpu_kv_item(&a, u, &page, &seg);
		if (a.gather)
			*(T *)seg = *(const T *)page;
		else
			*(T *)page = *(const T *)seg;
	}
}

extern "C" cudaError_t gpu_cuda_kv_launch(const struct gpu_kv_args *a, cudaStream_t s)
{
	const unsigned threads = 256;
	uint64_t want = (a->items + threads - 1) / threads;
	unsigned blocks = (unsigned)(want < 65535 ? want : 65535);

	switch (a->unit) {
	case 16:
		kv_map_kernel<uint4><<<blocks, threads, 0, s>>>(*a);
		break;
	case 8:
		kv_map_kernel<uint2><<<blocks, threads, 0, s>>>(*a);
		break;
	case 4:
		kv_map_kernel<uint32_t><<<blocks, threads, 0, s>>>(*a);
		break;
	case 2:
		kv_map_kernel<uint16_t><<<blocks, threads, 0, s>>>(*a);
		break;
	default:
		kv_map_kernel<uint8_t><<<blocks, threads, 0, s>>>(*a);
		break;
	}
	return cudaGetLastError();
}
