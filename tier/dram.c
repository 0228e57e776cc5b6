/*
 * tier/dram.c — the DRAM store: one file per object.
 *
 * Owns the storage of the DRAM tier: each object's bytes are a file of its
 * own, contiguous from offset 0, so the FUSE layer can hand that file to the
 * kernel for passthrough reads and the bytes are cached once.
 *
 * Where the files live: a private tmpfs the daemon creates with the mount
 * API (fsopen/fsconfig/fsmount) and never attaches anywhere. Only the
 * daemon holds its root (an O_PATH descriptor), no other process can reach
 * it, and it vanishes with the daemon. Files are named by a number the
 * store hands out (dram_name()), so a file is opened only while it is
 * needed (written, leased, read): a million cached files are a million
 * inodes in the tmpfs, not a million descriptors or mappings. The tmpfs is
 * sized a little above the budget as a second guard; the budget itself is
 * kept here in bytes (dram_reserve()), as the tmpfs allocates them: 4 KiB
 * pages, or large folios (huge=within_size) where a file covers them. The
 * arena had a thread fault its pages in ahead of use because a first write
 * to a fresh 4 KiB shmem page paid for allocating and zeroing it; large
 * folios make that cost small (1 MiB appends measured 1.5 GB/s with 4 KiB
 * pages, 15 GB/s with huge=within_size).
 *
 * Without CAP_SYS_ADMIN (fsopen refused) each object gets a memfd instead,
 * which stays open for the object's life (there is no name to reopen it
 * by); that fallback is logged once at start.
 *
 * Chosen over one memfd per object (measured, README "DRAM store"): a
 * passthrough read of a tmpfs file was faster than of a memfd, and memfds
 * would need one open descriptor per cached object.
 *
 * Locking: none; `used` is atomic.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fault.h"
#include "core/log.h"
#include "core/util.h"
#include "tier/tier_i.h"

/* Room for the tmpfs's own inodes and rounding beyond the byte budget. */
#define TMPFS_SLACK ((uint64_t)16 << 20)

static int tmpfs_open(uint64_t bytes)
{
	char size[32];
	int fsfd, mfd, rc;

	fsfd = fsopen("tmpfs", FSOPEN_CLOEXEC);
	if (fsfd < 0)
		return -errno;
	snprintf(size, sizeof(size), "%" PRIu64, bytes + TMPFS_SLACK);
	if (fsconfig(fsfd, FSCONFIG_SET_STRING, "size", size, 0) ||
	    fsconfig(fsfd, FSCONFIG_SET_STRING, "mode", "0700", 0) ||
	    fsconfig(fsfd, FSCONFIG_SET_STRING, "nr_inodes", "0", 0) ||
	    /* large folios where a file covers them: written 3-10x faster than 4 KiB pages */
	    fsconfig(fsfd, FSCONFIG_SET_STRING, "huge", "within_size", 0) ||
	    fsconfig(fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0)) {
		rc = -errno;
		close(fsfd);
		return rc;
	}
	mfd = fsmount(fsfd, FSMOUNT_CLOEXEC,
		      MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC);
	rc = mfd < 0 ? -errno : mfd;
	close(fsfd);
	return rc;
}

int dram_open(struct dram_store *d, uint64_t bytes, bool memfd, char *err, size_t errlen)
{
	int rc;

	memset(d, 0, sizeof(*d));
	d->dirfd = -1;
	bytes &= ~(uint64_t)(DRAM_UNIT - 1);
	if (bytes == 0) {
		snprintf(err, errlen, "DRAM size must be at least %u bytes", DRAM_UNIT);
		return -EINVAL;
	}
	d->bytes = bytes;
	rc = kvfs_fault(KVFS_FAULT_ARENA);
	if (rc) {
		snprintf(err, errlen, "cannot create the %" PRIu64 "-byte DRAM store: %s", bytes,
			 strerror(-rc));
		return rc;
	}
	rc = memfd ? -EPERM : tmpfs_open(bytes);
	if (rc >= 0) {
		d->dirfd = rc;
		log_info("DRAM: %" PRIu64 " bytes in a private tmpfs, one file per object", bytes);
	} else {
		log_warn("DRAM: no private tmpfs (%s): one memfd per object instead",
			 strerror(-rc));
	}
	return 0;
}

void dram_close(struct dram_store *d)
{
	if (d->dirfd >= 0)
		close(d->dirfd);
	d->dirfd = -1;
}

int dram_reserve(struct dram_store *d, uint64_t n)
{
	uint64_t u = atomic_load(&d->used);

	do {
		if (n > d->bytes || u > d->bytes - n)
			return -ENOSPC;
	} while (!atomic_compare_exchange_weak(&d->used, &u, u + n));
	return 0;
}

void dram_unreserve(struct dram_store *d, uint64_t n)
{
	atomic_fetch_sub(&d->used, n);
}

uint64_t dram_free_bytes(struct dram_store *d)
{
	uint64_t u = atomic_load(&d->used);

	return u < d->bytes ? d->bytes - u : 0;
}

static void file_name(uint64_t name, char *buf, size_t len)
{
	snprintf(buf, len, "%" PRIx64, name);
}

int dram_create(struct dram_store *d, uint64_t *name)
{
	char buf[24];
	int fd;

	*name = atomic_fetch_add(&d->next_name, 1) + 1;
	if (d->dirfd < 0) {
		fd = memfd_create("kvfs-obj", MFD_CLOEXEC);
		return fd < 0 ? -errno : fd;
	}
	file_name(*name, buf, sizeof(buf));
	fd = openat(d->dirfd, buf, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	return fd < 0 ? -errno : fd;
}

int dram_reopen(struct dram_store *d, uint64_t name, int flags)
{
	char buf[24];
	int fd;

	if (d->dirfd < 0)
		return -EBADF; /* memfds are never closed while the object lives */
	file_name(name, buf, sizeof(buf));
	fd = openat(d->dirfd, buf, flags | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

void dram_remove(struct dram_store *d, uint64_t name)
{
	char buf[24];

	if (d->dirfd < 0 || !name)
		return;
	file_name(name, buf, sizeof(buf));
	if (unlinkat(d->dirfd, buf, 0) && errno != ENOENT)
		log_warn("DRAM: cannot remove file %s: %s", buf, strerror(errno));
}
