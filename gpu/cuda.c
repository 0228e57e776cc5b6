/*
 * gpu/cuda.c — the CUDA implementation of the GPU layer (gpu_cuda()), on the
 * runtime API. Built only when the Makefile finds a CUDA toolkit; linked
 * with the static runtime (cudart_static), which loads the driver
 * (libcuda.so) itself at the first call, so a binary with CUDA support
 * starts on a machine without a GPU or driver and only opening a device
 * fails ("no CUDA driver (cudaErrorInsufficientDriver)").
 *
 * Devices: the runtime's current device is per thread, so every operation
 * first makes its device current (cheap: a thread-local compare).
 *
 * Streams: non-blocking CUDA streams. A gather/scatter needs its block table
 * and segment pointers in device memory; each stream owns a ring of TABLES
 * slots, each a pinned host table and a device table with an event that
 * marks when the kernel that read it has finished. A call waits for its slot
 * (normally long done), fills the pinned table, queues its copy to the
 * device table and the kernel (gpu/kern.cu), and records the slot's event,
 * so nothing in the call blocks on the stream.
 *
 * IPC: cudaIpcGetMemHandle/cudaIpcOpenMemHandle, with the device's UUID in
 * struct gpu_ipc so a handle from a process on another GPU is refused by
 * name (-EXDEV) before CUDA is asked, whatever CUDA_VISIBLE_DEVICES made of
 * the device numbers.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "gpu/gpu_i.h"

#define TABLES 8

/* gpu/kern.cu: launch the gather/scatter kernel. */
cudaError_t gpu_cuda_kv_launch(const struct gpu_kv_args *a, cudaStream_t s);

struct cuda_dev {
	gpu_dev base;
	cudaUUID_t uuid;
};

struct cuda_table {
	void *host; /* pinned: segs[GPU_KV_MAX_BLOCKS] then ids[GPU_KV_MAX_BLOCKS] */
	void *dev;
	cudaEvent_t done;
	bool used;
};

struct gpu_stream {
	struct cuda_dev *dev;
	cudaStream_t s;
	struct cuda_table tables[TABLES];
	unsigned next;
};

struct gpu_event {
	struct cuda_dev *dev;
	cudaEvent_t e;
};

#define TABLE_BYTES (GPU_KV_MAX_BLOCKS * (sizeof(void *) + sizeof(uint32_t)))

static int cu_errno(cudaError_t e)
{
	switch (e) {
	case cudaErrorInsufficientDriver:
	case cudaErrorSystemDriverMismatch:
	case cudaErrorCompatNotSupportedOnDevice:
		return -ENXIO;
	case cudaErrorNoDevice:
	case cudaErrorInvalidDevice:
		return -ENODEV;
	case cudaErrorMemoryAllocation:
		return -ENOMEM;
	case cudaErrorInvalidValue:
		return -EINVAL;
	case cudaErrorMapBufferObjectFailed:
	case cudaErrorInvalidResourceHandle:
		return -ESTALE;
	case cudaErrorNotReady:
		return -EAGAIN;
	default:
		return -EIO;
	}
}

/* Fail with CUDA's description and name: "what: no CUDA driver ... (cudaError...)". */
static int cu_fail(cudaError_t e, const char *what)
{
	int err = cu_errno(e);
	const char *reason = err == -ENXIO    ? "no CUDA driver"
			     : err == -ENODEV ? "no CUDA device"
			     : err == -ENOMEM ? "out of device memory"
					      : cudaGetErrorString(e);

	cudaGetLastError(); /* clear the non-sticky error so the next call starts clean */
	return gpu_fail(err, "%s: %s (%s)", what, reason, cudaGetErrorName(e));
}

static int cu_use(const struct cuda_dev *d)
{
	cudaError_t e = cudaSetDevice(d->base.index);

	return e == cudaSuccess ? 0 : cu_fail(e, "cudaSetDevice");
}

/* --- devices and memory -------------------------------------------------------------- */

static int cu_open(int index, gpu_dev **out)
{
	struct cudaDeviceProp prop;
	struct cuda_dev *d;
	cudaError_t e;
	int n = 0;

	e = cudaGetDeviceCount(&n);
	if (e != cudaSuccess)
		return cu_fail(e, "cudaGetDeviceCount");
	if (index >= n)
		return gpu_fail(-ENODEV, "no CUDA device %d (%d present)", index, n);
	if ((e = cudaSetDevice(index)) != cudaSuccess || (e = cudaFree(NULL)) != cudaSuccess ||
	    (e = cudaGetDeviceProperties(&prop, index)) != cudaSuccess)
		return cu_fail(e, "opening the CUDA device");
	d = calloc(1, sizeof(*d));
	if (!d)
		return gpu_fail(-ENOMEM, "out of host memory");
	d->base.ops = gpu_cuda();
	d->base.index = index;
	d->uuid = prop.uuid;
	*out = &d->base;
	return 0;
}

static void cu_close(gpu_dev *gd)
{
	free(gd);
}

static int cu_mem_info(gpu_dev *gd, size_t *free_b, size_t *total_b)
{
	cudaError_t e;
	int rc = cu_use((struct cuda_dev *)gd);

	if (rc)
		return rc;
	e = cudaMemGetInfo(free_b, total_b);
	return e == cudaSuccess ? 0 : cu_fail(e, "cudaMemGetInfo");
}

static int cu_mem_alloc(gpu_dev *gd, size_t bytes, void **out)
{
	cudaError_t e;
	int rc = cu_use((struct cuda_dev *)gd);

	if (rc)
		return rc;
	if (!bytes)
		return gpu_fail(-EINVAL, "allocation of 0 bytes");
	e = cudaMalloc(out, bytes);
	return e == cudaSuccess ? 0 : cu_fail(e, "cudaMalloc");
}

static void cu_mem_free(gpu_dev *gd, void *p)
{
	if (p && !cu_use((struct cuda_dev *)gd))
		cudaFree(p);
}

static int cu_host_alloc(gpu_dev *gd, size_t bytes, void **out)
{
	cudaError_t e;
	int rc = cu_use((struct cuda_dev *)gd);

	if (rc)
		return rc;
	e = cudaHostAlloc(out, bytes, cudaHostAllocPortable);
	return e == cudaSuccess ? 0 : cu_fail(e, "cudaHostAlloc");
}

static void cu_host_free(gpu_dev *gd, void *p)
{
	if (p)
		cudaFreeHost(p);
}

static int cu_memset(gpu_dev *gd, void *p, int byte, size_t bytes)
{
	cudaError_t e;
	int rc = cu_use((struct cuda_dev *)gd);

	if (rc)
		return rc;
	e = cudaMemset(p, byte, bytes);
	return e == cudaSuccess ? 0 : cu_fail(e, "cudaMemset");
}

/* --- streams ------------------------------------------------------------------------- */

static void cu_stream_free(gpu_stream *s)
{
	if (!s)
		return;
	cu_use(s->dev);
	if (s->s)
		cudaStreamSynchronize(s->s);
	for (unsigned i = 0; i < TABLES; i++) {
		if (s->tables[i].done)
			cudaEventDestroy(s->tables[i].done);
		if (s->tables[i].dev)
			cudaFree(s->tables[i].dev);
		if (s->tables[i].host)
			cudaFreeHost(s->tables[i].host);
	}
	if (s->s)
		cudaStreamDestroy(s->s);
	free(s);
}

static int cu_stream_new(gpu_dev *gd, gpu_stream **out)
{
	gpu_stream *s;
	cudaError_t e;
	int rc = cu_use((struct cuda_dev *)gd);

	if (rc)
		return rc;
	s = calloc(1, sizeof(*s));
	if (!s)
		return gpu_fail(-ENOMEM, "out of host memory");
	s->dev = (struct cuda_dev *)gd;
	if ((e = cudaStreamCreateWithFlags(&s->s, cudaStreamNonBlocking)) != cudaSuccess) {
		rc = cu_fail(e, "cudaStreamCreate");
		goto out_free;
	}
	for (unsigned i = 0; i < TABLES; i++) {
		struct cuda_table *t = &s->tables[i];

		if ((e = cudaHostAlloc(&t->host, TABLE_BYTES, cudaHostAllocDefault)) ||
		    (e = cudaMalloc(&t->dev, TABLE_BYTES)) ||
		    (e = cudaEventCreateWithFlags(&t->done, cudaEventDisableTiming))) {
			rc = cu_fail(e, "stream tables");
			goto out_free;
		}
	}
	*out = s;
	return 0;
out_free:
	cu_stream_free(s);
	return rc;
}

static int cu_copy(gpu_stream *s, void *dst, const void *src, size_t bytes, enum gpu_dir dir)
{
	enum cudaMemcpyKind kind = dir == GPU_H2D   ? cudaMemcpyHostToDevice
				   : dir == GPU_D2H ? cudaMemcpyDeviceToHost
						    : cudaMemcpyDeviceToDevice;
	cudaError_t e;
	int rc;

	if (dir < GPU_H2D || dir > GPU_D2D)
		return gpu_fail(-EINVAL, "copy: bad direction %d", (int)dir);
	if ((rc = cu_use(s->dev)))
		return rc;
	e = cudaMemcpyAsync(dst, src, bytes, kind, s->s);
	return e == cudaSuccess ? 0 : cu_fail(e, "cudaMemcpyAsync");
}

static int cu_copy_batch(gpu_stream *s, void *const *dsts, const void *const *srcs,
			 const size_t *sizes, size_t n, enum gpu_dir dir)
{
	struct cudaMemcpyAttributes attr = {.srcAccessOrder = cudaMemcpySrcAccessOrderStream};
	size_t idx = 0;
	cudaError_t e;
	int rc;

	if (dir < GPU_H2D || dir > GPU_D2D)
		return gpu_fail(-EINVAL, "copy: bad direction %d", (int)dir);
	if (!n)
		return 0;
	if ((rc = cu_use(s->dev)))
		return rc;
	e = cudaMemcpyBatchAsync(dsts, srcs, sizes, n, &attr, &idx, 1, s->s);
	if (e == cudaErrorNotSupported) { /* a driver without batches: one call each */
		cudaGetLastError();
		for (size_t i = 0; i < n; i++)
			if ((rc = cu_copy(s, dsts[i], srcs[i], sizes[i], dir)))
				return rc;
		return 0;
	}
	return e == cudaSuccess ? 0 : cu_fail(e, "cudaMemcpyBatchAsync");
}

static int cu_kv_map(gpu_stream *s, const struct gpu_kv_xfer *x)
{
	struct cuda_table *t = &s->tables[s->next];
	struct gpu_kv_args a;
	size_t seg_bytes = sizeof(void *) * x->nblocks, id_bytes = sizeof(uint32_t) * x->nblocks;
	cudaError_t e;
	int rc = gpu_kv_check(x);

	if (rc || (rc = cu_use(s->dev)))
		return rc;
	if (t->used && (e = cudaEventSynchronize(t->done)) != cudaSuccess)
		return cu_fail(e, "gather/scatter table");
	memcpy(t->host, x->segs, seg_bytes);
	memcpy((char *)t->host + seg_bytes, x->block_ids, id_bytes);
	if ((e = cudaMemcpyAsync(t->dev, t->host, seg_bytes + id_bytes, cudaMemcpyHostToDevice,
				 s->s)) != cudaSuccess)
		return cu_fail(e, "gather/scatter table");
	gpu_kv_args_init(x, &a);
	a.segs = t->dev;
	a.block_ids = (const uint32_t *)((char *)t->dev + seg_bytes);
	if ((e = gpu_cuda_kv_launch(&a, s->s)) != cudaSuccess)
		return cu_fail(e, "gather/scatter kernel");
	if ((e = cudaEventRecord(t->done, s->s)) != cudaSuccess)
		return cu_fail(e, "cudaEventRecord");
	t->used = true;
	s->next = (s->next + 1) % TABLES;
	return 0;
}

static int cu_stream_sync(gpu_stream *s)
{
	cudaError_t e;
	int rc = cu_use(s->dev);

	if (rc)
		return rc;
	e = cudaStreamSynchronize(s->s);
	return e == cudaSuccess ? 0 : cu_fail(e, "cudaStreamSynchronize");
}

/* --- events -------------------------------------------------------------------------- */

static int cu_event_new(gpu_dev *gd, gpu_event **out)
{
	gpu_event *ev;
	cudaError_t e;
	int rc = cu_use((struct cuda_dev *)gd);

	if (rc)
		return rc;
	ev = calloc(1, sizeof(*ev));
	if (!ev)
		return gpu_fail(-ENOMEM, "out of host memory");
	ev->dev = (struct cuda_dev *)gd;
	if ((e = cudaEventCreateWithFlags(&ev->e, cudaEventDisableTiming)) != cudaSuccess) {
		free(ev);
		return cu_fail(e, "cudaEventCreate");
	}
	*out = ev;
	return 0;
}

static void cu_event_free(gpu_event *ev)
{
	if (!ev)
		return;
	cu_use(ev->dev);
	cudaEventDestroy(ev->e);
	free(ev);
}

static int cu_event_record(gpu_event *ev, gpu_stream *s)
{
	cudaError_t e;
	int rc = cu_use(s->dev);

	if (rc)
		return rc;
	e = cudaEventRecord(ev->e, s->s);
	return e == cudaSuccess ? 0 : cu_fail(e, "cudaEventRecord");
}

static int cu_event_query(gpu_event *ev)
{
	cudaError_t e = cudaEventQuery(ev->e);

	if (e == cudaSuccess)
		return 0;
	if (e == cudaErrorNotReady)
		return -EAGAIN;
	return cu_fail(e, "cudaEventQuery");
}

static int cu_event_wait(gpu_event *ev)
{
	cudaError_t e = cudaEventSynchronize(ev->e);

	return e == cudaSuccess ? 0 : cu_fail(e, "cudaEventSynchronize");
}

/* --- IPC ----------------------------------------------------------------------------- */

_Static_assert(sizeof(cudaIpcMemHandle_t) == GPU_IPC_HANDLE_BYTES, "IPC handle size");

static int cu_ipc_export(gpu_dev *gd, void *p, size_t bytes, struct gpu_ipc *out)
{
	struct cuda_dev *d = (struct cuda_dev *)gd;
	cudaIpcMemHandle_t h;
	cudaError_t e;
	int rc = cu_use(d);

	if (rc)
		return rc;
	if ((e = cudaIpcGetMemHandle(&h, p)) != cudaSuccess)
		return cu_fail(e, "cudaIpcGetMemHandle");
	memset(out, 0, sizeof(*out));
	out->impl = GPU_IMPL_CUDA;
	out->device = gd->index;
	out->bytes = bytes;
	memcpy(out->uuid, d->uuid.bytes, sizeof(out->uuid));
	memcpy(out->handle, &h, sizeof(h));
	return 0;
}

static int cu_ipc_open(gpu_dev *gd, const struct gpu_ipc *ipc, void **out)
{
	struct cuda_dev *d = (struct cuda_dev *)gd;
	cudaIpcMemHandle_t h;
	cudaError_t e;
	int rc;

	if (ipc->impl != GPU_IMPL_CUDA)
		return gpu_fail(-EXDEV, "IPC handle of another implementation (%u)", ipc->impl);
	if (memcmp(ipc->uuid, d->uuid.bytes, sizeof(ipc->uuid)))
		return gpu_fail(-EXDEV, "IPC handle of another GPU (this is device %d)", gd->index);
	if ((rc = cu_use(d)))
		return rc;
	memcpy(&h, ipc->handle, sizeof(h));
	e = cudaIpcOpenMemHandle(out, h, cudaIpcMemLazyEnablePeerAccess);
	return e == cudaSuccess ? 0 : cu_fail(e, "cudaIpcOpenMemHandle");
}

static void cu_ipc_close(gpu_dev *gd, void *p)
{
	if (p && !cu_use((struct cuda_dev *)gd))
		cudaIpcCloseMemHandle(p);
}

static const struct gpu_ops cuda_ops = {
	.name = "cuda",
	.impl = GPU_IMPL_CUDA,
	.open = cu_open,
	.close = cu_close,
	.mem_info = cu_mem_info,
	.mem_alloc = cu_mem_alloc,
	.mem_free = cu_mem_free,
	.host_alloc = cu_host_alloc,
	.host_free = cu_host_free,
	.memset = cu_memset,
	.stream_new = cu_stream_new,
	.stream_free = cu_stream_free,
	.copy = cu_copy,
	.copy_batch = cu_copy_batch,
	.kv_map = cu_kv_map,
	.stream_sync = cu_stream_sync,
	.event_new = cu_event_new,
	.event_free = cu_event_free,
	.event_record = cu_event_record,
	.event_query = cu_event_query,
	.event_wait = cu_event_wait,
	.ipc_export = cu_ipc_export,
	.ipc_open = cu_ipc_open,
	.ipc_close = cu_ipc_close,
};

const struct gpu_ops *gpu_cuda(void)
{
	return &cuda_ops;
}
