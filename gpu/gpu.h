/*
 * gpu/gpu.h — the GPU layer (DESIGN §10): device memory, a pool carved into
 * blocks, asynchronous copies on streams with completion events, CUDA IPC
 * memory handles, and the gather/scatter between engines' paged KV layouts
 * and the native block's contiguous per-layer segments.
 *
 * A device is reached through an ops table, `struct gpu_ops`. There are two:
 *
 *   gpu_cuda()  the CUDA runtime (gpu/cuda.c, kernels in gpu/kern.cu), linked
 *               statically so that a binary built with it starts on a machine
 *               without a GPU or driver; NULL when kvfs was built without a
 *               CUDA toolkit.
 *   gpu_shm()   a stand-in for tests only: "device memory" is host shared
 *               memory (one memfd per allocation), an IPC handle names that
 *               memfd by the exporting process and descriptor, and a stream
 *               is a thread that runs its queue in order. It runs the same
 *               gather/scatter index arithmetic as the CUDA kernels
 *               (gpu/kv_map.h). Callers choose it explicitly; nothing ever
 *               falls back to it.
 *
 * Device pointers are plain `void *` (CUDA's unified addressing); host
 * pointers given to copies must be host memory, pinned for full speed.
 *
 * Errors: every function returns 0 or a negative errno and, on failure, sets
 * a one-line reason for the calling thread that gpu_error() returns, with the
 * CUDA error name when CUDA gave one ("no CUDA driver
 * (cudaErrorInsufficientDriver)"). The mapping:
 *
 *   -ENXIO    no driver (or it is too old for this runtime)
 *   -ENODEV   no device with that index
 *   -ENOMEM   device (or pinned host) memory exhausted
 *   -EINVAL   a bad argument, or an IPC handle that is malformed
 *   -EXDEV    an IPC handle of another implementation or device
 *   -ESTALE   an IPC handle whose memory is gone (exporter exited or freed it)
 *   -ENOSPC   the pool has no free block
 *   -EAGAIN   an event that has not completed yet (gpu_event_query)
 *   -EIO      any other device error (a failed copy or kernel)
 *
 * Threads: a device, a pool and the functions on them may be used from any
 * thread; a stream and its events belong to one thread at a time.
 */
#ifndef KVFS_GPU_H
#define KVFS_GPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct gpu_ops;

/* An open device. Implementations embed it first (a wrapper can stack). */
typedef struct gpu_dev {
	const struct gpu_ops *ops;
	int index;
} gpu_dev;

typedef struct gpu_stream gpu_stream;
typedef struct gpu_event gpu_event;
typedef struct gpu_pool gpu_pool;

enum gpu_impl {
	GPU_IMPL_CUDA = 1,
	GPU_IMPL_SHM = 2,
};

/*
 * An exported device allocation, as it travels between processes (64 bytes
 * of handle, as cudaIpcMemHandle_t). Plain bytes: safe to copy anywhere.
 */
#define GPU_IPC_HANDLE_BYTES 64
struct gpu_ipc {
	uint32_t impl;	  /* enum gpu_impl */
	int32_t device;	  /* the exporter's device index */
	uint64_t bytes;	  /* size of the allocation */
	uint8_t uuid[16]; /* the exporter's device UUID (CUDA; zero for the stand-in) */
	uint8_t handle[GPU_IPC_HANDLE_BYTES];
};

enum gpu_dir {
	GPU_H2D = 1,
	GPU_D2H = 2,
	GPU_D2D = 3,
};

/*
 * A gather/scatter between an engine's paged KV memory of one layer and the
 * native block's segments of that layer (include/kvfs/format.h): for each i
 * < nblocks, engine block block_ids[i] <-> segment segs[i]. A segment holds
 * the K rows of `tokens` tokens then their V rows (kind KV), or only the
 * rows (MLA, v NULL). Engine token t of block b starts at
 * k + b * block_stride + t * token_stride (and the same from v).
 *
 * The three engine layouts this covers: vLLM's separate K and V caches
 * [num_blocks, block_size, num_kv_heads, head_dim] (k, v two tensors,
 * block_stride = block_size * row); K and V interleaved per block
 * [num_blocks, 2, block_size, heads, dim] (v = k + block_size * row,
 * block_stride = 2 * block_size * row); MLA [num_blocks, block_size, dim].
 */
struct gpu_kv_xfer {
	uint8_t *k, *v; /* device (engine pages) */
	uint64_t block_stride;
	uint64_t token_stride;
	uint64_t row_bytes;	   /* num_kv_heads * head_dim * dtype size */
	uint32_t tokens;	   /* tokens per block */
	uint32_t nblocks;	   /* 1..GPU_KV_MAX_BLOCKS */
	const uint32_t *block_ids; /* host array of nblocks */
	uint8_t *const *segs;	   /* host array of nblocks device pointers */
	bool gather;		   /* true: pages -> segments (save); false: segments -> pages */
};

#define GPU_KV_MAX_BLOCKS 8192u

struct gpu_ops {
	const char *name; /* "cuda" or "shm" */
	uint32_t impl;	  /* enum gpu_impl */

	/* @return 0; -ENXIO, -ENODEV, -ENOMEM (cannot create a context). */
	int (*open)(int index, gpu_dev **out);
	void (*close)(gpu_dev *d);
	/* Free and total device memory. @return 0; -EIO. */
	int (*mem_info)(gpu_dev *d, size_t *free_bytes, size_t *total_bytes);

	/* Device memory. @return 0; -ENOMEM; -EINVAL (0 bytes). */
	int (*mem_alloc)(gpu_dev *d, size_t bytes, void **out);
	void (*mem_free)(gpu_dev *d, void *p);
	/* Pinned host memory (page-locked, for full-speed copies). @return 0; -ENOMEM. */
	int (*host_alloc)(gpu_dev *d, size_t bytes, void **out);
	void (*host_free)(gpu_dev *d, void *p);
	/* Fill device memory. Synchronous. @return 0; -EINVAL; -EIO. */
	int (*memset)(gpu_dev *d, void *p, int byte, size_t bytes);

	/* @return 0; -ENOMEM. */
	int (*stream_new)(gpu_dev *d, gpu_stream **out);
	/* Waits for the stream's work, then frees it. Safe on NULL. */
	void (*stream_free)(gpu_stream *s);
	/* Queue a copy. @return 0; -EINVAL; -EIO. */
	int (*copy)(gpu_stream *s, void *dst, const void *src, size_t bytes, enum gpu_dir dir);
	/*
	 * Queue @n copies of one direction as one batch (CUDA:
	 * cudaMemcpyBatchAsync, one call for all; copies within a batch run in
	 * no particular order, so they must not overlap). The arrays may be
	 * reused once this returns; the sources must stay valid until the
	 * stream has passed the batch. @return 0; -EINVAL; -EIO.
	 */
	int (*copy_batch)(gpu_stream *s, void *const *dsts, const void *const *srcs,
			  const size_t *sizes, size_t n, enum gpu_dir dir);
	/*
	 * Queue a gather/scatter (its host arrays may be reused once this
	 * returns). The caller checks @x first with gpu_kv_check().
	 * @return 0; -EINVAL; -ENOMEM; -EIO.
	 */
	int (*kv_map)(gpu_stream *s, const struct gpu_kv_xfer *x);
	/* Wait for everything queued on @s. @return 0; -EIO (a queued op failed). */
	int (*stream_sync)(gpu_stream *s);

	/* @return 0; -ENOMEM. */
	int (*event_new)(gpu_dev *d, gpu_event **out);
	void (*event_free)(gpu_event *e);
	/* Mark the point in @s that @e completes at. @return 0; -EIO. */
	int (*event_record)(gpu_event *e, gpu_stream *s);
	/* @return 0 (done); -EAGAIN (pending); -EIO (work before it failed). */
	int (*event_query)(gpu_event *e);
	/* @return 0; -EIO. */
	int (*event_wait)(gpu_event *e);

	/*
	 * Export an allocation of @bytes from mem_alloc() (its start) for
	 * another process. @return 0; -EINVAL (not such an allocation).
	 */
	int (*ipc_export)(gpu_dev *d, void *p, size_t bytes, struct gpu_ipc *out);
	/*
	 * Map another process's exported allocation into this one (at least
	 * h->bytes of it, from its start). Checks the handle's implementation
	 * and device against @d.
	 * @return 0; -EINVAL (malformed); -EXDEV (other implementation or
	 * device); -ESTALE (gone); -ENOMEM; -EIO.
	 */
	int (*ipc_open)(gpu_dev *d, const struct gpu_ipc *h, void **out);
	void (*ipc_close)(gpu_dev *d, void *p);
};

/* The CUDA runtime, or NULL when built without CUDA. */
const struct gpu_ops *gpu_cuda(void);
/* The host-memory stand-in, for tests (see above). */
const struct gpu_ops *gpu_shm(void);
/*
 * Stand-in controls, for tests: how many devices gpu_shm() has (a negative
 * count: "no driver") and how many bytes each may allocate; and stopping
 * (@hold) or restarting a stream's worker before its next operation.
 */
void gpu_shm_configure(int devices, uint64_t bytes_per_device);
void gpu_shm_stream_hold(gpu_stream *s, bool hold);
/* The process that exported a stand-in handle (0 if @h is not a stand-in handle). */
int gpu_shm_ipc_owner(const struct gpu_ipc *h);
/* 1 if this build has CUDA support, else 0. */
int gpu_have_cuda(void);

/* The calling thread's reason for its last failure ("" if none). */
const char *gpu_error(void);
/* Set that reason (for implementations); @return -@err as given, negative. */
int gpu_fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Open device @index with @ops. @return as gpu_ops.open. */
int gpu_open(const struct gpu_ops *ops, int index, gpu_dev **out);
/* Safe on NULL. */
void gpu_close(gpu_dev *d);

/*
 * Check a transfer: counts in range, row fits the token stride, a block's
 * tokens fit its stride, no NULL pointer. @return 0; -EINVAL with gpu_error().
 */
int gpu_kv_check(const struct gpu_kv_xfer *x);

/*
 * The host implementation of a gather/scatter: the same transfer as
 * gpu_ops.kv_map, row by row with memcpy, on host pointers. The reference
 * the tests compare the device implementations against; also used by the
 * daemon when the pages are host memory. @return 0; -EINVAL.
 */
int gpu_kv_host(const struct gpu_kv_xfer *x);

/* Bytes one block's segment holds: tokens * row_bytes * (v ? 2 : 1). */
uint64_t gpu_kv_seg_bytes(const struct gpu_kv_xfer *x);

/*
 * The pool: one device allocation of @bytes made at start, carved into
 * blocks of @block_bytes (a multiple of 256), handed out from a free list.
 * @return 0; -EINVAL (bytes < block_bytes, bad block size); -ENOMEM with
 * gpu_error() saying how much the device has free.
 */
int gpu_pool_new(gpu_dev *d, uint64_t bytes, uint64_t block_bytes, gpu_pool **out);
/* Free the pool's memory. Every block must have been put back. Safe on NULL. */
void gpu_pool_free(gpu_pool *p);
/*
 * Take @n blocks (not necessarily adjacent); their indexes go to @idx.
 * All or nothing. @return 0; -ENOSPC (fewer than @n free); -EINVAL (n == 0).
 */
int gpu_pool_get(gpu_pool *p, uint32_t n, uint32_t *idx);
/* Give blocks back. A bad or free index is ignored and counted. */
void gpu_pool_put(gpu_pool *p, uint32_t n, const uint32_t *idx);
/* Device address of block @idx (NULL if out of range). */
void *gpu_pool_block(const gpu_pool *p, uint32_t idx);
/* Export the whole pool for another process (block i at offset i * block_bytes). */
int gpu_pool_export(const gpu_pool *p, struct gpu_ipc *out);

struct gpu_pool_stats {
	uint64_t bytes, block_bytes;
	uint32_t blocks, free_blocks;
	uint64_t gets, puts, full, bad_puts;
};
void gpu_pool_get_stats(gpu_pool *p, struct gpu_pool_stats *st);

#ifdef __cplusplus
}
#endif
#endif
