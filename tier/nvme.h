/*
 * tier/nvme.h — private to tier/: the NVMe segment store.
 *
 * One or more directories on local NVMe, each holding preallocated segment
 * files, managed in pages of the DRAM page size. Files are stored as lists
 * of extents (runs of pages on one device), striped across the devices in
 * extent-sized chunks. All data I/O goes through io_uring with O_DIRECT,
 * registered files, and optionally caller memory registered as fixed buffers; each
 * extent carries an XXH3-64 checksum of its bytes, checked on every read.
 *
 * The store keeps no free list on disk: the free map lives in memory and is
 * rebuilt at start from the extents the catalog names (nvme_reserve()).
 *
 * Threads: every function may be called from any thread; I/O functions use
 * a ring per calling thread, so threads do not serialise on one ring.
 *
 * All functions return 0 or a negative errno unless stated otherwise.
 */
#ifndef KVFS_TIER_NVME_H
#define KVFS_TIER_NVME_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

struct nvme_store;

struct nvme_dev_config {
	const char *dir; /* created if missing */
	uint64_t bytes;	 /* capacity, rounded down to whole pages */
};

/* A run of pages on one device holding `len` bytes of a file. 32 bytes. */
struct nvme_extent {
	uint16_t dev;	 /* index into the configured devices */
	uint16_t flags;	 /* 0 */
	uint32_t npages; /* pages allocated */
	uint64_t page;	 /* first page on the device */
	uint32_t len;	 /* bytes of data in it (the last extent of a file may be short) */
	uint32_t pad;
	uint64_t csum; /* XXH3-64 of those len bytes */
};

struct nvme_stats {
	uint64_t capacity; /* bytes, all devices */
	uint64_t used;	   /* bytes in allocated pages */
	uint64_t reads, read_bytes, writes, write_bytes, syncs;
	uint64_t read_errors, write_errors, csum_errors;
};

/*
 * Open the store: for each device, lock its directory (a second daemon is
 * refused with -EBUSY), create or open its segment files and preallocate
 * them, check the store's identity file (page size, device size; a
 * mismatch is -EINVAL with a reason), and open them O_DIRECT.
 * @page_size is the DRAM page size; @extent_pages the largest extent.
 * On failure a one-line reason is written to @err.
 * @return 0; -EINVAL; -EBUSY; -ENOSPC (the filesystem cannot hold the
 * segments); -EOPNOTSUPP (no fallocate: segments are never sparse);
 * -EMFILE (RLIMIT_NOFILE's hard limit is below the segment count; the soft
 * limit is raised when needed); or the errno of the filesystem or io_uring.
 */
int nvme_open(const struct nvme_dev_config *devs, unsigned ndevs, uint32_t page_size,
	      uint32_t extent_pages, struct nvme_store **out, char *err, size_t errlen);

/*
 * Close the store (it does not sync: call nvme_sync first). No I/O may be in
 * flight; threads that did I/O may outlive it (their rings are freed here).
 */
void nvme_close(struct nvme_store *s);

/*
 * Register memory as fixed buffers (the daemon no longer does: its DRAM
 * store is a file per object, not one arena; the tests still use it): I/O whose buffers lie
 * inside it uses IORING_OP_{READ,WRITE}_FIXED. Call once, before I/O (a
 * later call replaces the region; each thread's ring follows at its next
 * I/O). The memory must stay mapped until the store is closed.
 * @return 0; -EINVAL (NULL, empty or not 4096-aligned); or the error of the
 * registration (-ENOMEM under RLIMIT_MEMLOCK without CAP_IPC_LOCK, -EFAULT
 * for memory that cannot be pinned): the store then works with plain I/O.
 */
int nvme_register_memory(struct nvme_store *s, void *base, uint64_t bytes);

/*
 * reads/writes count successful calls; read_errors/write_errors failed
 * calls (device or injected errors; a failed nvme_sync is a write error);
 * csum_errors counts extents that failed their checksum.
 */
void nvme_get_stats(struct nvme_store *s, struct nvme_stats *st);

/*
 * Allocate extents for @bytes, striped over the devices; *ext is malloc'd
 * (the caller frees it) and holds *n extents with `len` set and `csum` 0.
 * Every extent but the last is full (len = npages * page size). @bytes 0
 * gives *ext NULL and *n 0.
 * @return 0; -ENOSPC if the free pages cannot hold @bytes (nothing is
 * allocated then); -ENOMEM.
 */
int nvme_alloc(struct nvme_store *s, uint64_t bytes, struct nvme_extent **ext, unsigned *n);

/* Free extents from nvme_alloc or nvme_reserve (a double free is logged). */
void nvme_free(struct nvme_store *s, const struct nvme_extent *ext, unsigned n);

/*
 * Recovery: mark extents named by the catalog as in use.
 * @return 0; -EINVAL if one lies outside a device (or has no pages, or a
 * len beyond them); -EEXIST if one overlaps pages already reserved or
 * another extent of the call (nothing of this call is reserved then, for
 * either error).
 */
int nvme_reserve(struct nvme_store *s, const struct nvme_extent *ext, unsigned n);

/*
 * Write a file's bytes: @iov (in file order, page-aligned buffers whose
 * sizes are multiples of 4096 except possibly the last) is laid over the
 * extents in order. Fills each extent's csum. All writes are in flight
 * together (up to 128 transfers per thread) and complete before this
 * returns.
 * The caller owns the extents (nvme_alloc / nvme_reserve); every extent but
 * the last has a len that is a multiple of 4096; @iov holds at least the
 * extents' bytes (more is ignored). The buffers need no padding: the last
 * partial 4 KiB sector of an extent is written from a bounce buffer, zeros
 * after the data; the pages after it are not written.
 * @return 0; -EINVAL (arguments as above, before any I/O); -ENOMEM; -EIO
 * (or the injected errno) if any write failed, the extents' contents and
 * csums then undefined; -ENOSPC also sets nvme_full().
 */
int nvme_write(struct nvme_store *s, struct nvme_extent *ext, unsigned n, const struct iovec *iov,
	       int iovcnt);

/*
 * Read extents into @iov (as for nvme_write) and check every checksum.
 * Nothing is written into @iov beyond the extents' bytes.
 * @return 0; -EBADMSG if an extent's bytes do not match its checksum;
 * -EINVAL; -ENOMEM; -EIO (or the injected errno) on a read error. On an
 * error the bytes in @iov are undefined.
 */
int nvme_read(struct nvme_store *s, const struct nvme_extent *ext, unsigned n,
	      const struct iovec *iov, int iovcnt);

/*
 * Make completed writes durable against power loss (fdatasync every segment
 * written since its last sync, in parallel through io_uring). The fault
 * seam fires once per call.
 * @return 0; -EIO (or the injected errno): the segments stay due for sync.
 */
int nvme_sync(struct nvme_store *s);

/*
 * Set when a write hit -ENOSPC from the segment filesystem: take no new
 * files. It stays set until the store is closed.
 */
bool nvme_full(struct nvme_store *s);

#endif
