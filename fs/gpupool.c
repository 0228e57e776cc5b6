/*
 * fs/gpupool.c — the daemon's GPU pools: `--gpu DEV:SIZE` opens device DEV
 * and allocates SIZE bytes of it once, at start, carved into blocks of the
 * DRAM page size (gpu_pool). A device that is missing, a machine without a
 * driver, a build without CUDA or a pool larger than the device's free
 * memory stops the start with one line saying which.
 *
 * As built, the pools are allocated, shown in the stats and freed at
 * unmount, and the devices they are on take engines' device-buffer
 * registrations (fastpath.c): the daemon maps an engine's IPC handle on
 * whichever of its devices the memory is on. The pools are not yet a tier
 * backend: that waits for the tier backend interface (DESIGN §10 has the
 * plan). `--gpu-standin` puts the pools on gpu_shm(), the tests'
 * stand-in device, so that the start-up checks run without a GPU; it is
 * never chosen otherwise.
 *
 * Locking: none; the pools are made before the mount and freed after it.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/ring.h"
#include "core/util.h"
#include "fs/fs_i.h"
#include "gpu/gpu.h"

struct gpupool {
	unsigned n;
	gpu_dev *dev[8];
	gpu_pool *pool[8];
};

int gpupool_start(struct kvfs_fs *fs, char *err, size_t errlen)
{
	const struct kvfs_config *c = &fs->cfg;
	const struct gpu_ops *ops = c->gpu_standin ? gpu_shm() : gpu_cuda();
	uint64_t block = c->page_size ? c->page_size : 64 << 10;
	struct gpupool *g;
	char size[32];
	int rc = 0;

	if (!c->gpu_count)
		return 0;
	g = calloc(1, sizeof(*g));
	if (!g) {
		snprintf(err, errlen, "--gpu: out of memory");
		return -ENOMEM;
	}
	fs->gpu = g;
	for (unsigned i = 0; i < c->gpu_count; i++) {
		kvfs_fmt_size(c->gpu[i].bytes, size, sizeof(size));
		rc = gpu_open(ops, c->gpu[i].dev, &g->dev[i]);
		if (!rc) {
			g->n = i + 1;
			rc = gpu_pool_new(g->dev[i], c->gpu[i].bytes, block, &g->pool[i]);
		}
		if (rc) {
			snprintf(err, errlen, "--gpu %d:%s: %s", c->gpu[i].dev, size, gpu_error());
			return rc;
		}
		log_info("GPU pool on %s device %d: %s in blocks of %" PRIu64
			 " bytes (not yet a tier backend)",
			 ops->name, c->gpu[i].dev, size, block);
	}
	return 0;
}

void gpupool_stop(struct kvfs_fs *fs)
{
	struct gpupool *g = fs->gpu;

	if (!g)
		return;
	for (unsigned i = 0; i < g->n; i++) {
		gpu_pool_free(g->pool[i]);
		gpu_close(g->dev[i]);
	}
	free(g);
	fs->gpu = NULL;
}

int gpupool_ipc_open(struct kvfs_fs *fs, const struct kvfs_ring_devreg *rec, pid_t owner,
		     gpu_dev **dev, void **mem)
{
	struct gpupool *g = fs->gpu;
	struct gpu_ipc h = {
		.impl = rec->kind, .device = rec->device, .bytes = rec->offset + rec->bytes};
	int rc = -EXDEV;

	memcpy(h.uuid, rec->uuid, sizeof(h.uuid));
	memcpy(h.handle, rec->handle, sizeof(h.handle));
	if (!g || !g->n)
		return gpu_fail(-ENODEV, "this daemon has no --gpu device");
	/*
	 * Only the process that exported memory may have us write into it. The
	 * stand-in's handles say who that is; CUDA's legacy IPC handles do not
	 * (DESIGN §10: shareable handles passed as descriptors are next).
	 */
	if (rec->kind == GPU_IMPL_SHM && gpu_shm_ipc_owner(&h) && gpu_shm_ipc_owner(&h) != owner)
		return gpu_fail(-EPERM, "IPC handle exported by pid %d, registered by pid %d",
				gpu_shm_ipc_owner(&h), (int)owner);
	/* the device it is on: the one whose open does not say "another device" */
	for (unsigned i = 0; i < g->n && rc == -EXDEV; i++)
		if ((rc = g->dev[i]->ops->ipc_open(g->dev[i], &h, mem)) == 0)
			*dev = g->dev[i];
	return rc;
}

void gpupool_ipc_close(gpu_dev *dev, void *mem)
{
	dev->ops->ipc_close(dev, mem);
}

unsigned gpupool_stats(struct kvfs_fs *fs, struct gpupool_stat *out, unsigned max)
{
	struct gpupool *g = fs->gpu;
	unsigned n = 0;

	for (; g && n < g->n && n < max; n++) {
		struct gpu_pool_stats st;

		gpu_pool_get_stats(g->pool[n], &st);
		out[n] = (struct gpupool_stat){.device = g->dev[n]->index,
					       .impl = g->dev[n]->ops->name,
					       .bytes = st.bytes,
					       .block_bytes = st.block_bytes,
					       .blocks = st.blocks,
					       .free_blocks = st.free_blocks};
	}
	return n;
}
