/*
 * gpu/kern.cu — the gather/scatter kernel, on the index arithmetic of
 * gpu/kv_map.h (which the stand-in device also runs, and the tests compare
 * with the host implementation): a CUDA block per part of a KV block
 * (grid-stride over parts), its threads over the part's units, one aligned
 * load and store of `unit` bytes each.
 */
#include <cuda_runtime.h>
#include <stdint.h>

#include "gpu/kv_map.h"

template <typename T> __global__ void kv_map_kernel(struct gpu_kv_args a)
{
	for (uint32_t bp = blockIdx.x; bp < a.nparts; bp += gridDim.x) {
		uint8_t *page, *seg;

		gpu_kv_part(&a, bp, &page, &seg);
		for (uint32_t u = threadIdx.x; u < a.units_per_part; u += blockDim.x) {
			uint64_t po, so;

			gpu_kv_unit(&a, u, &po, &so);
			if (a.gather)
				*(T *)(seg + so) = *(const T *)(page + po);
			else
				*(T *)(page + po) = *(const T *)(seg + so);
		}
	}
}

extern "C" cudaError_t gpu_cuda_kv_launch(const struct gpu_kv_args *a, cudaStream_t s)
{
	/* a warp multiple, up to 256: small parts (odd fp8 rows) do not idle 256 threads */
	unsigned threads = a->units_per_part < 256 ? 32 * ((a->units_per_part + 31) / 32) : 256;
	unsigned blocks = a->nparts < 65535 ? a->nparts : 65535;

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
